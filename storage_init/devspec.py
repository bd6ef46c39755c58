"""Device specs as fstab writes them: UUID=, LABEL=, PARTUUID=, PARTLABEL= or a /dev path;
and for a bootfs on the network, an NBD export `nbd:<host>[:<port>]/<export>` (netconf)."""

from __future__ import annotations

from .netconf import NbdTarget, parse_nbd
from .record import record

KINDS = ("UUID", "LABEL", "PARTUUID", "PARTLABEL")


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
