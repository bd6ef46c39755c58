#!/bin/sh
# The init of the test image: runs where systemd would, checks from inside the booted system
# what storage-init promised, prints one machine-readable line, and powers the VM off.
read -r uptime _ < /proc/uptime
export PATH=/bin:/sbin
echo "INITOVERLAYFS-INIT-STARTED $0"

# "fstype source options" of the last mount at a target, from this process's mountinfo
mount_of() {
    awk -v t="$1" '{ for (i = 7; i <= NF; i++) if ($i == "-") {
        if ($5 == t) line = $(i + 1) " " $(i + 2) " " $(i + 3) } } END { print line }' \
        /proc/self/mountinfo
}

# storage-init frees the old initramfs before the exec; its log line is in dmesg (bounded wait)
freed=false
i=0
while [ $i -lt 100 ]; do
    if dmesg | grep -q "freed the old initramfs"; then freed=true; break; fi
    sleep 0.1
    i=$((i + 1))
done

# every byte of a file that storage-init never read: a flipped one stops the machine here
canary=false
cat /etc/canary > /dev/null && canary=true

writable=false
echo "written at boot" > /written-by-init && [ "$(cat /written-by-init)" = "written at boot" ] \
    && writable=true
timings=false
[ -s /run/initoverlayfs/timings.json ] && timings=true
shmem_kb=$(awk '/^Shmem:/ { print $2 }' /proc/meminfo)
# the loop module's max_loop as storage-init loaded it, and the loop devices that exist
max_loop=$(cat /sys/module/loop/parameters/max_loop 2>/dev/null)
loops=$(ls -d /sys/block/loop* 2>/dev/null | wc -l)

q() { printf '"%s"' "$(echo "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
printf 'INITOVERLAYFS-RESULT {"pid": %s, "init": %s, "args": %s, "uptime": %s, ' \
    "$$" "$(q "$0")" "$(q "$*")" "$uptime"
printf '"root": %s, "lower": %s, "boot": %s, "proc": %s, "sys": %s, "dev": %s, "run": %s, ' \
    "$(q "$(mount_of /)")" "$(q "$(mount_of /run/initoverlayfs/lower)")" \
    "$(q "$(mount_of /boot)")" "$(q "$(mount_of /proc)")" "$(q "$(mount_of /sys)")" \
    "$(q "$(mount_of /dev)")" "$(q "$(mount_of /run)")"
printf '"writable": %s, "freed": %s, "shmem_kb": %s, "timings": %s, "canary": %s, ' \
    "$writable" "$freed" "$shmem_kb" "$timings" "$canary"
printf '"max_loop": %s, "loops": %s, ' "$(q "$max_loop")" "$loops"
printf '"marker": %s}\n' "$(q "$(cat /etc/marker)")"
if $timings; then
    echo "INITOVERLAYFS-TIMINGS $(tr -d '\n' < /run/initoverlayfs/timings.json)"
fi
poweroff -f
