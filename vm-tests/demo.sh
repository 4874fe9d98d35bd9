#!/usr/bin/env bash
# demo.sh — daxfsd in one command, from a fresh clone: builds daxfsd and the VM environment,
# serves a sample directory with a DAX window, boots a Linux guest (QEMU 11.1, Debian's kernel)
# that mounts it with -o dax=always, reads the host's file and writes its own through the
# window, and shows the host seeing the guest's write and the guest's proof that DAX is on.
# Leaves nothing running. Needs root (the VM environment uses mmdebstrap and chroot).
#
# Usage: vm-tests/demo.sh [--accel tcg|kvm]     (TCG by default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
accel=tcg
if [[ ${1:-} == --accel ]]; then accel=$2; fi

echo "== building daxfsd"
(cd "$here/.." && cargo build --release --quiet --bin daxfsd)
echo "== preparing the VM environment (first run: a few minutes)"
"$here/env.sh" >/dev/null

share=$(mktemp -d /tmp/daxfsd-demo.XXXXXX)
logs=$(mktemp -d /tmp/daxfsd-demo-logs.XXXXXX)
trap 'rm -rf "$share" "$logs"' EXIT
printf 'Hello from the host.\nThis file lives in %s on the host.\n' "$share" > "$share/hello.txt"
echo "== host: $share/hello.txt written; starting daxfsd (1 GiB DAX window) and the guest"

"$here/run-vm.sh" --daemon "$here/../target/release/daxfsd" --daemon-arg=--dax-window=512M \
    --device dax --queues 1 --mount-opts dax=always --accel "$accel" --share "$share" \
    --guest-file "$here/demo/guest-demo.sh:/tests/demo" --test demo \
    --host-check "$here/demo/host-show.sh" --log-dir "$logs" > "$logs/run.log" 2>&1 || {
    cat "$logs/run.log"
    echo "== demo FAILED (logs above)"
    exit 1
}
tr -d '\r' < "$logs/serial.log" | grep -a '^DEMO-GUEST' | sed 's/^DEMO-GUEST /guest: /'
tr -d '\r' < "$logs/run.log" | grep -a '^DEMO-HOST' | sed 's/^DEMO-HOST /host:  /'
echo "daemon: DAX window live: $(grep -o 'DAX window of [0-9]* MiB live' "$logs/daemon.log" | head -1); INIT: $(grep -o 'dax Always, map_alignment [0-9]*' "$logs/daemon.log" | head -1)"
echo "== demo done: QEMU and daxfsd have exited"
