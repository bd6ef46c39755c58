"""A bootfs on the network: bring up the one link that ip= names, then attach the NBD export.

Bounded and event-driven throughout: the interface is awaited on the uevent socket the trigger
step opened (loading NIC drivers by MODALIAS as the disk path does), the carrier on rtnetlink's
link notifications (RTM_NEWLINK, subscribed before the link is set up, so none is missed), and
the server with a connect timeout: all against the one deadline of rd.initoverlayfs.timeout.
Only a boot whose bootfs is `nbd:` gets here, and only then is pyroute2 imported (rtnl).
"""

from __future__ import annotations

import errno
import os

from . import TYPE_CHECKING, nbdproto, rtnl
from .errors import BootError, failing
from .uevent import parse_uevent

if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable

    from .kernelapi import KernelApi
    from .log import Log
    from .modules import Loader
    from .netconf import IpConfig, NbdTarget

NIC_HINT = ("the interface (6th field of ip=; without udevd the kernel names them eth0, eth1, "
            "...), and that its driver is in the mini-initramfs (initoverlayfs-install "
            "--network)")
NBD_BLOCK_SIZE = 512  # what every filesystem on the export can be read with
NBD_MODULE = "nbd"


def check_support(config: IpConfig, bootfs: object) -> None:
    """BootError, before any link is touched, when this storage-init has no pyroute2: the
    local-disk freeze leaves it out, and a network bootfs named only on the command line
    reaches such a binary."""
    try:
        rtnl.messages()
    except ImportError as exc:
        if exc.name == "pyroute2":
            raise BootError(f"bring up {config.interface} for the bootfs {bootfs}: this "
                            "storage-init has no pyroute2 (it was frozen for a local bootfs)",
                            "the mini-initramfs: rebuild it with initoverlayfs-install "
                            "--network (implied by an nbd: bootfs in /etc/initoverlayfs.conf)"
                            ) from None
        # a module the --network freeze left out: the freeze's fault, said as it is
        raise BootError(f"load pyroute2's netlink message classes: {type(exc).__name__}: "
                        f"{exc}", "the frozen storage-init (initoverlayfs-freeze --network "
                        "keeps what pyroute2's message modules import)") from None


def _timeout() -> OSError:
    return OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))


def interfaces(kernel: KernelApi, sysfs: str) -> list[str]:
    try:
        return sorted(kernel.listdir(f"{sysfs}/class/net"))
    except OSError:
        return []


def _ifindex(kernel: KernelApi, sysfs: str, name: str) -> int | None:
    try:
        text = kernel.read_file(f"{sysfs}/class/net/{name}/ifindex").decode().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def wait_interface(kernel: KernelApi, log: Log, loader: Loader, uevents: _socket.socket,
                   name: str, sysfs: str, deadline: float,
                   retrigger: Callable[[], None]) -> int:
    """The interface's index, once it exists; NIC drivers are loaded as their devices appear."""
    started = kernel.monotonic()
    while (index := _ifindex(kernel, sysfs, name)) is None:
        remaining = deadline - kernel.monotonic()
        if remaining <= 0:
            seen = ", ".join(interfaces(kernel, sysfs)) or "none"
            drivers = " ".join(loader.loaded) or "none"
            raise BootError(f"find the network interface {name} (interfaces seen: {seen}; "
                            f"drivers loaded: {drivers})", NIC_HINT, _timeout())
        try:
            message = kernel.uevent_recv(uevents, remaining)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            log.warning("uevent buffer overflowed; triggering again")
            retrigger()
            continue
        event = parse_uevent(message or b"")
        if event.get("ACTION") == "add" and "MODALIAS" in event:
            loader.load_modalias(event["MODALIAS"])
    log.info(f"interface {name} is there (index {index}) after "
             f"{kernel.monotonic() - started:.3f} s")
    return index


