#!/usr/bin/env bash
# quick.sh — the quick VM tier: boots a real guest (QEMU 11.1, Debian's kernel, TCG by default)
# against the built daxfsd and runs the smoke tests on each frontend kind daxfsd must serve.
#
# Usage: vm-tests/quick.sh [--daemon PATH] [--accel tcg|kvm]
# Builds the VM environment first if needed (vm-tests/env.sh) and the fs-churn guest program
# (vm-tests/guest-programs, static). Exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
daemon=${DAXFSD_BIN:-$here/../target/debug/daxfsd}
accel=tcg
while [[ $# -gt 0 ]]; do
    case $1 in
        --daemon) daemon=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        *) echo "quick.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -x $daemon ]] || { echo "quick.sh: no daemon at $daemon (cargo build first)" >&2; exit 2; }

"$here/env.sh" >/dev/null

run() { # name, launcher args...
    local name=$1; shift
    local t0=$SECONDS
    echo "=== vm-tests quick: $name"
    "$here/run-vm.sh" --daemon "$daemon" --accel "$accel" "$@"
    echo "=== vm-tests quick: $name passed in $((SECONDS - t0)) s"
}

# QEMU's vhost-user-fs-pci: plain virtio-fs, one request queue, checked from the host too.
run "fs-pci smoke" --device fs --test smoke,mount --host-check "$here/host-check-smoke.sh"
# The generic vhost-user device (the one DAX needs), config from the daemon, two request queues.
run "generic device, 2 queues" --device dax --queues 2 --daemon-arg=--num-request-queues=2 \
    --test smoke,mount --host-check "$here/host-check-smoke.sh"
# The DAX window: QEMU 11.1's generic device offers SHMEM; every file goes through the window.
# The daemon also probes the frontend's SHMEM_MAP/UNMAP rules the window logic relies on.
probe_logs=$(mktemp -d)
churn_work=$(mktemp -d)
keep_churn=0
trap 'rm -rf "$probe_logs"; ((keep_churn)) || rm -rf "$churn_work"' EXIT
run "dax=always smoke + frontend conformance" --device dax --queues 1 --mount-opts dax=always \
    --test smoke,mount --host-check "$here/host-check-smoke.sh" \
    --daemon-arg=--dax-probe-frontend --log-dir "$probe_logs"
if ! grep -q 'frontend conformance: 9/9 checks as expected' "$probe_logs/daemon.log"; then
    grep 'frontend conformance' "$probe_logs/daemon.log" >&2 || true
    echo "quick.sh: the frontend broke an assumption of the DAX window (see above)" >&2
    exit 1
fi
echo "=== vm-tests quick: frontend conformance 9/9"
# A guest reboot under DAX (QEMU resets the machine): the guest unmounts first, as a clean
# reboot does. (With mappings still live, QEMU 11.1 itself segfaults on the reset: see the
# README; `--test reboot-forced` reproduces it.)
run "dax=always across a guest reboot" --device dax --queues 1 --mount-opts dax=always --reboot \
    --test reboot,smoke --host-check "$here/host-check-smoke.sh"
