"""The config's keys are defined once (storage_init.config.KEYS): README's table is made from
that definition and must stay equal to it, the man page names every key, and both halves of
the contract (what the builder writes per build, what storage-init reads) come from it."""

from __future__ import annotations

from pathlib import Path

from initoverlayfs_build import install, manpage

from storage_init.config import (
    KEYS,
    PER_BUILD,
    config_lines,
    image_name,
    parse_config,
    verity_lines,
    verity_of,
)
from storage_init.verity import Verity

REPO = Path(__file__).resolve().parents[2]


def test_readme_table_is_made_from_the_keys() -> None:
    readme = (REPO / "README.md").read_text()
    assert manpage.config_table() in readme, (
        "README's config table differs from storage_init.config.KEYS: paste the output of "
        "`PYTHONPATH=.:build python -m initoverlayfs_build.manpage config-table`")
    installer = [key.name for key in KEYS if key.parse is None]
    sentence = readme.split(manpage.config_table(), 1)[1].split("\n\n", 1)[0]
    assert all(f"`{name}`" in sentence for name in installer), sentence


def test_the_man_page_names_every_key() -> None:
    page = (REPO / "packaging/man/initoverlayfs.conf.5").read_text()
    missing = [key.name for key in KEYS if key.name.replace("_", "\\_") not in page
               and key.name not in page]
    assert not missing, missing


def test_what_a_build_writes_is_what_storage_init_reads() -> None:
    tree = Verity("ab" * 32, "0011", 7, 8 * 4096)
    text = install.build_config("bootfs LABEL=b\nfs /boot/old.img\nverity_salt ff\n",
                                image_name("6.1", "0123456789abcdef"), tree)
    # the user's per-build keys are replaced, never repeated
    assert [key for _, key, _ in config_lines(text)] == [
        "bootfs", "fs", "verity_roothash", "verity_salt", "verity_data_blocks",
        "verity_hash_offset"]
    assert {key for _, key, _ in config_lines(text)} - {"bootfs"} == PER_BUILD
    config = parse_config(text)
    assert config.fs == "/boot/initoverlayfs-6.1-0123456789abcdef.img"
    assert verity_of(config) == tree
    assert verity_lines(tree) in text
