#!/bin/sh
# The guest half of the demo (busybox sh, run by the initramfs as `demo /mnt`): reads the
# host's file and writes one of its own through the DAX window, and shows that DAX is on.
mnt=$1
say() { echo "DEMO-GUEST $*"; }
say "mounted: $(grep " $mnt " /proc/mounts)"
say "dmesg: $(dmesg | grep -m1 'Cache len')"
say "reading hello.txt (written by the host) through the DAX window:"
while IFS= read -r line; do say "  | $line"; done < "$mnt/hello.txt"
echo "written by the guest through the DAX window at $(date -u +%H:%M:%S)" > "$mnt/from-guest.txt"
sync
say "wrote from-guest.txt: $(cat "$mnt/from-guest.txt")"
grep -q 'dax=always' /proc/mounts && dmesg | grep -q 'Cache len'
