#!/usr/bin/env bash
# host-dax-writeback.sh — the host side of the guest test dax-writeback (issue 12): while
# the guest writes through a shared mapping of SHARE/dax-wb/wfile, use that file from the host.
#
# Usage:
#   vm-tests/host-dax-writeback.sh MODE [--shrink-to BYTES] [--size BYTES] SHARE
#   (normally: run-vm.sh --test dax-writeback --host-during "vm-tests/host-dax-writeback.sh MODE";
#    run-vm.sh starts it when the guest prints DAXFSD-READY and appends SHARE)
#
#   readers    loop `cat wfile >/dev/null` (every one an open and reads)
#   writer     loop: write 4 KiB at a page past the guest's range (an open for writing each
#              time, O_APPEND every 8th), never touching the guest's bytes
#   truncate   loop `truncate -s SHRINK_TO wfile; truncate -s SIZE wfile` (shrink, restore)
#
# Creates host-started, loops until the guest creates guest-done, leaves the file SIZE bytes
# long in truncate mode, then writes host-stopped ("mode=M opens=N truncations=T failed=F
# us_per_op=U": the mean wall time of one command — cat, dd/append, or one truncate).
# Exit status: 0 after a clean run, 1 if a host operation failed, 2 on usage errors.
set -euo pipefail

mode=
share=
shrink_to=$((6 * 1048576 + 1234))
size=$((8 * 1048576))
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
    case $1 in
        --shrink-to) shrink_to=${2:?}; shift 2 ;;
        --size) size=${2:?}; shift 2 ;;
        -h | --help) usage ;;
        readers | writer | truncate) [[ -z $mode ]] || usage; mode=$1; shift ;;
        -*) usage ;;
        *) [[ -z $share ]] || usage; share=$1; shift ;;
    esac
done
[[ -n $mode && -n $share ]] || usage
dir=$share/dax-wb
f=$dir/wfile
[[ -f $f ]] || { echo "host-dax-writeback: no $f (did the guest print DAXFSD-READY?)" >&2; exit 1; }
touch "$dir/host-started"
opens=0 truncations=0 failed=0 i=0 busy_us=0
now_us() { echo $((${EPOCHREALTIME/./})); }
while [[ ! -e $dir/guest-done ]]; do
    i=$((i + 1))
    t0=$(now_us)
    case $mode in
        readers)
            cat "$f" >/dev/null || failed=$((failed + 1))
            opens=$((opens + 1)) ;;
        writer)
            if ((i % 8 == 0)); then
                head -c 4096 /dev/zero >>"$f" || failed=$((failed + 1))
            else
                dd if=/dev/zero of="$f" bs=4096 count=1 seek=$((size / 4096 + i % 256)) conv=notrunc status=none \
                    || failed=$((failed + 1))
            fi
            opens=$((opens + 1)) ;;
        truncate)
            truncate -s "$shrink_to" "$f" || failed=$((failed + 1))
            t1=$(now_us)
            sleep 0.02
            t2=$(now_us)
            truncate -s "$size" "$f" || failed=$((failed + 1))
            t3=$(now_us)
            sleep 0.02
            busy_us=$((busy_us + t1 - t0 + t3 - t2))
            truncations=$((truncations + 2)) opens=$((opens + 2))
            continue ;;
    esac
    busy_us=$((busy_us + $(now_us) - t0))
done
[[ $mode != truncate ]] || truncate -s "$size" "$f" || failed=$((failed + 1))
ops=$((opens > 0 ? opens : 1))
echo "mode=$mode opens=$opens truncations=$truncations failed=$failed us_per_op=$((busy_us / ops))" | tee "$dir/host-stopped"
((failed == 0))
