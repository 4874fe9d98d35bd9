#!/usr/bin/env bash
# posix.sh — the posix tier: pjdfstest 0.2.2 (POSIX conformance, 398 tests) as root in a real
# guest on the virtio-fs mount served by daxfsd, one boot per cell:
#   nodax       default sandbox, vhost-user-fs-pci (no DAX window)
#   dax-always  default sandbox, the generic device, dax=always (every file through the window)
#   rootless    the daemon as uid 65534 in a user namespace (subordinate ids for the guest's
#               other users, as libvirt's session mode starts it), no DAX
# The EROFS tests, which remount the guest's mount read-only, run alone after the rest.
#
# Usage: vm-tests/posix.sh [--daemon PATH] [--accel tcg|kvm] [--cells nodax,dax-always,rootless]
#                          [--log-dir DIR]
#        vm-tests/posix.sh --judge DIR/CELL/serial.log   (judge a kept console log, no VM)
#
# Builds pjdfstest first (vm-tests/install-pjdfstest.sh, static, cached in /var/cache/daxfsd-vm).
# Each cell prints the pass/fail/skip counts and every test that did not pass. A cell fails
# when a test fails or is skipped and is not listed with that kind in
# vm-tests/posix-expected.txt (which says why each listed one is not ours; the rootless cell
# adds vm-tests/posix-expected-rootless.txt), when a listed one
# passes or changes kind (the list must be kept true), or when the suite did not finish.
# About 40 s per cell under TCG on 2 cores. Exit status: 0 when every cell passed, 1 otherwise,
# 2 on usage errors.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
daemon=${DAXFSD_BIN:-$here/../target/debug/daxfsd}
accel=tcg
cells=nodax,dax-always,rootless
log_root=
judge_only=
while (($#)); do
    case $1 in
        --daemon) daemon=${2:?}; shift 2 ;;
        --accel) accel=${2:?}; shift 2 ;;
        --cells) cells=${2:?}; shift 2 ;;
        --log-dir) log_root=${2:?}; shift 2 ;;
        --judge) judge_only=${2:?}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
        *) echo "posix.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
work=$(mktemp -d "${TMPDIR:-/tmp}/daxfsd-posix.XXXXXX")
chmod 0755 "$work" # the rootless cell's daemon runs from $work/bin as another user
keep=0 # set on a failure: logs kept in $work are not removed (read by the EXIT trap)
if [[ -n $log_root ]]; then
    mkdir -p "$log_root"
    log_root=$(realpath "$log_root")
else
    log_root=$work/logs
fi
mkdir -p "$log_root"
trap '[[ $keep == 1 && $log_root == "$work"/* ]] || rm -rf "$work"' EXIT

# expected CELL — "KIND NAME" for every result listed for CELL, sorted.
expected() {
    local -a lists=("$here/posix-expected.txt")
    [[ $1 == rootless ]] && lists+=("$here/posix-expected-rootless.txt")
    cat "${lists[@]}" | grep -v '^[[:space:]]*\(#\|$\)' | awk '{print $1, $2}' | LC_ALL=C sort
}

# results REPORT — "KIND NAME" (pass, fail, skip) for each result line of a pjdfstest report:
# "NAME <padding> ok|FAILED|skipped"; detail lines start with a tab.
results() {
    awk '/^[^ \t]+ +(ok|FAILED|skipped)$/ {
            s = $NF; if (s == "FAILED") print "fail", $1; else if (s == "skipped") print "skip", $1; else print "pass", $1
         }' "$1"
}

