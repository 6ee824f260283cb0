"""The address a master tells others to reach it at (``taskswarm master --advertise``).

Slaves and applications only ever connect out to the master, so the master is the one node whose
address others must know. A master bound to a wildcard (``tcp://0.0.0.0:5555``, ``tcp://*:5555``,
``tcp://[::]:5555``) listens on every interface, but no other machine can dial "0.0.0.0": what
``status`` and the dashboard URL report has to be an address that works from elsewhere. By
default that is the bind address itself, or, for a wildcard, this host's primary address (the
one its default route leaves from) and failing that its name, with the port really bound.
``--advertise`` overrides it for what the master cannot see from inside: NAT, a port forward, a
DNS name, a container's published port.
"""

from __future__ import annotations

import socket

from ..errors import ConfigurationError
from .transport import check_address

__all__ = ["advertised_address", "check_advertise", "is_wildcard", "primary_host", "public_url"]

#: Hosts that mean "every interface" when bound, and so reach nothing when dialled.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", "[::]", ""})

#: Documentation addresses (RFC 5737, RFC 3849): only used to ask the kernel for a route, since
#: connecting a UDP socket sends nothing.
_ROUTE_PROBES = ((socket.AF_INET6, "2001:db8::1"), (socket.AF_INET, "192.0.2.1"))


def is_wildcard(host: str) -> bool:
    """Whether ``host`` (as written in an address, brackets and all) means every interface."""
    return host in WILDCARD_HOSTS


def _split(address: str) -> tuple[str, str]:
    host, _, port = address[len("tcp://") :].rpartition(":")
    return host, port


def check_advertise(advertise: str | None) -> str | None:
    """Validate ``--advertise`` before anything is bound; a wildcard is refused, since the
    whole point is an address another machine can dial."""
    if advertise is None:
        return None
    check_address(advertise)
    if advertise.startswith("tcp://") and is_wildcard(_split(advertise)[0]):
        raise ConfigurationError(
            f"--advertise {advertise} names every interface, which no other machine can dial; "
            "give this host's name or address, e.g. --advertise tcp://10.0.0.5:5555"
        )
    return advertise


def primary_host(ipv6: bool = False) -> str:
    """This host's address on its default route (bracketed if IPv6), else its name.

    Connecting a UDP socket only picks a route and a source address: no packet is sent, and no
    name service is asked (a lookup could hang for seconds on a misconfigured resolver).
    """
    for family, probe in _ROUTE_PROBES[0 if ipv6 else 1 :]:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                host = sock.getsockname()[0]
        except OSError:
            continue  # no route of this family (an isolated host or namespace)
        return f"[{host}]" if family == socket.AF_INET6 else host
    return socket.gethostname()


def advertised_address(bound: str, advertise: str | None = None) -> str:
    """What a master bound at ``bound`` (its real port) tells others: ``advertise`` if given,
    else the bound address, with a wildcard host replaced by :func:`primary_host`."""
    if advertise is not None:
        return advertise
    if not bound.startswith("tcp://"):
        return bound  # ipc://: one machine only, where the path is the address
    host, port = _split(bound)
    if not is_wildcard(host):
        return bound
    return f"tcp://{primary_host(ipv6=host.startswith('['))}:{port}"


def public_url(url: str, advertised: str) -> str:
    """``url`` (``http://HOST:PORT``, as a server bound it) with a wildcard host replaced by
    the advertised host, so the dashboard link ``taskswarm status`` prints can be followed."""
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rpartition(":")
    if not is_wildcard(host):
        return url
    if advertised.startswith("tcp://"):
        host = _split(advertised)[0]
    else:
        host = primary_host(ipv6=host.startswith("["))
    return f"{scheme}://{host}:{port}"
