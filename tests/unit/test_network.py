"""The network bootfs without a network: ip= and nbd: parsing, the settings they make, the NBD
handshake against a scripted server, and the netlink conversation (encoded and decoded by
pyroute2) against a fake kernel that answers as Linux does."""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any

import pytest

from storage_init import nbdproto, network, rtnl
from storage_init.cmdline import parse_cmdline
from storage_init.config import DEFAULT_SUBSYSTEMS, Config, ConfigError, parse_config
from storage_init.devspec import DeviceSpec, SpecError, parse_spec
from storage_init.errors import BootError
from storage_init.netconf import IpConfig, NbdTarget, parse_ip, parse_nbd
from storage_init.settings import resolve

from .fakekernel import FakeKernel

# --- ip= ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("10.0.2.15::10.0.2.2:255.255.255.0:box:eth0:none",
     IpConfig("10.0.2.15", 24, "10.0.2.2", "box", "eth0")),
    ("192.168.1.7:::24::enp1s0:off", IpConfig("192.168.1.7", 24, None, None, "enp1s0")),
    ("10.1.2.3::10.1.0.1:255.255.0.0::eth1:none:9000",
     IpConfig("10.1.2.3", 16, "10.1.0.1", None, "eth1", 9000)),
    ("10.1.2.3::10.1.0.1:255.255.255.255::eth1:none::", IpConfig("10.1.2.3", 32, "10.1.0.1",
                                                                 None, "eth1")),
    ("010.001.002.003:::0::eth0:none", IpConfig("10.1.2.3", 0, None, None, "eth0")),
])
def test_ip_static_forms(value: str, expected: IpConfig) -> None:
    assert parse_ip(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("dhcp", "DHCP and other autoconfiguration are not supported"),
    ("eth0:dhcp", "DHCP and other autoconfiguration are not supported"),
    ("eth0:on:1500", "DHCP and other autoconfiguration are not supported"),
    ("10.0.2.15::10.0.2.2:255.255.255.0:box:eth0:dhcp", "autoconf 'dhcp' is not supported"),
    ("10.0.2.15::10.0.2.2:255.255.255.0:box:eth0:static", "'static' is not one of none, off"),
    ("10.0.2.15:10.0.2.9:10.0.2.2:24::eth0:none", "a peer address (10.0.2.9) is not supported"),
    ("10.0.2.15::10.0.2.2:24:box::none", "name the interface (the 6th field)"),
    ("10.0.2.15::10.0.2.2:24::eth/0:none", "'eth/0' is not an interface name"),
    ("10.0.2.15::10.0.2.2:::eth0:none", "give the netmask (the 4th field)"),
    ("10.0.2::10.0.2.2:24::eth0:none", "client address '10.0.2' is not an IPv4 address"),
    ("10.0.2.15::10.0.2.256:24::eth0:none", "gateway '10.0.2.256' is not an IPv4 address"),
    ("10.0.2.15:::33::eth0:none", "netmask /33 is longer than 32 bits"),
    ("10.0.2.15:::255.0.255.0::eth0:none", "is not contiguous ones then zeros"),
    ("10.0.2.15:::24::eth0:none:12", "MTU '12' is not a number from 68 to 65535"),
    ("10.0.2.15:::24::eth0:none:1500:52:54:00:12:34:56", "setting the MAC address"),
    ("10.0.2.15:eth0", "not the static form ip=<client>::<gateway>:<netmask>"),
])
def test_ip_refusals_name_the_field_and_the_form(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_ip(value)


# --- nbd: ---------------------------------------------------------------------------------


def test_nbd_specs_and_their_defaults() -> None:
    assert parse_nbd("nbd:10.0.2.100:10900/boot") == NbdTarget("10.0.2.100", 10900, "boot")
    assert parse_nbd("nbd:10.0.2.100/a/b") == NbdTarget("10.0.2.100", 10809, "a/b")
    spec = parse_spec("nbd:10.0.2.100/boot")
    assert spec == DeviceSpec("NBD", "10.0.2.100:10809/boot")
    assert str(spec) == "nbd:10.0.2.100:10809/boot"
    assert spec.nbd == NbdTarget("10.0.2.100", 10809, "boot")
    assert parse_spec("LABEL=x").nbd is None
    assert not spec.matches("x", "x", "x", "x")


@pytest.mark.parametrize(("text", "message"), [
    ("nbd:10.0.2.100:10809", "names no export"),
    ("nbd:10.0.2.100:10809/", "names no export"),
    ("nbd:10.0.2.100:0/boot", "port '0' is not a number"),
    ("nbd:10.0.2.100:http/boot", "port 'http' is not a number"),
    ("nbd:server.lan:10809/boot", "server 'server.lan' is not an IPv4 address.*no resolver"),
])
def test_bad_nbd_specs(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


# --- settings -----------------------------------------------------------------------------

IP = "10.0.2.15::10.0.2.2:255.255.255.0::eth0:none"


def settings(config: str, cmdline: str) -> Any:
    return resolve(parse_config(config), parse_cmdline(cmdline), "6.1.0", DEFAULT_SUBSYSTEMS)


def test_a_network_bootfs_takes_ip_from_the_command_line_over_the_config() -> None:
    s = settings(f"bootfs nbd:10.0.2.100/boot\nip {IP.replace('eth0', 'eth9')}\n", f"ip={IP}")
    assert s.network == parse_ip(IP) and s.bootfs.nbd == NbdTarget("10.0.2.100", 10809, "boot")
    assert settings(f"bootfs nbd:10.0.2.100/boot\nip {IP}\n", "").network == parse_ip(IP)
    s = settings("bootfs LABEL=boot\n", f"rd.initoverlayfs.bootfs=nbd:10.0.2.100/b ip={IP}")
    assert s.bootfs.kind == "NBD" and s.network.interface == "eth0"


def test_a_network_bootfs_without_ip_is_refused_with_the_form() -> None:
    with pytest.raises(ConfigError, match=r"is on the network: say which link to bring up "
                                          r"with ip=<client>::<gateway>"):
        settings("bootfs nbd:10.0.2.100/boot\n", "")
    with pytest.raises(ConfigError, match="DHCP and other autoconfiguration"):
        settings("bootfs nbd:10.0.2.100/boot\n", "ip=dhcp")


def test_ip_for_a_local_bootfs_is_ignored_with_a_warning() -> None:
    s = settings("bootfs LABEL=boot\n", f"ip={IP}")
    assert s.network is None
    assert any("is ignored: the bootfs LABEL=boot is local" in w for w in s.warnings)
    s = settings("bootfs LABEL=boot\n", "ip=dhcp")  # the real root's DHCP: not ours to judge
    assert s.network is None and any("ignored" in w for w in s.warnings)


def test_config_ip_line_errors_name_the_line() -> None:
    with pytest.raises(ConfigError, match=r"line 2 \(ip\): ip=dhcp: DHCP"):
        parse_config("bootfs nbd:10.0.2.100/boot\nip dhcp\n")
    assert Config().ip is None


# --- the NBD handshake --------------------------------------------------------------------

GREETING = b"NBDMAGIC" + struct.pack(">QH", nbdproto.IHAVEOPT, 3)


def reply(kind: int, data: bytes = b"", option: int = nbdproto.OPT_GO) -> bytes:
    return struct.pack(">QIII", nbdproto.REPLY_MAGIC, option, kind, len(data)) + data


def info_export(size: int, flags: int) -> bytes:
    return reply(nbdproto.REP_INFO, struct.pack(">HQH", nbdproto.INFO_EXPORT, size, flags))


class Server:
    """The server's bytes, read by `recv` exactly as a socket would give them."""

    def __init__(self, data: bytes) -> None:
        self.data, self.sent = data, b""

    def recv(self, n: int) -> bytes:
        if len(self.data) < n:
            raise EOFError(f"closed after {len(self.data)} of {n} bytes")
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    def send(self, data: bytes) -> None:
        self.sent += data


def test_go_gets_size_and_flags_and_sends_the_export_name() -> None:
    server = Server(GREETING + reply(4, b"xx") + info_export(1 << 30, 3) + reply(nbdproto.REP_ACK))
    export = nbdproto.negotiate(server.recv, server.send, "boot")
    assert export == nbdproto.Export(1 << 30, 3) and export.read_only
    flags, magic, option, length = struct.unpack(">IQII", server.sent[:20])
    assert (flags, magic, option) == (3, nbdproto.IHAVEOPT, nbdproto.OPT_GO)
    assert server.sent[20:] == struct.pack(">I", 4) + b"boot" + b"\0\0" and length == 10


@pytest.mark.parametrize(("kind", "message"), [
    (nbdproto.UNKNOWN_EXPORT, "export 'boot': no such export on the server"),
    (nbdproto.REP_ERROR | 5, "requires TLS"),
    (nbdproto.REP_ERROR | 2, "policy forbids it"),
    (nbdproto.REP_ERROR | 77, "error 77"),
])
def test_go_errors_say_what_the_server_said(kind: int, message: str) -> None:
    server = Server(GREETING + reply(kind, b"detail"))
    with pytest.raises(nbdproto.NbdError, match=message) as caught:
        nbdproto.negotiate(server.recv, server.send, "boot")
    assert caught.value.code == kind


def test_servers_without_go_get_export_name_and_zero_padding() -> None:
    old = b"NBDMAGIC" + struct.pack(">QH", nbdproto.IHAVEOPT, 1)  # no NO_ZEROES
    server = Server(old + reply(nbdproto.UNSUPPORTED) + struct.pack(">QH", 4096, 1)
                    + b"\0" * 124)
    assert nbdproto.negotiate(server.recv, server.send, "b") == nbdproto.Export(4096, 1)
    assert server.sent[-17:] == struct.pack(">QII", nbdproto.IHAVEOPT,
                                            nbdproto.OPT_EXPORT_NAME, 1) + b"b"
    assert server.data == b""
    closing = Server(old + reply(nbdproto.UNSUPPORTED))
    with pytest.raises(nbdproto.NbdError, match="closed the connection"):
        nbdproto.negotiate(closing.recv, closing.send, "b")


@pytest.mark.parametrize(("greeting", "message"), [
    (b"HTTP/1.1 400 Bad Request", "did not greet with NBDMAGIC"),
    (b"NBDMAGIC" + struct.pack(">QH", nbdproto.OLDSTYLE, 0), "oldstyle"),
    (b"NBDMAGIC" + struct.pack(">QH", nbdproto.IHAVEOPT, 0), "fixed-newstyle"),
])
def test_what_is_not_a_newstyle_server(greeting: bytes, message: str) -> None:
    server = Server(greeting)
    with pytest.raises(nbdproto.NbdError, match=message):
        nbdproto.negotiate(server.recv, server.send, "boot")


def test_go_without_an_export_info_is_an_error() -> None:
    server = Server(GREETING + reply(nbdproto.REP_ACK))
    with pytest.raises(nbdproto.NbdError, match="without the export's size"):
        nbdproto.negotiate(server.recv, server.send, "boot")


# --- netlink, played by a fake kernel with pyroute2 ---------------------------------------

NBD_FAMILY_ID = 31


def answer(msg: Any, kind: int, seq: int, flags: int = 0) -> bytes:
    msg["header"]["type"], msg["header"]["sequence_number"] = kind, seq
    msg["header"]["flags"] = flags
    msg.encode()
    return bytes(msg.data)


def ack(seq: int, code: int = 0) -> bytes:
    msg = rtnl.messages().nlmsgerr()
    msg["error"] = -code
    return answer(msg, rtnl.NLMSG_ERROR, seq)


def newlink(index: int, flags: int, seq: int = 0) -> bytes:
    msg = rtnl.messages().ifinfmsg()
    msg["index"], msg["flags"] = index, flags
    msg["attrs"] = [("IFLA_IFNAME", "eth0")]
    return answer(msg, rtnl.RTM_NEWLINK, seq)


class FakeNetKernel(FakeKernel):
    """What storage_init.network asks of the kernel, answered like Linux: acks, link state
    (carrier after `carrier_after` seconds, as a notification), genl families, NBD devices.
    The rest of the kernel's interface is the recording fake's."""

    def __init__(self, carrier_after: float | None = 0.0, addr_error: int = 0,
                 server: Server | None = None, connect_error: int = 0) -> None:
        super().__init__()
        self.now = 0.0
        self.carrier_after, self.addr_error = carrier_after, addr_error
        self.server, self.connect_error = server, connect_error
        self.sent: list[tuple[int, Any]] = []  # (protocol, decoded message)
        self.queues: dict[int, list[tuple[float, bytes]]] = {}
        self.files = {"/sys/class/net/eth0/ifindex": b"2\n"}
        self.closed: list[str] = []

    # the Kernel methods used
    def monotonic(self) -> float:
        return self.now

    def read_file(self, path: str) -> bytes:
        if path not in self.files:
            raise OSError(errno.ENOENT, "No such file or directory", path)
        return self.files[path]

    def listdir(self, path: str) -> list[str]:
        return ["lo", "eth0"] if path == "/sys/class/net" else []

    def netlink_open(self, protocol: int, groups: int = 0) -> Any:
        self.queues[protocol] = []
        kernel = self

        class Sock:
            def close(self) -> None:
                kernel.closed.append(f"netlink {protocol}")
        sock = Sock()
        sock.protocol = protocol  # type: ignore[attr-defined]
        return sock

    def netlink_send(self, sock: Any, data: bytes) -> None:
        protocol = sock.protocol
        kind, seq, _ = next(rtnl.split(data))
        m = rtnl.messages()
        queue = self.queues[protocol]
        if protocol == rtnl.NETLINK_ROUTE:
            decoded = {rtnl.RTM_NEWLINK: m.ifinfmsg, rtnl.RTM_GETLINK: m.ifinfmsg,
                       rtnl.RTM_NEWADDR: m.ifaddrmsg, rtnl.RTM_NEWROUTE: m.rtmsg}[kind](data)
            decoded.decode()
            self.sent.append((protocol, decoded))
            if kind == rtnl.RTM_NEWLINK:
                queue.append((self.now, newlink(2, rtnl.IFF_UP, seq)))  # the notification
                queue.append((self.now, ack(seq)))
                if self.carrier_after is not None:
                    queue.append((self.now + self.carrier_after,
                                  newlink(2, rtnl.IFF_UP | rtnl.IFF_LOWER_UP)))
            elif kind == rtnl.RTM_GETLINK:
                up = self.carrier_after == 0.0
                queue.append((self.now, newlink(2, rtnl.IFF_UP | (rtnl.IFF_LOWER_UP * up), seq)))
            elif kind == rtnl.RTM_NEWADDR:
                queue.append((self.now, ack(seq, self.addr_error)))
            else:
                queue.append((self.now, ack(seq)))
            return
        decoded = (m.ctrlmsg if kind == rtnl.GENL_ID_CTRL else m.nbdmsg)(data)
        decoded.decode()
        self.sent.append((protocol, decoded))
        if kind == rtnl.GENL_ID_CTRL:
            family = m.ctrlmsg()
            family["cmd"] = 1
            family["attrs"] = [("CTRL_ATTR_FAMILY_ID", NBD_FAMILY_ID),
                               ("CTRL_ATTR_FAMILY_NAME", "nbd")]
            queue.append((self.now, answer(family, rtnl.GENL_ID_CTRL, seq)))
            queue.append((self.now, ack(seq)))
        elif self.connect_error:
            queue.append((self.now, ack(seq, self.connect_error)))
        else:
            done = m.nbdmsg()
            done["cmd"], done["attrs"] = rtnl.NBD_CMD_CONNECT, [("NBD_ATTR_INDEX", 3)]
            queue.append((self.now, answer(done, NBD_FAMILY_ID, seq)))
            queue.append((self.now, ack(seq)))

    def netlink_recv(self, sock: Any, timeout: float) -> bytes | None:
        queue = self.queues[sock.protocol]
        if queue and queue[0][0] <= self.now + timeout:
            at, data = queue.pop(0)
            self.now = max(self.now, at)
            return data
        self.now += max(timeout, 0.0)
        return None

    def tcp_connect(self, host: str, port: int, timeout: float) -> Any:
        if self.server is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused",
                                         f"{host}:{port}")
        kernel = self

        class Sock:
            def fileno(self) -> int:
                return 7

            def close(self) -> None:
                kernel.closed.append("tcp")
        return Sock()

    def sock_recv(self, sock: object, n: int, deadline: float) -> bytes:
        assert self.server is not None
        return self.server.recv(n)

    def sock_send(self, sock: object, data: bytes, deadline: float) -> None:
        assert self.server is not None
        self.server.send(data)


class Quiet:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    warning = debug = info


class NoModules:
    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.asked: list[str] = []

    def load(self, names: list[str]) -> list[str]:
        self.asked += names
        return []

    def load_modalias(self, alias: str) -> list[str]:
        self.asked.append(alias)
        return []


def bring_up(kernel: FakeNetKernel, value: str = IP, deadline: float = 5.0) -> Quiet:
    log = Quiet()
    network.bring_up(kernel, log, parse_ip(value), 2, deadline)  # type: ignore[arg-type]  # Log and Loader stand-ins
    return log


def test_bring_up_sends_link_address_and_route_in_order() -> None:
    kernel = FakeNetKernel()
    log = bring_up(kernel, IP.replace(":none", ":none:1400"))
    kinds = [type(m).__name__ for _, m in kernel.sent]
    assert kinds == ["ifinfmsg", "ifinfmsg", "ifaddrmsg", "rtmsg"]
    link, _, addr, route = (m for _, m in kernel.sent)
    assert (link["index"], link["flags"], link["change"]) == (2, rtnl.IFF_UP, rtnl.IFF_UP)
    assert link.get_attr("IFLA_MTU") == 1400
    assert link["header"]["flags"] & rtnl.NLM_F_ACK
    assert (addr["index"], addr["prefixlen"], addr["family"]) == (2, 24, rtnl.AF_INET)
    assert addr.get_attr("IFA_LOCAL") == addr.get_attr("IFA_ADDRESS") == "10.0.2.15"
    assert route.get_attr("RTA_GATEWAY") == "10.0.2.2" and route.get_attr("RTA_OIF") == 2
    assert (route["dst_len"], route["table"]) == (0, rtnl.RT_TABLE_MAIN)
    assert log.lines[-1] == "network: 10.0.2.15/24 on eth0 via 10.0.2.2"
    assert kernel.closed == ["netlink 0"]


def test_no_gateway_no_route_and_an_existing_address_is_fine() -> None:
    kernel = FakeNetKernel(addr_error=errno.EEXIST)
    bring_up(kernel, "10.0.2.15:::24::eth0:none")
    assert [type(m).__name__ for _, m in kernel.sent] == ["ifinfmsg", "ifinfmsg", "ifaddrmsg"]


def test_carrier_comes_as_a_notification_and_is_waited_for() -> None:
    kernel = FakeNetKernel(carrier_after=1.25)
    log = bring_up(kernel)
    assert "eth0 has carrier after 1.250 s" in log.lines
    assert kernel.now == 1.25  # woken by the event, not by a poll interval


def test_no_carrier_is_a_bounded_failure_naming_the_link() -> None:
    kernel = FakeNetKernel(carrier_after=None)
    with pytest.raises(BootError, match="see a carrier on eth0") as caught:
        bring_up(kernel, deadline=3.0)
    assert "rd.initoverlayfs.timeout=" in str(caught.value) and kernel.now == 3.0
    assert kernel.closed == ["netlink 0"]


def test_a_refused_address_names_what_was_refused() -> None:
    kernel = FakeNetKernel(addr_error=errno.EINVAL)
    with pytest.raises(BootError, match=r"add 10.0.2.15/24 to eth0: Invalid argument"):
        bring_up(kernel)


def uevents_then(kernel: FakeNetKernel, events: list[tuple[float, bytes, Callable[[], None]]]
                 ) -> None:
    def recv(sock: object, timeout: float) -> bytes | None:
        if events and events[0][0] <= kernel.now + timeout:
            at, data, then = events.pop(0)
            kernel.now = max(kernel.now, at)
            then()
            return data
        kernel.now += timeout
        return None
    kernel.uevent_recv = recv  # type: ignore[method-assign]


def test_the_interface_is_awaited_loading_nic_drivers_by_modalias() -> None:
    kernel = FakeNetKernel()
    del kernel.files["/sys/class/net/eth0/ifindex"]
    loader = NoModules()
    appear = lambda: kernel.files.__setitem__("/sys/class/net/eth0/ifindex", b"2\n")  # noqa: E731
    uevents_then(kernel, [
        (0.5, b"add@/devices/pci/virtio1\0ACTION=add\0MODALIAS=virtio:d00000001v00001AF4",
         lambda: None),
        (0.75, b"add@/devices/pci/virtio1/net/eth0\0ACTION=add\0SUBSYSTEM=net\0INTERFACE=eth0",
         appear)])
    index = network.wait_interface(kernel, Quiet(), loader, None, "eth0", "/sys", 5.0,  # type: ignore[arg-type]  # Log and Loader stand-ins
                                   lambda: None)
    assert index == 2 and loader.asked == ["virtio:d00000001v00001AF4"] and kernel.now == 0.75


def test_a_missing_interface_lists_what_is_there() -> None:
    kernel = FakeNetKernel()
    uevents_then(kernel, [])
    with pytest.raises(BootError, match=r"find the network interface eth9 \(interfaces seen: "
                                        r"eth0, lo; drivers loaded: none\)"):
        network.wait_interface(kernel, Quiet(), NoModules(), None, "eth9", "/sys", 2.0,  # type: ignore[arg-type]  # Log and Loader stand-ins
                               lambda: None)


SERVED = GREETING + info_export(64 << 20, 1 | nbdproto.TRANSMIT_READ_ONLY) + reply(
    nbdproto.REP_ACK)
TARGET = NbdTarget("10.0.2.100", 10809, "boot")


def test_nbd_is_negotiated_then_handed_to_the_kernel_by_generic_netlink() -> None:
    kernel, loader = FakeNetKernel(server=Server(SERVED)), NoModules()
    name = network.connect_nbd(kernel, Quiet(), loader, TARGET, 5.0)  # type: ignore[arg-type]  # Log and Loader stand-ins
    assert name == "nbd3" and loader.asked == ["nbd"]
    (_, family), (_, connect) = kernel.sent
    assert family.get_attr("CTRL_ATTR_FAMILY_NAME") == "nbd"
    assert connect["header"]["type"] == NBD_FAMILY_ID and connect["cmd"] == rtnl.NBD_CMD_CONNECT
    assert connect.get_attr("NBD_ATTR_SIZE_BYTES") == 64 << 20
    assert connect.get_attr("NBD_ATTR_BLOCK_SIZE_BYTES") == 512
    assert connect.get_attr("NBD_ATTR_SERVER_FLAGS") == 3
    item = connect.get_attr("NBD_ATTR_SOCKETS").get_attr("NBD_SOCK_ITEM")
    assert item.get_attr("NBD_SOCK_FD") == 7
    assert kernel.closed == ["netlink 16", "tcp"]


def test_nbd_server_down_names_the_address_and_errno() -> None:
    with pytest.raises(BootError, match=r"connect to the NBD server 10.0.2.100:10809: "
                                        r"Connection refused.*check that an NBD server listens"):
        network.connect_nbd(FakeNetKernel(), Quiet(), NoModules(), TARGET, 5.0)  # type: ignore[arg-type]  # Log and Loader stand-ins


def test_nbd_unknown_export_points_at_the_export_name() -> None:
    kernel = FakeNetKernel(server=Server(GREETING + reply(nbdproto.UNKNOWN_EXPORT)))
    with pytest.raises(BootError, match=r"attach nbd:10.0.2.100:10809/boot: export 'boot': no "
                                        r"such export on the server; check the export name"):
        network.connect_nbd(kernel, Quiet(), NoModules(), TARGET, 5.0)  # type: ignore[arg-type]  # Log and Loader stand-ins
    assert kernel.closed == ["tcp"]


def test_nbd_refused_by_the_kernel_names_the_driver() -> None:
    kernel = FakeNetKernel(server=Server(SERVED), connect_error=errno.EINVAL)
    with pytest.raises(BootError, match=r"NBD_CMD_CONNECT\): Invalid argument; check that the "
                                        r"kernel has the nbd driver"):
        network.connect_nbd(kernel, Quiet(), NoModules(), TARGET, 5.0)  # type: ignore[arg-type]  # Log and Loader stand-ins


def test_a_storage_init_frozen_without_pyroute2_says_to_rebuild_for_the_network(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ModuleNotFoundError("pyroute2 is not in this storage-init", name="pyroute2")

    monkeypatch.setattr(rtnl, "_cache", [])
    monkeypatch.setattr(rtnl, "_messages", missing)
    with pytest.raises(BootError, match=r"^Failed to bring up eth0 for the bootfs "
                                        r"nbd:10.0.2.100:10809/boot: this storage-init has no "
                                        r"pyroute2 .*; check the mini-initramfs: rebuild it with "
                                        r"initoverlayfs-install --network"):
        network.check_support(parse_ip(IP), TARGET)


def test_a_package_the_freeze_excluded_is_no_pyroute2(monkeypatch: pytest.MonkeyPatch) -> None:
    # what Nuitka's loader does for a nofollow'ed package: find_spec raises, not returns None
    import importlib.util
    import sys

    def excluded(name: str, package: str | None = None) -> Any:
        raise ImportError(f"Module {name!r} was actively excluded from Nuitka compilation.")

    monkeypatch.setattr(rtnl, "_cache", [])
    monkeypatch.delitem(sys.modules, "pyroute2", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", excluded)
    with pytest.raises(BootError, match="this storage-init has no pyroute2"):
        network.check_support(parse_ip(IP), TARGET)


def test_a_module_the_network_freeze_left_out_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ModuleNotFoundError("No module named 'pkgutil'", name="pkgutil")

    monkeypatch.setattr(rtnl, "_cache", [])
    monkeypatch.setattr(rtnl, "_messages", missing)
    with pytest.raises(BootError, match=r"^Failed to load pyroute2's netlink message classes: "
                                        r"ModuleNotFoundError: No module named 'pkgutil'; "
                                        r"check the frozen storage-init"):
        network.check_support(parse_ip(IP), TARGET)


def test_with_pyroute2_the_check_passes_and_keeps_the_classes() -> None:
    network.check_support(parse_ip(IP), TARGET)
    assert rtnl.messages().ifinfmsg.__module__ == "pyroute2.netlink.rtnl.ifinfmsg"
