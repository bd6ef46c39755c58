"""The VM tier: every scenario is booted once per session, two at a time, from artifacts
built once (the frozen storage-init, two Debian kernels' images, one disk); each test then
checks its own boot and shows that boot's whole console when it fails."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from . import scenarios
from .qemu import BootResult


@pytest.fixture(scope="session")
def artifacts() -> Iterator[scenarios.Artifacts]:
    work = scenarios.workdir()
    built = None
    try:
        built = scenarios.build(work)
        yield built
    finally:
        if built is not None:
            built.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def boots(artifacts: scenarios.Artifacts) -> dict[str, BootResult]:
    return scenarios.run_all(artifacts, list(scenarios.SCENARIOS.values()))
