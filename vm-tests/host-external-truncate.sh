#!/usr/bin/env bash
# host-external-truncate.sh — the host side of the guest test
# external-truncate: while the guest reads (mmap and read()) the files in
# SHARE/ext-trunc/, shrink them, punch holes in them and write their own
# bytes back, from the host, behind the daemon's back.
#
# Usage:
#   vm-tests/host-external-truncate.sh [--iterations N] [--seed S]
#                                      [--sleep SECS] [--dir NAME] SHARE
#   (normally: run-vm.sh --test external-truncate \
#        --host-during vm-tests/host-external-truncate.sh; run-vm.sh starts
#    it when the guest prints DAXFSD-READY and appends SHARE)
#
#   --iterations N  at most N mutations (default 2000)
#   --seed S        bash RANDOM seed (default 1)
#   --sleep SECS    pause between mutations (default 0.01)
#   --dir NAME      directory under SHARE (default ext-trunc)
#
# Protocol (see guest-programs/src/bin/external-truncate.rs): copies f* to a
# private reference, creates host-started, mutates until the guest creates
# guest-done or N iterations are done, then restores every file in full and
# writes host-stopped ("iterations=N ..."). Only ever writes the files' own
# bytes, so the guest may see each byte as its pattern or zero, nothing else.
# A mutation that fails (e.g. EAGAIN from a non-blocking open while the
# daemon's lease break is pending) is counted and the loop goes on; the
# files are always restored and host-stopped always written.
# Exit status: 0 after a clean run, 1 if any mutation or the restore
# failed, 2 on usage errors.
set -euo pipefail

iterations=2000
seed=1
pause=0.01
name=ext-trunc
share=

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { printf 'host-external-truncate: %s\n' "$*" >&2; exit 1; }

while (($#)); do
    case $1 in
        --iterations) iterations=${2:?}; shift 2 ;;
        --seed) seed=${2:?}; shift 2 ;;
        --sleep) pause=${2:?}; shift 2 ;;
        --dir) name=${2:?}; shift 2 ;;
        -h | --help) usage ;;
        -*) printf 'unknown option %s\n' "$1" >&2; usage ;;
        *) [[ -z $share ]] || usage; share=$1; shift ;;
    esac
done
[[ -n $share ]] || usage
[[ $iterations =~ ^[0-9]+$ && $seed =~ ^[0-9]+$ ]] || usage
dir=$share/$name
[[ -d $dir ]] || die "no $dir (did the guest print DAXFSD-READY?)"

ref=$(mktemp -d "${TMPDIR:-/tmp}/daxfsd-ext-trunc.XXXXXX")
trap 'rm -rf "$ref"' EXIT

files=()
sizes=()
for f in "$dir"/f[0-9]*; do
    [[ -f $f ]] || continue
    cp "$f" "$ref/${f##*/}"
    files+=("$f")
    sizes+=("$(stat -c %s "$f")")
done
((${#files[@]})) || die "no files f* in $dir"
: >"$dir/host-started"

# rand N — a number in 0..N-1 (N > 0) from bash's seeded RANDOM, in $r.
RANDOM=$seed
r=0
rand() { r=$(((RANDOM * 32768 + RANDOM) % $1)); }

counts=(0 0 0 0)
errors=0
last_error=
i=0
# mutate OP... — run one mutation, logged with a timestamp (for matching
# with the daemon log); a failure is counted, not fatal.
mutate() {
    local out
    printf '%s #%d %s\n' "$EPOCHREALTIME" "$i" "${*//"$dir"\//}"
    if ! out=$("$@" 2>&1); then
        printf '%s #%d failed: %s\n' "$EPOCHREALTIME" "$i" "$out"
        errors=$((errors + 1))
        last_error=${out:-$1 failed}
    fi
}
while ((i < iterations)) && [[ ! -e $dir/guest-done ]]; do
    rand "${#files[@]}"
    j=$r
    f=${files[j]}
    full=${sizes[j]}
    rand 4
    op=$r
    case $op in
        0) # shrink to a random size (open without O_NONBLOCK + ftruncate:
           # waits for a lease break like ordinary writers)
            rand "$full"
            mutate dd if=/dev/null of="$f" bs=1 seek="$r" status=none ;;
        1) # punch a hole (any alignment; within or past EOF)
            rand "$full"
            off=$r
            rand 262144
            mutate fallocate --punch-hole --offset "$off" --length $((r + 1)) "$f" ;;
        2) # write back a 4 KiB-aligned range of the file's own bytes
            rand $(((full + 4095) / 4096))
            blk=$r
            rand 64
            mutate dd if="$ref/${f##*/}" of="$f" bs=4096 skip="$blk" seek="$blk" count=$((r + 1)) \
                conv=notrunc status=none ;;
        3) # O_TRUNC, then the whole file again
            mutate cp "$ref/${f##*/}" "$f" ;;
    esac
    counts[op]=$((counts[op] + 1))
    i=$((i + 1))
    sleep "$pause"
done

restore_failed=0
for ((j = 0; j < ${#files[@]}; j++)); do
    f=${files[j]}
    dd if="$ref/${f##*/}" of="$f" bs=65536 conv=notrunc status=none || restore_failed=1
    dd if=/dev/null of="$f" bs=1 seek="${sizes[j]}" status=none || restore_failed=1
done
sync
summary="iterations=$i shrink=${counts[0]} punch=${counts[1]} rewrite_range=${counts[2]} otrunc_rewrite=${counts[3]} errors=$errors restore_failed=$restore_failed"
# Written under another name and renamed: the guest must never see it
# half-written.
printf '%s\n' "$summary" >"$dir/.host-stopped.tmp"
mv "$dir/.host-stopped.tmp" "$dir/host-stopped"
printf 'host-external-truncate: %s\n' "$summary"
if ((errors)); then
    printf 'host-external-truncate: last error: %s\n' "$last_error"
fi
((errors == 0 && restore_failed == 0))
