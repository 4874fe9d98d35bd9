#!/usr/bin/env bash
# matrix.sh — run the guest programs (vm-tests/guest-programs: posix-smoke,
# dax-stress, fsx, external-truncate) in real VMs over a matrix of
#   mount mode {nodax, dax=always, dax=inode}
#   x request queues {1, 2} x daemon cache {auto, never}
# one VM boot per cell, and print a table of cells with status, wall time
# and the operations each program executed.
#
# Usage:
#   vm-tests/matrix.sh [--tier quick|long] [--daemon PATH] [--cells REGEX]
#                      [--daemon-arg ARG]... [--accel tcg|kvm] [--log-dir DIR]
#                      [--list]
#
#   --tier quick|long  op counts: quick (default) takes a few minutes on 2
#                      cores under TCG; long runs 100 times the ops
#   --daemon PATH      daxfsd (default: $DAXFSD_BIN or target/debug/daxfsd)
#                      or virtiofsd (detected from --version: one request
#                      queue, no DAX)
#   --cells REGEX      only cells whose name matches (e.g. 'nodax-q1')
#   --daemon-arg ARG   extra argument for the daemon in every cell
#   --accel tcg|kvm    passed to run-vm.sh (default tcg)
#   --log-dir DIR      keep every cell's logs in DIR/CELL (default: a temp
#                      dir, kept only when a cell failed)
#   --list             print the cells and the per-tier arguments, and exit
#
# Cells are named MODE-qN-CACHE, e.g. nodax-q1-auto, dax-always-q2-never, all
# under the default sandbox (namespace, seccomp kill); three more cells run
# one other sandbox mode each: rootless-* (the daemon as uid 65534 in a user
# namespace), chroot-* and sbnone-* (--sandbox none).
# DAX cells need a daemon with --dax-window; without it they are skipped
# (SKIP line). DAX cells use QEMU's vhost-user-test-device-pci (run-vm.sh
# --device dax), which takes the window size from the backend
# (GET_SHMEM_CONFIG): there is no QEMU-side size option.
# Every cell passes --xattr to the daemon, runs external-truncate with
# run-vm.sh --host-during vm-tests/host-external-truncate.sh and checks the
# posix-smoke files with vm-tests/host-check-posix.sh.
# The guest programs are built first (cargo, cached; static glibc).
# Exit status: 0 when every cell that ran passed, 1 otherwise, 2 on usage
# or environment errors.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tier=quick
daemon=${DAXFSD_BIN:-$here/../target/debug/daxfsd}
cells_re=.
extra_daemon_args=()
accel=tcg
log_root=
list=0

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { printf 'matrix: %s\n' "$*" >&2; exit 2; }

while (($#)); do
    case $1 in
        --tier) tier=${2:?}; shift 2 ;;
        --daemon) daemon=${2:?}; shift 2 ;;
        --cells) cells_re=${2:?}; shift 2 ;;
        --daemon-arg) extra_daemon_args+=("${2:?}"); shift 2 ;;
        --daemon-arg=*) extra_daemon_args+=("${1#*=}"); shift ;;
        --accel) accel=${2:?}; shift 2 ;;
        --log-dir) log_root=${2:?}; shift 2 ;;
        --list) list=1; shift ;;
        -h | --help) usage ;;
        *) printf 'matrix: unknown option %s\n' "$1" >&2; usage ;;
    esac
done

# ------------------------------------------------------------- op counts ---
# Quick: measured on 2 cores under TCG, 35-50 s per cell including the boot
# (about 8 minutes for the 12 cells). Long: 100 times the ops and the
# external-truncate duration (about 25 minutes per cell, hours in all).
case $tier in
    quick) scale=1; cell_timeout=300 ;;
    long) scale=100; cell_timeout=21600 ;;
    *) die "--tier must be quick or long" ;;
