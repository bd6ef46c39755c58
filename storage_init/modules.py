"""Kernel modules loaded in-process: modaliases matched against modules.alias, dependencies
first from modules.dep, each loaded with finit_module. No modprobe, no udevd.

The parsers are pure and shared with the builder, which computes the same closure to decide
which modules go into the mini-initramfs.
"""

from __future__ import annotations

import errno
import os

from . import TYPE_CHECKING
from .globs import fnmatchcase
from .kernel import MODULE_INIT_COMPRESSED_FILE
from .record import field, record

COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz")
CPU_MODALIAS = "/sys/devices/system/cpu/modalias"  # this CPU's type and feature bits
# The hashes kernels sign their modules with (CONFIG_MODULE_SIG_HASH: sha256 on Debian,
# sha512 on some others), as the aliases of their accelerated modules (sha256_ssse3: SSSE3,
# AVX2 or SHA-NI code). The kernel hashes every module it loads with the best implementation
# registered at that moment, and Debian's kernel twice (the PKCS#7 digest, then
# is_hash_blacklisted); built in there is only the generic C one. So storage-init loads the
# one the builder shipped (the signatures' own) before any other module. On QEMU's `-cpu max`
# (AVX2), by instructions: erofs 37 -> 26 ms, overlay 54 -> 37, dm-mod 69 -> 49, for the hash
# module's own 18. A CPU without the features skips it by its cpu: aliases.
SIGNATURE_HASHES = ("crypto-sha256", "crypto-sha512", "crypto-sha384", "crypto-sha224",
                    "crypto-sha1")


