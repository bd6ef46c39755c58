"""`initoverlayfs-freeze`: storage-init compiled by Nuitka into a standalone folder that runs as
PID 1 with nothing else installed.

Why these Nuitka options (measured on this project, see DESIGN.md):
- standalone, not onefile: onefile unpacks itself to /tmp at every start and stays PID 1;
- force-unix-binary-name: the binary finds its folder from argv[0], because /proc (which it
  would otherwise read /proc/self/exe from) is not mounted when the kernel starts PID 1;
- static libpython where the interpreter has one: one file less to load, no libpython lookup;
- no_site: no site-packages scan at start;
- static_hashes: no hash randomization seed. Early in boot the kernel's entropy pool is not
  ready and /dev/urandom does not exist yet, and a real Debian kernel in QEMU stopped the
  binary with "Fatal Python error: _Py_HashRandomization_Init: failed to get random numbers";
- no_docstrings: nothing reads them at run time; they are only bytes in the binary;
- linked -no-pie (link_environment): no relocations for the loader to apply to the binary;
- lto: 0.7 MB less binary for the kernel to unpack at every boot (11.8 MB without);
- UTF-8 mode (Nuitka takes it from the compiling interpreter's -X utf8): paths and console
  text are UTF-8 whatever LANG= the kernel command line hands PID 1;
- a package configuration (Nuitka's documented anti-bloat `module_code`) that replaces the
  source of `inspect` with frozen_inspect.py: the runtime imports inspect at every start, and
  the real one costs more than half of a frozen program's start (see that file);
- a user plugin (nuitka_bytecode.py) that puts storage-init's modules and pyudev into the
  binary as bytecode, not C: a faster start and a smaller binary (see that file);
- a user plugin (nuitka_precompiled.py) that serves the Python source Nuitka's runtime
  compiles at every start as a code object compiled at build time: no parser or compiler
  runs at boot (see that file);
- nofollow for stdlib parts storage-init never imports at run time (hashing, decimal, pickle,
  codecs tables...): every module left out is start time and initramfs bytes saved.
With --network (a bootfs on NBD) a second folder is frozen that also holds pyroute2's netlink
message classes (NETWORK_MODULES) and the stdlib they import; pyroute2's package `__init__` and
everything else of it stays out. The local-disk freeze is unchanged by it, byte for byte.
After Nuitka, the extension modules lose their debug info (Nuitka copies them from the
interpreter as they are: 1.6 MB with it, 0.56 MB without), and the unused ones are deleted.
pyudev is kept (the targeted trigger) and libudev.so.1, which it loads by soname at run time
and no ELF header names, is copied into the folder, where the binary's $ORIGIN rpath finds it.
"""

from __future__ import annotations

import argparse
import contextlib
import encodings
import fcntl
import hashlib
import importlib.util
import os
import pkgutil
import shutil
import sys
import sysconfig
import tempfile
import time
import types
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from xml.etree import ElementTree

import storage_init

from . import __version__, elf, foreign
from .arch import Arch, of_elf
from .arch import host as host_arch
from .arch import named as named_arch
from .errors import BuildError
from .run import need, run
from .ui import Ui

