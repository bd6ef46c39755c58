"""A Nuitka user plugin (freeze.py passes it with --user-plugin): storage-init's own modules and
pyudev go into the binary as bytecode, not as C.

Nuitka compiles every non-stdlib module to C by default. For a program that runs once per
boot, mostly in syscalls, that buys nothing and costs start time: each compiled module brings
its constants blob and its C functions, which the loader maps and relocates, and the compiled
module objects are built at import. Measured on a 0 MB payload under QEMU TCG (median of 3
interleaved boots): time to init 3.88 -> 3.29 s, our imports (first line to first step)
356 -> 224 ms, binary 10.96 -> 9.52 MB, mini-initramfs 5.17 -> 4.75 MB compressed.
Stdlib modules are bytecode already (Nuitka's own choice for them).

Loaded by Nuitka from this path, not imported by the builder.
"""

from nuitka.plugins.PluginBase import NuitkaPluginBase

BYTECODE_PACKAGES = ("storage_init", "pyudev", "pyroute2")  # pyroute2: --network only


class StorageInitBytecode(NuitkaPluginBase):  # type: ignore[misc]
    plugin_name = "initoverlayfs-bytecode"
    plugin_desc = "storage-init and pyudev as bytecode: a faster start, a smaller binary"

    @staticmethod
    def isAlwaysEnabled() -> bool:
        return True

    def decideCompilation(self, module_name: object) -> str | None:
        name = str(module_name)
        if any(name == p or name.startswith(p + ".") for p in BYTECODE_PACKAGES):
            return "bytecode"
        return None  # Nuitka's default: stdlib as bytecode, the rest (and __main__) as C
