"""The dashboard page: one screen, served by the master with every asset (no CDN)."""

from __future__ import annotations

from aiohttp import web

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    links = "".join(
        f'<li><a href="{path}">{path}</a></li>'
        for path in ("/api/status", "/api/nodes", "/api/systems", "/api/tasks", "/api/stats")
        + ("/metrics", "/api/openapi.json")
    )
    return web.Response(
        text=f"<!doctype html><title>taskswarm</title><h1>taskswarm master</h1><ul>{links}</ul>",
        content_type="text/html",
    )
