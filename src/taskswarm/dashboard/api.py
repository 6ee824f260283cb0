"""The JSON API and /metrics: each handler asks the master's loop one question.

The OpenAPI document below is the API's contract (``/api/openapi.json``); the tests check the
live server against it.

Task systems are named by their id or a unique prefix of it (``master.system_ids``): an
ambiguous prefix is a 409 listing the candidates, an unknown one a 404 saying so.

Nearly 500 lines, most of them the OpenAPI document, which belongs beside the handlers it
describes.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..protocol.messages import AMBIGUOUS_SYSTEM
from ..stats import prometheus_text
from . import ERRORS_KEPT, STREAM_TASKS

#: A question for the master: called with the master (``taskswarm.master.node.Master``) in its
#: loop; its answer is what the handler gets.
Question = Callable[[Any], Any]
#: What the server puts in the application for the handlers: a coroutine function that runs a
#: question in the master's loop, and the token actions need.
ASK: web.AppKey[Callable[[Question], Awaitable[Any]]] = web.AppKey("ask")
TOKEN: web.AppKey[str] = web.AppKey("token", str)

__all__ = ["OPENAPI", "routes"]

routes = web.RouteTableDef()

#: Most tasks one page of ``/api/tasks`` returns.
MAX_PAGE = 1000
TASK_STATES = ("queued", "assigned")


async def _ask(request: web.Request, question: Question) -> Any:
    return await request.app[ASK](question)


@routes.get("/api/status")
async def status(request: web.Request) -> web.Response:
    return web.json_response(await _ask(request, lambda master: master.status()))


@routes.get("/api/nodes")
async def nodes(request: web.Request) -> web.Response:
    info = await _ask(request, lambda master: master.status())
    return web.json_response({"slaves": info["slaves"], "applications": info["applications"]})


@routes.get("/api/systems")
async def systems(request: web.Request) -> web.Response:
    return web.json_response(await _ask(request, lambda master: master.systems.summaries()))


def _found(found: Any, none: str = "") -> str:
    """The full id a look-up found (``master.system_ids.Found``); else the 404 (none: after
    ``none``) or the 409 (several, listed) that says so."""
    if found.system_id is not None:
        return str(found.system_id)
    if found.error == AMBIGUOUS_SYSTEM:
        raise web.HTTPConflict(text=found.reason)
    raise web.HTTPNotFound(text=none + found.reason)


@routes.get("/api/systems/{system_id}")
async def system(request: web.Request) -> web.Response:
    given = request.match_info["system_id"]

    def summary(master: Any) -> tuple[Any, dict[str, Any] | None, str]:
        table = master.systems
        found = table.look_up(given)
        record = table.records.get(found.system_id) if found.system_id else None
        why = table.why_unknown(found.system_id) if found.system_id else ""
        return found, record.summary() if record is not None else None, why

    found, summary_now, why = await _ask(request, summary)
    system_id = _found(found)
    if summary_now is None:  # a prefix of a system let go: say what became of it
        raise web.HTTPNotFound(text=f"the master holds no task system {system_id} any more: {why}")
    return web.json_response(summary_now)


@routes.get("/api/errors")
async def errors(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 20, 1, ERRORS_KEPT)
    return web.json_response(await _ask(request, lambda master: master.latest_errors(limit)))


@routes.get("/api/stats")
async def stats(request: web.Request) -> web.Response:
    return web.json_response(await _ask(request, lambda master: master.status()["stats"]))


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise web.HTTPBadRequest(text=f"{name} must be between {low} and {high}, not {value}")
    return value


@routes.get("/api/tasks")
async def tasks(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in TASK_STATES:
        raise web.HTTPBadRequest(text=f"state must be one of {', '.join(TASK_STATES)}")
    system = request.query.get("system")
    offset = _int_param(request, "offset", 0, 0, 2**31)
    limit = _int_param(request, "limit", 100, 1, MAX_PAGE)

    def page(master: Any) -> dict[str, Any]:
        chosen = [
            task
            for task in master.scheduler.tasks.values()
            if (state is None or task.state == state)
            and (system is None or task.system_id == system)
        ]
        return {
            "total": len(chosen),
            "offset": offset,
            "limit": limit,
            "tasks": [
                {
                    "id": task.task_id,
                    "name": task.name,
                    "state": task.state,
                    "slave": task.slave_id,
                    "system": task.system_id,
                    "priority": task.priority,
                    "attempts": task.attempts,
                }
                for task in chosen[offset : offset + limit]
            ],
        }

    return web.json_response(await _ask(request, page))


@routes.get("/api/history")
async def history(request: web.Request) -> web.Response:
    return web.json_response(await _ask(request, lambda master: master.core.history.series()))


@routes.get("/api/stream")
async def stream(request: web.Request) -> web.Response:
    after = _int_param(request, "after", 0, 0, 2**62)
    limit = _int_param(request, "limit", STREAM_TASKS, 1, STREAM_TASKS)
    return web.json_response(
        await _ask(request, lambda master: master.core.stream.recent(after, limit))
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    info = await _ask(request, lambda master: master.status())
    gauges = [
        ("tasks_queued", "Tasks waiting in the master's queue.", info["tasks"]["queued"]),
        ("tasks_assigned", "Tasks sent to slaves, no result yet.", info["tasks"]["assigned"]),
        (
            "slaves_active",
            "Slaves taking tasks.",
            sum(1 for s in info["slaves"] if s["state"] == "active"),
        ),
        (
            "applications",
            "Applications connected.",
            sum(1 for a in info["applications"] if a["state"] == "connected"),
        ),
    ]
    lines = []
    for name, help_text, value in gauges:
        lines += [f"# HELP taskswarm_{name} {help_text}", f"# TYPE taskswarm_{name} gauge"]
        lines.append(f"taskswarm_{name} {value}")
    text = "\n".join(lines) + "\n" + prometheus_text(info["stats"])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})  # fmt: skip


# -- actions: they change the cluster, so they need the token ----------------------------------


def _authorise(request: web.Request) -> None:
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    # compare_digest raises on a str that is not ASCII: such a token is simply a wrong one.
    right = token.isascii() and hmac.compare_digest(token, request.app[TOKEN])
    if scheme.lower() != "bearer" or not right:
        raise web.HTTPUnauthorized(
            text="this action needs the dashboard token: send 'Authorization: Bearer TOKEN'; "
            "`taskswarm status` prints the dashboard URL with it (it comes from the key file)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _act(request: web.Request, question: Any, what: str) -> web.Response:
    if not await _ask(request, question):
        raise web.HTTPNotFound(text=f"no {what}")
    return web.json_response({"ok": True})


@routes.post("/api/slaves/{slave_id}/resize")
async def resize(request: web.Request) -> web.Response:
    _authorise(request)
    slave_id = request.match_info["slave_id"]
    try:
        body = await request.json()
        workers = body["workers"]
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(text='send a JSON body like {"workers": 4}') from None
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 1024:
        raise web.HTTPBadRequest(
            text=f"workers must be a whole number from 0 to 1024, not {workers!r}"
        )
    return await _act(
        request, lambda master: master.resize_slave(slave_id, workers), f"slave {slave_id!r}"
    )


@routes.post("/api/slaves/{slave_id}/drain")
async def drain(request: web.Request) -> web.Response:
    _authorise(request)
    slave_id = request.match_info["slave_id"]
    return await _act(request, lambda master: master.drain_slave(slave_id), f"slave {slave_id!r}")


@routes.post("/api/tasks/{task_id}/cancel")
async def cancel_task(request: web.Request) -> web.Response:
    _authorise(request)
    task_id = request.match_info["task_id"]
    return await _act(request, lambda master: master.cancel_task(task_id), f"live task {task_id!r}")


@routes.post("/api/systems/{system_id}/cancel")
async def cancel_system(request: web.Request) -> web.Response:
    _authorise(request)
    given = request.match_info["system_id"]

    def cancel(master: Any) -> tuple[Any, bool]:
        found = master.systems.look_up(given)
        return found, found.system_id is not None and master.systems.cancel(found.system_id)

    found, cancelled = await _ask(request, cancel)
    system_id = _found(found, f"no running task system {given!r}: ")
    if not cancelled:
        raise web.HTTPNotFound(text=f"no running task system {system_id!r}")
    return web.json_response({"ok": True})


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_OBJECT = {"type": "object"}


def _action(
    summary: str,
    parameter: str,
    body: dict[str, Any] | None = None,
    responses: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"token": []}],
        "parameters": [
            {"name": parameter, "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": _json({"type": "object", "required": ["ok"]}),
            "400": {"description": "The body is malformed; the text says how."},
            "401": {"description": "No token, or the wrong one."},
            "404": {"description": "No such node, task or task system (or it has ended)."},
            **(responses or {}),
        },
    }
    if body is not None:
        operation["requestBody"] = body
    return {"post": operation}


_NODE = {
    "type": "object",
    "required": ["id", "kind", "host", "state", "in_flight", "done", "failed", "last_heartbeat"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "enum": ["slave", "application"]},
        "host": {"type": "string"},
        "state": {"type": "string"},
        "workers": {"type": "integer", "minimum": 0},
        "in_flight": {"type": "integer", "minimum": 0},
        "rating": {"type": "number", "nullable": True},
        "done": {"type": "integer", "minimum": 0},
        "failed": {"type": "integer", "minimum": 0},
        "last_heartbeat": {"type": "number", "description": "seconds since last heard from"},
    },
}
_ERROR = {
    "type": "object",
    "required": ["time", "task_id", "status", "error", "traceback"],
    "properties": {
        "time": {"type": "number", "description": "Unix time the failure reached the master"},
        "task_id": {"type": "string"},
        "name": {"type": "string"},
        "system_id": {"type": "string", "nullable": True},
        "application_id": {"type": "string"},
        "slave_id": {"type": "string", "nullable": True},
        "status": {"type": "string", "enum": ["error", "retry", "timeout", "crash"]},
        "error": {"type": "string", "description": "Type: message"},
        "traceback": {"type": "string", "description": "the remote traceback, as text"},
    },
}
_BAD = {"400": {"description": "A query parameter is malformed; the text says which."}}
_SYSTEM = {
    "type": "object",
    "required": ["id", "name", "application", "done", "total", "state", "elapsed"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string", "description": 'TaskSystem.name ("": sent unnamed)'},
        "application": {"type": "string", "description": "the application that sent it"},
        "done": {"type": "integer", "minimum": 0},
        "total": {"type": "integer", "minimum": 0},
        "tasks_failed": {"type": "integer", "minimum": 0},
        "state": {"type": "string", "enum": ["running", "complete", "failed", "cancelled"]},
        "elapsed": {"type": "number", "minimum": 0},
        "eta": {"type": "number", "nullable": True, "description": "seconds left, if known"},
    },
}
#: A task system named by its id or a unique prefix of it (as git names commits).
_SYSTEM_ID = {
    "name": "system_id",
    "in": "path",
    "required": True,
    "description": "the system's id, or the first characters of it",
    "schema": {"type": "string"},
}
_LOOK_UP = {
    "404": {"description": "No task system's id is or begins with this; the text says why."},
    "409": {"description": "Several systems' ids begin with this; the text lists them."},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "taskswarm master",
        "version": "1",
        "description": "What the master knows now: nodes, task systems, tasks and stats.",
    },
    "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/api/status": {
            "get": {
                "summary": "Everything `taskswarm status --json` prints",
                "responses": {"200": _json(_OBJECT)},
            }
        },
        "/api/nodes": {
            "get": {
                "summary": "Slaves (live and departed) and application nodes: id, kind, host, "
                "state, workers, in flight, rating, done, failed, last heartbeat",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["slaves", "applications"],
                            "properties": {
                                "slaves": {"type": "array", "items": _NODE},
                                "applications": {"type": "array", "items": _NODE},
                            },
                        }
                    )
                },
            }
        },
        "/api/errors": {
            "get": {
                "summary": "The latest task failures, newest first, with their remote tracebacks",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": ERRORS_KEPT},
                    }
                ],
                "responses": {"200": _json({"type": "array", "items": _ERROR}), **_BAD},
            }
        },
        "/api/systems": {
            "get": {
                "summary": "Task systems: id, name, state, tasks done and generated; running "
                "ones first, then finished ones, newest first",
                "responses": {"200": _json({"type": "array", "items": _SYSTEM})},
            }
        },
        "/api/systems/{system_id}": {
            "get": {
                "summary": "One task system, by its id or a unique prefix of it",
                "parameters": [_SYSTEM_ID],
                "responses": {"200": _json(_SYSTEM), **_LOOK_UP},
            }
        },
        "/api/tasks": {
            "get": {
                "summary": "Live tasks (queued or assigned), filtered and paged",
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(TASK_STATES)},
                    },
                    {"name": "system", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**31},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["total", "offset", "limit", "tasks"],
                            "properties": {
                                "total": {"type": "integer", "minimum": 0},
                                "offset": {"type": "integer", "minimum": 0},
                                "limit": {"type": "integer", "minimum": 1},
                                "tasks": {"type": "array", "items": _OBJECT},
                            },
                        }
                    ),
                    **_BAD,
                },
            }
        },
        "/api/history": {
            "get": {
                "summary": "The cluster's load, one sample per master heartbeat, the last ten "
                "minutes: time, tasks done/s, queued, running, each slave's CPU % and memory",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["kept", "time", "rate", "queued", "running", "slaves"],
                            "properties": {
                                "interval": {"type": "number", "nullable": True},
                                "kept": {"type": "integer", "minimum": 0},
                                "time": {"type": "array", "items": {"type": "number"}},
                                "rate": {"type": "array", "items": {"type": "number"}},
                                "queued": {"type": "array", "items": {"type": "integer"}},
                                "running": {"type": "array", "items": {"type": "integer"}},
                                "slaves": _OBJECT,
                            },
                        }
                    )
                },
            }
        },
        "/api/stream": {
            "get": {
                "summary": "The latest tasks that ran, oldest first, those numbered after "
                "`after`: [began, ended, worker (slave/pid), name, system, status]",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**62},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": STREAM_TASKS},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["now", "last", "kept", "tasks"],
                            "properties": {
                                "now": {"type": "number"},
                                "last": {"type": "integer", "minimum": 0},
                                "kept": {"type": "integer", "minimum": 0},
                                "tasks": {"type": "array", "items": {"type": "array"}},
                            },
                        }
                    ),
                    **_BAD,
                },
            }
        },
        "/api/stats": {
            "get": {
                "summary": "Named measures: count, sum, avg, min, max, with labels",
                "responses": {"200": _json({"type": "array", "items": _OBJECT})},
            }
        },
        "/api/slaves/{slave_id}/resize": _action(
            "Resize a slave's pool of workers (update_pool)",
            "slave_id",
            {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["workers"],
                            "properties": {
                                "workers": {"type": "integer", "minimum": 0, "maximum": 1024}
                            },
                        }
                    }
                },
            },
        ),
        "/api/slaves/{slave_id}/drain": _action(
            "Drain a slave: it finishes what it runs, hands back the rest, and leaves", "slave_id"
        ),
        "/api/tasks/{task_id}/cancel": _action(
            "Cancel a live task; its owner gets a TaskError", "task_id"
        ),
        "/api/systems/{system_id}/cancel": _action(
            "Cancel a running task system, by its id or a unique prefix of it",
            "system_id",
            responses=_LOOK_UP,
        ),
        "/metrics": {
            "get": {
                "summary": "The same stats in the Prometheus text format",
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": {}}}}
                },
            }
        },
    },
}
