"""Netlink conversations for a bootfs on the network: rtnetlink (link, address, route) and the
nbd driver's generic netlink family, with pyroute2's message classes.

pyroute2 encodes and decodes the messages; the sockets are the syscall boundary's
(KernelApi.netlink_*), so the unit tier can play the kernel's side with pyroute2 too. Only the
message modules are imported, never pyroute2's package `__init__`: that imports ~300 modules
(asyncio, ssl, sqlite3, multiprocessing) and cost 178 ms natively, against 28 ms for the
message classes (`python -X importtime`, pyroute2 0.9.7). Nothing here is imported on a boot
from a local disk (tests/unit/test_start_cost.py pins that).
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import types

from . import TYPE_CHECKING, standins

if TYPE_CHECKING:
    import _socket
    from collections.abc import Iterator

    from .kernelapi import KernelApi

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if.h>
NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 1, 4, 0x200, 0x400
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 18, 20, 24
RTMGRP_LINK = 1
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
AF_INET = 2
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 16, 3
# <linux/nbd-netlink.h>
NBD_FAMILY, NBD_VERSION, NBD_CMD_CONNECT = "nbd", 1, 1


class _Logger:
    """pyroute2's loggers (the `logging` stand-in's): its debug and info lines dropped, its
    warnings and errors on stderr, which is the console when storage-init is PID 1."""

    def __init__(self, name: str = "pyroute2") -> None:
        self.name = name

    def _say(self, message: object, *args: object, **kwargs: object) -> None:
        text = str(message) % args if args else str(message)
        print(f"storage-init: {self.name}: {text}", file=sys.stderr)

    def _drop(self, message: object, *args: object, **kwargs: object) -> None:
        return None

    warning = error = exception = critical = _say
    debug = info = _drop

    def setLevel(self, level: int) -> None:  # logging.Logger's names
        return None

    def addHandler(self, handler: object) -> None:
        return None

    def isEnabledFor(self, level: int) -> bool:
        return level >= 30  # WARNING


def _no_process(*args: object, **kwargs: object) -> object:
    raise OSError(errno.ENOSYS, "storage-init starts no processes through pyroute2")


def _stand_ins() -> dict[str, types.ModuleType]:
    """What pyroute2's message modules import and storage-init never uses through them: they
    were a third of their import (natively, 32 -> 21 ms by -X importtime; bring-up-network
    1.6 -> 0.5 s under QEMU TCG, with the freeze leaving them out too). pyroute2.config reads
    multiprocessing's Pipe, Queue and Process and the machine's uname through platform at
    import; logging (with traceback, threading, string) only logs; traceback is lazy, for
    the error paths that format a stack."""
    uname = os.uname()
    root = _Logger()
    return {
        "multiprocessing": standins.module("multiprocessing", Pipe=_no_process,
                                           Queue=_no_process, Process=_no_process),
        "platform": standins.module(
            "platform",
            uname=lambda: types.SimpleNamespace(system=uname.sysname, node=uname.nodename,
                                                release=uname.release, version=uname.version,
                                                machine=uname.machine),
            machine=lambda: uname.machine,
            architecture=lambda executable="": (f"{struct.calcsize('P') * 8}bit", "ELF")),
        "logging": standins.module("logging", getLogger=lambda name="pyroute2": _Logger(name),
                                   NullHandler=lambda: None, warning=root.warning,
                                   error=root.error, debug=root.debug, info=root.info),
        "traceback": standins.lazy("traceback"),
    }


def _messages() -> types.SimpleNamespace:
    """pyroute2's message classes, imported without running its package `__init__`."""
    return standins.import_with(_stand_ins(), _import_messages)


def _import_messages() -> types.SimpleNamespace:
    if "pyroute2" not in sys.modules:
        try:
            # the local freeze leaves out both importlib.util and pyroute2: to its Nuitka
            # either import is "actively excluded" (a nofollow), an ImportError
            import importlib.util
            spec = importlib.util.find_spec("pyroute2")
        except ImportError:
            spec = None
        if spec is None:
            raise ModuleNotFoundError("pyroute2 is not in this storage-init (built without "
                                      "--network)", name="pyroute2")
        # the package without running its __init__ (in the --network freeze that is an
        # empty module already; elsewhere it imports pyroute2's whole API)
        sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    from pyroute2.netlink import ctrlmsg, genlmsg, nla, nlmsgerr
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    class nbdmsg(genlmsg):  # pyroute2 names its classes after the C structs
        prefix = "NBD_ATTR_"
        nla_map = (("NBD_ATTR_UNSPEC", "none"), ("NBD_ATTR_INDEX", "uint32"),
                   ("NBD_ATTR_SIZE_BYTES", "uint64"), ("NBD_ATTR_BLOCK_SIZE_BYTES", "uint64"),
                   ("NBD_ATTR_TIMEOUT", "uint64"), ("NBD_ATTR_SERVER_FLAGS", "uint64"),
                   ("NBD_ATTR_CLIENT_FLAGS", "uint64"), ("NBD_ATTR_SOCKETS", "sockets"))

        class sockets(nla):
            nla_map = (("NBD_SOCK_ITEM_UNSPEC", "none"), ("NBD_SOCK_ITEM", "item"))

            class item(nla):
                nla_map = (("NBD_SOCK_UNSPEC", "none"), ("NBD_SOCK_FD", "uint32"))

    return types.SimpleNamespace(ifinfmsg=ifinfmsg, ifaddrmsg=ifaddrmsg, rtmsg=rtmsg,
                                 ctrlmsg=ctrlmsg, nlmsgerr=nlmsgerr, nbdmsg=nbdmsg)


_cache: list[types.SimpleNamespace] = []


