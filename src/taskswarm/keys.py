"""Cluster keys: 256 random bits in a file only its owner can read.

Every message is signed with the key (see ``wire``), so whoever can read the key file can run code
on every node: the file is written with mode 0600 and refused when others can read it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["generate_key_file", "load_key"]

KEY_BYTES = 32


def generate_key_file(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write a fresh key (hex text) with mode 0600; refuses to replace a key unless told to."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise ConfigurationError(
            f"{target} already exists; remove it first or choose another path "
            "(replacing a cluster's key locks out every node that still has the old one)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(KEY_BYTES) + "\n")
    os.chmod(target, 0o600)  # the umask cannot widen it, but an existing file kept its mode
    return target


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Read a key file written by ``taskswarm keygen``; every problem is a ConfigurationError."""
    source = Path(path)
    try:
        mode = source.stat().st_mode
        text = source.read_text().strip()
    except FileNotFoundError:
        raise ConfigurationError(
            f"key file {source} does not exist; create one with `taskswarm keygen {source}` "
            "and give the same file to every node of the cluster"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read key file {source}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"key file {source} can be read by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {source}`: whoever reads it can run code on every node"
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError(
            f"key file {source} does not hold a taskswarm key; make one with `taskswarm keygen`"
        ) from None
    if len(key) < 16:
        raise ConfigurationError(f"key in {source} is too short ({len(key)} bytes, need >= 16)")
    return key