BINARY = "storage-init"
INSPECT_SOURCE = Path(__file__).with_name("frozen_inspect.py")
BYTECODE_PLUGIN = Path(__file__).with_name("nuitka_bytecode.py")
PRECOMPILED_PLUGIN = Path(__file__).with_name("nuitka_precompiled.py")
EARLY_IMPORTS_PLUGIN = Path(__file__).with_name("nuitka_early_imports.py")
REPORT = "nuitka-report.xml"  # in the freeze's output folder, read by check_early_imports
STAMP = ".initoverlayfs-freeze"
NETWORK_MARK = ".initoverlayfs-network"  # in a folder frozen with --network
# in a folder frozen for another CPU: the Debian tree it was frozen in, whose libraries
# (glibc, libz...) the mini-initramfs then takes (foreign.py)
LIBRARIES_MARK = ".initoverlayfs-libraries"
MARKS = (STAMP, NETWORK_MARK, LIBRARIES_MARK)  # the freeze's bookkeeping, not shipped
INSTALLED = Path("/usr/lib/initoverlayfs/storage-init")
INSTALLED_NETWORK = Path("/usr/lib/initoverlayfs/storage-init-network")
RUNTIME_LIBRARIES = ("libudev.so.1",)  # dlopen()ed by pyudev through ctypes
NOT_NEEDED = (
    # hashing and crypto (libcrypto alone is 4.8 MB)
    "hashlib", "_hashlib", "_blake2", "_md5", "_sha1", "_sha256", "_sha3", "random", "secrets",
    "ssl", "_ssl",
    # data formats and numbers storage-init does not use
    "decimal", "_decimal", "pickle", "_pickle", "csv", "_csv", "statistics", "_statistics",
    "unicodedata", "bz2", "_bz2", "lzma", "_lzma", "gzip", "zipfile", "tarfile", "tempfile",
    "sqlite3", "xml", "email", "http", "urllib", "html", "json.tool", "plistlib", "difflib",
    "pprint",
    # programs and frameworks
    "asyncio", "concurrent", "multiprocessing", "unittest", "doctest", "pydoc", "pdb",
    "tkinter", "curses", "distutils", "setuptools", "pip", "lib2to3", "venv", "idlelib",
    "platform",
    # what storage_init.record and TYPE_CHECKING replace (typing: only mypy reads it). Not
    # inspect: the Nuitka runtime imports it at every start, and package_configuration()
    # makes it frozen_inspect.py, which imports nothing. (Nuitka decides what the start
    # needs with the real inspect: EARLY_IMPORTS_PLUGIN takes dis and opcode off that list.)
    "dataclasses", "typing",
    # the rest of the stdlib that Nuitka's standalone mode ships as bytecode because a
    # program could import it; nothing on storage-init's paths does (test_start_cost.py)
    "_pyio", "pickletools", "ipaddress", "configparser", "imaplib", "pathlib", "calendar",
    "pstats", "ftplib", "cgi", "cgitb", "trace", "webbrowser", "modulefinder", "tomllib",
    "sysconfig", "tracemalloc", "socketserver", "stringprep", "pkgutil", "_strptime",
    "importlib.metadata", "importlib.resources", "mimetypes", "netrc", "poplib", "mailcap",
    "pyclbr", "symtable", "timeit", "rlcompleter", "code", "codeop", "cmd", "sched", "shlex",
    "glob", "filecmp", "fileinput", "getopt", "graphlib", "imghdr", "sndhdr", "imp", "chunk",
    "colorsys", "crypt", "uu", "xdrlib", "quopri", "pipes", "nturl2path", "_aix_support",
    "_osx_support", "_bootsubprocess", "_compat_pickle", "_markupbase", "_py_abc",
    "_threading_local", "__hello__", "__phello__", "base64", "numbers",
    # and more that Nuitka ships as "the non-excluded parts of the standard library": json
    # (storage_init.jsonout writes the timings), the build's configuration data
    "json", "_json", "string", "bisect", "_bisect", "contextvars", "_sysconfigdata_*",
    # pyudev imports these for functions storage-init never calls (storage_init.udev.import_pyudev)
    "subprocess", "datetime", "threading", "ctypes.util",
    # argparse and what it brings (storage_init/cli.py parses the command line instead), and
    # the rest of what no path of storage-init imports; with the start-up modules that
    # EARLY_IMPORTS_PLUGIN drops since (re, enum, ast...), 0.9 MB of the binary
    "argparse", "gettext", "shutil", "textwrap", "traceback", "heapq", "copy", "fnmatch",
    "weakref", "_weakrefset", "signal", "importlib.util", "importlib.abc", "_compression",
    "sre_compile", "sre_parse", "sre_constants",
    # pyudev's GUI-toolkit bindings
    "pyudev.glib", "pyudev.wx", "pyudev.pyqt4", "pyudev.pyqt5", "pyudev.pyside",
    "pyudev.pyside2", "pyudev.pyside6", "pyudev._qt_base",
)


