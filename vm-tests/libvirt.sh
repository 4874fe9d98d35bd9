#!/usr/bin/env bash
# libvirt.sh — the libvirt tier: libvirt starts daxfsd itself from a domain's
# <filesystem> element, as it starts virtiofsd, and the guest mounts the tag
# and passes the POSIX smoke.
#
# Usage:
#   vm-tests/libvirt.sh [--daemon PATH] [--cell NAME]... [--timeout SECS]
#                       [--keep] [--verbose] [--list]
#
#   --daemon PATH   daxfsd binary (default: target/debug/daxfsd)
#   --cell NAME     run only this cell (repeatable; default: all; see --list)
#   --timeout SECS  per cell: wait this long for the guest's DAXFSD-DONE
#                   (default: 150)
#   --keep          keep the work dir (libvirt state, logs, shares)
#   --verbose       print libvirtd's log and the domain XML of each cell
#
# Two libvirts: bookworm-* cells use the host's (Debian bookworm, 9.0, which
# passes virtiofsd's legacy -o options); forky-* cells use Debian forky's
# (12.x, which reads --print-capabilities and passes separate options, and
# runs virtiofs in session mode), installed once into a copy of the env.sh
# tree ($DAXFSD_VM_CACHE/libvirt-tree) and run there (pivot_root).
#
# Per cell: installs the host's libvirt if missing (apt), builds the VM
# environment (env.sh: a Debian forky tree with QEMU 11.1), starts its own
# libvirtd (no systemd) in a private mount namespace in which /etc/libvirt,
# /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are
# this run's work dirs — as root (qemu:///system) or, for forky-session, as
# an unprivileged user known only there (qemu:///session, /etc/subuid ranges);
# `virsh define`s and `virsh start`s a TCG domain (direct kernel boot of
# vm-tests' initramfs, shared memfd memory, a virtiofs filesystem whose
# <binary path> is daxfsd, serial console to a file), waits for the guest's
# DAXFSD-DONE line, requires every DAXFSD-RESULT to pass, prints the argv
# libvirt gave daxfsd and checks it and the daemon's log, then `virsh
# destroy`s the still running guest (daxfsd.shell=1 keeps it up, the mount
# live), checks that no daxfsd process is left and that the guest's smoke
# files are in the share (host-check-smoke.sh), and undefines the domain.
#
# The host's libvirt has no QEMU 11.1 beside it: its domains' <emulator> is a
# wrapper (written into the work dir) that runs the tree's qemu-system-x86_64
# with chroot in a private mount namespace holding /dev, /proc, /sys and
# libvirt's directories at their usual paths, so the sockets, pid files,
# kernel and logs libvirt names are the same inside and outside the chroot.
# The wrapper also serves libvirt's capability probing (-qmp ... -daemonize).
#
# Exit status: 0 when every cell passed, 1 if one failed, 2 on usage or
# environment errors. Cleans up on every exit: destroys and undefines the
# domain, stops the libvirtd it started.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
daemon=${DAXFSD_BIN:-$here/../target/debug/daxfsd}
timeout=150
keep=0
verbose=0
cells=()

# Cells: NAME|DESCRIPTION. The XML of each is built by cell_fs_xml below.
# bookworm-*: the host's libvirt (Debian bookworm, 9.0), legacy "-o" options.
# forky-*: Debian forky's libvirt (12.x), installed into a copy of the env.sh
# tree and run there with chroot; it reads --print-capabilities and passes
# separate options.
all_cells=(
    "bookworm-default|<binary path> only: libvirt's defaults"
    "bookworm-options|xattr=on, cache=always, sandbox=chroot, lock posix/flock on, thread_pool 4, a comma in the path"
    "bookworm-options-off|xattr=off, cache=none, sandbox=namespace, lock posix/flock off"
    "bookworm-debug|qemu.conf virtiofsd_debug=1 (libvirt adds -d)"
    "bookworm-session|qemu:///session as an unprivileged user"
    "forky-default|<binary path> only: libvirt's defaults"
    "forky-options|xattr=on, cache=always, sandbox=chroot, thread_pool 4, openfiles 4096"
    "forky-options-off|xattr=off, cache=none, sandbox=namespace"
    "forky-debug|qemu.conf virtiofsd_debug=1 (libvirt adds --log-level debug)"
    "forky-session|qemu:///session as an unprivileged user"
)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
log() { printf 'libvirt.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

while (($#)); do
    case $1 in
        --daemon) daemon=${2:?}; shift 2 ;;
        --cell) cells+=("${2:?}"); shift 2 ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        --keep) keep=1; shift ;;
        --verbose) verbose=1; shift ;;
        --list) printf '%s\n' "${all_cells[@]}" | sed 's/|/: /'; exit 0 ;;
        -h | --help) usage ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
