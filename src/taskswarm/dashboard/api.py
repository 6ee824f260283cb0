"""The JSON API and /metrics: each handler asks the master's loop one question.

The OpenAPI document below is the API's contract (``/api/openapi.json``); the tests check the
live server against it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..stats import prometheus_text

__all__ = ["OPENAPI", "routes"]

routes = web.RouteTableDef()

#: Most tasks one page of ``/api/tasks`` returns.
MAX_PAGE = 1000
TASK_STATES = ("queued", "assigned")


async def _ask(request: web.Request, question: Any) -> Any:
    return await request.app["ask"](question)


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
        ("applications", "Applications connected.", info["applications"]),
    ]
    lines = []
    for name, help_text, value in gauges:
        lines += [f"# HELP taskswarm_{name} {help_text}", f"# TYPE taskswarm_{name} gauge"]
        lines.append(f"taskswarm_{name} {value}")
    text = "\n".join(lines) + "\n" + prometheus_text(info["stats"])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})  # fmt: skip


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_OBJECT = {"type": "object"}
_BAD = {"400": {"description": "A query parameter is malformed; the text says which."}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "taskswarm master",
        "version": "1",
        "description": "What the master knows now: nodes, task systems, tasks and stats.",
    },
    "paths": {
        "/api/status": {
            "get": {
                "summary": "Everything `taskswarm status --json` prints",
                "responses": {"200": _json(_OBJECT)},
            }
        },
        "/api/nodes": {
            "get": {
                "summary": "Slaves (live and departed) and the number of applications",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["slaves", "applications"],
                            "properties": {
                                "slaves": {"type": "array", "items": _OBJECT},
                                "applications": {"type": "integer", "minimum": 0},
                            },
                        }
                    )
                },
            }
        },
        "/api/systems": {
            "get": {
                "summary": "Task systems: id, state, tasks done and generated",
                "responses": {"200": _json({"type": "array", "items": _OBJECT})},
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
        "/api/stats": {
            "get": {
                "summary": "Named measures: count, sum, avg, min, max, with labels",
                "responses": {"200": _json({"type": "array", "items": _OBJECT})},
            }
        },
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