# pyroute2 for a bootfs on the network (storage_init/rtnl.py imports these and nothing else of
# it), and the modules of NOT_NEEDED that they import at run time: ifinfmsg imports pkgutil
# (for its plugins), pyroute2.common typing and threading (with the extension modules
# NETWORK_EXTENSIONS: _typing, and math for pyroute2's own imports). The package itself is
# in, for its submodules to be found, with its `__init__` (the whole API: ~300 modules,
# asyncio, ssl, sqlite3) replaced by one line; and the modules that storage_init.rtnl's
# import stands in for (multiprocessing, platform, logging, traceback) are taken from
# sys.modules instead of imported, so that Nuitka does not follow them either:
# multiprocessing alone brought pickle, hashlib and libcrypto (4.8 MB) into the folder
# (package_configuration).
PYROUTE2_INIT = '"""pyroute2, frozen for storage-init: its netlink message classes only."""'
STOOD_IN = {  # pyroute2 module: the imports that storage_init.rtnl's stand-ins serve
    "pyroute2.config": ("multiprocessing", "platform"),
    "pyroute2.netlink": ("logging", "traceback"),
    "pyroute2.netlink.rtnl.ifinfmsg": ("logging",),
}
NETWORK_MODULES = ("pyroute2", "pyroute2.common", "pyroute2.config", "pyroute2.netlink",
                   "pyroute2.netlink.exceptions", "pyroute2.netlink.rtnl",
                   "pyroute2.netlink.rtnl.ifaddrmsg", "pyroute2.netlink.rtnl.rtmsg",
                   "pyroute2.netlink.rtnl.iw_event")
NETWORK_PACKAGES = ("pyroute2.netlink.rtnl.ifinfmsg",)  # with its plugins
NETWORK_NEEDS = frozenset({
    "pkgutil", "threading", "typing", "importlib.util", "weakref", "_weakrefset", "signal",
    # start-up modules that EARLY_IMPORTS_PLUGIN drops for both, and pyroute2 imports
    "re", "re._casefix", "re._compiler", "re._constants", "re._parser", "enum", "collections",
    "collections.abc", "functools", "contextlib", "operator", "reprlib", "keyword", "copyreg"})
NETWORK_EXTENSIONS = frozenset({"_typing.so", "math.so"})


def not_needed(network: bool) -> tuple[str, ...]:
    return tuple(m for m in NOT_NEEDED if not network or m not in NETWORK_NEEDS)


