"""The dm-verity device over the image's loop device: mapped with a table that makes a bad
block an I/O error and its first block read (so a wrong root hash fails here, with a message),
then sealed just before init takes over (the same table with the rd.emergency= reaction to a
corrupted block) and left to be removed with the image's last user.

The format (superblock, table words, tree sizes) is storage_init/verity.py; the ioctls are
storage_init/dm.py; the step that calls this, with its messages' context, is steps.setup_verity.
"""

from __future__ import annotations

import errno
import os

from . import TYPE_CHECKING, dm
from .errors import BootError, failing
from .record import record
from .verity import BLOCK, DM_NAME, ON_CORRUPTION, Verity

if TYPE_CHECKING:
    from collections.abc import Callable

    from .kernelapi import KernelApi
    from .log import Log

NO_VERITY_HINT = "that the kernel has dm-verity (CONFIG_DM_VERITY, module dm-verity)"


@record(frozen=True)
class Mapped:
    """A dm-verity device, until `seal` hands it over."""

    control: int  # /dev/mapper/control, open: /dev moves away before the seal
    backing: str  # the loop device as major:minor, for the table
    node: str  # the device to mount, /dev/dm-N


def map_over(kernel: KernelApi, dev: str, control: int, tree: Verity, loop_device: str,
             image: str, refusal: Callable[[], BootError],
             read_image: Callable[[int], bytes]) -> Mapped:
    """Map `tree` over `loop_device` (which holds `image`) and read the device's first block.
    `refusal` is the error for a root hash the tree does not give; `read_image` reads the
    image's own block (to tell the disk's I/O error from verity's refusal)."""
    rdev = kernel.stat(loop_device).st_rdev
    backing = f"{os.major(rdev)}:{os.minor(rdev)}"
    with failing(f"set up dm-verity over {loop_device}", NO_VERITY_HINT):
        _, minor = dm.create(kernel, control, DM_NAME)
    node = f"{dev}/dm-{minor}"
    try:
        with failing(f"set up dm-verity over {loop_device}", NO_VERITY_HINT):
            dm.load(kernel, control, DM_NAME, tree.sectors, "verity", tree.table(backing))
            dm.resume(kernel, control, DM_NAME)
        # No corruption option in this table yet: a root hash that the tree does not give is
        # an I/O error on this first read, here, and not a restart in the middle of the mount.
        try:
            fd = kernel.open(node, os.O_RDONLY)
            try:
                kernel.pread(fd, 0, BLOCK)
            finally:
                kernel.close(fd)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise BootError(f"read {node}, the dm-verity device of {image}",
                                "/dev (devtmpfs)", exc) from None
            read_image(0)  # the disk's own I/O error, or else verity's refusal
            raise refusal() from None
    except BaseException:
        try:  # noqa: SIM105  (no contextlib at boot: see errors.failing)
            dm.remove(kernel, control, DM_NAME)  # no half-set-up device for rd.shell
        except OSError:
            pass
        raise
    return Mapped(control, backing, node)


def seal(kernel: KernelApi, log: Log, mapped: Mapped, tree: Verity, action: str) -> None:
    """From here on a corrupted block is never an I/O error that init may step over: the
    table again with the reaction `action` (rd.emergency=) asks for; then the device is
    removed once its last user goes. Failures are warnings: the table in place already
    refuses every corrupted block. Closes the control device."""
    option = ON_CORRUPTION[action]
    try:
        dm.load(kernel, mapped.control, DM_NAME, tree.sectors, "verity",
                tree.table(mapped.backing, option))
        dm.resume(kernel, mapped.control, DM_NAME)
        log.info(f"dm-verity: {option} from here on (rd.emergency={action})")
    except OSError as exc:
        log.warning(f"cannot switch dm-verity to {option} ({exc.strerror}); a corrupted "
                    "block stays an I/O error for whoever reads it")
    try:
        # Gone with the image's last user (initoverlayfs-release.service's unmount): it holds
        # the loop device, the loop device the image, the image the read-only mount of the
        # bootfs, and while that lives the real root cannot mount /boot read-write.
        dm.remove(kernel, mapped.control, DM_NAME, deferred=True)
    except OSError as exc:
        log.warning(f"cannot schedule the removal of /dev/mapper/{DM_NAME} "
                    f"({exc.strerror}); /boot stays held read-only until `dmsetup remove "
                    f"{DM_NAME}` after /run/initoverlayfs is unmounted")
    finally:
        kernel.close(mapped.control)
