"""Tiers: the privileged integration tier needs root. Outside CI it is skipped with the reason;
in CI (CI=true) a tier that cannot run is a failure, never a quiet skip."""

from __future__ import annotations

import os

import pytest

NEEDS_ROOT = "the integration tier needs root (loop devices, mounts, namespaces)"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Runs before any fixture of the test is set up."""
    if "integration" not in item.keywords or os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{NEEDS_ROOT}, and CI must run every tier")
    pytest.skip(NEEDS_ROOT)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The bootloader tests go last. They only read what their machines, booting in the
    background since collection, left; run in their place they would hold the session until
    those machines end, while the Debian system test's preparation and power cut, which need
    no quiet machine, could run beside them."""
    from tests.vm import machines

    items.sort(key=machines.reads_a_machine)  # stable: the rest keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    """The bootloader tests' Debian machines start now, in the background (tests/vm/
    machines.py), when the session has collected their tests and -m does not leave them out:
    their boots then overlap the tiers before them."""
    from tests.vm import machines

    selected = [item for item in session.items if "vm" in item.keywords]
    if selected and not session.config.option.collectonly:
        machines.RUNNER.start(machines.machines_of(selected))


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.vm import machines

    machines.RUNNER.stop()