def load_plugin(path: Path) -> types.ModuleType:
    """One of the Nuitka user plugins, as a module (they are loaded by path, not imported:
    Nuitka loads them so)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def early_not_needed(network: bool = False) -> tuple[str, ...]:
    """The start-up modules EARLY_IMPORTS_PLUGIN takes off Nuitka's list (its `dropped`),
    for --nofollow-import-to: the codecs of this Python's `encodings` and its NOT_AT_START;
    with `network`, not those pyroute2 imports (NETWORK_NEEDS)."""
    plugin = load_plugin(EARLY_IMPORTS_PLUGIN)
    codecs = (f"encodings.{m.name}" for m in pkgutil.iter_modules(encodings.__path__))
    names = {*filter(plugin.dropped, codecs), *plugin.NOT_AT_START}
    return tuple(sorted(names - NETWORK_NEEDS if network else names))


def unused_extensions(network: bool) -> tuple[str, ...]:
    return tuple(e for e in UNUSED_EXTENSIONS if not network or e not in NETWORK_EXTENSIONS)


# Extension modules Nuitka ships that storage-init never loads (tests/unit/test_start_cost.py
# checks a boot's imports against this list). The CJK codecs' modules (1.2 MB; only to
# encode or decode CJK text) are not shipped since EARLY_IMPORTS_PLUGIN, and stay listed
# should Nuitka ship them again. The others belong to stdlib modules the freeze leaves out
# (NOT_NEEDED) or that only other programs' paths import: random, typing, base64, shutil,
# zipimport, datetime, selectors (math); and _opcode, for opcode, which only the real
# inspect's imports load.
UNUSED_EXTENSIONS = ("_codecs_cn.so", "_codecs_hk.so", "_codecs_iso2022.so", "_codecs_jp.so",
                     "_codecs_kr.so", "_codecs_tw.so", "_multibytecodec.so",
                     "_random.so", "_sha512.so", "_typing.so", "_opcode.so", "binascii.so",
                     "grp.so", "zlib.so", "_datetime.so", "math.so")


@dataclass(frozen=True)
class Frozen:
    folder: Path
    size: int
    seconds: float  # 0.0 when reused


def source_key(python: str = sys.executable, network: bool = False,
               arch: Arch | None = None) -> str:
    """A hash of everything that changes the frozen result: storage-init's sources, the
    Python version, Nuitka's version (and pyroute2's, with --network) and this file's options;
    for another CPU, its tree's key instead of this machine's Python (foreign.tree_key)."""
    digest = hashlib.sha256()
    if network:
        digest.update(b"network\0")
        with contextlib.suppress(metadata.PackageNotFoundError):
            digest.update(metadata.version("pyroute2").encode())
    if arch is not None and arch != host_arch():
        digest.update(f"{arch.name}\0{foreign.tree_key(arch)}\0".encode())
    else:
        digest.update(sys.version.encode() + python.encode())
    package = Path(storage_init.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(INSPECT_SOURCE.read_bytes())
    digest.update(BYTECODE_PLUGIN.read_bytes())
    digest.update(PRECOMPILED_PLUGIN.read_bytes())
    digest.update(EARLY_IMPORTS_PLUGIN.read_bytes())
    with contextlib.suppress(metadata.PackageNotFoundError):  # reported when Nuitka runs
        digest.update(metadata.version("nuitka").encode())
    return digest.hexdigest()[:16]


def package_configuration(network: bool = False) -> str:
    """Nuitka's package configuration (YAML) that makes `inspect` frozen_inspect.py; with
    `network`, pyroute2's package `__init__` an empty module (NETWORK_MODULES)."""
    code = "".join(f"        {line}\n" if line.strip() else "\n"
                   for line in INSPECT_SOURCE.read_text().splitlines())
    config = ("---\n"
              "- module-name: 'inspect'\n"
              "  anti-bloat:\n"
              "    - description: 'storage-init: only what the Nuitka runtime patches at start'\n"
              "      module_code: |\n" + code)
    if network:
        config += ("- module-name: 'pyroute2'\n"
                   "  anti-bloat:\n"
                   "    - description: 'storage-init: the message classes, not the package API'\n"
                   "      module_code: |\n"
                   f"        {PYROUTE2_INIT}\n")
        for module, names in STOOD_IN.items():
            config += (f"- module-name: '{module}'\n"
                       "  anti-bloat:\n"
                       "    - description: 'storage-init: stand-ins from storage_init.rtnl'\n"
                       "      replacements_plain:\n")
            config += "".join(f"        'import {name}': '{stood_in(name)}'\n" for name in names)
    return config


def stood_in(name: str) -> str:
    """What replaces `import NAME` in a STOOD_IN module: the stand-in that storage_init.rtnl
    put in sys.modules for the import (a KeyError names it if imported any other way)."""
    return f"{name} = __import__(\"sys\").modules[\"{name}\"]"


def link_environment() -> dict[str, str]:
    """-no-pie (Nuitka passes LDFLAGS to its link): a position-dependent binary has no
    relative relocations for the dynamic loader to apply at each start (38,700 of them, 0.9 MB
    of .rela.dyn, in the PIE one). PID 1 of an initramfs gains nothing from a randomized
    base address: it execs the real init within a second."""
    return {"LDFLAGS": " ".join(filter(None, (os.environ.get("LDFLAGS"), "-no-pie")))}


