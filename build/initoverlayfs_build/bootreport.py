"""This boot's report, after the fact: storage-init's timings (which it writes on /run, kept by
the real root), the image's read counters at init and at the end of the initrd (added by
packaging/report/release-image), the kernel's own marks from /dev/kmsg and systemd's
timestamps, as one timeline.

Why the report carries the split and systemd-analyze cannot: systemd takes the initrd's start
as its own start when it runs in an initrd (src/core/main.c: in_initrd() -> the initrd
timestamp is its userspace timestamp), and RD_TIMESTAMP, the variable through which an earlier
stage could hand over its start, was removed from systemd (commit c72aadd); systemd issue 32726
asks for a way back, open. So in rdinit mode `systemd-analyze` counts storage-init's whole run
as kernel time."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage_init.boot import RDINIT, SYSTEMD

REPORT_DIR = Path("/run/log/initoverlayfs")
SCRATCH_TIMINGS = Path("/run/initoverlayfs/timings.json")
# the kernel's lines that mark its part (init/initramfs.c, init/main.c)
UNPACK_START = "Trying to unpack rootfs image as initramfs"
UNPACK_END = "Freeing initrd memory"
RUN_INIT = "Run /"  # "Run /init as init process"


@dataclass(frozen=True)
class Span:
    name: str
    start: float  # seconds since the kernel started (CLOCK_BOOTTIME / CLOCK_MONOTONIC)
    end: float
    level: int = 0  # 1: a part of the span above it

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


@dataclass
class Report:
    timings: dict[str, Any] | None = None
    released: dict[str, Any] | None = None
    kernel: dict[str, float] = field(default_factory=dict)  # kmsg marks, seconds
    systemd: dict[str, float] = field(default_factory=dict)  # systemd's timestamps, seconds
    content_bytes: int | None = None
    image_file: str | None = None
    source: str = ""  # where the timings came from
    notes: list[str] = field(default_factory=list)

    def spans(self) -> list[Span]:
        """The boot as a timeline, from whatever of it is known."""
        out: list[Span] = []
        t = self.timings or {}
        entered = t.get("entered_boottime_s") or t.get("started_boottime_s")
        # the kernel's part ends at its "Run /init"; without that mark, where the next thing
        # started: the mini-initramfs's systemd in systemd mode, else storage-init itself
        kernel_end = (self.kernel.get("run_init")
                      or (self.systemd.get("initrd") if t.get("mode") == SYSTEMD else None)
                      or entered)
        if kernel_end:
            out.append(Span("kernel", 0.0, kernel_end))
        if "unpack_start" in self.kernel and "unpack_end" in self.kernel:
            out.append(Span("unpack the initramfs", self.kernel["unpack_start"],
                            self.kernel["unpack_end"], 1))
        rdinit = t.get("mode") == RDINIT
        if t:
            started, finished = t["started_boottime_s"], t["finished_boottime_s"]
            begin = entered or started
            if rdinit and kernel_end and kernel_end < begin:  # it starts at the kernel's exec
                out.append(Span("storage-init", kernel_end, finished))
                out.append(Span("exec, until its first line", kernel_end, begin, 1))
            else:
                out.append(Span("storage-init", begin, finished))
            if entered and started > entered:
                out.append(Span("start (Python, imports)", entered, started, 1))
            at = started
            for step in t.get("steps", []):
                end = at + step["ms"] / 1000
                out.append(Span(step["name"], at, end, 1))
                at = end
        initrd, userspace = self.systemd.get("initrd"), self.systemd.get("userspace")
        if rdinit and initrd and initrd > t["finished_boottime_s"]:
            # the exec of the image's init and its start, its pages read through the image
            out.append(Span("exec init from the image", t["finished_boottime_s"], initrd))
        if initrd and userspace:
            out.append(Span("systemd in the initrd", initrd, userspace))
        target = self.systemd.get("multi_user")
        if userspace and target:
            out.append(Span("real root: units to multi-user.target", userspace, target))
        return out

    def image_lines(self) -> list[str]:
        t, r = self.timings or {}, self.released or {}
        size = t.get("image_bytes") or r.get("image_bytes")
        lines = []
        if self.image_file:
            lines.append(f"image {self.image_file}")
        for who, data in (("by init (storage-init's handover)", t),
                          ("by the end of the initrd phase", r)):
            read = data.get("image_read_bytes")
            if read is None:
                continue
            lines.append(f"  read {who}: {_mib(read)} ({100 * read / size:.1f}%) of "
                         f"{_mib(size)}" if size else f"  read {who}: {_mib(read)}")
        if self.content_bytes:
            lines.append(f"  its files unpacked: {_mib(self.content_bytes)} (what a classic "
                         "initramfs unpacks into RAM before init)")
        return lines

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "timings": self.timings, "released": self.released,
                "kernel": self.kernel, "systemd": self.systemd,
                "image_file": self.image_file, "content_bytes": self.content_bytes,
                "spans": [{"name": s.name, "start_s": round(s.start, 6),
                           "end_s": round(s.end, 6), "level": s.level} for s in self.spans()],
                "notes": self.notes}

    def text(self) -> str:
        mode = (self.timings or {}).get("mode", "?")
        lines = [f"initoverlayfs boot report ({mode} mode; from {self.source})",
                 "timeline, seconds since the kernel started:"]
        for span in self.spans():
            name = ("  " * (span.level + 1)) + span.name
            lines.append(f"{name:<44} {span.start:8.3f} -> {span.end:8.3f}  "
                         f"{span.ms:9.1f} ms")
        lines += self.image_lines()
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / (1 << 20):.2f} MiB"


# --- reading --------------------------------------------------------------------------------

def kmsg_marks(records: list[str]) -> dict[str, float]:
    """The kernel's marks from /dev/kmsg records ("prio,seq,usec,flags;message")."""
    marks: dict[str, float] = {}
    for record in records:
        head, _, message = record.partition(";")
        fields = head.split(",")
        if len(fields) < 3 or not fields[2].isdigit():
            continue
        seconds = int(fields[2]) / 1e6
        for key, start in (("unpack_start", UNPACK_START), ("unpack_end", UNPACK_END),
                           ("run_init", RUN_INIT)):
            if message.startswith(start) and key not in marks:
                if key == "run_init" and "as init process" not in message:
                    continue
                marks[key] = seconds
    return marks