esac
args_posix_smoke="--dir-entries 2000 --otrunc-rounds $((20 * scale))"
args_dax_stress="--ops $((1500 * scale)) --threads 4 --files 3 --file-size 4M --seed 1"
args_fsx="--ops $((1500 * scale)) --max-size 3M --seed 1"
args_external_truncate="--ops $((1000 * scale)) --duration $((3 * scale)) --files 2 --file-size 1M --seed 1 --require-host"
host_during_args="--iterations $((1000 * scale))"
programs=(posix-smoke dax-stress fsx external-truncate)

all_cells=()
for mode in nodax dax-always dax-inode; do
    for q in 1 2; do
        for cache in auto never; do
            all_cells+=("$mode-q$q-$cache")
        done
    done
done

# The sandbox modes other than the default, one cell each: a rootless daemon (user namespace,
# as uid 65534), chroot, and none.
all_cells+=(rootless-dax-always-q1-auto chroot-dax-inode-q1-auto sbnone-nodax-q1-auto)

if ((list)); then
    printf '%s\n' "${all_cells[@]}"
    printf 'tier %s args:\n  posix-smoke %s\n  dax-stress %s\n  fsx %s\n  external-truncate %s\n  host-external-truncate.sh %s\n' \
        "$tier" "$args_posix_smoke" "$args_dax_stress" "$args_fsx" "$args_external_truncate" "$host_during_args"
    exit 0
fi

((EUID == 0)) || die "must run as root (run-vm.sh needs chroot and namespaces)"
[[ -x $daemon ]] || die "no daemon at $daemon (cargo build first, or --daemon)"
[[ $accel == tcg || $accel == kvm ]] || die "--accel must be tcg or kvm"

# ----------------------------------------------------------------- build ---
guest_dir=$here/guest-programs
target=x86_64-unknown-linux-gnu
printf 'matrix: building the guest programs (static)\n'
(cd "$guest_dir" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --locked --release --target "$target" --bins)
bin_dir=$guest_dir/target/$target/release
for p in "${programs[@]}"; do
    [[ -x $bin_dir/$p ]] || die "guest program $p was not built"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/daxfsd-matrix.XXXXXX")
keep_logs=0
if [[ -n $log_root ]]; then
    mkdir -p "$log_root"
    log_root=$(realpath "$log_root")
    keep_logs=1
else
    log_root=$work/logs
fi
# shellcheck disable=SC2317  # runs from the EXIT trap
cleanup() {
    local rc=$?
    if ((keep_logs == 0)); then
        rm -rf "$work"
    else
        rm -rf "${work:?}/bin" "${work:?}/args"
    fi
    exit "$rc"
}
trap cleanup EXIT

# A private copy of the daemon: a rebuild during the run must not swap it.
mkdir -p "$work/bin" "$work/args"
cp "$daemon" "$work/bin/daemon"
chmod 0755 "$work" "$work/bin"  # a rootless cell's daemon runs as another user
daemon_copy=$work/bin/daemon
daemon_kind=daxfsd
if "$daemon_copy" --version 2>/dev/null | grep -qi virtiofsd; then
    daemon_kind=virtiofsd
fi
has_dax=0
if [[ $daemon_kind == daxfsd ]] && "$daemon_copy" --help 2>/dev/null | grep -q -- --dax-window; then
    has_dax=1
fi

