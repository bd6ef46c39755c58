"""The layout stays in floors: no two modules of storage_init or initoverlayfs_build import
each other, not even for types (an import under TYPE_CHECKING counts: it is a dependency the
reader has to follow all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"storage_init": REPO / "storage_init",
            "initoverlayfs_build": REPO / "build" / "initoverlayfs_build"}


def imports_of(package: str, path: Path) -> set[str]:
    """The modules of either package that `path` imports, at run time or for types."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = f"{package}.{node.module}" if node.module else package
            elif node.module and node.module.split(".")[0] in PACKAGES:
                base = node.module
            else:
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names
                         if alias.name.split(".")[0] in PACKAGES)
    return found


def test_no_two_modules_import_each_other() -> None:
    graph = {f"{package}.{path.stem}": imports_of(package, path)
             for package, directory in PACKAGES.items()
             for path in directory.glob("*.py") if path.stem != "__init__"}
    assert len(graph) > 60  # both packages were found
    mutual = sorted((a, b) for a in graph for b in graph[a]
                    if a < b and b in graph and a in graph[b])
    assert not mutual, mutual
