"""ruff and mypy run as tests, so the one test command also keeps the code clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' (scripts/setup does)")
    return subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_is_clean() -> None:
    done = run_tool("ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_is_clean() -> None:
    done = run_tool("mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_shell_scripts_are_shellcheck_clean() -> None:
    scripts = [
        "packaging/install-tree", "packaging/kernel-install/60-initoverlayfs.install",
        "packaging/kernel-install/91-initoverlayfs.install",
        "packaging/dracut/90initoverlayfs/module-setup.sh",
        *(str(p.relative_to(REPO)) for d in ("debian-hooks", "grub", "deb", "report")
          for p in sorted((REPO / "packaging" / d).iterdir())
          if p.read_bytes().startswith(b"#!/bin/sh")),
        *(str(p.relative_to(REPO)) for p in sorted((REPO / "scripts").iterdir())
          if p.read_bytes().startswith(b"#!/usr/bin/env bash")),
    ]
    done = run_tool("shellcheck", *scripts)
    assert done.returncode == 0, done.stdout + done.stderr
