#!/usr/bin/env bash
# run-vm.sh — boot a Linux guest on QEMU against a vhost-user virtio-fs
# daemon (daxfsd, or virtiofsd for comparison), run guest tests on the
# virtiofs mount, and report.
#
# Usage:
#   vm-tests/run-vm.sh --daemon PATH [options]
#
# Options:
#   --daemon PATH        daemon binary; started as
#                        PATH --socket-path S --shared-dir D --tag T [ARGS]
#   --daemon-arg ARG     extra daemon argument (repeatable)
#   --daemon-user UID    run the daemon as this unprivileged uid (rootless: its
#                        gid is the same number); the share and socket dir are
#                        given to it, and QEMU runs as that user too (as in
#                        libvirt's session mode)
#   --device fs|dax      fs:  vhost-user-fs-pci (no DAX window)
#                        dax: vhost-user-test-device-pci, virtio-id=26, which
#                             asks the backend for its shared memory (DAX)
#                        (default: fs)
#   --queues N           request queues on the QEMU side (default: 1); the
#                        daemon must agree: for daxfsd add
#                        --daemon-arg=--num-request-queues=N (virtiofsd 1.14
#                        supports only 1)
#   --queue-size N       virtqueue size (default: 1024)
#   --tag TAG            virtiofs tag (default: daxfsd)
#   --mount-opts OPTS    guest mount -o options, e.g. dax=always
#   --test LIST          guest tests, comma separated (default: smoke); see
#                        vm-tests/guest/init
#   --share DIR          shared directory (default: a fresh temp dir, removed)
#   --host-check CMD     shell command run on the host after the guest is
#                        done, with the share dir as $1; failing fails the run
#   --host-during CMD    shell command run on the host WHILE the guest runs:
#                        started (with the share dir appended as the last
#                        argument, output in host-during.log) once the guest
#                        prints a line `DAXFSD-READY name=...`; when the
#                        guest is done (DAXFSD-DONE or the VM ended) it gets
#                        5 s to exit by itself, then it is stopped. Failing
#                        (exit status != 0), or never being started because
#                        no READY line came, fails the run
#   --guest-file SRC[:DEST]  extra file for the initramfs (repeatable; see
#                        mkinitramfs.sh); static guest programs go here
#   --initrd FILE        use this initramfs instead of building one
#   --kernel FILE        guest kernel (default: the tree's vmlinuz)
#   --append ARGS        extra kernel command line
#   --qemu-arg ARG       extra QEMU argument (repeatable)
#   --accel tcg|kvm      (default: tcg; this machine's KVM cannot boot Linux)
#   --cpus N             guest vCPUs (default: 2)
#   --mem SIZE           guest memory, shared memfd (default: 1G)
#   --timeout SECS       kill the VM after SECS (default: 120)
#   --log-dir DIR        keep serial.log, daemon.log, qemu.log there
#   --keep               keep the work dir (logs, default share) and say where
#   --reboot             a guest reboot resets the machine instead of ending QEMU
#                        (for the guest's `reboot` test: a device reset under DAX)
#   --verbose            stream the guest console to stderr while it runs
#   --interactive        console on this terminal, shell in the guest after
#                        the tests (daxfsd.shell=1), no timeout or parsing;
#                        quit QEMU with Ctrl-A X
#
# Exit status: 0 when every guest result passed, the guest printed
# DAXFSD-DONE rc=0, QEMU exited cleanly (no signal, no assertion on its
# stderr), the daemon neither died early nor failed, and the host check (if
# any) passed; 1 otherwise; 2 for usage or environment errors. On failure the
# guest console, QEMU's stderr and the daemon log are printed.
#
# Example:
#   vm-tests/run-vm.sh --daemon /opt/virtiofsd/bin/virtiofsd --device fs \
#       --test smoke --host-check vm-tests/host-check-smoke.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

