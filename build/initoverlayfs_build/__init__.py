"""The builder: freezes storage-init and produces the mini-initramfs, the initoverlayfs (EROFS)
image and the config for a kernel version, on a real system or under a staging sysroot.

The folder is `build/` in the source tree; the import name is `initoverlayfs_build`, because
`build` is PyPA's build tool."""

__version__ = "0.1.0"
