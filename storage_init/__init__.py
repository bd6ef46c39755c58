"""storage-init: the PID 1 of the initoverlayfs mini-initramfs."""

__version__ = "0.1.0"