daemon=
daemon_args=()
daemon_user=
device=fs
queues=1
queue_size=1024
tag=daxfsd
mount_opts=
tests=smoke
share=
host_check=
host_during=
guest_files=()
initrd=
kernel=
append=
qemu_extra=()
accel=tcg
cpus=2
mem=1G
timeout=120
log_dir=
keep=0
reboot=0
verbose=0
interactive=0

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
log() { printf 'run-vm: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

while (($#)); do
    opt=$1
    case $opt in
        --*=*) set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; continue ;;
        -h | --help) usage ;;
        --keep) keep=1; shift; continue ;;
        --reboot) reboot=1; shift; continue ;;
        --verbose) verbose=1; shift; continue ;;
        --interactive) interactive=1; shift; continue ;;
    esac
    (($# >= 2)) || die "$opt needs a value"
    val=$2
    shift 2
    case $opt in
        --daemon) daemon=$val ;;
        --daemon-arg) daemon_args+=("$val") ;;
        --daemon-user) daemon_user=$val ;;
        --device) device=$val ;;
        --queues) queues=$val ;;
        --queue-size) queue_size=$val ;;
        --tag) tag=$val ;;
        --mount-opts) mount_opts=$val ;;
        --test) tests=$val ;;
        --share) share=$val ;;
        --host-check) host_check=$val ;;
        --host-during) host_during=$val ;;
        --guest-file) guest_files+=("$val") ;;
        --initrd) initrd=$val ;;
        --kernel) kernel=$val ;;
        --append) append=$val ;;
        --qemu-arg) qemu_extra+=("$val") ;;
        --accel) accel=$val ;;
        --cpus) cpus=$val ;;
        --mem) mem=$val ;;
        --timeout) timeout=$val ;;
        --log-dir) log_dir=$val ;;
        *) die "unknown option $opt (see --help)" ;;
    esac
done