guest_files=()
for p in "${programs[@]}"; do
    var=args_${p//-/_}
    printf '%s\n' "${!var}" >"$work/args/$p.args"
    guest_files+=(--guest-file "$bin_dir/$p:/tests/$p" --guest-file "$work/args/$p.args:/tests/$p.args")
done
tests=mount,$(IFS=,; echo "${programs[*]}")

printf 'matrix: tier %s, daemon %s (%s%s), accel %s\n' "$tier" "$daemon" "$daemon_kind" \
    "$( ((has_dax)) && echo ', DAX' || echo ', no DAX')" "$accel"
if ((!has_dax)); then
    if [[ $daemon_kind == virtiofsd ]]; then
        printf 'SKIP dax cells: virtiofsd has no DAX window\n'
    else
        printf 'SKIP dax cells: daemon has no --dax-window\n'
    fi
fi

# The rootless cell's user: nobody, with subordinate ids for newuidmap/newgidmap.
rootless_uid=65534
rootless_sub=200000
if printf '%s\n' "${all_cells[@]}" | grep -q '^rootless-' && [[ rootless-dax-always-q1-auto =~ $cells_re ]]; then
    if ! command -v newuidmap >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq uidmap >&2
    fi
    user=$(getent passwd "$rootless_uid" | cut -d: -f1)
    for f in /etc/subuid /etc/subgid; do
        grep -q "^$user:$rootless_sub:65536\$" "$f" 2>/dev/null || echo "$user:$rootless_sub:65536" >>"$f"
    done
fi

declare -A cell_status cell_time cell_ops cell_failed
ran=()
matched=0
overall=0
t_all=$SECONDS

# ops_of SERIAL_LOG — "ps=N ds=N fsx=N et=N dax=D/F" (posix-smoke checks,
# operations, dax-stress files the guest accessed through DAX) from the
# programs' DAXFSD-INFO lines.
ops_of() {
    local log=$1 p short n out=
    n=$(tr -d '\r' <"$log" 2>/dev/null | grep -a -o 'DAXFSD-INFO posix-smoke summary .*' |
        sed 's/[^0-9 ]//g' | awk '{print $1 + $2 + $3}' | tail -n1 || true)
    out+="ps=${n:--} "
    for p in dax-stress fsx external-truncate; do
        case $p in dax-stress) short=ds ;; fsx) short=fsx ;; external-truncate) short=et ;; esac
        n=$(tr -d '\r' <"$log" 2>/dev/null | grep -a -o "DAXFSD-INFO $p ops .*total=[0-9]*" |
            sed 's/.*total=//' | tail -n1 || true)
        out+="$short=${n:--} "
    done
    # Whether dax-stress's files were DAX in the guest (statx STATX_ATTR_DAX).
    n=$(tr -d '\r' <"$log" 2>/dev/null | grep -a -o 'DAXFSD-INFO dax-stress config .*dax_files=[0-9?]*/[0-9]*' |
        sed 's/.*dax_files=//' | tail -n1 || true)
    out+="dax=${n:--}"
    printf '%s' "$out"
}

