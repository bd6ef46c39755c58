"""The VM tier's harness: its reading of the serial console (on a console captured from a real
boot), and its background machines' bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from tests.vm import machines
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


def test_a_background_machine_keeps_its_stages_and_says_why_the_next_did_not_run(
        mocker: MockerFixture, tmp_path: Path) -> None:
    """machines.py: the fallback boot's preparation fails; the install and the first boot stay
    for their tests, and the tests of the later stages fail with that error, not a None."""
    first = BootResult("REPORT END", 0, 1.0, [])
    mocker.patch.object(machines, "installed_disk", return_value=(tmp_path / "disk", "apt log"))
    installed = machines.Installed("apt log", "6.1.0-57-amd64", [], set(), "", {})
    mocker.patch.object(machines, "_installed", return_value=installed)
    mocker.patch.object(machines, "_power_on", return_value=first)
    mocker.patch.object(machines, "_corrupt_image", side_effect=RuntimeError("no image"))
    mocker.patch("tempfile.mkdtemp", return_value=str(tmp_path))
    runner = machines.Machines()
    mocker.patch.object(runner, "_package", return_value=tmp_path / "initoverlayfs.deb")
    runner.start(["bookworm", "not-a-machine"])
    run = runner.result("bookworm")
    assert run.installed is installed and run.first is first
    assert run.fallback is None and run.removed is None
    with pytest.raises(pytest.fail.Exception, match=r"fallback boot did not run: (.|\n)*no image"):
        run.need(run.fallback, "the fallback boot")
    with pytest.raises(pytest.fail.Exception, match="not among the machines"):
        runner.result("trixie")
    runner.stop()


def test_the_tests_that_read_a_background_machine_run_last_and_the_rest_keep_their_order(
        ) -> None:
    """conftest's collection hook: test_bootloader's and test_systemd_boot's tests move behind
    the Debian system test (whose power cut then runs beside the machines); nothing else
    moves."""
    from types import SimpleNamespace
    from typing import cast

    from tests.conftest import pytest_collection_modifyitems

    ids = ["tests/unit/test_a.py::test_x", "tests/vm/test_bootloader.py::test_y[bookworm]",
           "tests/vm/test_boot.py::test_z", "tests/vm/test_debian_system.py::test_power_cut",
           "tests/vm/test_systemd_boot.py::test_w", "tests/vm/test_debian_system.py::test_v"]
    items = [cast(pytest.Item, SimpleNamespace(nodeid=nodeid)) for nodeid in ids]
    pytest_collection_modifyitems(items)
    assert [item.nodeid for item in items] == [ids[0], ids[2], ids[3], ids[5], ids[1], ids[4]]
