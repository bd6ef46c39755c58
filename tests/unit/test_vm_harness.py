"""The VM tier's reading of the serial console, on a console captured from a real boot."""

from __future__ import annotations

from tests.vm.qemu import BootResult
from tests.vm.scenarios import result_of, timings_of

# An NBD boot's console: the kernel's link message landed inside the test init's report.
CONSOLE = (
    "[    6.401000] storage-init: 17 steps in 1249.4 ms\n"
    'INITOVERLAYFS-RESULT {"pid": 1, "init": "/sbin/init", "args": "", "uptime": 6.06, '
    "[    6.413788] IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready\n"
    '"root": "overlay initoverlayfs rw", "boot": "ext4 /dev/nbd0 ro"}\n'
    'INITOVERLAYFS-TIMINGS { "version": 1, "steps": []}\n'
    "[    6.500000] reboot: Power down\n")


def test_a_kernel_message_inside_the_report_is_taken_out() -> None:
    run = BootResult(CONSOLE, 0, 1.0, [])
    assert result_of(run) == {"pid": 1, "init": "/sbin/init", "args": "", "uptime": 6.06,
                              "root": "overlay initoverlayfs rw", "boot": "ext4 /dev/nbd0 ro"}
    assert timings_of(run) == {"version": 1, "steps": []}