def nuitka_command(python: str, script: Path, outdir: Path, jobs: int,
                   config: Path, network: bool = False) -> list[str]:
    static = "yes" if _has_static_libpython() else "no"
    # The local freeze leaves pyroute2 out (nofollow): Nuitka follows storage_init.network's
    # imports even though a local boot never runs them, and pyroute2.config's multiprocessing
    # would then collide with NOT_NEEDED ("Conflict between user and plugin decision for
    # module 'multiprocessing'"). The network one follows it from the modules named here, its
    # package __init__ made empty by package_configuration (a nofollow of "pyroute2" would
    # exclude the package itself, and every submodule with it, at run time).
    extra = [f"--include-module={','.join(NETWORK_MODULES)}",
             f"--include-package={','.join(NETWORK_PACKAGES)}"] if network else []
    nofollow = [*not_needed(network), *early_not_needed(network),
                *([] if network else ["pyroute2"])]
    return [
        # -X utf8: Nuitka gives the binary the UTF-8 mode of the Python that compiles it
        python, "-X", "utf8", "-m", "nuitka", "--standalone", f"--static-libpython={static}",
        "--experimental=force-unix-binary-name", "--python-flag=no_site",
        "--python-flag=static_hashes", "--python-flag=no_docstrings", "--lto=yes",
        "--include-package=pyudev", *extra, f"--nofollow-import-to={','.join(nofollow)}",
        f"--user-package-configuration-file={config}", f"--user-plugin={BYTECODE_PLUGIN}",
        f"--user-plugin={PRECOMPILED_PLUGIN}", f"--user-plugin={EARLY_IMPORTS_PLUGIN}",
        f"--output-dir={outdir}", f"--output-filename={BINARY}", "--remove-output",
        f"--report={outdir / REPORT}",
        "--assume-yes-for-downloads", "--quiet", f"--jobs={jobs}", os.fspath(script),
    ]


def _has_static_libpython() -> bool:
    libdir = sysconfig.get_config_var("LIBPL") or ""
    name = sysconfig.get_config_var("LIBRARY") or ""
    return bool(libdir and name and Path(libdir, name).is_file())


def strip_debug(ui: Ui, dist: Path) -> None:
    """strip --strip-debug each extension module, keeping the result only where it is smaller
    (strip can grow an already stripped library: it rewrites its section layout)."""
    need("strip", "to strip debug info from the frozen folder")
    for path in sorted(dist.glob("*.so*")):
        if path.name in RUNTIME_LIBRARIES or path.is_symlink():
            continue
        stripped = path.with_name(path.name + ".stripped")
        run(ui, ["strip", "--strip-debug", "-o", os.fspath(stripped), os.fspath(path)])
        if stripped.stat().st_size < path.stat().st_size:
            os.replace(stripped, path)
        else:
            stripped.unlink()


def included_modules(report: Path) -> set[str]:
    """The modules in the binary, from Nuitka's compilation report (--report)."""
    return {m.get("name", "") for m in ElementTree.parse(report).getroot().iter("module")}


def check_early_imports(report: Path, network: bool = False) -> None:
    """A dropped start-up module still in the binary means EARLY_IMPORTS_PLUGIN did not apply
    (Nuitka changed): fail, instead of shipping them unnoticed."""
    still = sorted(included_modules(report) & set(early_not_needed(network)))
    if still:
        raise BuildError(f"Nuitka still included {', '.join(still[:5])}"
                         f"{' ...' if len(still) > 5 else ''} ({report}): the plugin "
                         f"{EARLY_IMPORTS_PLUGIN.name} did not apply to this Nuitka",
                         f"update {EARLY_IMPORTS_PLUGIN} for this Nuitka version")


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def freeze(ui: Ui, output: Path, python: str = sys.executable, network: bool = False,
           arch: Arch | None = None) -> Frozen:
    """Compile into a temporary folder beside `output`, then swap it into place; for another
    CPU than this machine's (`arch`), in a Debian tree of it (foreign.py)."""
    if arch is not None and arch != host_arch():
        return _freeze_foreign(ui, output, arch, network)
    if python == sys.executable and importlib.util.find_spec("nuitka") is None:
        raise BuildError(f"Nuitka is not installed for {python}; it compiles storage-init "
                         "into the frozen folder the mini-initramfs carries",
                         f"{python} -m pip install '.[freeze]' in the source checkout (Nuitka, "
                         "pyudev, pyroute2), or pass --storage-init DIR with a folder frozen "
                         "elsewhere (initoverlayfs-freeze --output DIR)")
    if network and importlib.util.find_spec("pyroute2") is None:
        raise BuildError("--network needs pyroute2 in the Python that freezes storage-init",
                         f"{python} -m pip install '.[freeze]' in the source checkout")
    need("patchelf", "by Nuitka for standalone programs")
    need("gcc", "by Nuitka to compile storage-init")
    script = Path(storage_init.__file__).parent / "__main__.py"
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".freeze-") as tmp:
        config = Path(tmp) / "storage-init.nuitka-package.config.yml"
        config.write_text(package_configuration(network))
        with ui.step("compiling storage-init with Nuitka (a few minutes)"):
            run(ui, nuitka_command(python, script, Path(tmp), os.cpu_count() or 1, config,
                                   network), env=link_environment())
        dist = Path(tmp) / "__main__.dist"
        if not (dist / BINARY).is_file():
            raise BuildError(f"Nuitka finished but made no {dist / BINARY}")
        check_early_imports(Path(tmp) / REPORT, network)
        for name in unused_extensions(network):
            (dist / name).unlink(missing_ok=True)
        with ui.step("stripping debug info from the extension modules"):
            strip_debug(ui, dist)
        dirs = elf.search_dirs()
        for soname in RUNTIME_LIBRARIES:
            found = next((Path(d) / soname for d in dirs if (Path(d) / soname).is_file()), None)
            if found is None:
                raise BuildError(f"{soname} not found in {', '.join(dirs)}",
                                 "install libudev1 (pyudev loads it at boot)")
            shutil.copyfile(found.resolve(), dist / soname)
        (dist / STAMP).write_text(source_key(python, network) + "\n")
        if network:
            (dist / NETWORK_MARK).write_text("pyroute2 " + metadata.version("pyroute2") + "\n")
        _swap(dist, output)
    return Frozen(output, folder_size(output), time.monotonic() - started)