((EUID == 0)) || die "must run as root (libvirt system mode, chroot, mount namespaces)"
[[ -x $daemon ]] || die "no daemon at $daemon (cargo build first)"
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer"
daemon=$(realpath "$daemon")
if ((${#cells[@]} == 0)); then
    for c in "${all_cells[@]}"; do cells+=("${c%%|*}"); done
fi
for c in "${cells[@]}"; do
    printf '%s\n' "${all_cells[@]}" | grep -q "^$c|" || die "unknown cell $c (see --list)"
done

# ------------------------------------------------------------ host setup ---
host_packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
missing=()
for pkg in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing host packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
fi

env_out=$("$here/env.sh")
eval "$env_out"
tree=$DAXFSD_VM_TREE
host_libvirt_version=$(libvirtd --version | awk '{print $NF}')
log "libvirt $host_libvirt_version (libvirtd, host), QEMU $DAXFSD_VM_QEMU_VERSION (tree), kernel $DAXFSD_VM_KERNEL_VERSION"

# ensure_lv_tree — the forky libvirt tree: a copy of the env.sh tree with
# libvirt's QEMU driver installed, rebuilt when the env tree or this list
# changes. Sets lv_tree and tree_libvirt_version.
lv_tree=$DAXFSD_VM_CACHE/libvirt-tree
tree_libvirt_version=
ensure_lv_tree() {
    # uidmap: newuidmap/newgidmap for the rootless daxfsd of the session cell.
    local pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients uidmap)
    local stamp=$lv_tree.stamp hash
    hash=$( { cat "$DAXFSD_VM_CACHE/tree.stamp"; printf '%s\n' "${pkgs[@]}"; } | sha256sum | cut -d' ' -f1)
    exec 8>"$DAXFSD_VM_CACHE/.libvirt-tree.lock"
    flock 8
    if [[ ! -d $lv_tree || ! -f $stamp || $(<"$stamp") != "$hash" ]]; then
        log "building $lv_tree: the env tree plus forky's ${pkgs[*]} (about a minute)"
        rm -rf "$lv_tree.new" "$stamp"
        cp -a "$tree" "$lv_tree.new"
        cp /etc/resolv.conf "$lv_tree.new/etc/resolv.conf"
        # shellcheck disable=SC2016  # expanded by the inner bash
        unshare --mount --propagation private -- bash -c '
            set -e
            t=$1; shift
            mount -t proc proc "$t/proc"
            chroot "$t" apt-get -o Acquire::Check-Valid-Until=false update -qq
            DEBIAN_FRONTEND=noninteractive chroot "$t" apt-get install -y -qq \
                --no-install-recommends "$@"
            chroot "$t" apt-get clean' lv-tree "$lv_tree.new" "${pkgs[@]}" >&2
        rm -rf "$lv_tree"
        mv "$lv_tree.new" "$lv_tree"
        printf '%s\n' "$hash" >"$stamp"
    fi
    exec 8>&-
    tree_libvirt_version=$(chroot "$lv_tree" libvirtd --version | awk '{print $NF}')
    log "libvirt $tree_libvirt_version (libvirtd, forky, in $lv_tree)"
}
for c in "${cells[@]}"; do
    if [[ $c == forky-* ]]; then
        ensure_lv_tree
        break
    fi
done

# ----------------------------------------------------------------- state ---
work=$(mktemp -d "${TMPDIR:-/tmp}/daxfsd-libvirt.XXXXXX")
chmod 0755 "$work"
# Host side of libvirt's directories (the names libvirtd sees on the right).
lv_dirs=(etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt
    cache:/var/cache/libvirt)
for d in "${lv_dirs[@]}"; do
    mkdir -p "$work/${d%%:*}" "${d#*:}"
done
mkdir -p "$work/lib/images" "$work/log/qemu"
sock=$work/run/libvirt-sock
uri="qemu:///system?socket=$sock"
# The session cell's user (exists only in the libvirt namespace's passwd) and
# its XDG directories, at the same paths inside the tree and out.
sess_user=daxfsd-lv
sess_uid=64100
sess_home=$work/session-home
sess_env=(HOME="$sess_home" XDG_RUNTIME_DIR="$work/session-run"
    XDG_CONFIG_HOME="$sess_home/.config" XDG_CACHE_HOME="$sess_home/.cache")
as_user=()
libvirtd_pid=
domain=
failures=()
passed=()
skipped=()

virsh_() { "${as_user[@]}" virsh -q -c "$uri" "$@"; }

# stop_libvirtd — end the libvirtd we started (politely, then firmly).
stop_libvirtd() {
    local i
    [[ -n $libvirtd_pid ]] || return 0
    kill -TERM "$libvirtd_pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$libvirtd_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$libvirtd_pid" 2>/dev/null || true
    wait "$libvirtd_pid" 2>/dev/null || true
    libvirtd_pid=
}

# drop_domain — destroy (if running) and undefine the current domain.
drop_domain() {
    [[ -n $domain && -n $libvirtd_pid ]] || return 0
    virsh_ destroy "$domain" >/dev/null 2>&1 || true
    virsh_ undefine "$domain" >/dev/null 2>&1 || true
    domain=
}

# shellcheck disable=SC2317  # runs from the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    drop_domain
    stop_libvirtd
    if ((keep)); then
        log "kept work dir $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------- emulator wrapper ---
# libvirt runs the emulator with a clean environment, so the tree's path is
# written into the wrapper. unshare, bash and chroot all exec: the process
# libvirt started is QEMU itself (its pid is the one in QEMU's -pidfile).
wrapper=$work/qemu-system-x86_64
{
    printf '#!/bin/bash\n# written by vm-tests/libvirt.sh: QEMU from the env.sh tree, for libvirt\n'
    printf 'tree=%q\n' "$tree"
    # shellcheck disable=SC2016  # expanded when the wrapper runs
    printf '%s\n' 'exec unshare --mount --propagation private -- /bin/bash -c '\''
set -e
tree=$1; shift
mount --rbind /dev "$tree/dev"
mount -t proc proc "$tree/proc"
mount --rbind /sys "$tree/sys"
for d in /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
    mkdir -p "$tree$d"
    mount --bind "$d" "$tree$d"
done
exec chroot "$tree" qemu-system-x86_64 "$@"'\'' qemu-wrapper "$tree" "$@"'
} >"$wrapper"
chmod 0755 "$wrapper"

# ------------------------------------------------------------- libvirtd ---
# start_libvirtd FLAVOUR MODE [QEMU_CONF_LINE]... — (re)start libvirtd
# (bookworm: the host's; forky: the libvirt tree's, with pivot_root; MODE
# system: as root, session: as $sess_user) with a qemu.conf without cgroups,
# namespaces, security drivers or virtlogd.
start_libvirtd() {
    local i flavour=$1 mode=$2 root=
    shift 2
    [[ $flavour == forky ]] && root=$lv_tree
    stop_libvirtd
    sock=$work/run/libvirt-sock
    uri="qemu:///system?socket=$sock"
    as_user=()
    local conf_dir=$work/etc
    if [[ $mode == session ]]; then
        [[ -n $root ]] || die "session mode needs the forky libvirt"
        conf_dir=$sess_home/.config/libvirt
        mkdir -p "$conf_dir" "$work/session-run" "$work/slog"
        chmod 0700 "$work/session-run"
        sock=$work/session-run/libvirt/libvirt-sock
        uri="qemu:///session?socket=$sock"
        as_user=(setpriv --reuid="$sess_uid" --regid="$sess_uid" --clear-groups env "${sess_env[@]}")
    fi
    if [[ $mode == system ]]; then
        cat >"$conf_dir/libvirtd.conf" <<EOF
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
    else
        printf 'log_outputs = "3:file:%s"\n' "$work/log/libvirtd.log" >"$conf_dir/libvirtd.conf"
    fi
    {
        [[ $mode == system ]] && printf '%s\n' 'user = "root"' 'group = "root"'
        cat <<'EOF'
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
EOF
        [[ $mode == system ]] && echo 'namespaces = [ ]'
        printf '%s\n' "$@"
    } >"$conf_dir/qemu.conf"
    : >"$work/log/libvirtd.log"
    # libvirtd resolves its build-time QEMU user (Debian: libvirt-qemu) before reading
    # qemu.conf; without libvirt-daemon-system that user does not exist. The private
    # namespace gets a passwd/group that have it, the host's stay untouched.
    cp "$root/etc/passwd" "$work/passwd"
    cp "$root/etc/group" "$work/group"
    grep -q '^libvirt-qemu:' "$work/passwd" ||
        echo 'libvirt-qemu:x:64055:64055:libvirt (vm-tests):/var/lib/libvirt:/usr/sbin/nologin' >>"$work/passwd"
    grep -q '^libvirt-qemu:' "$work/group" || echo 'libvirt-qemu:x:64055:' >>"$work/group"
    grep -q '^kvm:' "$work/group" || echo 'kvm:x:64056:' >>"$work/group"
    echo "$sess_user:x:$sess_uid:$sess_uid:libvirt session (vm-tests):$sess_home:/bin/sh" >>"$work/passwd"
    echo "$sess_user:x:$sess_uid:" >>"$work/group"
    # Subordinate ids for the session user: libvirt maps them with --uid-map/--gid-map.
    echo "$sess_user:200000:65536" >"$work/subuid"
    echo "$sess_user:200000:65536" >"$work/subgid"
    if [[ $mode == session ]]; then
        chown -R "$sess_uid:$sess_uid" "$sess_home" "$work/session-run" "$work/slog" "$work/log/libvirtd.log"
    fi
    local binds="" q d
    if [[ -n $root ]]; then
        # In the libvirt tree: the host's /dev, /proc, /sys, this run's work dir
        # (shares) and the daemon's directory, at their host paths.
        q=$(printf %q "$root")
        # The tree's root a mount point of its own: daxfsd's namespace sandbox
        # makes "/" a slave mount, which fails (EINVAL) on a plain chroot dir.
        binds+="mount --bind $q $q; "
        binds+="mount --rbind /dev $q/dev; mount -t proc proc $q/proc; mount --rbind /sys $q/sys; "
        for d in "$work" "$(dirname "$daemon")"; do
            binds+="mkdir -p $q$(printf %q "$d"); mount --bind $(printf %q "$d") $q$(printf %q "$d"); "
        done
    fi
    for d in passwd group subuid subgid; do
        binds+="touch ${q:-}/etc/$d; mount --bind $(printf %q "$work/$d") ${q:-}/etc/$d; "
    done
    for d in "${lv_dirs[@]}"; do
        binds+="mkdir -p ${q:-}${d#*:}; mount --bind $(printf %q "$work/${d%%:*}") ${q:-}${d#*:}; "
    done
    local launch="exec libvirtd --config /etc/libvirt/libvirtd.conf"
    if [[ -n $root ]]; then
        # pivot_root, not chroot: a chrooted process cannot create a user
        # namespace (EPERM), which the rootless daxfsd of session mode does.
        launch="cd $q; mkdir -p .oldroot; pivot_root . .oldroot; cd /; "
        if [[ $mode == session ]]; then
            launch+="exec ${as_user[*]@Q} libvirtd"
        else
            launch+="exec libvirtd --config /etc/libvirt/libvirtd.conf"
        fi
    fi
    # A private mount namespace: libvirt's usual directories are this run's.
    setsid unshare --mount --propagation private -- bash -c "set -e; $binds $launch" \
        </dev/null >"$work/libvirtd.out" 2>&1 &
    libvirtd_pid=$!
    for ((i = 0; i < 100; i++)); do
        [[ -S $sock ]] && virsh_ list --all >/dev/null 2>&1 && return 0
        kill -0 "$libvirtd_pid" 2>/dev/null || break
        sleep 0.1
    done
    log "libvirtd did not come up"
    cat "$work/libvirtd.out" "$work/log/libvirtd.log" >&2 || true
    return 1
}

# ------------------------------------------------------------ initramfs ---
cp "$DAXFSD_VM_KERNEL" "$work/lib/images/vmlinuz"
"$here/mkinitramfs.sh" -o "$work/lib/images/initramfs.cpio.gz" --busybox "$DAXFSD_VM_BUSYBOX"

# cell_binary_xml CELL — the <binary> element of a cell.
cell_binary_xml() {
    case $1 in
        *-default | *-debug | *-session) printf "<binary path='%s'/>" "$daemon" ;;
        bookworm-options) printf "<binary path='%s' xattr='on'><cache mode='always'/><sandbox mode='chroot'/><lock posix='on' flock='on'/><thread_pool size='4'/></binary>" "$daemon" ;;
        bookworm-options-off) printf "<binary path='%s' xattr='off'><cache mode='none'/><sandbox mode='namespace'/><lock posix='off' flock='off'/></binary>" "$daemon" ;;
        forky-options) printf "<binary path='%s' xattr='on'><cache mode='always'/><sandbox mode='chroot'/><thread_pool size='4'/><openfiles max='4096'/></binary>" "$daemon" ;;
        forky-options-off) printf "<binary path='%s' xattr='off'><cache mode='none'/><sandbox mode='namespace'/></binary>" "$daemon" ;;
    esac
}

