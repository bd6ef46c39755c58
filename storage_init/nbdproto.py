"""The NBD handshake (the fixed-newstyle negotiation of the NBD protocol), done in userspace.

The kernel's nbd driver only speaks the transmission phase: a client negotiates the export on
a connected TCP socket and then hands the socket, the size and the flags to the kernel
(storage_init/rtnl.py, NBD_CMD_CONNECT). This module is that negotiation and nothing else:
`negotiate` takes the socket's send and receive as callables, so the unit tier can play a
server byte for byte. It asks with NBD_OPT_GO, whose error replies tell "no such export" from
"not allowed", and falls back to NBD_OPT_EXPORT_NAME for servers that predate it.
"""

from __future__ import annotations

import struct

from . import TYPE_CHECKING
from .record import record

if TYPE_CHECKING:
    from collections.abc import Callable

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OLDSTYLE = 0x00420281861253
REPLY_MAGIC = 0x0003E889045565A9
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
REP_ERROR = 1 << 31
TRANSMIT_READ_ONLY = 1 << 1
MAX_REPLY = 1 << 20  # an option reply longer than this is not a server we can talk to
REP_ERRORS = {
    REP_ERROR | 1: "the server does not support it",
    REP_ERROR | 2: "the server's policy forbids it",
    REP_ERROR | 3: "the server calls the request invalid",
    REP_ERROR | 4: "the server cannot do it on its platform",
    REP_ERROR | 5: "the server requires TLS (not supported by storage-init)",
    REP_ERROR | 6: "no such export on the server",
    REP_ERROR | 7: "the server is shutting down",
    REP_ERROR | 8: "the server requires block size negotiation",
    REP_ERROR | 9: "the request is too big for the server",
}
UNKNOWN_EXPORT = REP_ERROR | 6
UNSUPPORTED = REP_ERROR | 1


class NbdError(Exception):
    """The server said no, or said something that is not NBD; the message says which."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@record(frozen=True)
class Export:
    size: int  # bytes
    flags: int  # transmission flags, handed to the kernel as they are

    @property
    def read_only(self) -> bool:
        return bool(self.flags & TRANSMIT_READ_ONLY)


if TYPE_CHECKING:
    Recv = Callable[[int], bytes]  # exactly n bytes, or OSError / NbdError
    Send = Callable[[bytes], None]


def _option(option: int, data: bytes) -> bytes:
    return struct.pack(">QII", IHAVEOPT, option, len(data)) + data


def negotiate(recv: Recv, send: Send, export: str) -> Export:
    """The handshake up to the transmission phase; the socket is then the kernel's to use."""
    magic, second, handshake = struct.unpack(">8sQH", recv(18))
    if magic != NBDMAGIC:
        raise NbdError(f"the server did not greet with NBDMAGIC (got {magic!r}): not NBD")
    if second == OLDSTYLE:
        raise NbdError("the server speaks the oldstyle protocol, which has no export names; "
                       "run it in newstyle mode (qemu-nbd and nbd-server do by default)")
    if second != IHAVEOPT or not handshake & FLAG_FIXED_NEWSTYLE:
        raise NbdError("the server does not offer the fixed-newstyle negotiation")
    no_zeroes = bool(handshake & FLAG_NO_ZEROES)
    send(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (FLAG_NO_ZEROES if no_zeroes else 0)))
    name = export.encode()
    # NBD_OPT_GO with no information requests: the server still sends NBD_INFO_EXPORT
    send(_option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0)))
    found: Export | None = None
    while True:
        head = recv(20)
        magic_, option, kind, length = struct.unpack(">QIII", head)
        if magic_ != REPLY_MAGIC or option != OPT_GO:
            raise NbdError("the server's option reply is not NBD (bad magic or option)")
        if length > MAX_REPLY:
            raise NbdError(f"the server's option reply is {length} bytes long")
        data = recv(length) if length else b""
        if kind == REP_INFO and len(data) >= 12 and struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
            size, flags = struct.unpack(">QH", data[2:12])
            found = Export(size, flags)
        elif kind == REP_ACK:
            if found is None:
                raise NbdError("the server ended NBD_OPT_GO without the export's size")
            return found
        elif kind == UNSUPPORTED:
            return _export_name(recv, send, name, no_zeroes)
        elif kind & REP_ERROR:
            text = data.decode(errors="replace").strip()
            why = REP_ERRORS.get(kind, f"error {kind & ~REP_ERROR}")
            raise NbdError(f"export {export!r}: {why}" + (f" ({text})" if text else ""), kind)
        # other informational replies (block sizes, names) are not needed


def _export_name(recv: Recv, send: Send, name: bytes, no_zeroes: bool) -> Export:
    """Servers without NBD_OPT_GO: they close the connection for an unknown export."""
    send(_option(OPT_EXPORT_NAME, name))
    try:
        size, flags = struct.unpack(">QH", recv(10))
    except EOFError:
        raise NbdError(f"export {name.decode(errors='replace')!r}: the server closed the "
                       "connection (no such export?)", UNKNOWN_EXPORT) from None
    if not no_zeroes:
        recv(124)
    return Export(size, flags)
