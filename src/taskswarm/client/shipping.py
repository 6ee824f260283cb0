"""An application's side of shipping code (``app.upload_file``): pack, check, send, wait.

The archive is built here (:func:`taskswarm.protocol.archives.pack`), checked against what the
cluster can keep, and sent as a SHIP request; the master's ACK means it holds the code and has
sent it to every slave, so what the application submits next reaches each slave after it. A
refusal (over the cluster's limit) comes back as the master's reason, raised as ShippingError.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import ShippingError, TaskswarmError
from ..protocol import archives
from ..protocol.codec import Kind
from ..protocol.messages import Ack, Ship

if TYPE_CHECKING:
    from .link import MasterLink

__all__ = ["upload"]


def upload(link: MasterLink, path: str | os.PathLike[str], timeout: float) -> None:
    """Ship ``path`` over ``link`` and wait for the master's answer; see
    ``Application.upload_file``."""
    link.check_open()
    archive = archives.pack(path)
    limit = min(link.max_payload, archives.MAX_SHIPPED_BYTES)
    if len(archive.data) > limit:
        raise ShippingError(
            f"cannot ship {os.fspath(path)!r}: it packs to {len(archive.data):,} bytes, more than "
            f"the {limit:,} a cluster keeps of shipped code; ship only the modules the tasks "
            "import (no data files), or install big packages on the slaves"
        )
    try:
        link.request(Kind.SHIP, Ship(name=archive.name), timeout, [archive.data], answer=Ack)
    except TaskswarmError as exc:
        if type(exc) is not TaskswarmError:  # closed, unreachable: not a refusal
            raise
        raise ShippingError(f"the master refused {os.fspath(path)!r}: {exc}") from None
