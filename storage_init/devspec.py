"""Device specs as fstab writes them: UUID=, LABEL=, PARTUUID=, PARTLABEL= or a /dev path;
and for a bootfs on the network, an NBD export `nbd:<host>[:<port>]/<export>` (netconf)."""

from __future__ import annotations

from .netconf import NbdTarget, parse_nbd
from .record import record

KINDS = ("UUID", "LABEL", "PARTUUID", "PARTLABEL")
_BY_DIR = {
    "UUID": "by-uuid",
    "LABEL": "by-label",
    "PARTUUID": "by-partuuid",
    "PARTLABEL": "by-partlabel",
}
# Characters udev leaves alone in /dev/disk/by-* names; everything else becomes \xNN.
_PLAIN = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#+-.:=@_")


class SpecError(ValueError):
    pass


@record(frozen=True)
class DeviceSpec:
    kind: str  # one of KINDS, "PATH", or "NBD" (value: host:port/export)
    value: str

    def __str__(self) -> str:
        if self.kind == "NBD":
            return f"nbd:{self.value}"
        return self.value if self.kind == "PATH" else f"{self.kind}={self.value}"

    @property
    def nbd(self) -> NbdTarget | None:
        """The export when this bootfs is on the network, else None."""
        return parse_nbd(self.value) if self.kind == "NBD" else None

    def matches(self, uuid: str | None, label: str | None, partuuid: str | None,
                partlabel: str | None) -> bool:
        """Whether probed identifiers match; UUIDs compare without case, labels exactly."""
        if self.kind == "UUID":
            return uuid is not None and uuid.lower() == self.value.lower()
        if self.kind == "PARTUUID":
            return partuuid is not None and partuuid.lower() == self.value.lower()
        if self.kind == "LABEL":
            return label == self.value
        if self.kind == "PARTLABEL":
            return partlabel == self.value
        return False

    def udev_link(self, dev: str = "/dev") -> str | None:
        """The /dev/disk/by-* symlink udevd would make for this spec (systemd mode)."""
        if self.kind in ("PATH", "NBD"):
            return None
        value = self.value.lower() if self.kind in ("UUID", "PARTUUID") else self.value
        return f"{dev}/disk/{_BY_DIR[self.kind]}/{udev_encode(value)}"


def udev_encode(name: str) -> str:
    return "".join(
        c if c in _PLAIN or ord(c) > 127 else "".join(f"\\x{b:02x}" for b in c.encode())
        for c in name
    )


def parse_spec(text: str) -> DeviceSpec:
    text = text.strip()
    if "\0" in text:
        raise SpecError(f"{text!r} has a NUL byte: no device is named so")
    if text.startswith("nbd:"):
        try:
            target = parse_nbd(text)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        return DeviceSpec("NBD", str(target).removeprefix("nbd:"))
    if text.startswith("/dev/") and len(text) > len("/dev/"):
        return DeviceSpec("PATH", text)
    kind, eq, value = text.partition("=")
    if eq and kind.upper() in KINDS:
        value = value.strip().strip('"')
        if value:
            return DeviceSpec(kind.upper(), value)
    raise SpecError(
        f"{text!r} is not a device: use UUID=, LABEL=, PARTUUID=, PARTLABEL=, a /dev path "
        "or nbd:<host>[:<port>]/<export>"
    )
