#!/usr/bin/env bash
# bench.sh — the guest benchmark: the same guest (vm-tests/run-vm.sh: QEMU from
# the env.sh tree, Debian's kernel, 2 vCPUs) booted against daxfsd and against
# virtiofsd, the daemons alternating boot by boot over --rounds rounds, and one
# table of medians with [min–max] and the ratio daxfsd/virtiofsd.
#
# Usage:
#   vm-tests/bench.sh [--rounds N] [--quick] [--accel tcg|kvm] [options]
#
# Options:
#   --rounds N        rounds (default 3); one round boots every configuration
#                     once: daxfsd and virtiofsd with cache=auto (fio and the
#                     metadata workload) and with cache=never (fio), and
#                     daxfsd with -o dax=always (fio and metadata)
#   --quick           1 round, small sizes (a smoke run of the benchmark)
#   --accel tcg|kvm   (default tcg)
#   --daemon PATH     daxfsd binary (default: cargo build --release, target/release/daxfsd)
#   --virtiofsd PATH  virtiofsd binary (default: vm-tests/install-virtiofsd.sh)
#   --no-dax          leave out the dax=always boots (and the DAX column)
#   --log-dir DIR     keep every boot's logs and the raw numbers there
#                     (default: a temp dir, removed unless a boot failed)
#
# Workloads (all rates, higher is better):
#   fio (vm-tests/guest/bench-fio), psync: 1 MiB sequential read and write
#   (MiB/s), 4 KiB random read with 1 and 4 jobs, and through a shared mapping
#   (ioengine=mmap) (IOPS); each read job reads every block once after the
#   guest's caches were dropped.
#   metadata (guest-programs bench-meta), at 1 and 4 threads, each thread in its
#   own directory: create, stat (cold caches), readdir+stat (cold), open+read
#   (cold), rename, unlink, mkdir+rmdir (operations per second).
#
# Every boot is taken under flock $DAXFSD_VM_LOCK (default /tmp/daxfsd-vm.lock),
# so a machine's VMs never overlap. Prints the table on stdout (Markdown), and
# progress on stderr. A benchmark: it never judges a number; the exit status is
# 1 only when a boot failed (a guest check failed, a daemon died).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

rounds=3
quick=0
accel=tcg
daemon=
virtiofsd=
dax=1
log_dir=

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

rounds_set=0
while (($#)); do
    case $1 in
        --rounds) rounds=${2:?}; rounds_set=1; shift 2 ;;
        --quick) quick=1; shift ;;
        --accel) accel=${2:?}; shift 2 ;;
        --daemon) daemon=${2:?}; shift 2 ;;
        --virtiofsd) virtiofsd=${2:?}; shift 2 ;;
        --no-dax) dax=0; shift ;;
        --log-dir) log_dir=${2:?}; shift 2 ;;
        -h | --help) usage ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $accel == tcg || $accel == kvm ]] || die "--accel must be tcg or kvm"
((EUID == 0)) || die "must run as root (run-vm.sh needs it)"
((quick && !rounds_set)) && rounds=1

# Sizes: small enough that 3 rounds take well under half an hour under TCG on 2 cores.
if ((quick)); then
    seq_kib=$((32 * 1024)) rand_kib=$((4 * 1024)) meta_files=500 timeout=400
else
    seq_kib=$((64 * 1024)) rand_kib=$((8 * 1024)) meta_files=1000 timeout=900
fi

t_start=$SECONDS
env_out=$("$here/env.sh")
eval "$env_out"
if [[ -z $daemon ]]; then
    log "building daxfsd (release)"
    (cd "$repo" && cargo build --quiet --release --locked)
    daemon=$repo/target/release/daxfsd
fi
[[ -x $daemon ]] || die "no daxfsd at $daemon"
if [[ -z $virtiofsd ]]; then
    virtiofsd=$("$here/install-virtiofsd.sh" | tail -n 1)
