#!/usr/bin/env bash
# tree-walk.sh — the big-tree tier (issue 11): the host makes a tree of --files small files
# (--per-dir in each directory), a guest walks it with `tree-walk` (readdir, lstat of every
# entry, every 97th file read and checked) while the daemon runs with --rlimit-nofile N.
#
# With file handles (--inode-file-handles=prefer, the default) the walk must pass: no failed
# call in the guest, no failed request in the daemon's debug log (no EMFILE/ENFILE anywhere),
# and the daemon's fd count (sampled from the host every 0.2 s) stays under the limit.
# With --inode-file-handles=never the same walk must fail loudly: the guest reports EMFILE and
# the daemon logs that the guest hit its fd quota.
#
# Usage: vm-tests/tree-walk.sh [--files N] [--per-dir N] [--rlimit N] [--modes LIST]
#                              [--rounds N] [--timeout SECS] [--daemon PATH] [--accel tcg|kvm]
#                              [--daemon-arg ARG]...
#   --modes   comma-separated, of: prefer (must pass), never (must fail loudly),
#             prefer-timed, never-timed (info log level, no pass/fail: the per-entry time
#             only; never-timed needs an inode fd quota above the tree's inode count: a big
#             --rlimit, or --daemon-arg=--guest-fd-quota=64, which leaves the rest to inodes)
#   defaults: --files 200000 --per-dir 1000 --rlimit 4096 --modes prefer,never --rounds 1
# Runs as root (run-vm.sh). Wrap in `flock /tmp/daxfsd-vm.lock` on a shared machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
daemon=${DAXFSD_BIN:-$here/../target/debug/daxfsd}
accel=tcg
files=200000
per_dir=1000
rlimit=4096
modes=prefer,never
rounds=1
timeout=1800
extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --files) files=$2; shift 2 ;;
        --per-dir) per_dir=$2; shift 2 ;;
        --rlimit) rlimit=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --daemon) daemon=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        --daemon-arg) extra+=("--daemon-arg=$2"); shift 2 ;;
        --daemon-arg=*) extra+=("$1"); shift ;;
        *) echo "tree-walk.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -x $daemon ]] || { echo "tree-walk.sh: no daemon at $daemon (cargo build first)" >&2; exit 2; }
"$here/env.sh" >/dev/null

guest_dir=$here/guest-programs
(cd "$guest_dir" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --locked --release --target x86_64-unknown-linux-gnu --bin tree-walk)
walk_bin=$guest_dir/target/x86_64-unknown-linux-gnu/release/tree-walk

