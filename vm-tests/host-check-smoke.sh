#!/usr/bin/env bash
# host-check-smoke.sh — after the guest `smoke` test, check from the host
# that what the guest did through virtiofs landed in the shared directory
# (the files vm-tests/guest/init leaves in smoke-keep/).
#
# Usage:  [DAXFSD_SMOKE_OWNER=UID:GID] vm-tests/host-check-smoke.sh SHARE_DIR
#   (run-vm.sh --test smoke --host-check vm-tests/host-check-smoke.sh)
# Prints one line per check; exits 1 if any failed.
set -euo pipefail

share=${1:?usage: host-check-smoke.sh SHARE_DIR}
dir=$share/smoke-keep
fails=0

ok() { printf 'host-check: ok   %s\n' "$1"; }
bad() { printf 'host-check: FAIL %s\n' "$1"; fails=$((fails + 1)); }
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

[[ -d $dir ]] || { bad "no $dir"; exit 1; }

same "hello.txt content" "$(cat "$dir/hello.txt")" "hello from the guest"
same "nested file" "$(cat "$dir/dir/sub/nested.txt")" nested
check "symlink" test -L "$dir/link-to-hello"
same "symlink target" "$(readlink "$dir/link-to-hello")" hello.txt
same "hard link inode" "$(stat -c %i "$dir/hard-a")" "$(stat -c %i "$dir/hard-b")"
same "hard link count" "$(stat -c %h "$dir/hard-a")" 2
same "hard link content" "$(cat "$dir/hard-b")" "two names"
same "chmod 640" "$(stat -c %a "$dir/mode640")" 640
check "rename: old name gone" test ! -e "$dir/before-rename"
same "rename: new name" "$(cat "$dir/after-rename")" renamed
check "unlink: file gone" test ! -e "$dir/removed"
check "rmdir: dir gone" test ! -e "$dir/removed-dir"
same "truncate to 3" "$(cat "$dir/truncated")" abc
same "sparse size" "$(stat -c %s "$dir/sparse")" 1048576
same "random.bin size" "$(stat -c %s "$dir/random.bin")" 4194304
sum_ok() { (cd "$dir" && sha256sum --quiet -c random.bin.sha256); }
check "random.bin sha256 (guest's sum)" sum_ok
# The guest cleaned up its scratch dir.
check "smoke scratch dir removed" test ! -e "$share/smoke"
# Files created by the guest (as root) are owned by root on the host, or by the uid:gid
# the guest's root maps to (DAXFSD_SMOKE_OWNER, e.g. a rootless daemon's own ids).
same "owner" "$(stat -c %u:%g "$dir/hello.txt")" "${DAXFSD_SMOKE_OWNER:-0:0}"

if ((fails)); then
    printf 'host-check: %d check(s) failed\n' "$fails"
    exit 1
fi
printf 'host-check: all checks passed\n'
