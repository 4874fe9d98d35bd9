#!/usr/bin/env bash
# syscalls.sh — host syscalls and latency per FUSE operation, daxfsd against virtiofsd, with
# no guest in the loop: examples/opcount sends exactly --count N of one operation, one request
# in flight, over the test frontend.
#
# Usage: bench/syscalls.sh [--count N] [--time-count N] [--rounds R] [--ops "op1 op2 ..."]
#                          [--uid N] [--keep DIR]
#   --count N       operations traced per run (default 300)
#   --time-count N  operations timed per run, without a tracer (default 2000)
#   --rounds R      timed rounds, daemons interleaved (default 5)
#   --uid N         requests come from uid N, gid N (default 0, root: no credential switch);
#                   the shared directories are then mode 1777
#   --keep DIR      keep every raw counter output in DIR (LABEL-OP-N.strace, LABEL-OP-N.perf)
#
# For each daemon and op, a fresh daemon (its defaults: daxfsd's release build, virtiofsd 1.14
# from vm-tests/install-virtiofsd.sh) serves a fresh directory under /var/tmp; opcount connects
# and sets up, then a counter is attached to every thread of the serving process for the op
# loop only, and the same run with --count 0 (the connection up, the counter attached and
# detached, no request) is subtracted; the rest is divided by N. Two counters, each its own
# pair of runs:
#   strace -f: every syscall by name (futex split into FUTEX_WAKE and the rest). It stops the
#     daemon at each syscall, which changes what depends on timing (how often a thread finds
#     the next request without sleeping, lock contention).
#   perf stat: syscall tracepoints counted in the kernel, the daemon never stopped: all
#     syscalls, futex wakes (thread hand-offs) and context switches per op.
# Latency: the op loop timed in opcount with no counter; median [min-max] of µs per op over
# rounds interleaving the daemons. One op may be two FUSE requests (lookup+forget,
# create+release, open+release, mkdir+rmdir). The client's wait (poll on the call eventfd) is
# far quicker than a guest's, so a daemon sometimes finds the next request when it re-checks
# the ring, which no guest allows: epoll_wait/read per op are lower bounds.
set -euo pipefail
cd "$(dirname "$0")/.."
count=300 time_count=2000 rounds=5 keep= uid=0
ops="lookup+forget getattr create+release unlink open+release read4k write4k mkdir+rmdir rename readdir"
while [[ $# -gt 0 ]]; do
    case $1 in
        --count) count=$2; shift 2 ;;
        --time-count) time_count=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --ops) ops=$2; shift 2 ;;
        --uid) uid=$2; shift 2 ;;
        --keep) keep=$2; mkdir -p "$keep"; shift 2 ;;
        *) echo "syscalls.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

