"""Stand-ins for stdlib modules that a third-party package imports but storage-init never uses
through it: every module imported at boot is start time (under QEMU TCG, 20 to 50 times
what it costs natively: code that runs once is translated once, and that dominates).

A stand-in goes into sys.modules only where the real module is not loaded yet (in a host
process it usually is, and the package then gets the real one), and only for the duration of
the package's import: nothing else in the process ever sees it. The package keeps its
reference, so a stand-in must either do what the package needs of the module or fail loudly
(OSError ENOSYS, never a silent wrong answer), or be `lazy`, importing the real module on its
first use.
"""

from __future__ import annotations

import sys
import types

from . import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TypeVar

    T = TypeVar("T")


def module(name: str, **attrs: object) -> types.ModuleType:
    stand_in = types.ModuleType(name)
    stand_in.__dict__.update(attrs)
    return stand_in


def lazy(name: str) -> types.ModuleType:
    """A stand-in that imports the real module on its first attribute use (after the import
    of the package it stands in for; during it, such a use is an ImportError)."""
    stand_in = types.ModuleType(name)

    def real(attribute: str) -> object:
        if attribute.startswith("__"):  # introspection (repr, importlib) needs no real module
            raise AttributeError(attribute)
        if sys.modules.get(name) is stand_in:
            raise ImportError(f"{name}.{attribute} used during the import it stands in for "
                              "(storage_init.standins.lazy)")
        __import__(name)
        return getattr(sys.modules[name], attribute)

    stand_in.__getattr__ = real  # type: ignore[method-assign]
    return stand_in


def import_with(stand_ins: Mapping[str, types.ModuleType], importer: Callable[[], T]) -> T:
    """`importer()` with the stand-ins in sys.modules where the real ones are not loaded."""
    added = [name for name, stand_in in stand_ins.items()
             if sys.modules.setdefault(name, stand_in) is stand_in]
    try:
        return importer()
    finally:
        for name in added:
            del sys.modules[name]
