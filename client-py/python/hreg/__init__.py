"""hreg: the Python client of hregd, the cross-process handle registry.

A :class:`Client` attaches to the daemon over its Unix socket and then talks
to it through shared-memory rings (one per thread). Objects are byte values
named by integer handles; every operation exists alone (``insert``, ``get``,
...) and in batches (``submit`` with :class:`Insert`, :class:`Get`, ...).
Errors are exceptions, one subclass of :class:`Error` per C status.

    >>> import hreg
    >>> with hreg.connect() as c:               # $HREG_SOCKET or the default
    ...     h = c.insert(b"hello", shared=True)
    ...     c.get(h)
    b'hello'
"""

from . import _errors
from ._errors import (
    BufferTooSmall,
    ConnectError,
    Denied,
    Disconnected,
    Error,
    InvalidArgument,
    IoError,
    NotHeld,
    ProtocolError,
    QuotaExceeded,
    StaleHandle,
    TooBig,
    VersionMismatch,
)
from ._hreg import (
    Client,
    Get,
    Insert,
    Release,
    Remove,
    Replace,
    Retain,
    __version__,
    connect,
    default_socket_paths,
)

__all__ = [
    "connect",
    "default_socket_paths",
    "Client",
    "Insert",
    "Get",
    "Replace",
    "Retain",
    "Release",
    "Remove",
    "__version__",
    *_errors.__all__,
]