# cell_expect CELL SHARE — words the daxfsd argv must hold for the cell.
cell_expect() {
    case $1 in
        bookworm-default) echo "--fd= -o source=$2" ;;
        bookworm-options) echo "--fd= share,,options,cache=always,sandbox=chroot,xattr,flock,posix_lock --thread-pool-size=4" ;;
        bookworm-options-off) echo "--fd= ,cache=none,sandbox=namespace,no_xattr,no_flock,no_posix_lock" ;;
        bookworm-debug) echo "--fd= -d" ;;
        forky-default | forky-options-off) echo "--fd= --shared-dir" ;;
        forky-options) echo "--fd= --shared-dir --cache --sandbox --xattr --thread-pool-size=4 --rlimit-nofile=4096" ;;
        forky-debug) echo "--fd= --shared-dir --log-level" ;;
        forky-session) echo "--fd= --shared-dir --uid-map= --gid-map=" ;;
    esac
}

# cell_log_expect CELL SHARE — a fixed string the daemon's log must hold: the
# options reached the daemon, not just its argv.
cell_log_expect() {
    case $1 in
        *-options) echo "sandbox: chroot into $2" ;;
        *-debug) echo " DEBUG " ;;
        *-session) echo "mount, net and IPC namespaces; root = $2" ;;
        *) echo "sandbox: new pid, mount, net and IPC namespaces; root = $2" ;;
    esac
}

