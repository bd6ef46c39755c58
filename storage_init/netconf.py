"""The network half of the configuration, parsed without touching the system.

`ip=` follows dracut's (and the kernel's nfsroot) static form
`<client>:[<peer>]:<gateway>:<netmask>:<hostname>:<interface>:{none|off}[:<mtu>]`, IPv4 only.
storage-init brings up exactly that one link; there is no DHCP client in the mini-initramfs,
so every autoconfiguration form (`dhcp`, `on`, `any`, `dhcp6`, `auto6`, `ibft`, a bare
`ip=dhcp`) is refused with the form that works. A bootfs on the network is an NBD export:
`nbd:<host>[:<port>]/<export>`, the host an IPv4 address (no resolver at this stage).
"""

from __future__ import annotations

from .record import record

NBD_PORT = 10809  # IANA's port for NBD, and qemu-nbd's and nbd-server's default
STATIC = ("none", "off")
AUTOCONF = ("dhcp", "on", "any", "dhcp6", "auto6", "either6", "ibft", "link6", "link-local")
_IFACE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-:@")
STATIC_FORM = "ip=<client>::<gateway>:<netmask>:<hostname>:<interface>:none"


@record(frozen=True)
class IpConfig:
    address: str
    prefix: int
    gateway: str | None
    hostname: str | None
    interface: str
    mtu: int | None = None

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        return f"{self.address}/{self.prefix} on {self.interface}{via}"


@record(frozen=True)
class NbdTarget:
    host: str
    port: int
    export: str

    def __str__(self) -> str:
        return f"nbd:{self.host}:{self.port}/{self.export}"


def parse_ipv4(text: str, what: str) -> str:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 and int(p) < 256
                                  for p in parts):
        raise ValueError(f"{what} {text!r} is not an IPv4 address (a.b.c.d)")
    return ".".join(str(int(p)) for p in parts)


def _prefix(netmask: str) -> int:
    if netmask.isascii() and netmask.isdigit():
        if int(netmask) > 32:
            raise ValueError(f"netmask /{netmask} is longer than 32 bits")
        return int(netmask)
    value = 0
    for part in parse_ipv4(netmask, "netmask").split("."):
        value = value << 8 | int(part)
    bits = bin(value)[2:].zfill(32)
    if "01" in bits:
        raise ValueError(f"netmask {netmask!r} is not contiguous ones then zeros")
    return bits.count("1")


def parse_ip(value: str) -> IpConfig:
    """One `ip=` value; ValueError names the field that is wrong and the form that works."""
    fields = value.split(":")
    if len(fields) < 7:
        if value in AUTOCONF or (len(fields) in (2, 3) and fields[1] in AUTOCONF):
            raise ValueError(f"ip={value}: DHCP and other autoconfiguration are not supported "
                             f"(no DHCP client in the mini-initramfs); use {STATIC_FORM}")
        raise ValueError(f"ip={value}: not the static form {STATIC_FORM}")
    client, peer, gateway, netmask, hostname, interface, autoconf, *rest = fields
    if autoconf in AUTOCONF:
        raise ValueError(f"ip={value}: autoconf {autoconf!r} is not supported (no DHCP client "
                         f"in the mini-initramfs); use {STATIC_FORM}")
    if autoconf not in STATIC:
        raise ValueError(f"ip={value}: autoconf {autoconf!r} is not one of {', '.join(STATIC)}")
    if peer:
        raise ValueError(f"ip={value}: a peer address ({peer}) is not supported; leave it empty")
    if not interface:
        raise ValueError(f"ip={value}: name the interface (the 6th field), e.g. eth0; "
                         "storage-init brings up exactly that one link")
    if not all(c in _IFACE_CHARS for c in interface) or len(interface) > 15:
        raise ValueError(f"ip={value}: {interface!r} is not an interface name")
    if not netmask:
        raise ValueError(f"ip={value}: give the netmask (the 4th field), e.g. 255.255.255.0")
    mtu = None
    if rest and rest[0]:
        if not (rest[0].isascii() and rest[0].isdigit()) or not 68 <= int(rest[0]) <= 65535:
            raise ValueError(f"ip={value}: MTU {rest[0]!r} is not a number from 68 to 65535")
        mtu = int(rest[0])
    if len(rest) > 1 and any(rest[1:]):
        raise ValueError(f"ip={value}: setting the MAC address is not supported; drop the "
                         "fields after the MTU")
    return IpConfig(
        address=parse_ipv4(client, "client address"),
        prefix=_prefix(netmask),
        gateway=parse_ipv4(gateway, "gateway") if gateway else None,
        hostname=hostname or None,
        interface=interface,
        mtu=mtu,
    )


def parse_nbd(text: str) -> NbdTarget:
    """`nbd:<host>[:<port>]/<export>` (the text after `nbd:` too); ValueError says why not."""
    rest = text.removeprefix("nbd:")
    where, slash, export = rest.partition("/")
    host, colon, port = where.partition(":")
    form = "nbd:<host>[:<port>]/<export>, e.g. nbd:192.168.1.10:10809/boot"
    if not slash or not export:
        raise ValueError(f"{text!r} names no export: use {form}")
    if "\0" in export or len(export.encode()) > 4096:
        raise ValueError(f"{text!r}: the export name is not usable")
    if colon and (not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536):
        raise ValueError(f"{text!r}: port {port!r} is not a number from 1 to 65535")
    try:
        address = parse_ipv4(host, "server")
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc} (there is no resolver in the mini-initramfs)"
                         ) from None
    return NbdTarget(address, int(port) if colon else NBD_PORT, export)
