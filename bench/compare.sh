#!/usr/bin/env bash
# compare.sh — runs examples/fsbench against daxfsd and virtiofsd, one after the other, on
# fresh shared directories (tmpfs-free: both under the same filesystem), and prints the tables.
#
# Usage: bench/compare.sh [--queues N] [--seconds S] [--threads N]
#   virtiofsd 1.14 comes from vm-tests/install-virtiofsd.sh (/opt/virtiofsd/bin/virtiofsd).
#   virtiofsd serves one request queue only; with --queues > 1 it is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
queues=1 seconds=2 threads=4
while [[ $# -gt 0 ]]; do
    case $1 in
        --queues) queues=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
cargo build --release --quiet --bin daxfsd --example fsbench
virtiofsd=${VIRTIOFSD:-/opt/virtiofsd/bin/virtiofsd}
[[ -x $virtiofsd ]] || vm-tests/install-virtiofsd.sh >&2

work=$(mktemp -d /var/tmp/fsbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

run() { # label, daemon command...
    local label=$1; shift
    local dir=$work/$label sock=$work/$label.sock
    mkdir -p "$dir"
    "$@" --shared-dir "$dir" --socket-path "$sock" >"$work/$label.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
    target/release/examples/fsbench --socket "$sock" --queues "$queues" --seconds "$seconds" --label "$label"
    echo
}

echo "host: $(nproc) CPUs, $(uname -r); shared dirs on $(df -T "$work" | awk 'NR==2 {print $2}')"
run daxfsd target/release/daxfsd --thread-pool-size "$threads" --num-request-queues "$queues" --tag bench
if [[ $queues -eq 1 ]]; then
    run virtiofsd-pool "$virtiofsd" --thread-pool-size "$threads" --sandbox none
    run virtiofsd-default "$virtiofsd" --sandbox none
else
    echo "virtiofsd skipped: it has one request queue"
fi