# judge CELL SERIAL_LOG — prints the counts and the non-passes; fails on any unlisted one.
# The EROFS tests are skipped in the main run (no allow_remount) and run alone afterwards: their
# results there replace the skips.
judge() {
    local cell=$1 serial=$2 rc=0 run
    expected "$cell" >"$work/$cell.expected"
    for run in PJD PJD-EROFS; do
        tr -d '\r' <"$serial" | sed -n "s/^$run| //p" >"$work/$cell.$run"
        if ! grep -q '^Summary:' "$work/$cell.$run"; then
            echo "=== posix $cell: a pjdfstest run ($run) did not finish (no Summary line)" >&2
            return 1
        fi
    done
    local summary summary_erofs
    summary=$(grep '^Summary:' "$work/$cell.PJD")
    summary_erofs=$(grep '^Summary:' "$work/$cell.PJD-EROFS")
    results "$work/$cell.PJD-EROFS" >"$work/$cell.erofs"
    awk 'NR == FNR { seen[$2] = 1; print; next } !($2 in seen)' "$work/$cell.erofs" \
        <(results "$work/$cell.PJD") | LC_ALL=C sort >"$work/$cell.results"
    local n_pass n_fail n_skip
    n_pass=$(grep -c '^pass ' "$work/$cell.results" || true)
    n_fail=$(grep -c '^fail ' "$work/$cell.results" || true)
    n_skip=$(grep -c '^skip ' "$work/$cell.results" || true)
    echo "=== posix $cell: $n_pass passed, $n_fail failed, $n_skip skipped (pjdfstest: ${summary#Summary: };" \
        "EROFS tests alone: ${summary_erofs#Summary: })"
    grep -v '^pass ' "$work/$cell.results" | sed 's/^/    /' || true
    local unlisted stale
    unlisted=$(grep -v '^pass ' "$work/$cell.results" | LC_ALL=C comm -23 - "$work/$cell.expected" || true)
    stale=$(grep -v '^pass ' "$work/$cell.results" | LC_ALL=C comm -13 - "$work/$cell.expected" || true)
    if [[ -n $unlisted ]]; then
        echo "=== posix $cell: not in posix-expected.txt (a daemon bug until shown otherwise):" >&2
        printf '    %s\n' "${unlisted//$'\n'/$'\n    '}" >&2
        rc=1
    fi
    if [[ -n $stale ]]; then
        echo "=== posix $cell: listed in posix-expected.txt but not seen so (update the list):" >&2
        printf '    %s\n' "${stale//$'\n'/$'\n    '}" >&2
        rc=1
    fi
    if ((n_pass + n_fail + n_skip != 398)); then
        echo "=== posix $cell: $((n_pass + n_fail + n_skip)) results parsed, pjdfstest 0.2.2 has 398" >&2
        rc=1
    fi
    return "$rc"
}

if [[ -n $judge_only ]]; then
    judge "$(basename "$(dirname "$judge_only")")" "$judge_only"
    exit
fi
[[ -x $daemon ]] || { echo "posix.sh: no daemon at $daemon (cargo build first)" >&2; exit 2; }
"$here/env.sh" >/dev/null
pjdfstest=$("$here/install-pjdfstest.sh" | tail -n1)

# The rootless cell: nobody, with subordinate ids (newuidmap), the mapping matrix.sh's rootless
# cell uses; the daemon runs from a copy it can read.
rootless_uid=65534
rootless_sub=200000
if [[ ,$cells, == *,rootless,* ]]; then
    if ! command -v newuidmap >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq uidmap >&2
    fi
    user=$(getent passwd "$rootless_uid" | cut -d: -f1)
    for f in /etc/subuid /etc/subgid; do
        grep -q "^$user:$rootless_sub:65536\$" "$f" 2>/dev/null || echo "$user:$rootless_sub:65536" >>"$f"
    done
    install -D -m 0755 "$daemon" "$work/bin/daxfsd"
fi

failed=()
for cell in ${cells//,/ }; do
    cell_daemon=$daemon
    case $cell in
        nodax) vm_args=(--device fs) ;;
        dax-always) vm_args=(--device dax --mount-opts dax=always) ;;
        rootless)
            cell_daemon=$work/bin/daxfsd
            vm_args=(--device fs --daemon-user "$rootless_uid")
            for m in uid gid; do
                vm_args+=("--daemon-arg=--$m-map=:0:$rootless_uid:1:" "--daemon-arg=--$m-map=:1:$rootless_sub:65536:")
            done
            ;;
        *) echo "posix.sh: unknown cell $cell (nodax, dax-always, rootless)" >&2; exit 2 ;;
    esac
    logs=$log_root/$cell
    t0=$SECONDS
    echo "=== posix $cell: pjdfstest in the guest"
    rc=0
    "$here/run-vm.sh" --daemon "$cell_daemon" --accel "$accel" --timeout 300 "${vm_args[@]}" \
        --test pjdfstest --log-dir "$logs" \
        --guest-file "$pjdfstest:/bin/pjdfstest-bin" \
        --guest-file "$here/guest/pjdfstest-run:/tests/pjdfstest" \
        --guest-file "$here/guest/pjdfstest.toml:/etc/pjdfstest.toml" \
        --guest-file "$here/guest/pjdfstest-remount.toml:/etc/pjdfstest-remount.toml" \
        >"$logs.run.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        cat "$logs.run.log" >&2
        echo "=== posix $cell: the VM run failed (status $rc)" >&2
    fi
    judge "$cell" "$logs/serial.log" || rc=1
    if ((rc != 0)); then
        # shellcheck disable=SC2034  # read by the EXIT trap
        keep=1
        failed+=("$cell")
        echo "=== posix $cell: FAILED in $((SECONDS - t0)) s; logs in $logs" >&2
    else
        echo "=== posix $cell: passed in $((SECONDS - t0)) s"
    fi
done
if ((${#failed[@]})); then
    echo "posix.sh: failed cells: ${failed[*]}" >&2
    exit 1
fi
echo "posix.sh: all passed"