def _swap(dist: Path, output: Path) -> None:
    old = output.with_name(f".{output.name}.old")
    if output.exists():
        os.replace(output, old)
    os.replace(dist, output)
    shutil.rmtree(old, ignore_errors=True)


def _freeze_foreign(ui: Ui, output: Path, arch: Arch, network: bool) -> Frozen:
    """The freeze run in the cached Debian tree of `arch`, by its Python; the folder then
    names that tree (LIBRARIES_MARK) for the builder."""
    started = time.monotonic()
    foreign.check_host(arch)
    tree = foreign.make_tree(ui, arch, tree_dir(arch))
    output.parent.mkdir(parents=True, exist_ok=True)
    sources = [Path(storage_init.__file__).parent, Path(__file__).parent]
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".freeze-") as tmp:
        dist = foreign.freeze_in_tree(ui, arch, tree, sources, Path(tmp), network)
        if folder_arch(dist) != arch:
            raise BuildError(f"the freeze in {tree} made no {arch.name} {dist / BINARY}")
        (dist / STAMP).write_text(source_key(network=network, arch=arch) + "\n")
        (dist / LIBRARIES_MARK).write_text(os.fspath(tree) + "\n")
        _swap(dist, output)
    return Frozen(output, folder_size(output), time.monotonic() - started)


def folder_arch(folder: Path) -> Arch | None:
    """The CPU the folder's storage-init binary is for (None: not one we build for)."""
    try:
        with (folder / BINARY).open("rb") as f:
            return of_elf(f.read(20))
    except OSError:
        return None


def library_root(folder: Path) -> Path:
    """Where the libraries of the folder's binary are: / for this machine's CPU, else the
    Debian tree it was frozen in."""
    found = folder_arch(folder)
    if found is None or found == host_arch():
        return Path("/")
    mark = folder / LIBRARIES_MARK
    tree = Path(mark.read_text().strip()) if mark.is_file() else None
    if tree is None or not (tree / "etc/ld.so.conf").is_file():
        raise BuildError(f"{folder} holds an {found.name} storage-init, and the {found.name} "
                         "libraries it was linked with are not on this machine"
                         + (f" (its tree {tree} is gone)" if tree else ""),
                         f"freeze it here: initoverlayfs-freeze --arch {found.name}")
    return tree


def tree_dir(arch: Arch) -> Path:
    """The Debian tree of `arch` that freezes for it, beside the frozen folders."""
    return cache_dir().with_name(f"freeze-tree-{arch.name}")