# fs-churn (issue 13): an fsstress-like load, processes growing mapped files by small appends
# among truncates, renames and unlinks, for 45 s; under DAX every growth of a mapped slot is
# a SHMEM_MAP piece, and QEMU allows 512 memory regions in all (before the daemon kept a slot
# budget this load killed QEMU within 35 s). With the largest window the budget allows (512M,
# the daemon's default, passed explicitly) QEMU must not die and the data must hold.
# Each run keeps its daemon log and prints its "DAX window:" summary lines (peak pieces,
# frontend memory regions), if the daemon logged any.
guest_dir=$here/guest-programs
(cd "$guest_dir" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --locked --release --target x86_64-unknown-linux-gnu --bin fs-churn --bin small-files --bin dax-writeback)
churn_bin=$guest_dir/target/x86_64-unknown-linux-gnu/release/fs-churn
echo "--duration 45 --procs 4 --seed 1 --progress 10" >"$churn_work/fs-churn.args"
run_churn() { # name, log dir name, launcher args...
    local name=$1 logs=$churn_work/$2 rc=0 t0=$SECONDS
    shift 2
    echo "=== vm-tests quick: $name"
    "$here/run-vm.sh" --daemon "$daemon" --accel "$accel" --timeout 400 --test mount,fs-churn \
        --guest-file "$churn_bin:/tests/fs-churn" --guest-file "$churn_work/fs-churn.args:/tests/fs-churn.args" \
        --daemon-arg=--dax-window=512M --log-dir "$logs" "$@" || rc=$?
    if ! grep -a 'DAX window:' "$logs/daemon.log" 2>/dev/null | sed 's/^/    daemon| /'; then
        echo "    (no 'DAX window:' line in the daemon log)"
    fi
    if ((rc != 0)); then
        keep_churn=1
        echo "=== vm-tests quick: $name FAILED (status $rc); logs kept in $logs" >&2
        exit 1
    fi
    echo "=== vm-tests quick: $name passed in $((SECONDS - t0)) s"
}
run_churn "fs-churn, dax=always, 512 MiB window" churn-always --device dax --queues 1 --mount-opts dax=always
# dax=inode is the guest's default: the daemon's --dax-files leasable (its default) makes files DAX.
run_churn "fs-churn, dax=inode, 512 MiB window" churn-inode --device dax --queues 1 --mount-opts dax=inode
# small-files (issue 9): create, open+read and unlink 1000 files of 100 bytes at 1 and 4
# threads, without DAX and under dax=always (reads are SETUPMAPPINGs: copy slots), checked
# byte for byte; the rates are printed, never judged (a shared machine).
small_bin=$guest_dir/target/x86_64-unknown-linux-gnu/release/small-files
echo "--files 1000 --threads 1,4" >"$churn_work/small-files.args"
run_small() { # name, launcher args... (the rates are in the small-files result line)
    local name=$1
    shift
    run "$name" --timeout 400 --test mount,small-files --guest-file "$small_bin:/tests/small-files" \
        --guest-file "$churn_work/small-files.args:/tests/small-files.args" "$@"
}
run_small "small-files, no DAX" --device fs --queues 1
run_small "small-files, dax=always" --device dax --queues 1 --mount-opts dax=always
# dax-writeback (issue 12): the guest writes a word to every page of an 8 MiB file through a
# shared DAX mapping and reads it back at once, for 15 s, while the host reads the file in a
# loop, writes another range of it, or shrinks it to 6 MiB + 1234 and restores it. Nothing
# written below the truncation point may be lost or read back as zeros, and after msync the
# file must hold each page's last word (the host guard, --dax-guard auto = fanotify here).
wb_bin=$guest_dir/target/x86_64-unknown-linux-gnu/release/dax-writeback
wb_shrink=$((6 * 1048576 + 1234))
run_wb() { # host mode
    local mode=$1 extra=
    [[ $mode != truncate ]] || extra="--shrink-to $wb_shrink"
    echo "--duration 15 $extra" >"$churn_work/dax-writeback-$mode.args"
    run "dax-writeback, host $mode" --timeout 300 --test mount,dax-writeback --device dax --queues 1 \
        --mount-opts dax=always --guest-file "$wb_bin:/tests/dax-writeback" \
        --guest-file "$churn_work/dax-writeback-$mode.args:/tests/dax-writeback.args" \
        --host-during "$here/host-dax-writeback.sh $mode --shrink-to $wb_shrink"
}
run_wb readers
run_wb writer
run_wb truncate
# cache=never and the writeback cache, one boot each.
run "cache=never" --device fs --daemon-arg=--cache=never --test smoke
run "writeback" --device fs --daemon-arg=--writeback --test smoke
echo "vm-tests quick: all passed"
