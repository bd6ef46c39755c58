"""storage_init.globs answers as fnmatch.fnmatchcase does, without importing re."""

from __future__ import annotations

import fnmatch
import random

import pytest

from storage_init.globs import fnmatchcase

CPU = "cpu:type:x86,ven0000fam0006mod0006:feature:," + ",".join(
    f"{n:04X}" for n in [*range(0x40), 0x64, 0x68, 0x6E, 0x80, 0x81, 0x83, 0x85, 0x87, 0x8D])
# Real modules.alias patterns (Debian 6.1 generic), with names that match and do not.
ALIASES = [
    "pci:v00001AF4d00001042sv*sd*bc*sc*i*", "virtio:d00000002v*", "scsi:t-0x00*",
    "usb:v13FDp3940d0[0-2]*dc*dsc*dp*ic*isc*ip*in*", "usb:v152Dp0567d011[4-7]dc*dsc*dp*ic*",
    "pci:v*d*sv*sd*bc01sc08i02*", "acpi*:PNP0A03:*", "of:N*T*Cnvidia,tegra20-sdhci",
    "fs-ext4", "block-major-259-*", "cpu:type:x86,ven*fam*mod*:feature:*0089*",
]
NAMES = [
    "pci:v00001AF4d00001042sv00001AF4sd00001100bc01sc00i00", "virtio:d00000002v00001AF4",
    "scsi:t-0x00", "usb:v13FDp3940d0150dc00dsc00dp00ic08isc06ip50in00",
    "usb:v13FDp3940d0350dc00dsc00dp00ic08isc06ip50in00", "usb:v152Dp0567d0115dc00dsc00dp00ic08",
    "of:NsdhciTnvidiaCnvidia,tegra20-sdhci",
    "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", "acpi:PNP0A03:", "fs-ext4",
    "fs-ext3", "block-major-259-0", "cpu:type:x86,ven0000fam0006mod003A:feature:,0089,",
    "", "*", "[", "]",
    # whole CPU modaliases (QEMU's default CPU; and the same with SSSE3, 0089, last), which
    # the cpu: aliases are matched against at every boot
    CPU, CPU + ",0089",
]


@pytest.mark.parametrize("pattern", ALIASES)
def test_real_aliases(pattern: str) -> None:
    for name in [*NAMES, pattern]:
        assert fnmatchcase(name, pattern) == fnmatch.fnmatchcase(name, pattern), (name, pattern)
    assert any(fnmatchcase(n, pattern) for n in NAMES), pattern  # each has a matching name


@pytest.mark.parametrize(("name", "pattern", "expected"), [
    ("a[b", "a[b", True),  # no closing bracket: literal
    ("a]", "a]", True), ("]", "[]]", True), ("x", "[]]", False), ("b", "[!]a]", True),
    ("-", "[a-]", True), ("b", "[c-a]", False), ("c", "[bc-ad]", False), ("d", "[bc-ad]", True),
    ("abc", "a*c", True), ("ac", "a*?c", False), ("aXbXc", "a*b*c", True), ("", "*", True),
    ("a/b", "a*b", True),  # "*" crosses "/" (modaliases are not paths)
])
def test_edge_cases(name: str, pattern: str, expected: bool) -> None:
    assert fnmatchcase(name, pattern) is expected
    assert fnmatch.fnmatchcase(name, pattern) is expected


def test_random_patterns_agree_with_fnmatch() -> None:
    rng = random.Random(20261202)
    for _ in range(50000):
        pattern = "".join(rng.choice("abc-!]*?[") for _ in range(rng.randint(0, 9)))
        name = "".join(rng.choice("abcd-!]*?[") for _ in range(rng.randint(0, 7)))
        assert fnmatchcase(name, pattern) == fnmatch.fnmatchcase(name, pattern), (name, pattern)


def test_many_stars_on_a_long_miss_stay_fast() -> None:
    # a regex-free walk that backtracked on every star would take ages here
    assert not fnmatchcase("x" * 2000, "*x*x*x*x*x*x*x*x*y")
