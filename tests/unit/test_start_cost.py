"""What keeps storage-init's start cheap: storage_init.record behaves as the dataclasses it
stands in for, the import graph stays free of the modules removed from it, nothing the freeze
leaves out is imported, and pyudev's stand-ins never outlive its import."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storage_init.record import FrozenInstanceError, field, record


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = field(default=(), compare=False)


@record
class Bag:
    name: str
    items: list[int] = field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class RefPoint:
    x: int
    y: int = 0
    tags: tuple[str, ...] = dataclasses.field(default=(), compare=False)


def test_init_defaults_and_keywords() -> None:
    assert (Point(1).x, Point(1).y, Point(1).tags) == (1, 0, ())
    assert Point(y=2, x=1) == Point(1, 2)
    assert Point.y == 0  # the default stays a class attribute, as with dataclasses


def test_repr_matches_dataclasses() -> None:
    assert repr(Point(1, 2, ("a",))).replace("Point", "RefPoint") == repr(RefPoint(1, 2, ("a",)))


def test_eq_and_hash_skip_uncompared_fields() -> None:
    assert Point(1, 2, ("a",)) == Point(1, 2, ("b",))
    assert hash(Point(1, 2, ("a",))) == hash(Point(1, 2, ("b",)))
    assert Point(1, 2) != Point(2, 1)
    other: object = (1, 2)
    assert Point(1, 2) != other  # another class is never equal
    assert len({Point(1), Point(1), Point(2)}) == 2


def test_frozen_rejects_assignment_and_deletion() -> None:
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del p.x
    assert isinstance(FrozenInstanceError("x"), AttributeError)


def test_mutable_record_gets_a_fresh_factory_value_and_no_hash() -> None:
    a, b = Bag("a"), Bag("b")
    a.items.append(1)
    assert b.items == []
    a.name = "c"
    assert a == Bag("c", [1])
    with pytest.raises(TypeError):
        hash(a)


def test_bad_arguments_fail_like_a_call() -> None:
    with pytest.raises(TypeError, match="missing argument 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected"):
        Point(1, z=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values"):
        Point(1, x=1)  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 3 arguments"):
        Point(1, 2, (), 4)  # type: ignore[call-arg]


def test_field_order_rule_and_match_args() -> None:
    with pytest.raises(TypeError, match="non-default field 'b'"):
        @record
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]
    assert Point.__match_args__ == ("x", "y", "tags")


def _probe(code: str) -> str:
    """Standard output of `code` in a fresh interpreter without site, so that only what the
    code imports is loaded, as in the frozen binary."""
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(sys.path)})
    return out.stdout


def test_storage_init_imports_none_of_the_costly_modules() -> None:
    # What PID 1 imports is its start time; these were removed from it (see record.py,
    # jsonout.py, steps.failing, globs.py; the frozen binary's own inspect is frozen_inspect.py,
    # which imports none of ast, dis, tokenize).
    costly = ("typing", "dataclasses", "socket", "argparse", "inspect", "ast", "dis", "tokenize",
              "json", "contextlib", "re", "enum", "fnmatch", "collections", "functools",
              # a boot from a local disk pays nothing for the network (issue 14)
              "pyroute2", "storage_init.network", "storage_init.rtnl", "storage_init.nbdproto")
    loaded = _probe("import sys, storage_init.main; print(' '.join(sys.modules))").split()
    assert "storage_init.kernel" in loaded
    assert "storage_init.cli" not in loaded  # only off PID 1 (main imports it there)
    assert [m for m in costly if m in loaded] == []


def test_nothing_the_freeze_leaves_out_is_imported_at_boot() -> None:
    # A module the freeze leaves out but something imports would stop the frozen binary at
    # boot; this runs the imports of a boot (pyudev included, through import_pyudev as a
    # boot does, and its enumeration) and of the command-line path, --help included.
    from initoverlayfs_build.freeze import NOT_NEEDED, UNUSED_EXTENSIONS, early_not_needed
    loaded = set(_probe(
        "import sys, io, storage_init.main as m, storage_init.udev as k\n"
        "c = k.import_pyudev().Context()\n"
        "[d.properties.get('DEVNAME') for d in c.list_devices(subsystem='block')]\n"
        "out, sys.stdout, sys.stderr = sys.stdout, io.StringIO(), io.StringIO()\n"
        "for args in (['--help'], ['--version'], ['--bogus'], ['--config']):\n"
        "    assert m.main(['storage-init', *args]) in (0, 2)\n"
        "sys.stdout = out\n"
        "print(' '.join(sys.modules))").split())
    assert {"pyudev", "storage_init.cli"} <= loaded
    assert sorted(m for m in NOT_NEEDED if m in loaded) == []
    assert sorted(m for m in early_not_needed() if m in loaded) == []
    assert sorted(m for m in (e.removesuffix(".so") for e in UNUSED_EXTENSIONS)
                  if m in loaded) == []


def test_the_network_freeze_leaves_out_nothing_a_network_boot_imports() -> None:
    # The --network variant keeps what pyroute2's message classes import of NOT_NEEDED and
    # UNUSED_EXTENSIONS; this builds every message a network boot sends (rtnl.messages() and
    # the builders) and checks the variant's exclusions against what that imported.
    from initoverlayfs_build.freeze import (
        NETWORK_NEEDS,
        early_not_needed,
        not_needed,
        unused_extensions,
    )
    loaded = set(_probe(
        "import sys, storage_init.main, storage_init.network, storage_init.rtnl as r\n"
        "r.link_up(2, 1400, 1); r.get_link(2, 2); r.add_address(2, '10.0.2.15', 24, 3)\n"
        "r.add_default_route(2, '10.0.2.2', 4); r.get_family('nbd', 5)\n"
        "r.nbd_connect(30, 3, 1 << 20, 512, 1, 6)\n"
        # a real kernel's RTM_NEWLINK (lo, with all its attributes), decoded as a boot does
        "import storage_init.kernel as k; kn = k.Kernel(); s = kn.netlink_open(r.NETLINK_ROUTE)\n"
        "kn.netlink_send(s, r.get_link(1, 7)); d = kn.netlink_recv(s, 5.0)\n"
        "assert d and r.link_state(next(m for t, q, m in r.split(d)))[0] == 1\n"
        "print(' '.join(sys.modules))").split())
    assert {"pyroute2.netlink.rtnl.ifinfmsg", "storage_init.nbdproto"} <= loaded
    optional = {"zlib", "bz2", "_bz2", "lzma", "_lzma"}
    assert sorted(m for m in not_needed(True) if m in loaded - optional) == []
    assert sorted(m for m in early_not_needed(True) if m in loaded) == []
    # and what it keeps for pyroute2 is what pyroute2 imports, nothing more
    assert sorted(NETWORK_NEEDS - loaded) == []
    assert sorted(m for m in (e.removesuffix(".so") for e in unused_extensions(True))
                  if m in loaded - optional) == []
    # and the pyroute2 package __init__ (asyncio, ssl, sqlite3...) never ran
    assert sorted(m for m in ("asyncio", "ssl", "sqlite3", "pyroute2.iproute") if m in loaded
                  ) == []


def test_the_network_freeze_adds_pyroute2_and_the_local_one_does_not(tmp_path: Path) -> None:
    from initoverlayfs_build import freeze
    config = tmp_path / "c.yml"
    local = freeze.nuitka_command("python3", tmp_path / "m.py", tmp_path, 2, config)
    network = freeze.nuitka_command("python3", tmp_path / "m.py", tmp_path, 2, config, True)
    assert [a for a in local if "pyroute2" in a and "nofollow" not in a] == []
    assert f"--include-package={','.join(freeze.NETWORK_PACKAGES)}" in network
    assert f"--include-module={','.join(freeze.NETWORK_MODULES)}" in network
    # the package is in (its submodules are found through it) with an empty __init__
    assert "pyroute2" in freeze.NETWORK_MODULES
    assert "- module-name: 'pyroute2" not in freeze.package_configuration()
    pyroute2 = freeze.package_configuration(network=True).split(
        "- module-name: 'pyroute2'\n")[1].split("\n- module-name:")[0]
    assert pyroute2.split("module_code: |\n")[1].strip() == freeze.PYROUTE2_INIT
    assert [type(n) for n in ast.parse(freeze.PYROUTE2_INIT).body] == [ast.Expr]  # a docstring
    assert freeze.source_key(network=True) != freeze.source_key()
    assert freeze.cache_dir(True) != freeze.cache_dir()


def test_the_network_freeze_hides_the_stood_in_imports_from_nuitka() -> None:
    # Each replaced import is in the installed pyroute2 exactly once (else the replacement
    # stops applying, and Nuitka follows multiprocessing, and with it libcrypto, again), and
    # what replaces it is the stand-in storage_init.rtnl put in sys.modules.
    import importlib.util
    import types

    from initoverlayfs_build import freeze

    from storage_init import rtnl
    config = freeze.package_configuration(network=True)
    stand_ins = rtnl._stand_ins()
    for module, names in freeze.STOOD_IN.items():
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None
        source = Path(spec.origin).read_text()
        block = config.split(f"- module-name: '{module}'\n")[1].split("\n- module-name:")[0]
        for name in names:
            assert name in stand_ins, name
            assert [ln.strip() for ln in source.splitlines()].count(f"import {name}") == 1
            assert source.count(f"import {name}") == 1, (module, name)
            assert f"'import {name}': '{freeze.stood_in(name)}'" in block
            namespace: dict[str, object] = {}
            saved = sys.modules.get(name)
            sys.modules[name] = stand_ins[name]
            try:
                exec(freeze.stood_in(name), namespace)
            finally:
                if saved is None:
                    del sys.modules[name]
                else:
                    sys.modules[name] = saved
            assert namespace[name] is stand_ins[name]
            assert isinstance(namespace[name], types.ModuleType)


def test_a_boot_with_pyudev_imports_no_re_collections_or_functools() -> None:
    # pyudev gets a lazy re (its regexes are in functions a boot does not call), the ABCs of
    # collections.abc from _collections_abc, and functools' wraps and partial
    out = _probe("import sys, storage_init.main, storage_init.udev as k\n"
                 "c = k.import_pyudev().Context()\n"
                 "[d.properties.get('DEVNAME') for d in c.list_devices(subsystem='block')]\n"
                 "print(*(m in sys.modules for m in ('re', 'enum', 'collections', 'functools')))\n"
                 "import pyudev.discover as d, pyudev.device as v, collections.abc as abc\n"
                 "print(d.re.compile(r'\\d+').fullmatch('42') is not None, 're' in sys.modules)\n"
                 "print(issubclass(v.Device, abc.Mapping), "
                 "d.wrap_exception(v.Devices.from_path).__name__)")
    assert out.splitlines() == ["False False False False", "True True",  # and it works when used
                                "True from_path"]


def test_pyudev_imports_when_the_real_collections_is_loaded_without_its_abc() -> None:
    # pyudev uses collections.abc without importing it; a host process may have collections
    out = _probe("import sys, collections, storage_init.udev as k\n"
                 "print(k.import_pyudev().Context() is not None)")
    assert out.splitlines() == ["True"]


def test_pyudev_stand_ins_exist_only_during_its_import() -> None:
    out = _probe("import sys, errno, storage_init.udev as k; pyudev = k.import_pyudev(); "
                 "print(' '.join(m for m in ('subprocess', 'datetime', 'ctypes.util') "
                 "if m in sys.modules)); "
                 "import pyudev._util as u\n"
                 "try: u.check_output(['udevadm', '--version'])\n"
                 "except OSError as e: print(errno.errorcode[e.errno])\n"
                 "import subprocess; print(hasattr(subprocess, 'Popen'))")
    assert out.splitlines() == ["", "ENOSYS", "True"]


def test_frozen_inspect_has_everything_the_nuitka_runtime_uses() -> None:
    # The installed Nuitka's runtime source is the reference: when a Nuitka update patches or
    # reads another name of inspect, this fails instead of the frozen binary at boot.
    import nuitka
    from initoverlayfs_build import frozen_inspect
    patcher = (Path(nuitka.__file__).parent / "build" / "static_src" / "InspectPatcher.c")
    source = patcher.read_text()
    used = set(re.findall(r'AttrString\(module_inspect, "(\w+)"', source))
    used |= set(re.findall(r"\binspect\.(\w+)", source))
    assert {"getgeneratorstate", "GEN_CLOSED", "_get_code_position"} <= used  # the parse works
    assert sorted(n for n in used if n not in vars(frozen_inspect)) == []
    with pytest.raises(AttributeError, match="minimal inspect module"):
        frozen_inspect.signature  # noqa: B018  (anything else fails loudly)


def test_frozen_inspect_imports_nothing_and_is_what_the_freeze_embeds() -> None:
    from initoverlayfs_build import freeze
    source = freeze.INSPECT_SOURCE.read_text()
    tree = ast.parse(source)
    assert [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)] == []
    config = freeze.package_configuration()
    assert "- module-name: 'inspect'" in config
    embedded = config.split("module_code: |\n", 1)[1]
    assert [line.removeprefix(" " * 8) for line in embedded.splitlines()] == source.splitlines()


def test_the_freeze_applies_its_start_cost_choices(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from initoverlayfs_build import freeze
    config = tmp_path / "c.yml"
    command = freeze.nuitka_command("python3", tmp_path / "m.py", tmp_path, 2, config)
    assert f"--user-package-configuration-file={config}" in command
    assert f"--user-plugin={freeze.BYTECODE_PLUGIN}" in command
    assert freeze.BYTECODE_PLUGIN.is_file()
    monkeypatch.setenv("LDFLAGS", "-Wl,-O1")
    assert freeze.link_environment() == {"LDFLAGS": "-Wl,-O1 -no-pie"}  # added, not replaced


@pytest.mark.filterwarnings("ignore:the imp module is deprecated:DeprecationWarning")
def test_bytecode_plugin_decides_for_our_packages_only() -> None:
    from initoverlayfs_build import freeze
    decide = freeze.load_plugin(freeze.BYTECODE_PLUGIN).StorageInitBytecode.decideCompilation
    assert [decide(None, n) for n in ("storage_init", "storage_init.kernel", "pyudev.device",
                                      "pyudevx", "storage_initx", "json", "__main__")] == [
        "bytecode", "bytecode", "bytecode", None, None, None, None]


def _precompiled_plugin() -> Any:
    from initoverlayfs_build import freeze
    return freeze.load_plugin(freeze.PRECOMPILED_PLUGIN)


def test_the_start_up_patch_source_is_read_from_the_installed_nuitka() -> None:
    # Fails when a Nuitka update moves or changes InspectPatcher.c's Python source: then the
    # shim would only fall back to the compiler (and the VM tier's timings check fails too).
    plugin = _precompiled_plugin()
    source = plugin.patch_source(plugin.PATCHER.read_text())
    code = compile(source, plugin.NAME, "exec", dont_inherit=True)
    names = set(code.co_names)
    assert {"_old_GeneratorWrapper", "_types_coroutine", "_coroutine_wrapped"} <= names
    assert "_get_code_position" in names  # the Python 3.11 part of the #if
    assert "\\n" not in source and source.count("\n") > 40


def test_the_shim_serves_that_source_precompiled_and_compiles_anything_else(
        tmp_path: Path) -> None:
    """The shim's C, built against this Python and called in this process: the patch source
    comes back as the code object compiled at build time (and says so in sys), any other
    source from the real compiler."""
    import ctypes
    import sysconfig

    plugin = _precompiled_plugin()
    source = plugin.patch_source(plugin.PATCHER.read_text())
    (tmp_path / "shim.c").write_text(plugin.shim_code(source))
    library = tmp_path / "shim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f"-I{sysconfig.get_paths()['include']}",
                    f"-DPy_CompileStringExFlags={plugin.SHIM}", "-o", str(library),
                    str(tmp_path / "shim.c")], check=True, capture_output=True)
    shim = getattr(ctypes.PyDLL(str(library)), plugin.SHIM)
    shim.restype = ctypes.py_object
    shim.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                     ctypes.c_int]
    file_input = 257  # Py_file_input
    try:
        code = shim(source.encode(), plugin.NAME.encode(), file_input, None, -1)
        assert sys._storage_init_precompiled is True  # type: ignore[attr-defined]
        assert code.co_filename == plugin.NAME
        assert code == compile(source, plugin.NAME, "exec", dont_inherit=True)
        del sys._storage_init_precompiled  # type: ignore[attr-defined]
        other = shim(b"x = 6 * 7\n", plugin.NAME.encode(), file_input, None, -1)
        namespace: dict[str, object] = {}
        exec(other, namespace)
        assert namespace["x"] == 42 and not hasattr(sys, "_storage_init_precompiled")
    finally:
        if hasattr(sys, "_storage_init_precompiled"):
            del sys._storage_init_precompiled


def _early_imports_plugin() -> Any:
    from initoverlayfs_build import freeze
    return freeze.load_plugin(freeze.EARLY_IMPORTS_PLUGIN)


def test_early_imports_keep_what_a_start_or_storage_init_can_need() -> None:
    dropped = _early_imports_plugin().dropped
    kept = ["encodings", "encodings.aliases", "encodings.utf_8", "encodings.utf_16_le",
            "encodings.ascii", "encodings.latin_1", "inspect", "codecs", "io", "os", "abc",
            "stat", "posixpath", "types", "warnings", "_collections_abc"]
    assert [n for n in kept if dropped(n)] == []
    assert all(map(dropped, ["encodings.cp437", "encodings.big5", "encodings.mac_roman",
                             "encodings.idna", "dis", "opcode", "_codecs_jp",
                             "_multibytecodec", "ast", "tokenize", "locale", "re", "enum"]))
    # the codecs storage-init decodes with by name (probe.py), and the interpreter's own
    source = (Path(__file__).parents[2] / "storage_init" / "probe.py").read_text()
    for codec in set(re.findall(r'\.decode\("([\w-]+)"', source)) | {"utf-8"}:
        assert not dropped("encodings." + codec.replace("-", "_")), codec


def test_early_imports_filter_the_original_result_once() -> None:
    import types

    plugin = _early_imports_plugin()
    calls = []

    def original() -> set[str]:
        calls.append(1)
        return {"encodings.utf_8", "encodings.cp437", "dis", "inspect"}

    detection = types.SimpleNamespace(_detectEarlyImports=original,
                                      _early_modules_names=("stale",))
    plugin.install(detection)
    plugin.install(detection)  # a second plugin instance does not filter twice
    assert detection._early_modules_names is None  # computed again, through the filter
    assert detection._detectEarlyImports() == {"encodings.utf_8", "inspect"}
    assert calls == [1]
    with pytest.raises(RuntimeError, match=r"update nuitka_early_imports\.py"):
        plugin.install(types.SimpleNamespace())


def test_the_installed_nuitka_still_has_what_the_early_imports_plugin_replaces() -> None:
    from nuitka.freezer import ImportDetection

    assert callable(ImportDetection._detectEarlyImports)
    assert hasattr(ImportDetection, "_early_modules_names")


def test_the_freeze_leaves_the_dropped_early_imports_out_and_checks_it(tmp_path: Path) -> None:
    from initoverlayfs_build import freeze
    from initoverlayfs_build.errors import BuildError

    plugin = _early_imports_plugin()
    names = freeze.early_not_needed()
    assert "encodings.cp437" in names and "encodings.utf_8" not in names
    assert all(map(plugin.dropped, names)) and set(names) >= plugin.NOT_AT_START
    command = freeze.nuitka_command("python3", tmp_path / "m.py", tmp_path, 2, tmp_path / "c")
    assert f"--user-plugin={freeze.EARLY_IMPORTS_PLUGIN}" in command
    assert f"--report={tmp_path / freeze.REPORT}" in command
    nofollow = next(a for a in command if a.startswith("--nofollow-import-to="))
    assert set(names) <= set(nofollow.split("=", 1)[1].split(","))
    report = tmp_path / freeze.REPORT
    report.write_text('<nuitka-compilation-report><module name="encodings.utf_8" />'
                      '<module name="os" /></nuitka-compilation-report>')
    freeze.check_early_imports(report)
    for dropped in ("encodings.cp437", "dis", "_codecs_jp"):
        report.write_text(f'<nuitka-compilation-report><module name="os" />'
                          f'<module name="{dropped}" /></nuitka-compilation-report>')
        with pytest.raises(BuildError, match=f"still included {dropped} .*did not apply"):
            freeze.check_early_imports(report)