def bring_up(kernel: KernelApi, log: Log, config: IpConfig, index: int, deadline: float) -> None:
    """Link up, carrier, the address, the default route: what `ip=...:none` asks for."""
    name = config.interface
    nl = rtnl.Conversation(kernel, rtnl.NETLINK_ROUTE, rtnl.RTMGRP_LINK)
    try:
        with failing(f"set {name} up", NIC_HINT):
            nl.request(rtnl.link_up(index, config.mtu, nl.next_seq()), f"set {name} up",
                       deadline)
        started = kernel.monotonic()
        _wait_carrier(kernel, nl, name, index, deadline)
        log.info(f"{name} has carrier after {kernel.monotonic() - started:.3f} s")
        with failing(f"add {config.address}/{config.prefix} to {name}",
                      "the client address and netmask of ip="):
            nl.request(rtnl.add_address(index, config.address, config.prefix, nl.next_seq()),
                       "RTM_NEWADDR", deadline, ok_errors=(errno.EEXIST,))
        if config.gateway:
            with failing(f"add the default route via {config.gateway} on {name}",
                          "the gateway of ip= (3rd field): it must be on the client's subnet"):
                nl.request(rtnl.add_default_route(index, config.gateway, nl.next_seq()),
                           "RTM_NEWROUTE", deadline, ok_errors=(errno.EEXIST,))
    finally:
        nl.close()
    log.info(f"network: {config}")


def _wait_carrier(kernel: KernelApi, nl: rtnl.Conversation, name: str, index: int,
                  deadline: float) -> None:
    # The state now (the socket already listens, so a change after this answer is an event)
    for reply in nl.request(rtnl.get_link(index, nl.next_seq()), f"read {name}", deadline):
        if rtnl.link_state(reply)[1] & rtnl.IFF_LOWER_UP:
            return
    while True:
        event = nl.event(deadline)
        if event is None:
            raise BootError(f"see a carrier on {name} (link up, but no cable, switch port "
                            "or peer answered)",
                            "the network cable or virtual NIC, or rd.initoverlayfs.timeout=",
                            _timeout())
        kind, message = event
        if kind == rtnl.RTM_NEWLINK:
            got, flags, _ = rtnl.link_state(message)
            if got == index and flags & rtnl.IFF_LOWER_UP:
                return


def connect_nbd(kernel: KernelApi, log: Log, loader: Loader, target: NbdTarget,
                deadline: float) -> str:
    """Negotiate the export and hand the connection to the kernel; the device's name."""
    server = f"{target.host}:{target.port}"
    reach = (f"that an NBD server listens on {server} and that the link's address and gateway "
             "(ip=) reach it")
    loader.load([NBD_MODULE])
    with failing(f"connect to the NBD server {server}", reach):
        sock = kernel.tcp_connect(target.host, target.port, deadline - kernel.monotonic())
    try:
        try:
            export = nbdproto.negotiate(lambda n: kernel.sock_recv(sock, n, deadline),
                                        lambda data: kernel.sock_send(sock, data, deadline),
                                        target.export)
        except EOFError as exc:
            raise BootError(f"negotiate {target} with the server", reach,
                            OSError(errno.ECONNRESET, str(exc))) from None
        except nbdproto.NbdError as exc:
            hint = (f"the export name (the names {server} serves; qemu-nbd -x, nbd-server "
                    "[section])" if exc.code == nbdproto.UNKNOWN_EXPORT else reach)
            raise BootError(f"attach {target}: {exc}", hint) from None
        except OSError as exc:
            raise BootError(f"negotiate {target} with the server", reach, exc) from None
        log.info(f"{target}: {export.size} bytes"
                 + (", read-only" if export.read_only else ""))
        return _hand_over(kernel, target, export, sock.fileno(), deadline)
    finally:
        sock.close()  # the kernel holds its own reference from NBD_CMD_CONNECT on


def _hand_over(kernel: KernelApi, target: NbdTarget, export: nbdproto.Export, fd: int,
               deadline: float) -> str:
    hint = "that the kernel has the nbd driver (CONFIG_BLK_DEV_NBD, module nbd)"
    gnl = rtnl.Conversation(kernel, rtnl.NETLINK_GENERIC)
    try:
        with failing("find the nbd generic netlink family", hint):
            replies = gnl.request(rtnl.get_family(rtnl.NBD_FAMILY, gnl.next_seq()),
                                  "CTRL_CMD_GETFAMILY nbd", deadline)
        if not replies:
            raise BootError("find the nbd generic netlink family", hint)
        family = rtnl.family_id(replies[0])
        with failing(f"attach {target} to an nbd device (NBD_CMD_CONNECT)", hint):
            replies = gnl.request(rtnl.nbd_connect(family, fd, export.size, NBD_BLOCK_SIZE,
                                                   export.flags, gnl.next_seq()),
                                  "NBD_CMD_CONNECT", deadline)
    finally:
        gnl.close()
    index = next((i for i in map(rtnl.nbd_index, replies) if i is not None), None)
    if index is None:
        raise BootError(f"attach {target}: the kernel did not say which nbd device it used",
                        hint)
    return f"nbd{index}"