for cell in "${all_cells[@]}"; do
    [[ $cell =~ $cells_re ]] || continue
    matched=$((matched + 1))
    sandbox=default
    case $cell in
        rootless-* | chroot-* | sbnone-*) sandbox=${cell%%-*} ;;
    esac
    base=${cell#"$sandbox"-}
    mode=${base%-q*}
    rest=${base#"$mode"-q}
    q=${rest%%-*}
    cache=${rest#*-}
    if [[ $mode != nodax ]] && ((!has_dax)); then
        continue
    fi
    if [[ $daemon_kind == virtiofsd && $q != 1 ]]; then
        printf 'SKIP %s: virtiofsd supports one request queue\n' "$cell"
        continue
    fi
    host_check=$(printf '%q' "$here/host-check-posix.sh")
    [[ $sandbox == rootless ]] && host_check="DAXFSD_ROOTLESS_IDS=$rootless_uid:$rootless_sub $host_check"
    run_args=(--daemon "$daemon_copy" --accel "$accel" --queues "$q" --timeout "$cell_timeout"
        --test "$tests" "${guest_files[@]}"
        --host-during "$(printf '%q' "$here/host-external-truncate.sh") $host_during_args"
        --host-check "$host_check"
        --daemon-arg=--cache="$cache" --daemon-arg=--xattr)
    [[ $daemon_kind == daxfsd ]] && run_args+=(--daemon-arg=--num-request-queues="$q")
    case $mode in
        nodax) run_args+=(--device fs) ;;
        dax-always) run_args+=(--device dax --mount-opts dax=always --daemon-arg=--dax-window=512M) ;;
        dax-inode) run_args+=(--device dax --mount-opts dax=inode --daemon-arg=--dax-window=512M) ;;
    esac
    case $sandbox in
        rootless)
            # As libvirt's session mode would: the user's own id is root in the namespace,
            # subordinate ids (newuidmap, /etc/subuid) are the guest's other users.
            run_args+=(--daemon-user "$rootless_uid")
            for m in uid gid; do
                run_args+=("--daemon-arg=--$m-map=:0:$rootless_uid:1:" "--daemon-arg=--$m-map=:1:$rootless_sub:65536:")
            done
            ;;
        chroot) run_args+=(--daemon-arg=--sandbox=chroot) ;;
        sbnone) run_args+=(--daemon-arg=--sandbox=none) ;;
    esac
    for a in "${extra_daemon_args[@]}"; do
        run_args+=("--daemon-arg=$a")
    done
    cell_log=$log_root/$cell
    mkdir -p "$cell_log"
    printf '=== matrix: %s\n' "$cell"
    t0=$SECONDS
    rc=0
    "$here/run-vm.sh" "${run_args[@]}" --log-dir "$cell_log" >"$cell_log/run-vm.out" 2>&1 || rc=$?
    cell_time[$cell]=$((SECONDS - t0))
    cell_ops[$cell]=$(ops_of "$cell_log/serial.log")
    # Failed result names, then the launcher's other reasons (QEMU died...).
    failed=$(grep -a -o 'DAXFSD-RESULT name=[^ ]* status=fail' "$cell_log/run-vm.out" |
        sed 's/DAXFSD-RESULT name=\([^ ]*\) .*/\1/' | sort -u | paste -sd ' ' || true)
    reasons=$(grep -a 'run-vm: FAIL: ' "$cell_log/run-vm.out" |
        grep -v -E 'guest result\(s\) failed|guest DAXFSD-DONE rc=' |
        sed 's/run-vm: FAIL: //' | paste -sd ';' || true)
    if ((rc == 0)); then
        cell_status[$cell]=PASS
    else
        cell_status[$cell]=FAIL
        overall=1
        keep_logs=1
    fi
    failed="${reasons:+[$reasons] }$failed"
    ((${#failed} <= 110)) || failed="${failed:0:107}..."
    cell_failed[$cell]=${failed:--}
    printf '=== matrix: %s %s in %ss (%s)\n' "$cell" "${cell_status[$cell]}" "${cell_time[$cell]}" "${cell_ops[$cell]}"
    if [[ ${cell_status[$cell]} == FAIL ]]; then
        grep -a -E 'status=fail|run-vm: FAIL' "$cell_log/run-vm.out" | awk '!seen[$0]++' | head -n 20 |
            sed 's/^/    /' || true
    fi
    ran+=("$cell")
done

((matched)) || die "--cells $cells_re matches no cell (see --list)"
printf '\n%-22s %-6s %6s  %-44s %s\n' cell status time "ops executed" "failures ([launcher] results)"
for cell in "${ran[@]}"; do
    printf '%-22s %-6s %5ss  %-44s %s\n' "$cell" "${cell_status[$cell]}" "${cell_time[$cell]}" \
        "${cell_ops[$cell]}" "${cell_failed[$cell]}"
done
printf '\nmatrix: %d cell(s) in %ss, tier %s; per-program arguments:\n' "${#ran[@]}" $((SECONDS - t_all)) "$tier"
printf '  posix-smoke %s\n  dax-stress %s\n  fsx %s\n  external-truncate %s (host: %s)\n' \
    "$args_posix_smoke" "$args_dax_stress" "$args_fsx" "$args_external_truncate" "$host_during_args"
if ((keep_logs)); then
    printf 'matrix: logs in %s\n' "$log_root"
fi
if ((overall)); then
    printf 'matrix: FAIL\n'
    exit 1
fi
printf 'matrix: all cells passed\n'
