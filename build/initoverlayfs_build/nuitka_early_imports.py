"""A Nuitka user plugin (freeze.py passes it with --user-plugin): the modules Nuitka ships
because "CPython's start might need them" are cut down to what storage-init's start can need.

Nuitka decides what a standalone program's interpreter start needs by importing, in a child
Python, every `encodings` submodule, `locale` and the real `inspect`
(nuitka/freezer/ImportDetection.py, `_detectEarlyImports`), and then ships all of them and
their imports in the binary whether the program uses them or not. For storage-init that was
bytecode no boot loads:
- about 100 codecs: cp*, mac_*, iso8859_*, koi8_* and the CJK ones, whose C halves the freeze
  already deletes (freeze.UNUSED_EXTENSIONS). The binary runs in UTF-8 mode, so the
  interpreter's own encodings are UTF-8, and storage-init decodes by name only UTF-8 and
  UTF-16-LE (GPT partition names). A codec dropped here is a LookupError ("unknown
  encoding"), not a crash at start;
- `dis` and `opcode`, which only the real `inspect` imports: the freeze's `inspect` is
  frozen_inspect.py, which imports nothing (with the codecs, 0.7 MB);
- what the real `inspect` and `locale` import and storage-init does not, since
  storage_init/cli.py replaced argparse: ast, tokenize and linecache, re with enum,
  collections, functools, contextlib, operator and reprlib, and quopri (with argparse's own
  imports, which freeze.NOT_NEEDED leaves out, 0.9 MB). The network variant still has those
  its pyroute2 imports (freeze.NETWORK_NEEDS): Nuitka follows them from pyroute2 like any
  import.

The plugin replaces `_detectEarlyImports` with a filter over the original's result when Nuitka
loads it. Nuitka would still ship these modules as "the non-excluded parts of the standard
library", so freeze.py also names them in --nofollow-import-to (freeze.early_not_needed, from
`dropped` here); nothing imports them by name. freeze.py checks Nuitka's report afterwards
(freeze.check_early_imports) and fails when a Nuitka update stops this from applying.

Loaded by Nuitka from this path, not imported by the builder (the unit tier loads it by path).
"""

from __future__ import annotations

from typing import Any

from nuitka.plugins.PluginBase import NuitkaPluginBase

# encodings kept: the package's own helpers and the Unicode codecs (cheap, and what a
# decode by name is likely to ask for)
KEPT_ENCODINGS = frozenset({
    "aliases", "ascii", "latin_1", "utf_8", "utf_8_sig", "utf_16", "utf_16_be", "utf_16_le",
    "utf_32", "utf_32_be", "utf_32_le", "unicode_escape", "raw_unicode_escape"})
# the real inspect's and locale's imports, and the C halves of the CJK codecs
NOT_AT_START = frozenset({
    "dis", "opcode", "ast", "tokenize", "token", "linecache", "locale", "quopri", "keyword",
    "re", "re._casefix", "re._compiler", "re._constants", "re._parser", "enum", "collections",
    "collections.abc", "functools", "contextlib", "operator", "reprlib", "copyreg",
    "_multibytecodec", "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp",
    "_codecs_kr", "_codecs_tw"})


def dropped(name: str) -> bool:
    """Whether an early import is left to the normal import decisions."""
    package, _, codec = name.partition(".")
    if package == "encodings" and codec:
        return codec not in KEPT_ENCODINGS
    return name in NOT_AT_START


def install(detection: Any) -> None:
    """Make nuitka.freezer.ImportDetection report only the early imports not `dropped`."""
    original = getattr(detection, "_detectEarlyImports", None)
    if original is None or not hasattr(detection, "_early_modules_names"):
        raise RuntimeError("initoverlayfs-early-imports: Nuitka's ImportDetection has no "
                           "_detectEarlyImports any more; update nuitka_early_imports.py")
    if getattr(original, "initoverlayfs_filtered", False):
        return

    def filtered() -> set[Any]:
        return {name for name in original() if not dropped(str(name))}

    filtered.initoverlayfs_filtered = True  # type: ignore[attr-defined]
    detection._detectEarlyImports = filtered
    detection._early_modules_names = None  # computed again, through the filter


class StorageInitEarlyImports(NuitkaPluginBase):  # type: ignore[misc]
    plugin_name = "initoverlayfs-early-imports"
    plugin_desc = "only the start-up modules storage-init can need: no unused codecs, no ast, no re"

    def __init__(self) -> None:
        from nuitka.freezer import ImportDetection

        install(ImportDetection)

    @staticmethod
    def isAlwaysEnabled() -> bool:
        return True