def cache_dir(network: bool = False, arch: Arch | None = None) -> Path:
    """Where a source checkout keeps its frozen folder between builds (one per CPU)."""
    name = "storage-init-network" if network else "storage-init"
    if arch is not None and arch != host_arch():
        name += f"-{arch.name}"
    checkout = Path(storage_init.__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache" / name
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "initoverlayfs" / name


def is_current(folder: Path, python: str = sys.executable, network: bool = False,
               arch: Arch | None = None) -> bool:
    stamp = folder / STAMP
    return stamp.is_file() and stamp.read_text().strip() == source_key(python, network, arch)


def default_frozen(ui: Ui, network: bool = False, arch: Arch | None = None) -> Frozen:
    """The installed frozen folder; in a source checkout, the cached one, refrozen only when
    storage-init's sources (or Python, or Nuitka) changed. For another CPU than this
    machine's, always the cached one (frozen in a tree of that CPU)."""
    installed = INSTALLED_NETWORK if network else INSTALLED
    native = arch is None or arch == host_arch()
    if native and (installed / BINARY).is_file() and not (
            Path(storage_init.__file__).resolve().parents[1] / "pyproject.toml").is_file():
        return Frozen(installed, folder_size(installed), 0.0)
    return current_or_freeze(ui, cache_dir(network, arch), network=network, arch=arch)


def current_or_freeze(ui: Ui, folder: Path, network: bool = False,
                      arch: Arch | None = None) -> Frozen:
    """`folder` as it is when it was frozen from the same sources, else frozen again. One
    process at a time (an flock beside the folder): two builds started together (the test
    tiers and their background machines, two terminals) freeze once, and neither swaps the
    folder away while the other reads it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f".{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current(folder, network=network, arch=arch):
            ui.info(f"reusing frozen storage-init in {folder} (sources unchanged)")
            return Frozen(folder, folder_size(folder), 0.0)
        return freeze(ui, folder, network=network, arch=arch)


def has_network(folder: Path) -> bool:
    return (folder / NETWORK_MARK).is_file()


def check_folder(folder: Path) -> Path:
    binary = folder / BINARY
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise BuildError(f"{folder} is not a frozen storage-init folder (no executable "
                         f"{BINARY} in it)", "make one with `initoverlayfs-freeze --output DIR`")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="initoverlayfs-freeze",
        description="Compile storage-init with Nuitka into a standalone folder (the binary, "
                    "its extension modules and libudev.so.1) for the mini-initramfs.")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder to create or replace (default: the source checkout's "
                             "cache, .cache/storage-init)")
    parser.add_argument("--network", action="store_true",
                        help="the variant for a bootfs on the network (NBD): with pyroute2's "
                             "netlink message classes (default output: "
                             ".cache/storage-init-network)")
    parser.add_argument("--arch", metavar="ARCH",
                        help="the CPU to freeze for: amd64 (x86_64) or arm64 (aarch64); "
                             "default: this machine's. Another CPU's freeze runs in a Debian "
                             "tree of it through qemu-user (needs root, mmdebstrap and "
                             "qemu-user-static; the tree is made once, in "
                             ".cache/freeze-tree-ARCH) (default output: "
                             ".cache/storage-init-ARCH)")
    parser.add_argument("--if-changed", action="store_true",
                        help="do nothing when the folder was frozen from the same sources")
    parser.add_argument("--debug", action="store_true", help="show each command as run")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    ui = Ui("initoverlayfs-freeze", debug=args.debug)
    try:
        arch = named_arch(args.arch) if args.arch else host_arch()
        output = (args.output or cache_dir(args.network, arch)).absolute()
        frozen = (current_or_freeze(ui, output, network=args.network, arch=arch)
                  if args.if_changed else freeze(ui, output, network=args.network, arch=arch))
        if not frozen.seconds:
            return 0  # --if-changed, and it was current (said by current_or_freeze)
    except BuildError as exc:
        print(f"initoverlayfs-freeze: error: {exc}", file=sys.stderr)
        return 1
    print(f"frozen storage-init: {frozen.folder} ({frozen.size / 1e6:.1f} MB, "
          f"{sum(1 for _ in frozen.folder.iterdir())} files) in {frozen.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