need=()
command -v strace >/dev/null || need+=(strace)
command -v perf >/dev/null || need+=(linux-perf)
if ((${#need[@]})); then
    apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false install -y -qq "${need[@]}" >&2
fi
cargo build --release --quiet --bin daxfsd --example opcount
virtiofsd=${VIRTIOFSD:-/opt/virtiofsd/bin/virtiofsd}
[[ -x $virtiofsd ]] || vm-tests/install-virtiofsd.sh >&2
opcount=target/release/examples/opcount

work=$(mktemp -d /var/tmp/syscalls.XXXXXX)
daemon_pid=
cleanup() {
    [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# Starts daemon $1 on a fresh directory; sets daemon_pid (what we started) and sock.
start_daemon() {
    local label=$1 dir
    dir=$(mktemp -d "$work/$label.XXXX")
    ((uid == 0)) || chmod 1777 "$dir"
    sock=$dir.sock
    case $label in
        daxfsd) target/release/daxfsd --shared-dir "$dir" --socket-path "$sock" >"$dir.log" 2>&1 & ;;
        virtiofsd) "$virtiofsd" --shared-dir "$dir" --socket-path "$sock" >"$dir.log" 2>&1 & ;;
    esac
    daemon_pid=$!
    for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
    [[ -S $sock ]] || { echo "$label did not start:" >&2; cat "$dir.log" >&2; exit 1; }
}

# Sets serving: the process that serves requests, the deepest descendant of what we started
# (past the sandboxes' forks). Only once a client is connected: virtiofsd forks after it
# created its socket.
find_serving() {
    local kid
    serving=$daemon_pid
    while kid=$(awk '{print $1; exit}' "/proc/$serving/task/$serving/children" 2>/dev/null) && [[ -n $kid ]]; do
        serving=$kid
    done
}

stop_daemon() {
    kill "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
}

# Every task of $1 has a tracer.
all_traced() {
    local s
    for s in /proc/"$1"/task/*/status; do
        grep -q '^TracerPid:[[:space:]]*[1-9]' "$s" || return 1
    done
}

# count TOOL LABEL OP N OUT: one counted run of N ops; writes "name count" lines to OUT. With
# TOOL=strace, one line per syscall named (futex split into futex_wake and futex_wait, the
# rest); with TOOL=perf, counters that do not stop the daemon: every syscall (TOTAL), futex
# wakes, epoll_wait and context switches (cs).
count() {
    local tool=$1 label=$2 op=$3 n=$4 out=$5 line tracer
    start_daemon "$label"
    coproc OPC { "$opcount" --socket "$sock" --op "$op" --count "$n" --uid "$uid" --sync; }
    read -r line <&"${OPC[0]}"
    [[ $line == ready ]] || { echo "opcount: $line" >&2; exit 1; }
    find_serving
    case $tool in
        strace) strace -f -qq -e signal=none -o "$out.raw" -p "$serving" & ;;
        perf) perf stat -x, -o "$out.raw" -e raw_syscalls:sys_enter \
            -e syscalls:sys_enter_futex --filter 'op == 1 || op == 129 || op == 10 || op == 138' \
            -e syscalls:sys_enter_epoll_wait -e context-switches -p "$serving" & ;;
    esac
    tracer=$!
    if [[ $tool == strace ]]; then
        for _ in $(seq 200); do all_traced "$serving" && break; sleep 0.02; done
    fi
    sleep 0.3 # the tracer is attached and the wake-ups its attach caused are over
    echo go >&"${OPC[1]}"
    read -r line <&"${OPC[0]}" # the result line
    read -r line <&"${OPC[0]}" # done
    sleep 0.1
    kill -INT "$tracer"
    wait "$tracer" 2>/dev/null || true
    echo bye >&"${OPC[1]}"
    wait "$OPC_PID" 2>/dev/null || true
    stop_daemon
    case $tool in
        # A syscall is counted where it starts: "<... x resumed>" lines are its second half.
        strace) awk '{ sub(/^[0-9]+ +/, "") }
             /^<\.\.\./ || /^\+\+\+/ || /^---/ { next }
             { name = $0; sub(/\(.*/, "", name); if (name !~ /^[a-z_0-9]+$/) next
               if (name == "futex") name = ($0 ~ /FUTEX_WAKE/) ? "futex_wake" : "futex_wait"
               c[name]++ }
             END { for (k in c) print k, c[k] }' "$out.raw" >"$out" ;;
        perf) awk -F, '$3 == "raw_syscalls:sys_enter" { print "TOTAL", $1 }
             $3 == "syscalls:sys_enter_futex" { print "futex_wake", $1 }
             $3 == "syscalls:sys_enter_epoll_wait" { print "epoll_wait", $1 }
             $3 == "context-switches" { print "cs", $1 }' "$out.raw" >"$out" ;;
    esac
    if [[ -n $keep ]]; then mv "$out.raw" "$keep/$label-$op-$n.$tool"; else rm -f "$out.raw"; fi
}

# per_op BASE RUN N: "name count/op" of RUN minus BASE, largest first, and "TOTAL" (the sum
# of every difference, or the TOTAL counter where there is one).
per_op() {
    awk -v n="$3" 'FNR == NR { base[$1] = $2; next }
        { d = $2 - base[$1]; t += d; if ($1 != "TOTAL") print $1, d / n; else tt = d; delete base[$1] }
        END { for (k in base) t -= base[k]; print "TOTAL", (tt != "" ? tt : t) / n }' "$1" "$2" |
        sort -k2,2gr
}

