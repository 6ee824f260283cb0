"""Cluster keys: 256 random bits in a file only its owner can read.

Every message is signed with the key (see ``protocol.codec``), so whoever can read the key file
can run code on every node: the file is written with mode 0600 and refused when others can read
it. A key made with ``taskswarm keygen --curve`` also holds a CurveZMQ keypair for the master;
every node given that file encrypts its traffic with it.

File format (text)::

    # comment lines
    <64 hex digits: the HMAC key>
    curve-public <40 characters, Z85>
    curve-secret <40 characters, Z85>
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError

__all__ = ["ClusterKeys", "as_keys", "generate_key_file", "load_key", "load_keys"]

KEY_BYTES = 32
_HEADER = "# taskswarm cluster key: give this file to every node of the cluster, and no one else\n"


@dataclass(frozen=True)
class ClusterKeys:
    hmac: bytes
    curve_public: bytes | None = None  # the master's CurveZMQ keypair, when traffic is encrypted
    curve_secret: bytes | None = None

    @property
    def curve(self) -> bool:
        return self.curve_public is not None

    def __repr__(self) -> str:  # never show a key in a log or a traceback
        return f"ClusterKeys(curve={self.curve})"

    def dashboard_token(self) -> str:
        """The bearer token the master's HTTP API asks of actions (resize, drain, cancel).

        Derived from the cluster key, so whoever holds the key file can act (``taskswarm status``
        prints the dashboard's URL with it), while the token itself reveals nothing of the key.
        """
        return hmac.new(self.hmac, b"taskswarm dashboard token v1", hashlib.sha256).hexdigest()[:32]


def as_keys(key: bytes | ClusterKeys) -> ClusterKeys:
    """Nodes take either a bare HMAC key or a key file's full contents."""
    return key if isinstance(key, ClusterKeys) else ClusterKeys(key)


def generate_key_file(
    path: str | os.PathLike[str], overwrite: bool = False, curve: bool = False
) -> Path:
    """Write a fresh key (hex text) with mode 0600; refuses to replace a key unless told to."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise ConfigurationError(
            f"{target} already exists; remove it first or choose another path "
            "(replacing a cluster's key locks out every node that still has the old one)"
        )
    text = _HEADER + secrets.token_hex(KEY_BYTES) + "\n"
    if curve:
        import zmq

        public, secret = zmq.curve_keypair()
        text += f"curve-public {public.decode()}\ncurve-secret {secret.decode()}\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(target, 0o600)  # the umask cannot widen it, but an existing file kept its mode
    return target


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The HMAC key of a key file written by ``taskswarm keygen``."""
    return load_keys(path).hmac


def load_keys(path: str | os.PathLike[str]) -> ClusterKeys:
    """Read a key file; every problem is a ConfigurationError that says what to do."""
    source = Path(path)
    try:
        mode = source.stat().st_mode
        text = source.read_text()
    except FileNotFoundError:
        raise ConfigurationError(
            f"key file {source} does not exist; create one with `taskswarm keygen {source}` "
            "and give the same file to every node of the cluster"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read key file {source}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"key file {source} can be read by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {source}`: whoever reads it can run code on every node"
        )
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    not_a_key = ConfigurationError(
        f"key file {source} does not hold a taskswarm key; make one with `taskswarm keygen`"
    )
    if not lines:
        raise not_a_key
    try:
        key = bytes.fromhex(lines[0])
    except ValueError:
        raise not_a_key from None
    if len(key) < 16:
        raise ConfigurationError(f"key in {source} is too short ({len(key)} bytes, need >= 16)")
    fields = dict(line.split(None, 1) for line in lines[1:] if " " in line)
    public, secret = fields.get("curve-public"), fields.get("curve-secret")
    if (public is None) != (secret is None) or any(
        v is not None and len(v) != 40 for v in (public, secret)
    ):
        raise ConfigurationError(
            f"key file {source} has a broken CurveZMQ keypair; make a new one with "
            "`taskswarm keygen --curve`"
        )
    return ClusterKeys(
        key,
        public.encode() if public else None,
        secret.encode() if secret else None,
    )
