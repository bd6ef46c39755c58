"""Kernel uevent messages: `ACTION@DEVPATH\\0KEY=VALUE\\0...` as sent on NETLINK_KOBJECT_UEVENT."""

from __future__ import annotations


def parse_uevent(data: bytes) -> dict[str, str]:
    """The KEY=VALUE fields of one message; {} for anything that is not a kernel uevent."""
    fields: dict[str, str] = {}
    parts = data.split(b"\0")
    if not parts or b"@" not in parts[0]:
        return fields
    for part in parts[1:]:
        key, eq, value = part.partition(b"=")
        if eq and key:
            fields[key.decode(errors="replace")] = value.decode(errors="replace")
    return fields
