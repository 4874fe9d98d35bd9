#!/usr/bin/env bash
# compare.sh — runs examples/fsbench against daxfsd and virtiofsd, one after the other, on
# fresh shared directories (tmpfs-free: both under the same filesystem), and prints the tables.
#
# Usage: bench/compare.sh [--queues N] [--seconds S] [--threads N] [--rounds R] [--sandbox-cost]
#                         [--file-handles]
#   --sandbox-cost: instead of virtiofsd, compare daxfsd (default sandbox: namespaces, seccomp)
#   with daxfsd --sandbox none --seccomp none, the price of the confinement.
#   --file-handles: instead of virtiofsd, compare daxfsd holding inodes as file handles (its
#   default, --inode-file-handles=prefer) with daxfsd --inode-file-handles=never (O_PATH fds).
#   Each round runs every daemon once, in turn; the summary gives each workload's median
#   ops/s over the rounds and the range. One request is in flight per queue, so the numbers
#   are latency-bound, and on a shared 2-CPU VM one run varies by 2-3x: use rounds.
#   virtiofsd 1.14 comes from vm-tests/install-virtiofsd.sh (/opt/virtiofsd/bin/virtiofsd).
#   virtiofsd serves one request queue only; with --queues > 1 it is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
queues=1 seconds=2 threads=4 rounds=3 sandbox_cost=0 file_handles=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --queues) queues=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --sandbox-cost) sandbox_cost=1; shift ;;
        --file-handles) file_handles=1; sandbox_cost=0; shift ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
cargo build --release --quiet --bin daxfsd --example fsbench
virtiofsd=${VIRTIOFSD:-/opt/virtiofsd/bin/virtiofsd}
[[ -x $virtiofsd ]] || ((sandbox_cost || file_handles)) || vm-tests/install-virtiofsd.sh >&2

work=$(mktemp -d /var/tmp/fsbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

run() { # label, daemon command...
    local label=$1; shift
    local dir=$work/$label sock=$work/$label.sock
    rm -rf "$dir" "$sock"
    mkdir -p "$dir"
    "$@" --shared-dir "$dir" --socket-path "$sock" >"$work/$label.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
    target/release/examples/fsbench --socket "$sock" --queues "$queues" --seconds "$seconds" --label "$label" |
        awk -v l="$label" -F'|' '/^\| [a-z0-9]/ && $3 ~ /[0-9]/ {gsub(/^ +| +$/, "", $2); gsub(/ /, "", $3); print l "|" $2 "|" $3}' \
        >>"$work/results"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

echo "host: $(nproc) CPUs, $(uname -r); shared dirs on $(df -T "$work" | awk 'NR==2 {print $2}')"
echo "$rounds round(s) of ${seconds}s per workload per daemon, $queues request queue(s)"
labels=(daxfsd)
if ((file_handles)); then
    labels+=(daxfsd-fds)
elif ((sandbox_cost)); then
    labels+=(daxfsd-unconfined)
elif [[ $queues -eq 1 ]]; then
    labels+=(virtiofsd-pool virtiofsd-default)
fi
for ((r = 1; r <= rounds; r++)); do
    run daxfsd target/release/daxfsd --thread-pool-size "$threads" --num-request-queues "$queues" --tag bench
    if ((file_handles)); then
        run daxfsd-fds target/release/daxfsd --thread-pool-size "$threads" --num-request-queues "$queues" \
            --tag bench --inode-file-handles=never
    elif ((sandbox_cost)); then
        run daxfsd-unconfined target/release/daxfsd --thread-pool-size "$threads" --num-request-queues "$queues" \
            --tag bench --sandbox none --seccomp none
    elif [[ $queues -eq 1 ]]; then
        run virtiofsd-pool "$virtiofsd" --thread-pool-size "$threads" --sandbox none
        run virtiofsd-default "$virtiofsd" --sandbox none
    fi
done
[[ $queues -eq 1 ]] || ((sandbox_cost || file_handles)) || echo "virtiofsd skipped: it has one request queue"

# Median and range of each (workload, daemon) over the rounds.
printf '\n| workload |'
for l in "${labels[@]}"; do printf ' %s ops/s (median, min-max) |' "$l"; done
printf '\n|---|'
for _ in "${labels[@]}"; do printf -- '---:|'; done
printf '\n'
mapfile -t workloads < <(awk -F'|' '!seen[$2]++ {print $2}' "$work/results")
for w in "${workloads[@]}"; do
    printf '| %s |' "$w"
    for l in "${labels[@]}"; do
        awk -F'|' -v l="$l" -v w="$w" '$1 == l && $2 == w {print $3}' "$work/results" | sort -n |
            awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
                 printf " %d (%d-%d) |", m, v[1], v[NR]}'
    done
    printf '\n'
done