work=$(mktemp -d "${TMPDIR:-/tmp}/daxfsd-tree.XXXXXX")
keep=0
trap '((keep)) || rm -rf "$work"' EXIT
share=$work/share
mkdir -p "$share/tree"
t0=$SECONDS
# Each file holds its path under tree/ and a newline (tree-walk checks it).
python3 - "$share/tree" "$files" "$per_dir" <<'EOF'
import os, sys
root, files, per_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(files):
    d = f"d{i // per_dir:04d}"
    if i % per_dir == 0:
        os.mkdir(os.path.join(root, d))
    rel = f"{d}/f{i % per_dir:05d}"
    fd = os.open(os.path.join(root, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, (rel + "\n").encode())
    os.close(fd)
EOF
echo "=== tree-walk: made $files files in $(( (files + per_dir - 1) / per_dir )) directories in $((SECONDS - t0)) s"
echo "--dir tree --rounds $rounds --expect-files $files" >"$work/tree-walk.args"

# Samples the fd count of every process serving this share; prints each new maximum.
cat >"$work/fd-watch.sh" <<'EOF'
share=$1 max=0
while :; do
    for p in $(pgrep -f -- "--shared-dir $share" || true); do
        n=$(ls "/proc/$p/fd" 2>/dev/null | wc -l)
        if ((n > max)); then max=$n; echo "max_fds=$max pid=$p"; fi
    done
    sleep 0.2
done
EOF

run_walk() { # mode, log level; sets rc, logs
    local mode=$1 level=$2
    logs=$work/$mode
    rc=0
    echo "=== tree-walk: $mode, --rlimit-nofile $rlimit, $files files"
    local t=$SECONDS
    "$here/run-vm.sh" --daemon "$daemon" --accel "$accel" --timeout "$timeout" --test mount,tree-walk \
        --share "$share" --guest-file "$walk_bin:/tests/tree-walk" --guest-file "$work/tree-walk.args:/tests/tree-walk.args" \
        --daemon-arg=--rlimit-nofile="$rlimit" --daemon-arg=--inode-file-handles="${mode%-timed}" \
        --daemon-arg=--log-level="$level" "${extra[@]}" --host-during "bash $work/fd-watch.sh" --log-dir "$logs" \
        >"$logs.out" 2>&1 || rc=$?
    grep -a 'DAXFSD-INFO tree-walk' "$logs/serial.log" | tr -d '\r' | sed 's/^.*DAXFSD-INFO /    guest| /' || true
    max_fds=$(tail -n 1 "$logs/host-during.log" 2>/dev/null | sed -n 's/^max_fds=\([0-9]*\).*/\1/p' || true)
    echo "    daemon fds: at most ${max_fds:-?} (limit $rlimit); run-vm status $rc in $((SECONDS - t)) s"
}

fail() { keep=1; echo "=== tree-walk: FAILED: $*; logs kept in $work" >&2; exit 1; }

for mode in ${modes//,/ }; do
    case $mode in
        prefer)
            run_walk prefer debug
            ((rc == 0)) || { tail -n 30 "$logs.out" >&2; fail "the walk with file handles did not pass"; }
            # The daemon's debug line for a failed request: "op N unique N node N: <error>".
            failed=$(grep -a -c -E 'DEBUG [^]]*\] op [0-9]+ unique [0-9]+ (node [0-9]+:|refused)' "$logs/daemon.log" || true)
            fdlim=$(grep -a -c -E 'EMFILE|ENFILE|Too many open files|refusing with EMFILE' "$logs/daemon.log" || true)
            echo "    daemon: $failed failed requests, $fdlim fd-limit lines"
            ((failed == 0 && fdlim == 0)) || fail "the daemon failed requests with file handles"
            [[ -n $max_fds ]] || fail "no fd sample of the daemon"
            ((max_fds < rlimit)) || fail "the daemon held $max_fds fds, limit $rlimit"
            grep -aq 'inodes are held as file handles' "$logs/daemon.log" || fail "the daemon did not use file handles"
            echo "=== tree-walk: prefer passed"
            ;;
        never)
            run_walk never info
            ((rc != 0)) || fail "the walk without file handles passed: it should have run out of fds"
            grep -aq 'DAXFSD-RESULT name=tree-walk status=fail.*EMFILE' "$logs/serial.log" \
                || fail "the guest's failure does not name EMFILE"
            grep -aq 'refusing with EMFILE' "$logs/daemon.log" || fail "the daemon did not log its fd quota"
            echo "    guest| $(grep -a -o 'DAXFSD-RESULT name=tree-walk status=fail.*' "$logs/serial.log" | tr -d '\r' | cut -c1-240)"
            echo "    daemon| $(grep -a -m1 'refusing with EMFILE' "$logs/daemon.log" | cut -c1-200)"
            echo "=== tree-walk: never failed loudly, as it must"
            ;;
        prefer-timed | never-timed)
            run_walk "$mode" info
            ((rc == 0)) || { tail -n 30 "$logs.out" >&2; fail "the timed $mode walk failed"; }
            ;;
        *) echo "tree-walk.sh: unknown mode $mode" >&2; exit 2 ;;
    esac
done
echo "tree-walk.sh: all passed"
