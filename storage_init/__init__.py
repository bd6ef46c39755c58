"""storage-init: the PID 1 of the initoverlayfs mini-initramfs."""

__version__ = "0.1.0"

# typing.TYPE_CHECKING without importing typing, which storage-init needs only for mypy:
# every module PID 1 imports is start time (see record.py). mypy takes any name
# TYPE_CHECKING as true.
TYPE_CHECKING = False
