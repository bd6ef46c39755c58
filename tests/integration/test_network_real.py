"""The network half on this machine's kernel: storage-init's rtnetlink bring-up of a real veth
link in a private network namespace, and its NBD handshake against a real qemu-nbd listening on
127.0.0.1 (the kernel's nbd driver itself is exercised in the VM tier: this host has none)."""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage_init import nbdproto
from storage_init.kernel import Kernel
from tests.support import nbd

from .test_real_boot import tool

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("net_harness.py")


def bring_up(scenario: str) -> dict[str, Any]:
    tool("ip", "iproute2")
    run = subprocess.run(["unshare", "-n", "-m", "--propagation", "private", sys.executable,
                          str(HARNESS), scenario], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def test_link_address_route_and_mtu_are_set_through_rtnetlink() -> None:
    report = bring_up("up")
    assert "error" not in report, report
    (link,) = report["addr"]
    assert "UP" in link["flags"] and "LOWER_UP" in link["flags"]
    assert link["mtu"] == 1400
    inet = [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"]
    assert inet == [("10.9.0.2", 24)]
    (route,) = report["route"]
    assert route["gateway"] == "10.9.0.1" and route["dev"] == "veth0"


def test_no_carrier_ends_at_the_deadline_with_the_reason() -> None:
    report = bring_up("no-carrier")
    assert "see a carrier on veth0" in str(report["error"])
    assert 1.4 < report["took"] < 5


def test_a_missing_interface_lists_the_ones_seen() -> None:
    report = bring_up("no-interface")
    assert "find the network interface eth7 (interfaces seen: lo, veth0, veth1" in str(
        report["error"])


@pytest.fixture(scope="module")
def nbd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """qemu-nbd serving a 3 MiB file as export `bootfs` on 127.0.0.1: (port, size)."""
    tool("qemu-nbd", "qemu-utils")
    disk = tmp_path_factory.mktemp("nbd") / "disk.img"
    size = 3 << 20
    disk.write_bytes(b"\0" * size)
    server = nbd.serve(disk, "bootfs")
    try:
        yield server.port, size
    finally:
        server.close()


def negotiate(port: int, export: str, seconds: float = 5) -> nbdproto.Export:
    kernel = Kernel()
    deadline = time.monotonic() + seconds
    sock = kernel.tcp_connect("127.0.0.1", port, seconds)
    try:
        return nbdproto.negotiate(lambda n: kernel.sock_recv(sock, n, deadline),
                                  lambda data: kernel.sock_send(sock, data, deadline), export)
    finally:
        sock.close()


def test_a_server_that_answers_slowly_and_endlessly_is_cut_at_the_deadline() -> None:
    """The audit: the timeout applied to each receive, so a server that kept sending an
    option reply every 0.2 s held the boot past rd.initoverlayfs.timeout= for ever."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(nbdproto.NBDMAGIC + struct.pack(">QH", nbdproto.IHAVEOPT,
                                                         nbdproto.FLAG_FIXED_NEWSTYLE))
            conn.recv(4096)
            info = struct.pack(">QIII", nbdproto.REPLY_MAGIC, nbdproto.OPT_GO,
                               nbdproto.REP_INFO, 2) + b"\0\3"  # a block-size info, again
            until = time.monotonic() + 10  # bounded: then it hangs up (EOFError, not a pass)
            while not stop.is_set() and time.monotonic() < until:
                try:
                    conn.sendall(info[:10])
                    stop.wait(0.1)
                    conn.sendall(info[10:])
                    stop.wait(0.1)
                except OSError:
                    return
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    started = time.monotonic()
    try:
        with pytest.raises(OSError) as caught:
            negotiate(listener.getsockname()[1], "bootfs", seconds=1.5)
        took = time.monotonic() - started
    finally:
        stop.set()
        listener.close()
        server.join(10)
    assert caught.value.errno == errno.ETIMEDOUT
    assert 1.5 <= took < 5, took


def test_the_handshake_gets_the_exports_size_and_flags(nbd_server: tuple[int, int]) -> None:
    port, size = nbd_server
    export = negotiate(port, "bootfs")
    assert export.size == size
    assert export.read_only  # qemu-nbd --read-only says so in the transmission flags


def test_an_unknown_export_is_named_as_such(nbd_server: tuple[int, int]) -> None:
    with pytest.raises(nbdproto.NbdError, match="export 'nope': no such export") as caught:
        negotiate(nbd_server[0], "nope")
    assert caught.value.code == nbdproto.UNKNOWN_EXPORT


def test_no_server_is_a_refused_connection_naming_the_address() -> None:
    port = nbd.free_port()
    with pytest.raises(ConnectionRefusedError) as caught:
        Kernel().tcp_connect("127.0.0.1", port, 5)
    assert caught.value.filename == f"127.0.0.1:{port}"
