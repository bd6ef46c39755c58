"""storage_init.shared: the builder's list of the files the mini-initramfs and the image share."""

from __future__ import annotations

import pytest

from storage_init import shared


def test_the_list_keeps_normalised_paths_below_usr_once_each_in_order() -> None:
    text = ("# written by initoverlayfs-install\n/usr/lib/b.so\n\n/usr/bin/a\n"
            "/usr/lib/b.so\n  /usr/lib/c/d.so  \n")
    assert shared.parse(text) == ("/usr/lib/b.so", "/usr/bin/a", "/usr/lib/c/d.so")
    assert shared.parse("") == ()


@pytest.mark.parametrize("line", ["usr/lib/a.so", "/usr/lib/../../etc/shadow", "/etc/shadow",
                                  "/usr//lib/a.so", "/usr/lib/", "/usr"])
def test_a_path_that_is_not_normalised_or_not_below_usr_refuses_the_whole_list(
        line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        shared.parse(f"/usr/lib/ok.so\n{line}\n")


def test_the_folders_come_parents_first_each_once() -> None:
    assert shared.parents(("/usr/lib/x/a.so", "/usr/lib/x/b.so", "/usr/bin/c")) == (
        "/usr", "/usr/lib", "/usr/lib/x", "/usr/bin")
