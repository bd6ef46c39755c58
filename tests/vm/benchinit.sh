#!/bin/sh
# The final init of the benchmark: reads none of the payload; records when it started, then
# (after the measurement) hands over the facts for the breakdown, and powers the VM off.
[ -r /proc/uptime ] || mount -t proc proc /proc  # the classic initramfs has no /proc yet
read -r up _ < /proc/uptime
echo "BENCH-INIT uptime=$up"
dmesg | grep -E "Trying to unpack rootfs|Freeing initrd memory|Run /init as init process" \
    | sed 's/^/BENCH-DMESG /'
if [ -f /run/initoverlayfs/timings.json ]; then
    echo "BENCH-TIMINGS $(tr -d '\n' < /run/initoverlayfs/timings.json)"
fi
poweroff -f
