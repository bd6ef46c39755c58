#!/bin/sh
# update-initramfs runs /etc/initramfs/post-update.d/* with KVER and the initramfs it made:
# remake initoverlayfs's pair from it. Does nothing once initoverlayfs is removed.
[ -x /usr/lib/initoverlayfs/kernel-hook ] || exit 0
exec /usr/lib/initoverlayfs/kernel-hook post-update "$@"
