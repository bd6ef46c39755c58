"""A Nuitka user plugin (freeze.py passes it with --user-plugin): the Python source that
Nuitka's runtime compiles at every start is served precompiled, so that a boot never runs
CPython's parser and compiler.

Nuitka's InspectPatcher.c patches `types` and `inspect` for compiled generators and
coroutines at every start, with a few dozen lines of Python that it hands to
Py_CompileString. Compiling is cheap natively (2.1 million instructions, 5% of a frozen hello
world's 38.6 million) but it is the only use of CPython's parser and compiler at boot, and
under QEMU TCG code that runs once is mostly the cost of translating it: a frozen hello world
under qemu-x86_64 took 0.31 s with the compile and 0.28 s without (medians of 10).

How, without touching Nuitka's files: a preprocessor symbol renames Py_CompileStringExFlags
(which the Py_CompileString macro calls) in the C that Nuitka compiles, to a function of this
plugin's extra code file. That function returns the code object unmarshalled from bytes
compiled here, at build time, by the same Python, when it is asked for exactly that source
under exactly that name; anything else goes to the real compiler. It then sets
sys._storage_init_precompiled, which storage-init records in its timings, so the VM tier sees
that the shortcut was taken (and fails when a Nuitka update changes the source).

Loaded by Nuitka from this path, not imported by the builder (the unit tier loads it by path
to test `patch_source` and `shim_code`).
"""

import marshal
import sys
from pathlib import Path

import nuitka
from nuitka.plugins.PluginBase import NuitkaPluginBase

SHIM = "storage_init_compile_string"
PATCHER = Path(nuitka.__file__).parent / "build" / "static_src" / "InspectPatcher.c"
VARIABLE = "wrapper_enhancement_code"
NAME = "<exec>"
ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


def _version_condition(line: str) -> bool:
    """`#if PYTHON_VERSION >= 0x3b0` for the Python running this."""
    words = line.split()
    if words[:3] != ["#if", "PYTHON_VERSION", ">="] or len(words) != 4:
        raise ValueError(f"unexpected preprocessor line in {VARIABLE}: {line!r}")
    major_minor = (sys.version_info.major << 8) | (sys.version_info.minor << 4)
    return major_minor >= int(words[3], 16)


def _literals(text: str) -> str:
    """The concatenated value of the C string literals in `text`."""
    out, i = [], 0
    while (start := text.find('"', i)) >= 0:
        i = start + 1
        while text[i] != '"':
            if text[i] == "\\":
                if text[i + 1] not in ESCAPES:
                    raise ValueError(f"unexpected escape \\{text[i + 1]} in {VARIABLE}")
                out.append(ESCAPES[text[i + 1]])
                i += 2
            else:
                out.append(text[i])
                i += 1
        i += 1
    return "".join(out)


def patch_source(c_source: str) -> str:
    """The Python source of InspectPatcher.c's `wrapper_enhancement_code`, as the C compiler
    builds it for this Python (line splices joined, `#if PYTHON_VERSION` parts decided)."""
    head = f"static char const *{VARIABLE} = "
    start = c_source.index(head) + len(head)
    end = c_source.index(";", c_source.index("#endif", start))  # the one after the #if part
    body = c_source[start:end].replace("\\\n", "")
    kept, active = [], True
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith("#if"):
            active = _version_condition(stripped)
        elif stripped == "#endif":
            active = True
        elif stripped.startswith("#"):
            raise ValueError(f"unexpected preprocessor line in {VARIABLE}: {stripped!r}")
        elif active:
            kept.append(line)
    return _literals("\n".join(kept))


def _c_bytes(data: bytes) -> str:
    return ",".join(str(b) for b in data)


def shim_code(source: str) -> str:
    """The C of the renamed Py_CompileStringExFlags: the precompiled code object for
    `source` under NAME, the real compiler for anything else."""
    code = marshal.dumps(compile(source, NAME, "exec", dont_inherit=True))
    return f"""\
/* storage-init (build/initoverlayfs_build/nuitka_precompiled.py): Nuitka's start-up patch
   as a code object compiled at build time. */
#include "Python.h"
#include "marshal.h"
#include <string.h>

#undef Py_CompileStringExFlags
PyAPI_FUNC(PyObject *) Py_CompileStringExFlags(const char *, const char *, int,
                                               PyCompilerFlags *, int);

static const char storage_init_source[] = {{{_c_bytes(source.encode())},0}};
static const char storage_init_code[] = {{{_c_bytes(code)}}};

PyObject *{SHIM}(const char *str, const char *filename, int start,
                 PyCompilerFlags *flags, int optimize) {{
    if (start == Py_file_input && flags == NULL && strcmp(filename, "{NAME}") == 0 &&
        strcmp(str, storage_init_source) == 0) {{
        PyObject *code = PyMarshal_ReadObjectFromString(storage_init_code,
                                                        sizeof(storage_init_code));
        if (code != NULL) {{
            PySys_SetObject("_storage_init_precompiled", Py_True);
            return code;
        }}
        PyErr_Clear();
    }}
    return Py_CompileStringExFlags(str, filename, start, flags, optimize);
}}
"""


class StorageInitPrecompiled(NuitkaPluginBase):  # type: ignore[misc]
    plugin_name = "initoverlayfs-precompiled"
    plugin_desc = "Nuitka's start-up patch precompiled: no parser or compiler at boot"

    @staticmethod
    def isAlwaysEnabled() -> bool:
        return True

    def getPreprocessorSymbols(self, onefile: bool) -> dict[str, str]:
        return {"Py_CompileStringExFlags": SHIM}

    def getExtraCodeFiles(self) -> dict[str, str]:
        return {"storage_init_precompiled.c": shim_code(patch_source(PATCHER.read_text()))}
