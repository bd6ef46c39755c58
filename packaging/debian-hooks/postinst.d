#!/bin/sh
# Debian's kernel packages run /etc/kernel/postinst.d/* with KVER and the kernel's path. This
# file is named to run after the initramfs generator's hook and before GRUB's zz-update-grub.
# It stays after `apt remove initoverlayfs` (a conffile) and then does nothing.
[ -x /usr/lib/initoverlayfs/kernel-hook ] || exit 0
exec /usr/lib/initoverlayfs/kernel-hook postinst "$@"