def messages() -> types.SimpleNamespace:
    if not _cache:
        _cache.append(_messages())
    return _cache[0]


def split(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, message) of each netlink message in one datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return
        yield kind, seq, data[offset:offset + length]
        offset += (length + 3) & ~3


def _encode(msg: object, kind: int, flags: int, seq: int) -> bytes:
    msg["header"]["type"] = kind  # type: ignore[index]
    msg["header"]["flags"] = flags  # type: ignore[index]
    msg["header"]["sequence_number"] = seq  # type: ignore[index]
    msg.encode()  # type: ignore[attr-defined]
    return bytes(msg.data)  # type: ignore[attr-defined]


# --- the messages storage-init sends ------------------------------------------------------

def link_up(index: int, mtu: int | None, seq: int) -> bytes:
    msg = messages().ifinfmsg()
    msg["index"], msg["flags"], msg["change"] = index, IFF_UP, IFF_UP
    if mtu:
        msg["attrs"] = [("IFLA_MTU", mtu)]
    return _encode(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq)


def get_link(index: int, seq: int) -> bytes:
    msg = messages().ifinfmsg()
    msg["index"] = index
    return _encode(msg, RTM_GETLINK, NLM_F_REQUEST, seq)


def add_address(index: int, address: str, prefix: int, seq: int) -> bytes:
    msg = messages().ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"] = AF_INET, prefix, index
    msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    return _encode(msg, RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq)


def add_default_route(index: int, gateway: str, seq: int) -> bytes:
    msg = messages().rtmsg()
    msg["family"], msg["dst_len"], msg["table"] = AF_INET, 0, RT_TABLE_MAIN
    msg["proto"], msg["scope"], msg["type"] = RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST
    msg["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", index)]
    return _encode(msg, RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq)


def get_family(name: str, seq: int) -> bytes:
    msg = messages().ctrlmsg()
    msg["cmd"], msg["version"] = CTRL_CMD_GETFAMILY, 1
    msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", name)]
    return _encode(msg, GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq)


def nbd_connect(family: int, fd: int, size: int, block_size: int, server_flags: int,
                seq: int) -> bytes:
    msg = messages().nbdmsg()
    msg["cmd"], msg["version"] = NBD_CMD_CONNECT, NBD_VERSION
    msg["attrs"] = [
        ("NBD_ATTR_SIZE_BYTES", size), ("NBD_ATTR_BLOCK_SIZE_BYTES", block_size),
        ("NBD_ATTR_SERVER_FLAGS", server_flags),
        ("NBD_ATTR_SOCKETS", {"attrs": [("NBD_SOCK_ITEM", {"attrs": [("NBD_SOCK_FD", fd)]})]}),
    ]
    return _encode(msg, family, NLM_F_REQUEST | NLM_F_ACK, seq)


# --- what the kernel answers ----------------------------------------------------------------

def error_of(message: bytes) -> int:
    """The errno of an NLMSG_ERROR (0: an acknowledgement)."""
    msg = messages().nlmsgerr(message)
    msg.decode()
    return -int(msg["error"])


def link_state(message: bytes) -> tuple[int, int, str | None]:
    """(index, flags, name) of an RTM_NEWLINK."""
    msg = messages().ifinfmsg(message)
    msg.decode()
    return int(msg["index"]), int(msg["flags"]), msg.get_attr("IFLA_IFNAME")


def family_id(message: bytes) -> int:
    msg = messages().ctrlmsg(message)
    msg.decode()
    return int(msg.get_attr("CTRL_ATTR_FAMILY_ID"))


def nbd_index(message: bytes) -> int | None:
    msg = messages().nbdmsg(message)
    msg.decode()
    index = msg.get_attr("NBD_ATTR_INDEX")
    return None if index is None else int(index)


class Conversation:
    """One netlink socket: requests answered by sequence number; anything else the kernel
    sends meanwhile (multicast notifications) is kept for `events`, in order."""

    def __init__(self, kernel: KernelApi, protocol: int, groups: int = 0) -> None:
        self.kernel = kernel
        self.sock: _socket.socket = kernel.netlink_open(protocol, groups)
        self.seq = 0
        self.pending: list[tuple[int, bytes]] = []

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def close(self) -> None:
        self.sock.close()

    def request(self, data: bytes, what: str, deadline: float,
                ok_errors: tuple[int, ...] = ()) -> list[bytes]:
        """Send one request; the replies to it until its ack (or its single answer when no
        ack was asked for). OSError(errno, what) when the kernel refuses it."""
        seq = struct.unpack_from("=I", data, 8)[0]
        wants_ack = bool(struct.unpack_from("=H", data, 6)[0] & NLM_F_ACK)
        self.kernel.netlink_send(self.sock, data)
        replies: list[bytes] = []
        while True:
            datagram = self.kernel.netlink_recv(self.sock, deadline - self.kernel.monotonic())
            if datagram is None:
                raise OSError(errno.ETIMEDOUT, f"no answer from the kernel to {what}", what)
            for kind, got, message in split(datagram):
                if got != seq:
                    self.pending.append((kind, message))
                    continue
                if kind == NLMSG_ERROR:
                    code = error_of(message)
                    if code and code not in ok_errors:
                        raise OSError(code, os.strerror(code), what)
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append(message)
                if not wants_ack:
                    return replies

    def event(self, deadline: float) -> tuple[int, bytes] | None:
        """The next notification (type, message), or None at the deadline."""
        while not self.pending:
            datagram = self.kernel.netlink_recv(self.sock, deadline - self.kernel.monotonic())
            if datagram is None:
                return None
            self.pending.extend((kind, message) for kind, _, message in split(datagram))
        return self.pending.pop(0)