fi
[[ -x $virtiofsd ]] || die "no virtiofsd at $virtiofsd"
guest_dir=$here/guest-programs
log "building the guest programs (static)"
(cd "$guest_dir" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --locked --release --target x86_64-unknown-linux-gnu --bin bench-meta)
meta_bin=$guest_dir/target/x86_64-unknown-linux-gnu/release/bench-meta

work=$(mktemp -d "${TMPDIR:-/tmp}/daxfsd-bench.XXXXXX")
if [[ -n $log_dir ]]; then
    mkdir -p "$log_dir"
    log_dir=$(realpath "$log_dir")
    keep_logs=1
else
    log_dir=$work/logs
    mkdir -p "$log_dir"
    keep_logs=0
fi
failed=()
# shellcheck disable=SC2317  # runs from the EXIT trap
cleanup() {
    if ((keep_logs == 0 && ${#failed[@]} == 0)); then
        rm -rf "$work"
    else
        [[ $log_dir == "$work"/* ]] && log "logs kept in $log_dir"
        rm -rf "$work/share" "$work/initramfs.cpio.gz"
    fi
}
trap cleanup EXIT

# One initramfs for every boot: fio from the tree (with its libraries), the two workloads.
echo "--seq-kib $seq_kib --rand-kib $rand_kib --runtime 120" >"$work/bench-fio.args"
echo "--files $meta_files --threads 1,4" >"$work/bench-meta.args"
"$here/mkinitramfs.sh" -o "$work/initramfs.cpio.gz" --busybox "$DAXFSD_VM_BUSYBOX" \
    --tree-program /usr/bin/fio \
    "$here/guest/bench-fio:/tests/bench-fio" "$work/bench-fio.args:/tests/bench-fio.args" \
    "$meta_bin:/tests/bench-meta" "$work/bench-meta.args:/tests/bench-meta.args"

# The read jobs' files, made once on the host (fio's names: JOB.N.0), shared by every boot.
share=$work/share
mkdir -p "$share/bench-fio"
mkfile() { head -c "$(($2 * 1024))" /dev/urandom >"$share/bench-fio/$1"; }
mkfile seqread.0.0 "$seq_kib"
mkfile randread1.0.0 "$rand_kib"
for j in 0 1 2 3; do mkfile "randread4.$j.0" "$((rand_kib / 4))"; done
mkfile mmapread.0.0 "$rand_kib"

# Configurations: name, daemon, run-vm arguments. daxfsd gets --once: it exits with its
# frontend, as virtiofsd does, instead of waiting for the next one (run-vm.sh would stop it).
declare -A cfg_daemon cfg_args
cfg_daemon[dx-auto]=$daemon
cfg_args[dx-auto]="--device fs --daemon-arg=--once --daemon-arg=--cache=auto --test mount,bench-fio,bench-meta"
cfg_daemon[vf-auto]=$virtiofsd
cfg_args[vf-auto]="--device fs --daemon-arg=--cache=auto --test mount,bench-fio,bench-meta"
cfg_daemon[dx-never]=$daemon
cfg_args[dx-never]="--device fs --daemon-arg=--once --daemon-arg=--cache=never --test mount,bench-fio"
# virtiofsd maps direct-I/O files only with --allow-mmap (daxfsd always allows it).
cfg_daemon[vf-never]=$virtiofsd
cfg_args[vf-never]="--device fs --daemon-arg=--cache=never --daemon-arg=--allow-mmap --test mount,bench-fio"
cfg_daemon[dax]=$daemon
cfg_args[dax]="--device dax --mount-opts dax=always --daemon-arg=--once --daemon-arg=--cache=auto --daemon-arg=--dax-window=512M --test mount,bench-fio,bench-meta"
order=(dx-auto vf-auto dx-never vf-never)
((dax)) && order+=(dax)

# One line per number: CONFIG KEY VALUE ROUND.
raw=$log_dir/raw.txt
: >"$raw"

# boot ROUND CONFIG — one boot; appends "CONFIG KEY VALUE" lines to $raw.
boot() {
    local r=$1 c=$2 logs=$log_dir/r$1-$2 rc=0 t0=$SECONDS
    local -a args
    read -r -a args <<<"${cfg_args[$c]}"
    log "round $r/$rounds: $c"
    # Under the lock, the time and the host's 1-minute load average are noted before and
    # after the boot ("EPOCH LOAD" lines): other work on the machine slows a TCG guest, and
    # the table says how much there was, and how long the boots waited for the lock.
    echo "$(date +%s) -" >"$logs.load"
    # shellcheck disable=SC2016  # expanded by the inner bash
    flock "${DAXFSD_VM_LOCK:-/tmp/daxfsd-vm.lock}" bash -c '
        load=$1; shift
        echo "$(date +%s) $(cut -d" " -f1 /proc/loadavg)" >>"$load"
        rc=0; "$@" || rc=$?
        echo "$(date +%s) $(cut -d" " -f1 /proc/loadavg)" >>"$load"
        exit "$rc"' bench-boot "$logs.load" "$here/run-vm.sh" --daemon "${cfg_daemon[$c]}" \
        --accel "$accel" --cpus 2 --timeout "$timeout" --share "$share" --initrd "$work/initramfs.cpio.gz" \
        --log-dir "$logs" "${args[@]}" >"$logs.out" 2>&1 || rc=$?
    rm -rf "$share/bench-meta" "$share"/bench-fio/seqwrite.*
    if ((rc != 0)); then
        failed+=("round $r $c (status $rc, $logs.out)")
        log "round $r/$rounds: $c FAILED (status $rc); see $logs.out"
        return 0
    fi
    tr -d '\r' <"$logs/serial.log" | awk -v c="$c" -v r="$r" '
        /^DAXFSD-INFO bench-fio job=/ {
            for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            j = v["job"]
            if (j == "seqread") print c, j, v["read_kib_s"] / 1024, r
            else if (j == "seqwrite") print c, j, v["write_kib_s"] / 1024, r
            else print c, j, v["read_iops"], r
        }
        /^DAXFSD-INFO bench-meta threads=/ {
            for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            for (i = 3; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[1] != "threads" && kv[1] != "files" && kv[1] != "size") print c, kv[1] "/t" v["threads"], kv[2], r
            }
        }' >>"$raw"
    log "round $r/$rounds: $c done in $((SECONDS - t0)) s"
}

for ((r = 1; r <= rounds; r++)); do
    # Alternate who goes first: forward on odd rounds, backward on even ones.
    seq_order=("${order[@]}")
    if ((r % 2 == 0)); then
        seq_order=()
        for ((i = ${#order[@]} - 1; i >= 0; i--)); do seq_order+=("${order[i]}"); done
    fi
    for c in "${seq_order[@]}"; do boot "$r" "$c"; done
done
elapsed=$((SECONDS - t_start))

# stats CONFIG KEY — "median [min–max]" of the values in $raw, or "–".
stats() {
    awk -v c="$1" -v k="$2" '$1 == c && $2 == k { print $3 }' "$raw" | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "-"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            f = (v[NR] >= 100) ? "%.0f" : "%.1f"
            printf f " [" f "–" f "]\n", m, v[1], v[NR]
        }'
}
# ratio A B — median(A) / median(B) from two stats strings, or "–".
ratio() {
    awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN {
        if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f\n", a / b }'
}

rows=(
    "seqread|auto|fio seq read 1 MiB, cache=auto (MiB/s)"
    "seqwrite|auto|fio seq write 1 MiB, cache=auto (MiB/s)"
    "randread1|auto|fio rand read 4 KiB, 1 job, cache=auto (IOPS)"
    "randread4|auto|fio rand read 4 KiB, 4 jobs, cache=auto (IOPS)"
    "mmapread|auto|fio mmap rand read 4 KiB, cache=auto (IOPS)"
    "seqread|never|fio seq read 1 MiB, cache=never (MiB/s)"
    "seqwrite|never|fio seq write 1 MiB, cache=never (MiB/s)"
    "randread1|never|fio rand read 4 KiB, 1 job, cache=never (IOPS)"
    "randread4|never|fio rand read 4 KiB, 4 jobs, cache=never (IOPS)"
    "mmapread|never|fio mmap rand read 4 KiB, cache=never (IOPS)"
)
for t in 1 4; do
    rows+=(
        "create/t$t|auto|create $meta_files files of 100 B, $t thread(s) (files/s)"
        "stat/t$t|auto|stat, cold caches, $t thread(s) (files/s)"
        "readdir_stat/t$t|auto|readdir+stat, cold caches, $t thread(s) (entries/s)"
        "open_read/t$t|auto|open+read 100 B, cold caches, $t thread(s) (files/s)"
        "rename/t$t|auto|rename, $t thread(s) (files/s)"
        "unlink/t$t|auto|unlink, $t thread(s) (files/s)"
        "mkdir_rmdir/t$t|auto|mkdir+rmdir, $t thread(s) (dirs/s)"
    )
done

{
    echo "Guest benchmark: $rounds round(s), accel=$accel, 2 vCPUs, QEMU $DAXFSD_VM_QEMU_VERSION," \
        "guest kernel $DAXFSD_VM_KERNEL_VERSION, vhost-user-fs-pci, 1 request queue;" \
        "$("$daemon" --version 2>/dev/null | head -n 1 || echo 'daxfsd ?') (defaults)," \
        "$("$virtiofsd" --version 2>/dev/null | head -n 1 || echo 'virtiofsd ?') (defaults)."
    echo "Rates, higher is better. ratio = daxfsd median / virtiofsd median: > 1 means daxfsd is faster."
    ((dax)) && echo "dax=always: daxfsd with a 512 MiB DAX window, the guest mounted with -o dax=always (generic vhost-user device), cache=auto."
    echo
    if ((dax)); then
        echo "| workload | daxfsd median [min–max] | virtiofsd median [min–max] | ratio daxfsd/virtiofsd (>1: daxfsd better) | daxfsd dax=always median [min–max] | ratio dax/virtiofsd |"
        echo "|---|---:|---:|---:|---:|---:|"
    else
        echo "| workload | daxfsd median [min–max] | virtiofsd median [min–max] | ratio daxfsd/virtiofsd (>1: daxfsd better) |"
        echo "|---|---:|---:|---:|"
    fi
    for row in "${rows[@]}"; do
        IFS='|' read -r key cache label <<<"$row"
        d=$(stats "dx-$cache" "$key")
        v=$(stats "vf-$cache" "$key")
        line="| $label | $d | $v | $(ratio "$d" "$v") |"
        if ((dax)); then
            if [[ $cache == auto ]]; then
                x=$(stats dax "$key")
                line+=" $x | $(ratio "$x" "$v") |"
            else
                line+=" - | - |"
            fi
        fi
        echo "$line"
    done
    echo
    cat "$log_dir"/*.load 2>/dev/null | awk -v total="$elapsed" -v n="${#order[@]}" '
        $2 == "-" { asked = $1; k = 0; next }
        { k++; if (k == 1) { wait += $1 - asked; start = $1 } else { boots += $1 - start }
          if (!seen++ || $2 < lo) lo = $2; if ($2 > hi) hi = $2 }
        END {
            printf "Run time: %d min %d s (%d boots per round): %d min %d s in boots, %d min %d s waiting for the VM lock.",
                total / 60, total % 60, n, boots / 60, boots % 60, wait / 60, wait % 60
            printf " Host 1-minute load average at the start and end of the boots (2 cores): %s–%s.\n", lo, hi
        }'
} | tee "$log_dir/table.md"

if ((${#failed[@]})); then
    for f in "${failed[@]}"; do log "FAILED: $f"; done
    exit 1
fi
