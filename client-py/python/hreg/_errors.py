"""The exceptions of hreg: one base class, ``Error``, and one subclass per
status of the C API, each carrying that status number as ``.status``.

The native module raises these (and puts instances of them in the results of
``Client.submit``); they are plain Python so that ``InvalidArgument`` can also
be a ``ValueError``.
"""

from typing import Dict, Optional, Type

__all__ = [
    "Error",
    "InvalidArgument",
    "StaleHandle",
    "Denied",
    "TooBig",
    "BufferTooSmall",
    "QuotaExceeded",
    "NotHeld",
    "ConnectError",
    "Disconnected",
    "VersionMismatch",
    "ProtocolError",
    "IoError",
]


class Error(Exception):
    """Base class of every hreg error; ``status`` is the C status number."""

    status: int = 0

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(Error, ValueError):
    """HREG_ERR_INVALID (1): a bad argument, e.g. handle 0 or a negative one."""

    status = 1


class StaleHandle(Error):
    """HREG_ERR_STALE (2): the handle names no live object."""

    status = 2


class Denied(Error):
    """HREG_ERR_DENIED (3): another user's unshared object, or not yours to change."""

    status = 3


class TooBig(Error):
    """HREG_ERR_TOO_BIG (4): the value is longer than the daemon's maximum."""

    status = 4


class BufferTooSmall(Error):
    """HREG_ERR_BUFFER (5): the buffer is too small; ``needed`` bytes would do."""

    status = 5

    def __init__(self, message: str = "", needed: int = 0) -> None:
        super().__init__(message)
        self.needed = needed


class QuotaExceeded(Error):
    """HREG_ERR_QUOTA (6): a limit on objects, bytes or sessions would be passed.

    ``limit`` names it as the daemon's config key spells it (``"max_objects"``,
    ``"uid_max_bytes"``, ``"max_sessions"``, ...; PROTOCOL.md section 4), or is
    None when the daemon did not say; the message names it too."""

    status = 6

    def __init__(self, message: str = "", limit: Optional[str] = None) -> None:
        super().__init__(message)
        self.limit = limit


class NotHeld(Error):
    """HREG_ERR_NOT_HELD (7): release without a reference held."""

    status = 7


class ConnectError(Error):
    """HREG_ERR_CONNECT (8): no daemon at the socket path(s) tried."""

    status = 8


class Disconnected(Error):
    """HREG_ERR_DISCONNECTED (9): the daemon went away, or the client is closed.

    Transient when the daemon keeps its state: the client takes its session
    back from the restarted daemon by itself, and calls work again."""

    status = 9


class VersionMismatch(Error):
    """HREG_ERR_VERSION (10): the daemon speaks another protocol version."""

    status = 10


class ProtocolError(Error):
    """HREG_ERR_PROTOCOL (11): the peer broke the protocol."""

    status = 11


class IoError(Error):
    """HREG_ERR_IO (12): an operating-system error."""

    status = 12


#: The exception class of each status number (1 to 12).
BY_STATUS: Dict[int, Type[Error]] = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        StaleHandle,
        Denied,
        TooBig,
        BufferTooSmall,
        QuotaExceeded,
        NotHeld,
        ConnectError,
        Disconnected,
        VersionMismatch,
        ProtocolError,
        IoError,
    )
}


def error_class(status: int) -> Optional[Type[Error]]:
    """The exception class for a status number, None for 0 or an unknown one."""
    return BY_STATUS.get(status)
