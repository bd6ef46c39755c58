"""A real NBD server for the tests: qemu-nbd serving one file, read-only, on 127.0.0.1 only
(never another address: the guests reach it through QEMU's user network, whose 10.0.2.2 is
this machine's loopback)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on (once the probe socket is closed)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class NbdServer:
    port: int
    process: subprocess.Popen[bytes]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def serve(path: Path, export: str, clients: int = 8, port: int | None = None) -> NbdServer:
    """qemu-nbd serving `path` as `export` (on `port`, or a free one), up and accepting
    before this returns."""
    qemu_nbd = shutil.which("qemu-nbd")
    if qemu_nbd is None:
        raise FileNotFoundError("qemu-nbd is missing: apt-get install qemu-utils "
                                "(scripts/setup does)")
    port = port or free_port()
    process = subprocess.Popen(
        [qemu_nbd, "--persistent", "--read-only", "--format=raw", f"--shared={clients}",
         f"--bind={LOOPBACK}", f"--port={port}", f"--export-name={export}", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = NbdServer(port, process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"qemu-nbd exited with {process.returncode}: {error}")
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return server
        time.sleep(0.05)
    server.close()
    raise RuntimeError(f"qemu-nbd did not listen on {LOOPBACK}:{port} within 10 s")
