"""Which ``Host:`` names the dashboard answers to, against DNS rebinding.

A web page on any site can make the browser that shows it send requests to a name the page's
own server controls; if that name is then made to resolve to 127.0.0.1 ("DNS rebinding"), the
page can read the answers of a server on the user's own machine -- the cluster's status, its
task errors and their tracebacks. The browser still sends the page's name in ``Host:``, so the
dashboard answers only to names it knows and refuses the others with ``421``:

* the loopback names (``localhost``, ``*.localhost``, ``127.0.0.1``, ``::1``);
* the address it is bound to, and the name the master advertises (what ``taskswarm status``
  prints in the dashboard's URL);
* this machine's host name, when bound beyond loopback;
* every name given with ``--dashboard-host``;
* any address written as an IP literal: no name is resolved, so nothing can be rebound;
* a request with no ``Host:`` at all (HTTP/1.0 tools): browsers always send one, so such a
  request cannot come from a web page.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

__all__ = ["allowed_hosts", "host_check", "host_name", "is_loopback"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(value: str) -> str:
    """The host part of a ``Host:`` value or an address: lower case, without port, brackets
    or a final dot (``[::1]:8787`` -> ``::1``, ``Example.COM.:80`` -> ``example.com``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` can only be reached from this machine."""
    name = host_name(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a wildcard ("", "0.0.0.0", "::") or a name that may resolve anywhere


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names (beside IP literals and ``*.localhost``) a dashboard bound to ``bind_host``
    answers to; ``extra`` are the advertised name and those of ``--dashboard-host``."""
    names = set(LOOPBACK_NAMES)
    names.update(host_name(name) for name in extra if name.strip())
    bound = host_name(bind_host)
    if bound not in ("", "0.0.0.0", "::", "*"):
        names.add(bound)
    if not is_loopback(bind_host):
        names.add(host_name(socket.gethostname()))
    return frozenset(names)


def _allowed(name: str, allowed: frozenset[str]) -> bool:
    return name in allowed or name.endswith(".localhost") or _is_ip(name)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_check(allowed: frozenset[str]) -> Middleware:
    """An aiohttp middleware that answers ``421`` to a request naming another host."""

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(hdrs.HOST, "")
        name = host_name(given)
        if given.strip() and not _allowed(name, allowed):
            raise web.HTTPMisdirectedRequest(
                text=f"this dashboard does not answer to the name {name[:100]!r}: a web page "
                "may be trying to read it through DNS rebinding. It answers to "
                f"{', '.join(sorted(allowed))}, *.localhost and any IP address. To reach it "
                "by another name, start the master with --dashboard-host NAME.\n"
            )
        return await handler(request)

    return check_host