# measure TOOL LABEL OP: per_op of an N run against a 0 run.
measure() {
    count "$1" "$2" "$3" 0 "$work/base"
    count "$1" "$2" "$3" "$count" "$work/run"
    per_op "$work/base" "$work/run" "$count"
}

# time_run LABEL OP: prints µs per op of one untraced run.
time_run() {
    local label=$1 op=$2 r
    start_daemon "$label"
    r=$("$opcount" --socket "$sock" --op "$op" --count "$time_count" --uid "$uid")
    stop_daemon
    sed -n 's/.*us_per_op=\([0-9.]*\).*/\1/p' <<<"$r"
}

echo "host: $(nproc) CPUs, $(uname -r); shared dirs on $(df -T "$work" | awk 'NR==2 {print $2}')"
echo "daxfsd $(git rev-parse --short HEAD) release, defaults; $("$virtiofsd" --version 2>/dev/null | head -1), defaults"
echo "traced: $count ops per run minus a --count 0 run; timed: $time_count ops per run, $rounds rounds; caller uid $uid"

declare -A named counters # [label,op]: strace's per-op lines; perf's per-op counters
for op in $ops; do
    for label in daxfsd virtiofsd; do
        named[$label,$op]=$(measure strace "$label" "$op")
        counters[$label,$op]=$(measure perf "$label" "$op")
    done
done

declare -A lat # lat[label,op] = space-separated µs/op of every round
for ((r = 1; r <= rounds; r++)); do
    for op in $ops; do
        for label in daxfsd virtiofsd; do
            lat[$label,$op]+="$(time_run "$label" "$op") "
        done
    done
done

median() {
    tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR] = $1} END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.1f [%.1f-%.1f]", m, v[1], v[NR]}'
}

# value NAME: NAME's per-op value in the lines on stdin (0 if absent), one decimal.
value() { awk -v k="$1" '$1 == k { v = $2 } END { printf "%.1f", v }'; }
# top: the four largest strace lines on stdin (at least 0.05 per op), "name n, ...".
top() { awk '$1 != "TOTAL" && $2 >= 0.05 && n < 4 { printf "%s%s %.1f", sep, $1, $2; sep = ", "; n++ }'; }

printf '\n| op | daxfsd syscalls/op (top, strace) | virtiofsd syscalls/op (top, strace) |'
printf ' futex wakes/op daxfsd / virtiofsd | context switches/op daxfsd / virtiofsd |'
printf ' daxfsd µs/op | virtiofsd µs/op |\n|---|---|---|---:|---:|---:|---:|\n'
for op in $ops; do
    d=${counters[daxfsd,$op]} v=${counters[virtiofsd,$op]}
    printf '| %s | %s (%s) | %s (%s) | %s / %s | %s / %s | %s | %s |\n' "$op" \
        "$(value TOTAL <<<"$d")" "$(top <<<"${named[daxfsd,$op]}")" \
        "$(value TOTAL <<<"$v")" "$(top <<<"${named[virtiofsd,$op]}")" \
        "$(value futex_wake <<<"$d")" "$(value futex_wake <<<"$v")" \
        "$(value cs <<<"$d")" "$(value cs <<<"$v")" \
        "$(median "${lat[daxfsd,$op]}")" "$(median "${lat[virtiofsd,$op]}")"
done

printf '\nEvery syscall per op under strace (at least 0.05 per op; strace total in brackets):\n'
for op in $ops; do
    for label in daxfsd virtiofsd; do
        printf '%-14s %-9s [%s] %s\n' "$op" "$label" "$(value TOTAL <<<"${named[$label,$op]}")" \
            "$(awk '$1 != "TOTAL" && ($2 >= 0.05 || $2 <= -0.05) { printf "%s%s %.2f", sep, $1, $2; sep = ", " }' \
                <<<"${named[$label,$op]}")"
    done
done
