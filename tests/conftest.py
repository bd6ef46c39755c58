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