def module_name(path_or_name: str) -> str:
    """`kernel/drivers/block/virtio_blk.ko.xz` or `virtio-blk` -> `virtio_blk`."""
    base = path_or_name.rsplit("/", 1)[-1]
    for suffix in (*COMPRESSED_SUFFIXES, ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@record(frozen=True)
class ModuleIndex:
    paths: dict[str, str] = field(default_factory=dict)  # name -> path relative to the dir
    deps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> dependency names
    aliases: tuple[tuple[str, str], ...] = ()  # (glob pattern, module name)
    builtin: frozenset[str] = frozenset()
    # name -> names or aliases to load first (modules.softdep "pre:"), e.g. ext4 needs
    # crypto-crc32c at mount time and would ask modprobe for it, which the initramfs lacks.
    softdeps: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def resolve(self, wanted: str) -> list[str]:
        """Module names for a name, a module alias (`fs-ext4`) or a device modalias."""
        name = module_name(wanted)
        if name in self.paths or name in self.builtin:
            return [name]
        # Compare the literal head of each pattern first: matching parses each pattern it
        # sees (fnmatch, used before storage_init.globs, compiled each into a regex, and for
        # a generic kernel's ~1000 storage aliases that first lookup cost 3.4 s of a real
        # boot under QEMU TCG).
        return list(dict.fromkeys(
            m for pattern, m in self.aliases
            if wanted.startswith(_literal_head(pattern)) and fnmatchcase(wanted, pattern)))

    def load_order(self, names: Iterable[str]) -> list[str]:
        """Loadable modules with every dependency before its user, each once."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen or name not in self.paths:
                return
            seen.add(name)
            for soft in self.softdeps.get(name, ()):
                for resolved in self.resolve(soft):
                    visit(resolved)
            for dep in self.deps.get(name, ()):
                visit(dep)
            order.append(name)

        for name in names:
            visit(name)
        return order


def cpu_patterns(aliases: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """Module name -> its `cpu:` aliases (an x86cpu device table: the CPU features the module
    is for, such as crc32c_intel's `cpu:type:x86,ven*fam*mod*:feature:*0094*`, SSE4.2)."""
    found: dict[str, list[str]] = {}
    for pattern, name in aliases:
        if pattern.startswith("cpu:"):
            found.setdefault(name, []).append(pattern)
    return {name: tuple(patterns) for name, patterns in found.items()}


def fits_cpu(patterns: tuple[str, ...], cpu_modalias: str) -> bool:
    """Whether a module with these `cpu:` aliases is for this CPU. A module without any is
    for every CPU, and so is every module when the CPU's modalias is unknown ("")."""
    if not patterns or not cpu_modalias:
        return True
    return any(fnmatchcase(cpu_modalias, pattern) for pattern in patterns)


# What storage-init loads a module with unless the kernel command line sets the same parameter.
# loop: at load the kernel creates CONFIG_BLK_DEV_LOOP_MIN_COUNT devices (8 in Debian's), about
# half of loading it in a boot under QEMU TCG (41 -> 19 ms), for a boot that takes its one
# device from /dev/loop-control. max_loop=0 creates none up front and sets no limit (loop.c
# since 85c50197716c and bb5faa99f0ce, in 6.1.y too; before, 0 was the default); later users
# get theirs from /dev/loop-control, as on distributions built with a MIN_COUNT of 0.
DEFAULT_PARAMS: dict[str, tuple[str, ...]] = {"loop": ("max_loop=0",)}


def module_params(words: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """Module name -> the parameters to load it with: the kernel command line's
    `module.param[=value]` words, as modprobe passes them (the kernel leaves them to whoever
    loads the module), and DEFAULT_PARAMS that the command line does not override."""
    given: dict[str, dict[str, str]] = {}
    for key, value in words:
        module, dot, param = key.partition(".")
        if not (dot and module and param):
            continue
        if value is not None and any(c in value for c in " \t\n"):
            value = f'"{value}"'  # the kernel's own quoting: param="a b"
        given.setdefault(module_name(module), {})[param.replace("-", "_")] = (
            param if value is None else f"{param}={value}")
    for name, defaults in DEFAULT_PARAMS.items():
        for default in defaults:
            given.setdefault(name, {}).setdefault(default.partition("=")[0], default)
    return {name: " ".join(params.values()) for name, params in given.items()}


# The kernel command line's lists of modules not to load (comma-separated names). kmod reads
# modprobe.blacklist= and dracut turns rd.driver.blacklist= into the same: udev then loads none
# of them for a device, while `modprobe NAME` still loads one asked for by name. The kernel
# itself refuses every module named by module_blacklist= (EPERM), however it is asked for.
DEVICE_BLACKLISTS = ("modprobe.blacklist", "rd.driver.blacklist")
KERNEL_BLACKLIST = "module_blacklist"


def module_blacklist(words: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """Module name -> the command line parameter that blacklists it (module_blacklist= where
    several do: that one the kernel enforces for every load)."""
    found: dict[str, str] = {}
    for key, value in words:
        if key not in (*DEVICE_BLACKLISTS, KERNEL_BLACKLIST) or not value:
            continue
        for word in value.split(","):
            name = module_name(word.strip())
            if name and (key == KERNEL_BLACKLIST or name not in found):
                found[name] = key
    return found


def parse_modules_dep(text: str) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    paths: dict[str, str] = {}
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        if not sep or not path.strip():
            continue
        name = module_name(path.strip())
        paths[name] = path.strip()
        deps[name] = tuple(module_name(d) for d in rest.split())
    return paths, deps


def _literal_head(pattern: str) -> str:
    """The part of a glob before its first wildcard, which any match must start with."""
    for i, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:i]
    return pattern


def parse_modules_alias(text: str) -> tuple[tuple[str, str], ...]:
    aliases = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            aliases.append((words[1], module_name(words[2])))
    return tuple(aliases)


def parse_modules_builtin(text: str) -> frozenset[str]:
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


def parse_modules_softdep(text: str) -> dict[str, tuple[str, ...]]:
    """`softdep ext4 pre: crypto-crc32c` -> {"ext4": ("crypto-crc32c",)}; only `pre:` words
    matter here (they must be loaded before the module; `post:` ones are optional extras)."""
    pre: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        section = None
        for word in words[2:]:
            if word in ("pre:", "post:"):
                section = word
            elif section == "pre:":
                pre.setdefault(module_name(words[1]), []).append(word)
    return {name: tuple(dict.fromkeys(items)) for name, items in pre.items()}


def parse_index(dep: str, alias: str, builtin: str, softdep: str = "") -> ModuleIndex:
    paths, deps = parse_modules_dep(dep)
    return ModuleIndex(paths, deps, parse_modules_alias(alias), parse_modules_builtin(builtin),
                       parse_modules_softdep(softdep))


if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Protocol

    from .kernelapi import KernelApi

    class _Log(Protocol):
        def info(self, message: str) -> None: ...
        def warning(self, message: str) -> None: ...
        def debug(self, message: str) -> None: ...


class Loader:
    """Loads modules once each; remembers what it loaded and what failed, for error messages."""

    def __init__(self, kernel: KernelApi, log: _Log, directory: str, index: ModuleIndex,
                 params: dict[str, str] | None = None,
                 blacklist: dict[str, str] | None = None) -> None:
        self.kernel, self.log, self.directory, self.index = kernel, log, directory, index
        self.params = module_params(()) if params is None else params
        self.blacklist = blacklist or {}  # module_blacklist()
        self.loaded: list[str] = []
        # ms of each load (open, finit_module, close): the kernel's reading, signature check,
        # relocation and the module's init, which the benchmark compares with what the C
        # original's wrapper pays for the same modules
        self.load_ms: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._done: set[str] = set()
        self._seen_aliases: set[str] = set()
        self._cpu: tuple[dict[str, tuple[str, ...]], str] | None = None

    @classmethod
    def from_directory(cls, kernel: KernelApi, log: _Log, directory: str,
                       params: dict[str, str] | None = None,
                       blacklist: dict[str, str] | None = None) -> Loader:
        def text(name: str) -> str:
            try:
                return kernel.read_file(f"{directory}/{name}").decode(errors="replace")
            except OSError:
                return ""

        dep = text("modules.dep")
        if not dep:
            log.info(f"no {directory}/modules.dep: drivers are expected to be built in")
        return cls(kernel, log, directory, parse_index(dep, text("modules.alias"),
                                                       text("modules.builtin"),
                                                       text("modules.softdep")), params,
                   blacklist)

    def load(self, wanted: Iterable[str], optional: bool = False,
             for_device: bool = False) -> list[str]:
        """Load what these names/aliases resolve to; returns the modules newly loaded.
        `optional`: names the mini-initramfs may not ship, without a word when it does not.
        `for_device`: a device's modalias, for which no blacklisted module is loaded."""
        names: list[str] = []
        for item in wanted:
            resolved = self.index.resolve(item)
            if for_device:
                resolved = [name for name in resolved if not self._blacklisted(name, item)]
            if optional:  # not remembered: asked for later by name, it is still reported
                names.extend(resolved)
                continue
            if not resolved and item not in self._seen_aliases and ":" not in item:
                self.log.debug(f"module {item} not found; assuming it is built in")
            self._seen_aliases.add(item)
            names.extend(resolved)
        new = []
        for name in self.index.load_order(names):
            if name not in self._done and self._insert(name):
                new.append(name)
        return new

    def load_modalias(self, modalias: str) -> list[str]:
        if modalias in self._seen_aliases:
            return []
        return self.load([modalias], for_device=True)

    def _blacklisted(self, name: str, modalias: str) -> bool:
        """Whether the command line blacklists this match of a device's modalias (a
        dependency of another match still loads, as with kmod)."""
        parameter = self.blacklist.get(name)
        if parameter is None:
            return False
        if name not in self.failed:
            self.failed[name] = f"{parameter}= on the kernel command line"
            self.log.info(f"module {name} (for {modalias}) not loaded: {parameter}= on the "
                          "kernel command line")
        return True

    def _for_this_cpu(self, name: str) -> bool:
        """A module whose x86cpu table this CPU does not match is not loaded: its init would
        refuse with ENODEV, after the kernel had read, signature-checked and relocated it
        (crc32c_intel on QEMU's CPU, which has no SSE4.2: 41 ms of one boot under TCG)."""
        if self._cpu is None:
            try:
                modalias = self.kernel.read_file(CPU_MODALIAS).decode(errors="replace").strip()
            except OSError:
                modalias = ""  # unknown: load everything, as modprobe would
            self._cpu = (cpu_patterns(self.index.aliases), modalias)
        patterns, modalias = self._cpu
        if fits_cpu(patterns.get(name, ()), modalias):
            return True
        self.log.debug(f"module {name}: not for this CPU (no match for {CPU_MODALIAS})")
        return False

    def _insert(self, name: str) -> bool:
        self._done.add(name)
        if self.blacklist.get(name) == KERNEL_BLACKLIST:
            # the kernel would refuse it (EPERM) after reading the file
            self.failed[name] = f"{KERNEL_BLACKLIST}= on the kernel command line"
            self.log.info(f"module {name} not loaded: {KERNEL_BLACKLIST}= on the kernel "
                          "command line")
            return False
        if not self._for_this_cpu(name):
            return False
        path = f"{self.directory}/{self.index.paths[name]}"
        params = self.params.get(name, "")
        compressed = path.endswith(COMPRESSED_SUFFIXES)
        started = self.kernel.monotonic()
        try:
            fd = self.kernel.open(path, os.O_RDONLY)
            try:
                flags = MODULE_INIT_COMPRESSED_FILE if compressed else 0
                self.kernel.finit_module(fd, params, flags, path)
            finally:
                self.kernel.close(fd)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False  # loaded before us (or by udevd in --systemd mode): fine
            if exc.errno == errno.ENODEV:
                # the module's hardware is absent (one of several matches of an alias, a
                # CPU feature its x86cpu table does not name): expected, as modprobe treats it
                self.log.debug(f"module {name}: no device for it here")
                return False
            if compressed and exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOEXEC):
                # no in-kernel decompression: storage-init does not carry decompressors
                # (initoverlayfs-install stores modules decompressed)
                reason = "compressed, and this kernel cannot decompress modules"
                self.failed[name] = reason
                self.log.warning(f"Failed to load module {name} ({path}): {reason}; rebuild "
                                 "the mini-initramfs with initoverlayfs-install")
                return False
            self.failed[name] = exc.strerror or str(exc)
            with_params = f" with {params!r} (check the kernel command line's {name}.* " \
                "parameters)" if params else ""
            self.log.warning(f"Failed to load module {name} ({path}){with_params}: "
                             f"{exc.strerror}")
            return False
        self.loaded.append(name)
        self.load_ms[name] = (self.kernel.monotonic() - started) * 1000
        self.log.debug(f"loaded module {name}")
        return True