def read_kmsg(path: str = "/dev/kmsg") -> list[str]:
    """Every record still in the kernel's buffer; [] when it cannot be read (not root)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    records = []
    try:
        while True:
            try:
                chunk = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten while read: go on with the next
                    continue
                break  # EAGAIN: the end; anything else: what was read so far
            if not chunk:
                break
            records.append(chunk.decode(errors="replace").split("\n", 1)[0])
    finally:
        os.close(fd)
    return records


SYSTEMD_PROPERTIES = {"InitRDTimestampMonotonic": "initrd",
                      "UserspaceTimestampMonotonic": "userspace",
                      "FinishTimestampMonotonic": "finish"}


def systemd_marks(show_manager: str, show_target: str) -> dict[str, float]:
    """systemd's timestamps from `systemctl show` output (microseconds, 0 for never)."""
    marks: dict[str, float] = {}
    for line in show_manager.splitlines():
        key, _, value = line.partition("=")
        if key in SYSTEMD_PROPERTIES and value.isdigit() and int(value):
            marks[SYSTEMD_PROPERTIES[key]] = int(value) / 1e6
    for line in show_target.splitlines():
        key, _, value = line.partition("=")
        if key == "ActiveEnterTimestampMonotonic" and value.isdigit() and int(value):
            marks["multi_user"] = int(value) / 1e6
    return marks


def _systemctl(*args: str) -> str:
    try:
        return subprocess.run(["systemctl", "show", *args], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def collect(report_dir: Path = REPORT_DIR, *, live: bool = True) -> Report:
    """This boot's report; `live`: also ask the running kernel and systemd."""
    report = Report()
    for path in (report_dir / "timings.json", SCRATCH_TIMINGS):
        report.timings = _json(path)
        if report.timings is not None:
            report.source = str(path)
            break
    report.released = _json(report_dir / "released.json")
    if live:
        report.kernel = kmsg_marks(read_kmsg())
        manager = _systemctl("-p", ",".join(SYSTEMD_PROPERTIES))
        report.systemd = systemd_marks(manager, _systemctl(
            "-p", "ActiveEnterTimestampMonotonic", "multi-user.target"))
    if report.timings is None:
        report.notes.append(f"no storage-init timings in {report_dir} or {SCRATCH_TIMINGS}: "
                            "this boot did not go through initoverlayfs, or its release unit "
                            "has not run yet")
    elif report.timings.get("mode") == RDINIT:
        report.notes.append("systemd-analyze counts everything before the initrd's systemd "
                            "(the kernel and storage-init) as kernel time: systemd has no way "
                            "to be told an earlier start (README: \"What a boot did\")")
    return report
