#!/usr/bin/env bash
# host-check-posix.sh — after the guest program posix-smoke, check from the
# host that what it did through virtiofs landed in the shared directory as
# it should (the files it leaves in posix-smoke-keep/).
#
# Usage:  vm-tests/host-check-posix.sh SHARE_DIR
#   (run-vm.sh --test posix-smoke --host-check vm-tests/host-check-posix.sh)
# Checks whose guest check was skipped (marker files xattr-unsupported,
# mmap-unsupported; O_TMPFILE or punch hole unsupported) are skipped here
# too. Prints one line per check; exits 1 if any failed.
# DAXFSD_ROOTLESS_IDS=OWN:SUB: the daemon ran rootless with guest id 0 mapped to host id OWN
# and guest ids 1.. to host ids SUB..: the owner checks expect the host's view of them.
set -euo pipefail

share=${1:?usage: host-check-posix.sh SHARE_DIR}
dir=$share/posix-smoke-keep
fails=0
# hid ID — the host id of guest id ID.
hid() {
    local own sub
    if [[ -z ${DAXFSD_ROOTLESS_IDS:-} ]]; then echo "$1"; return; fi
    own=${DAXFSD_ROOTLESS_IDS%%:*} sub=${DAXFSD_ROOTLESS_IDS#*:}
    if (($1 == 0)); then echo "$own"; else echo $((sub + $1 - 1)); fi
}

ok() { printf 'host-check-posix: ok   %s\n' "$1"; }
bad() { printf 'host-check-posix: FAIL %s\n' "$1"; fails=$((fails + 1)); }
skip() { printf 'host-check-posix: skip %s\n' "$1"; }
# check NAME COMMAND... — ok if COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
# same NAME GOT WANT
same() {
    if [[ $2 == "$3" ]]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi
}
# zeros FILE OFFSET LENGTH — the range holds only NUL bytes.
zeros() {
    [[ $(dd if="$1" bs=4096 skip=$(($2 / 4096)) count=$(($3 / 4096)) status=none | tr -d '\0' | wc -c) == 0 ]]
}
# only_a FILE OFFSET LENGTH — the range holds only 'A' bytes.
only_a() {
    [[ $(dd if="$1" bs=4096 skip=$(($2 / 4096)) count=$(($3 / 4096)) status=none | tr -d 'A' | wc -c) == 0 ]]
}

[[ -d $dir ]] || { bad "no $dir"; exit 1; }

# data.txt: 100000 lines "posix-smoke line NNNNNN" (bigio), and its
# copy_file_range copy.
expected_lines() { seq -f 'posix-smoke line %06g' 0 99999; }
if [[ -f $dir/data.txt ]]; then
    check "data.txt content" cmp -s "$dir/data.txt" <(expected_lines)
    if [[ -f $dir/copy-of-data.txt ]]; then
        check "copy_file_range copy" cmp -s "$dir/copy-of-data.txt" "$dir/data.txt"
    else
        bad "copy-of-data.txt missing"
    fi
    same "symlink target" "$(readlink "$dir/link-to-data")" data.txt
else
    bad "data.txt missing"
fi

same "times: mtime" "$(stat -c %Y "$dir/times")" 1234567890
same "times: mtime nanoseconds" "$(stat -c %y "$dir/times" | sed 's/^[^.]*\.\([0-9]*\).*/\1/')" 123456789
same "times: atime" "$(stat -c %X "$dir/times")" 1000000000
same "fifo" "$(stat -c %F "$dir/fifo")" fifo
same "rename into keep" "$(cat "$dir/renamed")" renamed
same "NOREPLACE left the target" "$(cat "$dir/noreplace-target")" target
same "EXCHANGE: exchange-a" "$(cat "$dir/exchange-a")" B
same "EXCHANGE: exchange-b" "$(cat "$dir/exchange-b")" A
same "hard link inode" "$(stat -c %i "$dir/hard-1")" "$(stat -c %i "$dir/hard-2")"
same "hard link count" "$(stat -c %h "$dir/hard-1")" 2
same "hard link content" "$(cat "$dir/hard-2")" "two names"
same "chown" "$(stat -c %u:%g "$dir/chowned")" "$(hid 1234):$(hid 5678)"
same "chmod after chown" "$(stat -c %a "$dir/chowned")" 640
same "set-uid mode" "$(stat -c %a "$dir/suid")" 4755
same "owner of guest-created files" "$(stat -c %u:%g "$dir/data.txt")" "$(hid 0):$(hid 0)"
same "truncated" "$(cat "$dir/truncated")" abc
same "grown sparse file size" "$(stat -c %s "$dir/sparse-grown")" 1048576
check "grown sparse file reads zeros" zeros "$dir/sparse-grown" 0 1048576

same "large directory: all entries" "$(find "$dir/many" -mindepth 1 -maxdepth 1 | wc -l)" "$(cat "$dir/many-count")"
check "large directory: entry-00000 exists" test -e "$dir/many/entry-00000"

if [[ -e $dir/mmap-unsupported ]]; then
    skip "mmap-written (the guest saw ENODEV from mmap)"
else
    same "mmap-written size" "$(stat -c %s "$dir/mmap-written")" 8192
    check "mmap-written content" cmp -s "$dir/mmap-written" <(yes 'written through mmap' | head -c 8192)
fi

if [[ -f $dir/punched.bin ]]; then
    same "punched.bin size" "$(stat -c %s "$dir/punched.bin")" 1048576
    check "punched.bin: data before the hole" only_a "$dir/punched.bin" 0 262144
    check "punched.bin: the hole reads zeros" zeros "$dir/punched.bin" 262144 262144
    check "punched.bin: data after the hole" only_a "$dir/punched.bin" 524288 524288
    blocks=$(stat -c '%b*%B' "$dir/punched.bin")
    check "punched.bin: the hole is not allocated" test $((blocks)) -le $((786432 + 65536))
else
    skip "punched.bin (punch hole unsupported)"
fi

if [[ -e $dir/xattr-unsupported ]]; then
    skip "xattr (the guest saw EOPNOTSUPP)"
elif [[ -e $dir/xattr-file ]]; then
    got=$(python3 -c 'import os, sys; print(os.getxattr(sys.argv[1], "user.daxfsd").decode())' "$dir/xattr-file")
    same "xattr user.daxfsd" "$got" "hello from the guest"
else
    bad "neither xattr-file nor xattr-unsupported"
fi

if [[ -e $dir/tmpfile-linked ]]; then
    same "O_TMPFILE + linkat" "$(cat "$dir/tmpfile-linked")" "from O_TMPFILE"
    same "O_TMPFILE link count" "$(stat -c %h "$dir/tmpfile-linked")" 1
else
    skip "O_TMPFILE (not linked by the guest)"
fi

check "posix-smoke scratch dir removed" test ! -e "$share/posix-smoke"

if ((fails)); then
    printf 'host-check-posix: %d check(s) failed\n' "$fails"
    exit 1
fi
printf 'host-check-posix: all checks passed\n'
