"""The error tree: one root, a category per whose-fault, each saying when it is raised.

Exceptions that cross the wire (from a worker back to an application) are rebuilt by pickle from
their module path, so every class here keeps ``taskswarm.errors`` as its home and takes its message
as its only positional argument.
"""

from __future__ import annotations

from typing import Any


class TaskswarmError(Exception):
    """Root of every error taskswarm raises itself."""


class ConfigurationError(TaskswarmError):
    """Raised when an option, address or key file given by the user is wrong or missing."""


class ClusterError(TaskswarmError):
    """Raised when the cluster cannot be reached or stops answering."""


class MasterUnreachable(ClusterError):
    """Raised when no master answered the handshake within the connect timeout."""


class ClientClosed(TaskswarmError):
    """Raised when a closed application connection, executor or cluster is used again."""


class WireError(TaskswarmError):
    """Raised when a message must be dropped unread; ``reason`` names why (for counting)."""

    reason = "malformed"


class BadSignature(WireError):
    """Raised when a message's MAC does not match the cluster key (never unpickled)."""

    reason = "bad-signature"


class BadDigest(WireError):
    """Raised when a payload does not match the digest its signed header gives (it was altered
    on the way): raised where it would be unpickled, before it is."""

    reason = "bad-digest"


class MalformedMessage(WireError):
    """Raised when a message's frames or header do not follow the protocol."""

    reason = "malformed"


class BadFields(MalformedMessage):
    """Raised when a correctly signed header lacks a field its kind requires, or holds one of
    the wrong type or out of its range (counted as ``bad-fields``: a bug or a version skew in
    the peer, see :mod:`taskswarm.protocol.messages`)."""

    reason = "bad-fields"


class VersionMismatch(WireError):
    """Raised when a peer speaks another protocol version; the message names both."""

    reason = "version"


class Replayed(WireError):
    """Raised when a message repeats a sequence number its sender already used (a replay)."""

    reason = "replayed"


class Misdirected(WireError):
    """Raised when a message is addressed to another session (another node, or a master that
    has since restarted); ``sender`` lets the receiver ask a real peer to say HELLO again."""

    reason = "misdirected"

    def __init__(self, message: str, sender: str = "") -> None:
        super().__init__(message)
        self.sender = sender

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.sender))


class StaleMessage(WireError):
    """Raised when an opening HELLO/REGISTER is older (or newer) than the replay window."""

    reason = "stale"


class AuthenticationFailed(ClusterError):
    """Raised when the master refuses this node's messages: the key files differ."""


class TaskError(TaskswarmError):
    """Raised when a task failed and its own exception could not travel back.

    Carries the remote exception's type name and traceback text so the failure is still
    diagnosable where the original class cannot be pickled or imported.
    """

    def __init__(self, message: str, type_name: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:  # keep the extra fields across pickling
        return (type(self), (self.args[0], self.type_name, self.remote_traceback))


class TaskTimeout(TaskError):
    """Raised when a task ran past its ``timeout``; its worker was replaced."""


class ResourceUnavailable(TaskError):
    """Raised when a task needs resources (``Task.resources``) that no slave in the cluster
    offers, and none came within the master's ``--resource-wait``."""


class WorkerCrashed(TaskError):
    """Raised when a task killed its worker process (signal or exit code in the message)."""


class WorkerMemoryExceeded(WorkerCrashed):
    """Raised when a task's worker process kept passing its memory limit (the slave's
    ``--worker-memory-limit``) and was replaced each time; the message says how much it used
    and what the limit was. A kind of ``WorkerCrashed``: it cost the same attempts."""


class DependencyError(TaskError):
    """Raised by a task that took another task's Future as an argument when that task failed
    or was cancelled: this one never ran. The input's own exception is its ``__cause__``;
    ``dependency`` is that input's task id."""

    def __init__(
        self, message: str, type_name: str = "", remote_traceback: str = "", dependency: str = ""
    ) -> None:
        super().__init__(message, type_name or "DependencyError", remote_traceback)
        self.dependency = dependency

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.type_name, self.remote_traceback, self.dependency))


class TaskSystemError(TaskswarmError):
    """Raised when a task system failed: a callback raised, or it gathered a non-exception error."""


class UnknownTaskSystem(TaskswarmError):
    """Raised when the master holds no task system with the given id."""


class AmbiguousTaskSystem(UnknownTaskSystem):
    """Raised when an id prefix given for a task system begins the ids of several the master
    knows: the message lists them; give more of the id."""


class ShippingError(TaskswarmError, ValueError):
    """Raised when ``app.upload_file`` cannot ship a path: it does not exist, is neither a
    module (``.py``), a package directory nor a ``.zip``, holds an entry that could land outside
    its folder, or is over the cluster's limit; the message says which and what to do."""


class MessageTooLarge(TaskswarmError, ValueError):
    """Raised when a task's arguments, or its result, pickle to more than the cluster's message
    limit (``--max-message-mib`` of the master and slaves): nothing that big can travel."""