# cell_emulator CELL — the host's libvirt runs the tree's QEMU through the
# wrapper; the tree's libvirt runs it directly.
cell_emulator() {
    case $1 in
        bookworm-*) echo "$wrapper" ;;
        forky-*) echo /usr/bin/qemu-system-x86_64 ;;
    esac
}

# domain_xml NAME CELL SHARE SERIAL — the domain of a cell.
domain_xml() {
    local name=$1 cell=$2 share=$3 serial=$4 images=/var/lib/libvirt/images
    # The session's QEMU sees the work dir (bound into the tree) but not the system dirs.
    [[ $cell == forky-session ]] && images=$work/lib/images
    [[ $cell == forky-session ]] || serial=/var/log/libvirt/qemu/$name-serial.log
    cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>2</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$images/vmlinuz</kernel>
    <initrd>$images/initramfs.cpio.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 loglevel=4 daxfsd.tag=daxfsd daxfsd.test=mount,smoke daxfsd.shell=1</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(cell_emulator "$cell")</emulator>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      $(cell_binary_xml "$cell")
      <source dir='$share'/>
      <target dir='daxfsd'/>
    </filesystem>
    <serial type='file'>
      <source path='$serial'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# daxfsd_pids — processes running our daemon binary (rebuilt ones show " (deleted)").
daxfsd_pids() {
    local p exe
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        # (Started in the libvirt tree, the path may show from that mount.)
        [[ ${exe% (deleted)} == *"$daemon" ]] && echo "${p#/proc/}"
    done
    return 0
}

# ----------------------------------------------------------------- cells ---
# run_cell CELL — one domain; appends to failures/passed/skipped.
run_cell() {
    local cell=$1 name=daxfsd-lv-$1 share=$work/share-$1 start i state flavour=${1%%-*}
    # A comma in the path: libvirt doubles it in the -o list, daxfsd must undo that.
    [[ $cell == bookworm-options ]] && share=$work/share,options
    local serial=$work/log/qemu/$name-serial.log
    local fail=() qconf=()
    echo "=== libvirt: $cell ($(printf '%s\n' "${all_cells[@]}" | sed -n "s/^$cell|//p"))"
    case $cell in
        bookworm-session)
            skipped+=("$cell (libvirt $host_libvirt_version refuses virtiofs in session mode:" \
                "\"virtiofs is not yet supported in session mode\"; that came in libvirt 10.0)")
            echo "=== libvirt: $cell SKIPPED: ${skipped[-2]} ${skipped[-1]}"
            return 0 ;;
        *-debug) qconf=("virtiofsd_debug = 1") ;;
    esac
    local mode=system
    if [[ $cell == forky-session ]]; then
        mode=session
        serial=$work/slog/$name-serial.log
    fi
    start_libvirtd "$flavour" "$mode" "${qconf[@]}" || { failures+=("$cell: libvirtd did not start"); return 0; }
    mkdir -p "$share"
    [[ $mode == session ]] && chown "$sess_uid:$sess_uid" "$share"
    domain_xml "$name" "$cell" "$share" "$serial" >"$work/$name.xml"
    chmod 0644 "$work/$name.xml"
    ((verbose)) && sed 's/^/xml| /' "$work/$name.xml" >&2
    if ! virsh_ define "$work/$name.xml" >"$work/$cell-define.out" 2>&1; then
        cat "$work/$cell-define.out" >&2
        failures+=("$cell: virsh define failed")
        return 0
    fi
    domain=$name
    start=$SECONDS
    if ! virsh_ start "$name" >"$work/$cell-start.out" 2>&1; then
        cat "$work/$cell-start.out" >&2
        tail -n 40 "$work/log/qemu/$name"*.log >&2 2>/dev/null || true
        failures+=("$cell: virsh start failed")
        drop_domain
        return 0
    fi

    # The daemon libvirt started, from its pid file, and its argv.
    local pidfile pid argv=
    # libvirt shortens the domain name in it: <id>-<name, cut>-fs0-fs.pid.
    pidfile=$(find "$work/run/qemu" "$work/session-run" -name '*-fs0-fs.pid' 2>/dev/null | head -n1 || true)
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ -n $pid && -r /proc/$pid/cmdline ]]; then
        argv=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    fi
    local pids_before
    pids_before=$(daxfsd_pids | tr '\n' ' ')
    echo "daxfsd argv (pid ${pid:-?}, from /proc): ${argv:-<not found>}"
    [[ -n $argv ]] || fail+=("no daxfsd process found from libvirt's pid file ($pidfile)")
    if [[ $mode == session && -n $pid ]]; then
        local duid
        duid=$(stat -c %u "/proc/$pid" 2>/dev/null || echo '?')
        [[ $duid == "$sess_uid" ]] || fail+=("session daxfsd runs as uid $duid, not the session user's $sess_uid")
    fi
    local w
    for w in $(cell_expect "$cell" "$share"); do
        [[ " $argv" == *"$w"* ]] || fail+=("daxfsd argv lacks '$w'")
    done

    # Wait for the guest to finish its tests (it then idles in a shell).
    while ! tr -d '\r' <"$serial" 2>/dev/null | grep -aq 'DAXFSD-DONE rc='; do
        state=$(virsh_ domstate "$name" 2>/dev/null || echo unknown)
        if [[ $state != running ]]; then
            fail+=("domain is $state before the guest printed DAXFSD-DONE")
            break
        fi
        if ((SECONDS - start >= timeout)); then
            fail+=("timeout after ${timeout}s waiting for DAXFSD-DONE")
            break
        fi
        sleep 0.5
    done
    local elapsed=$((SECONDS - start))
    local clean results n_results=0 n_fail=0 done_rc
    clean=$(tr -d '\r' <"$serial" 2>/dev/null || true)
    results=$(grep -a -o 'DAXFSD-RESULT .*' <<<"$clean" || true)
    [[ -n $results ]] && printf '%s\n' "$results"
    if [[ -n $results ]]; then
        n_results=$(grep -c . <<<"$results")
        n_fail=$(grep -c ' status=fail' <<<"$results" || true)
    fi
    done_rc=$(grep -a -o 'DAXFSD-DONE rc=[0-9]*' <<<"$clean" | tail -n1 | cut -d= -f2 || true)
    ((n_results > 0)) || fail+=("guest printed no results")
    ((n_fail == 0)) || fail+=("$n_fail guest result(s) failed")
    grep -q 'name=smoke\.[a-z_]* status=pass' <<<"$results" || fail+=("no passing smoke result")
    if [[ -z $done_rc ]]; then
        fail+=("guest did not print DAXFSD-DONE")
    elif ((done_rc != 0)); then
        fail+=("guest DAXFSD-DONE rc=$done_rc")
    fi
    grep -aq 'Kernel panic' <<<"$clean" && fail+=("guest kernel panic")

    # virsh destroy under a live mount; libvirt must take daxfsd down with QEMU.
    state=$(virsh_ domstate "$name" 2>/dev/null || echo unknown)
    if [[ $state == running ]]; then
        virsh_ destroy "$name" >/dev/null || fail+=("virsh destroy failed")
    else
        fail+=("domain was $state, not running, at virsh destroy")
    fi
    local left=
    for ((i = 0; i < 50; i++)); do
        left=$(daxfsd_pids | tr '\n' ' ')
        [[ -z $left ]] && break
        sleep 0.1
    done
    [[ -z $left ]] || fail+=("daxfsd left running after virsh destroy: pid(s) $left (before: $pids_before)")

    # The daemon's own log (libvirt's <domain>-fs0-virtiofsd.log): no ERROR lines.
    local dlog
    dlog=$(find "$work/log/qemu" "$sess_home" -name "$name*virtiofsd.log" 2>/dev/null | head -n1 || true)
    if [[ -n $dlog ]] && grep -a -q -E '^\[[^]]* ERROR ' "$dlog"; then
        fail+=("daemon logged ERROR: $(grep -a -m1 -E '^\[[^]]* ERROR ' "$dlog")")
    fi
    local want
    want=$(cell_log_expect "$cell" "$share")
    if [[ -z $dlog ]]; then
        fail+=("no daemon log (libvirt's $name-fs0-virtiofsd.log)")
    elif ! grep -a -q -F -- "$want" "$dlog"; then
        fail+=("daemon log lacks '$want'")
    fi
    if [[ -n $done_rc ]]; then
        # Session mode: libvirt maps the guest's root to the session user.
        local owner=0:0
        [[ $mode == session ]] && owner=$sess_uid:$sess_uid
        DAXFSD_SMOKE_OWNER=$owner "$here/host-check-smoke.sh" "$share" >"$work/$cell-host-check.out" 2>&1 ||
            { cat "$work/$cell-host-check.out"; fail+=("host check of the share failed"); }
    fi
    virsh_ undefine "$name" >/dev/null || fail+=("virsh undefine failed")
    domain=

    if ((${#fail[@]} == 0)); then
        passed+=("$cell")
        echo "=== libvirt: $cell passed ($n_results results, guest ${elapsed}s)"
        ((verbose)) && sed 's/^/libvirtd| /' "$work/log/libvirtd.log" >&2
        return 0
    fi
    {
        echo "==================== $cell: guest console ($serial) ===================="
        printf '%s\n' "$clean"
        echo "==================== $cell: QEMU log ===================="
        cat "$work/log/qemu/$name.log" 2>/dev/null || true
        echo "==================== $cell: daemon log ($dlog), last 100 lines ===================="
        if [[ -n $dlog ]]; then tail -n 100 "$dlog"; fi
        echo "==================== $cell: libvirtd log, last 60 lines ===================="
        tail -n 60 "$work/log/libvirtd.log"
    } >&2
    for w in "${fail[@]}"; do
        log "FAIL $cell: $w"
        failures+=("$cell: $w")
    done
}

# Cells collect their failures; an unexpected error (errexit) ends the whole run.
for c in "${cells[@]}"; do
    run_cell "$c"
done
stop_libvirtd

echo "=== libvirt tier: libvirt $host_libvirt_version (bookworm)${tree_libvirt_version:+ and $tree_libvirt_version (forky)}, QEMU $DAXFSD_VM_QEMU_VERSION, kernel $DAXFSD_VM_KERNEL_VERSION"
echo "=== passed: ${passed[*]:-none}"
((${#skipped[@]} == 0)) || echo "=== skipped: ${skipped[*]}"
if ((${#failures[@]})); then
    printf '=== FAIL %s\n' "${failures[@]}"
    exit 1
fi
echo "=== libvirt tier: all green"
