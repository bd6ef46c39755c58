"""Run inside `unshare -n -m` by test_network_real.py: a veth pair in a fresh network namespace,
storage-init's network bring-up on one end with the real Kernel, and a JSON report of what the
kernel then has (or of the BootError). Argument: the scenario."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from storage_init import network
from storage_init.errors import BootError
from storage_init.kernel import Kernel
from storage_init.log import Log
from storage_init.modules import Loader, parse_index
from storage_init.netconf import parse_ip


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def main(scenario: str) -> None:
    kernel = Kernel()
    log = Log(kernel)
    # this namespace's own sysfs, so that /sys/class/net shows its interfaces only
    subprocess.run(["mount", "-t", "sysfs", "sysfs", "/sys"], check=True)
    ip("link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    if scenario != "no-carrier":
        ip("link", "set", "veth1", "up")  # the peer up: veth0 gets carrier once it is up
    config = parse_ip("10.9.0.2::10.9.0.1:255.255.255.0:client:veth0:none:1400")
    loader = Loader(kernel, log, "/nonexistent", parse_index("", "", ""))
    uevents = kernel.uevent_open()
    name = "eth7" if scenario == "no-interface" else "veth0"
    started = time.monotonic()
    try:
        index = network.wait_interface(kernel, log, loader, uevents, name, "/sys",
                                       kernel.monotonic() + 1.5, lambda: None)
        network.bring_up(kernel, log, config, index, kernel.monotonic() + 1.5)
    except BootError as exc:
        print(json.dumps({"error": str(exc), "took": time.monotonic() - started}))
        return
    print(json.dumps({
        "addr": json.loads(ip("-j", "addr", "show", "veth0")),
        "route": json.loads(ip("-j", "route", "show", "default")),
        "took": time.monotonic() - started,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
