#!/bin/bash
# dracut module "initoverlayfs": the mini-initramfs. Without dracut's systemd module,
# storage-init is /init (rdinit mode); with it, storage-init runs as initoverlayfs.service
# and the initrd switches root into /initoverlayfs (systemd mode). Only included on request
# (initoverlayfs-install passes -m), since it replaces the rest of the initrd.
#
# $initdir, $moddir, $systemdsystemunitdir, $dracutsysrootdir and the inst* helpers come
# from dracut.
# shellcheck disable=SC2154

# The frozen storage-init folder, as a path inside the sysroot (dracut's helpers prepend
# $dracutsysrootdir themselves); initoverlayfs-install points elsewhere from a source tree.
frozen_source() {
    echo "${INITOVERLAYFS_FROZEN:-/usr/lib/initoverlayfs/storage-init}"
}

# Every file under DIR (a path inside the sysroot) to the same place below DEST; inst pulls
# in the libraries each ELF file needs.
inst_tree() {
    local dir=$1 dest=$2 file
    while IFS= read -r -d '' file; do
        file=${file#"$dracutsysrootdir"}
        inst "$file" "$dest/${file#"$dir"/}" || dfatal "initoverlayfs: cannot install $file"
    done < <(find "$dracutsysrootdir$dir" -type f ! -name .initoverlayfs-freeze -print0)
}

check() {
    require_binaries "$(frozen_source)/storage-init" || return 1
    return 255
}

depends() {
    return 0
}

installkernel() {
    # What storage-init always loads; the storage drivers and the /boot filesystem come
    # from initoverlayfs-install's --add-drivers, host-only or generic as it decided.
    hostonly='' instmods loop erofs overlay
}

install() {
    inst_tree "$(frozen_source)" /usr/lib/initoverlayfs/storage-init
    # With LANG= set and no locale at all the frozen binary aborts before Python starts.
    if [[ -d $dracutsysrootdir/usr/lib/locale/C.utf8 ]]; then
        inst_tree /usr/lib/locale/C.utf8 /usr/lib/locale/C.utf8
    fi

    # initoverlayfs-install passes the config it checked with --include (with the image's
    # name and verity keys), and the system's must not replace it; a plain dracut run takes
    # the system's. (inst_simple has no -o: test for the file instead.)
    if [[ -z ${INITOVERLAYFS_CONFIG_INCLUDED-} && -f $dracutsysrootdir/etc/initoverlayfs.conf ]]; then
        inst_simple /etc/initoverlayfs.conf
    fi
    inst_dir /boot
    inst_dir /initoverlayfs

    if dracut_module_included systemd; then
        inst_multiple systemctl \
            "$systemdsystemunitdir"/initoverlayfs.service \
            "$systemdsystemunitdir"/initoverlayfs.target \
            "$systemdsystemunitdir"/initoverlayfs-switch-root.service \
            "$systemdsystemunitdir"/initoverlayfs-switch-root.target
        $SYSTEMCTL -q --root "$initdir" set-default initoverlayfs.target
        # Mask the generators that find and mount a root (fstab, GPT auto-discovery): here
        # storage-init does that part and the initrd in the image mounts the real root, so
        # they only cost systemd's start two processes. The debug generator stays
        # (systemd.mask=, rd.systemd.unit=, systemd.debug_shell).
        mkdir -p "$initdir/etc/systemd/system-generators"
        for generator in systemd-fstab-generator systemd-gpt-auto-generator; do
            ln -sf /dev/null "$initdir/etc/systemd/system-generators/$generator"
        done
        # systemd only runs as an initrd, and only allows switch-root, with initrd-release.
        if [[ ! -e $initdir/etc/initrd-release ]]; then
            mkdir -p "$initdir/usr/lib"
            printf 'NAME="initoverlayfs mini-initramfs"\nID=initoverlayfs\n' \
                > "$initdir/usr/lib/initrd-release"
            ln_r /usr/lib/initrd-release /etc/initrd-release
        fi
    else
        ln_r /usr/lib/initoverlayfs/storage-init/storage-init /init
    fi
}