[[ -n $daemon ]] || die "--daemon is required (see --help)"
[[ -x $daemon ]] || die "daemon $daemon is not an executable file"
[[ $device == fs || $device == dax ]] || die "--device must be fs or dax"
[[ $accel == tcg || $accel == kvm ]] || die "--accel must be tcg or kvm"
[[ $queues =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer"
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer"
[[ $tag =~ ^[A-Za-z0-9._-]{1,36}$ ]] || die "--tag must be 1-36 chars of [A-Za-z0-9._-]"
[[ $mount_opts != *[[:space:]]* ]] || die "--mount-opts must not contain spaces"
[[ $tests =~ ^[A-Za-z0-9._,-]+$ ]] || die "--test must be a comma separated list of names"
((EUID == 0)) || die "must run as root (chroot, mount namespace)"

env_out=$("$here/env.sh")
eval "$env_out"
tree=$DAXFSD_VM_TREE
kernel=${kernel:-$DAXFSD_VM_KERNEL}
daemon=$(realpath "$daemon")

# ---------------------------------------------------------------- state ---
# Host-side work dir (logs, default share) and a per-run dir inside the tree
# that QEMU, chrooted there, sees as /run-XXXXXX (socket, kernel, initrd).
work=$(mktemp -d "${TMPDIR:-/tmp}/daxfsd-vm.XXXXXX")
run=$(mktemp -d "$tree/run-XXXXXX")
chmod 0755 "$run"
run_in_tree=/${run##*/}
if [[ -n $log_dir ]]; then
    mkdir -p "$log_dir"
    log_dir=$(realpath "$log_dir")
else
    log_dir=$work
fi
serial_log=$log_dir/serial.log
daemon_log=$log_dir/daemon.log
qemu_log=$log_dir/qemu.log
own_share=0
if [[ -z $share ]]; then
    share=$work/share
    mkdir -p "$share"
    own_share=1
fi
[[ -d $share ]] || die "share $share is not a directory"
share=$(realpath "$share")

daemon_pid=
qemu_pid=
tail_pid=
host_during_pid=
host_during_started=0
host_during_rc=
host_during_log=$log_dir/host-during.log
failures=()

# kill_group PID — end a process group we started (its leader is PID),
# politely then firmly, and reap it.
kill_group() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # runs from the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $qemu_pid ]] && kill_group "$qemu_pid"
    [[ -n $host_during_pid ]] && kill_group "$host_during_pid"
    [[ -n $daemon_pid ]] && kill_group "$daemon_pid"
    [[ -n $tail_pid ]] && kill_group "$tail_pid"
    rm -rf "$run"
    if ((keep)); then
        log "kept work dir $work"
    else
        ((own_share)) && rm -rf "$share"
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------ initramfs ---
if [[ -n $initrd ]]; then
    cp "$initrd" "$run/initramfs.cpio.gz"
else
    "$here/mkinitramfs.sh" -o "$run/initramfs.cpio.gz" \
        --busybox "$DAXFSD_VM_BUSYBOX" "${guest_files[@]}"
fi
if [[ $kernel == "$tree"/* ]]; then
    kernel_in_tree=${kernel#"$tree"}
else
    cp "$kernel" "$run/vmlinuz"
    kernel_in_tree=$run_in_tree/vmlinuz
fi

# --------------------------------------------------------------- daemon ---
sock=$run/vfs.sock
((${#sock} < 108)) || die "socket path too long: $sock (set DAXFSD_VM_CACHE shorter)"
daemon_cmd=("$daemon" --socket-path "$sock" --shared-dir "$share" --tag "$tag"
    "${daemon_args[@]}")
if [[ -n $daemon_user ]]; then
    # Rootless: the user owns the share and the socket's directory; QEMU (root) connects.
    chown "$daemon_user:$daemon_user" "$run"
    chown -R "$daemon_user:$daemon_user" "$share"
    chmod 0755 "$work"
    daemon_cmd=(setpriv --reuid="$daemon_user" --regid="$daemon_user" --clear-groups
        "${daemon_cmd[@]}")
    export QEMU_USERSPEC=$daemon_user:$daemon_user
fi
log "daemon: ${daemon_cmd[*]}"
# setsid: its own process group, so everything it forks is ended with it.
setsid "${daemon_cmd[@]}" </dev/null >"$daemon_log" 2>&1 &
daemon_pid=$!
for ((i = 0; i < 100; i++)); do
    [[ -S $sock ]] && break
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ ! -S $sock ]]; then
    log "daemon did not create $sock"
    sed 's/^/daemon| /' "$daemon_log" >&2
    exit 1
fi

# ----------------------------------------------------------------- QEMU ---
cmdline="console=ttyS0 panic=-1 loglevel=4 daxfsd.tag=$tag daxfsd.test=$tests"
[[ -n $mount_opts ]] && cmdline+=" daxfsd.mount_opts=$mount_opts"
((interactive)) && cmdline+=" daxfsd.shell=1"
[[ -n $append ]] && cmdline+=" $append"

case $accel in
    tcg) cpu=max ;;
    kvm) cpu=host ;;
esac
qemu_args=(
    -accel "$accel" -machine q35 -cpu "$cpu" -smp "$cpus" -m "$mem"
    -object "memory-backend-memfd,id=mem,size=$mem,share=on"
    -numa "node,memdev=mem"
    -chardev "socket,id=vfs,path=$run_in_tree/vfs.sock"
)
case $device in
    fs) qemu_args+=(-device "vhost-user-fs-pci,chardev=vfs,tag=$tag,queue-size=$queue_size,num-request-queues=$queues") ;;
    # 1 hiprio + N request queues; config = tag[36] + num_request_queues (u32).
    dax) qemu_args+=(-device "vhost-user-test-device-pci,chardev=vfs,virtio-id=26,num_vqs=$((1 + queues)),config_size=40,vq_size=$queue_size") ;;
esac
qemu_args+=(
    -kernel "$kernel_in_tree" -initrd "$run_in_tree/initramfs.cpio.gz"
    -append "$cmdline"
    -nographic -nic none
    "${qemu_extra[@]}"
)
((reboot)) || qemu_args+=(-no-reboot)
log "qemu: qemu-system-x86_64 ${qemu_args[*]}"

# QEMU runs chrooted in the tree, in a private mount namespace that gives it
# /dev (for /dev/kvm), /proc and /sys and disappears with it. unshare, bash
# and chroot all exec, so $! ends up being QEMU itself.
# shellcheck disable=SC2016  # expanded by the inner bash
qemu_launch=(setsid unshare --mount --propagation private -- bash -c '
    set -e
    tree=$1; shift
    mount --rbind /dev "$tree/dev"
    mount -t proc proc "$tree/proc"
    mount --rbind /sys "$tree/sys"
    exec chroot ${QEMU_USERSPEC:+--userspec="$QEMU_USERSPEC"} "$tree" "$@"' qemu-launch "$tree" qemu-system-x86_64 "${qemu_args[@]}")

if ((interactive)); then
    "${qemu_launch[@]}"
    exit
fi

start=$SECONDS
"${qemu_launch[@]}" </dev/null >"$serial_log" 2>"$qemu_log" &
qemu_pid=$!
if ((verbose)); then
    tail -n +1 -F --pid="$qemu_pid" "$serial_log" 2>/dev/null | sed 's/^/guest| /' >&2 &
    tail_pid=$!
fi

done_seen() { tr -d '\r' <"$serial_log" | grep -aq 'DAXFSD-DONE rc='; }
# QEMU has ended but is not reaped yet (kill -0 still succeeds on a zombie).
qemu_ended() {
    local st
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$qemu_pid/status" 2>/dev/null) || return 0
    [[ -z $st || $st == Z ]]
}
ready_seen() { tr -d '\r' <"$serial_log" | grep -aq 'DAXFSD-READY name='; }

# --host-during: start it (own process group) once the guest is ready.
start_host_during() {
    host_during_started=1
    log "host during: $host_during $share"
    # shellcheck disable=SC2016  # "$@" is expanded by the inner bash
    setsid bash -c "$host_during"' "$@"' host-during "$share" </dev/null >"$host_during_log" 2>&1 &
    host_during_pid=$!
}

# ... and once the guest is done, let it finish (5 s), then stop it.
stop_host_during() {
    local i
    [[ -n $host_during_pid ]] || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$host_during_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$host_during_pid" 2>/dev/null; then
        log "host during: still running when the guest finished; stopping it"
        kill_group "$host_during_pid"
    else
        host_during_rc=0
        wait "$host_during_pid" || host_during_rc=$?
        log "host during: exited with status $host_during_rc ($(tail -n 1 "$host_during_log" 2>/dev/null))"
    fi
    host_during_pid=
}

# Watch: the VM ends by itself (poweroff), or the timeout hits, or the
# daemon dies under a running guest (which would then hang on FUSE requests).
timed_out=0
daemon_rc=
daemon_died_early=0
while kill -0 "$qemu_pid" 2>/dev/null; do
    if ((SECONDS - start >= timeout)); then
        timed_out=1
        log "timeout after ${timeout}s, stopping QEMU"
        kill_group "$qemu_pid"
        break
    fi
    if [[ -n $host_during ]] && ((!host_during_started)) && ready_seen; then
        start_host_during
    fi
    if [[ -n $host_during_pid ]] && done_seen; then
        stop_host_during
    fi
    if [[ -z $daemon_rc ]] && ! kill -0 "$daemon_pid" 2>/dev/null; then
        daemon_rc=0
        wait "$daemon_pid" || daemon_rc=$?
        daemon_pid=
        # A daemon that leaves because QEMU died (abort, assertion) is not the culprit:
        # QEMU's own exit status is collected below.
        if qemu_ended; then
            break
        fi
        if ! done_seen; then
            daemon_died_early=1
            log "daemon exited (status $daemon_rc) while the guest was running"
            # Give the guest a moment to notice, then stop it.
            for ((i = 0; i < 30; i++)); do
                kill -0 "$qemu_pid" 2>/dev/null || break
                sleep 0.1
            done
            kill_group "$qemu_pid"
            break
        fi
    fi
    sleep 0.1
done
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=
elapsed=$((SECONDS - start))
[[ -n $tail_pid ]] && { wait "$tail_pid" 2>/dev/null || true; tail_pid=; }
stop_host_during

# The daemon should exit by itself once the frontend is gone; give it a
# moment, then stop it (not an error: some daemons keep listening).
if [[ -n $daemon_pid ]]; then
    for ((i = 0; i < 50; i++)); do
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$daemon_pid" 2>/dev/null; then
        log "daemon still running after QEMU exited; stopping it"
        kill_group "$daemon_pid"
    else
        daemon_rc=0
        wait "$daemon_pid" || daemon_rc=$?
    fi
    daemon_pid=
fi

# --------------------------------------------------------------- verdict ---
((timed_out)) && failures+=("timeout after ${timeout}s")
((daemon_died_early)) && failures+=("daemon exited with status $daemon_rc while the guest was running")
if [[ -n $daemon_rc && $daemon_rc != 0 ]] && ((!daemon_died_early)); then
    failures+=("daemon exited with status $daemon_rc")
fi
# An ERROR line from the daemon means it could not do something it had to (env_logger's
# "[time ERROR target] msg" format); a run that logged one fails even if the guest passed.
daemon_errors=$(grep -a -c -E '^\[[^]]* ERROR ' "$daemon_log" 2>/dev/null || true)
if ((${daemon_errors:-0} > 0)); then
    failures+=("daemon logged $daemon_errors ERROR line(s): $(grep -a -m1 -E '^\[[^]]* ERROR ' "$daemon_log")")
fi
if ((!timed_out && !daemon_died_early && qemu_rc != 0)); then
    if ((qemu_rc > 128)); then
        failures+=("QEMU exited with status $qemu_rc (killed by signal $((qemu_rc - 128)))")
    else
        failures+=("QEMU exited with status $qemu_rc")
    fi
fi
# QEMU's own assertions and aborts (e.g. vhost-user's memory slot limit), quoted in the verdict.
qemu_fatal=$(grep -a -m1 -E 'Assertion .* failed|assertion failed|Aborted|core dumped' "$qemu_log" 2>/dev/null || true)
[[ -n $qemu_fatal ]] && failures+=("QEMU stderr: $qemu_fatal")
if [[ -n $host_during ]]; then
    if ((!host_during_started)); then
        failures+=("--host-during never started: the guest printed no DAXFSD-READY line")
    elif [[ -n $host_during_rc && $host_during_rc != 0 ]]; then
        failures+=("--host-during command failed (status $host_during_rc)")
    fi
fi

clean_serial=$(tr -d '\r' <"$serial_log")
results=$(grep -a -o 'DAXFSD-RESULT .*' <<<"$clean_serial" || true)
n_results=0
n_fail=0
if [[ -n $results ]]; then
    n_results=$(grep -c . <<<"$results")
    n_fail=$(grep -c ' status=fail' <<<"$results" || true)
fi
done_rc=$(grep -a -o 'DAXFSD-DONE rc=[0-9]*' <<<"$clean_serial" | tail -n1 | cut -d= -f2 || true)
grep -aq 'Kernel panic' <<<"$clean_serial" && failures+=("guest kernel panic")
((n_results > 0)) || failures+=("guest printed no results")
((n_fail == 0)) || failures+=("$n_fail guest result(s) failed")
if [[ -z $done_rc ]]; then
    failures+=("guest did not print DAXFSD-DONE")
elif ((done_rc != 0)); then
    failures+=("guest DAXFSD-DONE rc=$done_rc")
fi

if [[ -n $results ]]; then
    printf '%s\n' "$results"
fi

if [[ -n $host_check ]]; then
    if [[ -n $done_rc ]]; then
        log "host check: $host_check $share"
        hc_rc=0
        bash -c "$host_check"' "$@"' host-check "$share" || hc_rc=$?
        ((hc_rc == 0)) || failures+=("host check failed (status $hc_rc)")
    else
        log "host check skipped: the guest did not finish"
    fi
fi

if ((${#failures[@]} == 0)); then
    log "PASS: $n_results results, guest ran ${elapsed}s (device=$device queues=$queues accel=$accel)"
    exit 0
fi

{
    echo "==================== guest console ($serial_log) ===================="
    printf '%s\n' "$clean_serial"
    echo "==================== QEMU stderr ($qemu_log) ===================="
    cat "$qemu_log"
    echo "==================== daemon log, last 300 lines ($daemon_log) ===================="
    tail -n 300 "$daemon_log"
    if [[ -n $host_during ]]; then
        echo "==================== host-during log, last 50 lines ($host_during_log) ===================="
        tail -n 50 "$host_during_log" 2>/dev/null || true
    fi
    echo "======================================================================"
} >&2
for f in "${failures[@]}"; do
    log "FAIL: $f"
done
exit 1
