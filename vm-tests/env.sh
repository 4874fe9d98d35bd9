#!/usr/bin/env bash
# env.sh — build (once) and describe the VM test environment for vm-tests.
#
# The environment is a Debian forky tree made with mmdebstrap, holding QEMU
# (>= 11.1, which has vhost-user-test-device-pci with shared-memory regions,
# needed for virtio-fs DAX), Debian's kernel and a static busybox for the guest
# initramfs. QEMU runs from the tree with chroot, so the host stays bookworm.
#
# Usage:
#   out=$(vm-tests/env.sh) && eval "$out"   # sets DAXFSD_VM_* (see below)
#   source vm-tests/env.sh                  # same, exported, into this shell
#   vm-tests/env.sh --rebuild               # force a rebuild of the tree
#
# Prints shell assignments on stdout (logs go to stderr):
#   DAXFSD_VM_CACHE DAXFSD_VM_TREE DAXFSD_VM_KERNEL DAXFSD_VM_KERNEL_VERSION
#   DAXFSD_VM_QEMU_VERSION DAXFSD_VM_BUSYBOX
# (Under `set -e`, assign first and eval second, as above: `eval "$(...)"`
# would hide a failure.)
#
# Environment:
#   DAXFSD_VM_CACHE          cache dir (default /var/cache/daxfsd-vm)
#   DAXFSD_VM_MIRROR         Debian mirror (default http://deb.debian.org/debian)
#   DAXFSD_VM_EXTRA_PACKAGES extra packages for the tree (space separated)
#
# Needs root (apt-get for host packages, mmdebstrap in root mode). The tree is
# rebuilt only when the inputs change: this script's text and the package list
# are hashed into $DAXFSD_VM_CACHE/tree.stamp. Safe to run concurrently (flock).

daxfsd_vm_env_main() {
    local cache=${DAXFSD_VM_CACHE:-/var/cache/daxfsd-vm}
    local mirror=${DAXFSD_VM_MIRROR:-http://deb.debian.org/debian}
    local suite=forky
    local min_qemu=11.1
    # qemu-system-x86 alone misses the firmware it loads at run time when
    # Recommends are off: seabios (bios-256k.bin) and qemu-system-data
    # (option ROMs such as linuxboot_dma.bin, kvmvapic.bin). fio is for the guest benchmark
    # (vm-tests/bench.sh), which copies it and its libraries into the initramfs.
    local -a packages=(qemu-system-x86 qemu-system-data seabios
        linux-image-amd64 busybox-static fio)
    local -a host_packages=(mmdebstrap cpio gzip util-linux)
    local rebuild=0

    case ${1:-} in
        --rebuild) rebuild=1 ;;
        '') ;;
        *) echo "usage: env.sh [--rebuild]" >&2; return 2 ;;
    esac
    # shellcheck disable=SC2206  # intentional word splitting of a list
    packages+=(${DAXFSD_VM_EXTRA_PACKAGES:-})

    local tree=$cache/tree stamp=$cache/tree.stamp envfile=$cache/tree.env
    local self=${BASH_SOURCE[0]}
    local hash
    hash=$( { cat "$self"; printf '%s\n' "$suite" "${packages[@]}"; } |
        sha256sum | cut -d' ' -f1)

    mkdir -p "$cache"
    # One builder at a time; readers wait for the builder to finish.
    exec 9>"$cache/.lock"
    flock 9

    if ((rebuild == 0)) && [[ -d $tree && -f $envfile && -f $stamp ]] &&
        [[ $(<"$stamp") == "$hash" ]]; then
        echo "env.sh: tree up to date ($tree)" >&2
        cat "$envfile"
        exec 9>&-
        return 0
    fi

    log() { printf 'env.sh: %s\n' "$*" >&2; }

    # Host packages.
    local -a missing=()
    local pkg
    for pkg in "${host_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
            grep -q 'install ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing host packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get \
            -o Acquire::Check-Valid-Until=false update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            "${missing[@]}" >&2
    fi

    log "building Debian $suite tree in $tree (about 2 minutes)"
    local tmp=$cache/tree.new
    rm -rf "$tmp" "$stamp" "$envfile"
    # shellcheck disable=SC2016  # hooks are expanded by mmdebstrap's shell
    local -a mmopts=(
        --variant=apt
        --mode=root
        --aptopt='Acquire::Check-Valid-Until "false"'
        --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-exclude=/usr/share/info/*'
        --include="$(IFS=,; echo "${packages[*]}")"
        # The kernel package makes an initrd (dracut in forky) we never use:
        # the guest boots vm-tests' own initramfs.
        --customize-hook='rm -f "$1"/boot/initrd.img-*'
    )
    mmdebstrap "${mmopts[@]}" "$suite" "$tmp" "$mirror" >&2

    # Verify what the tests rely on.
    local qemu_version
    qemu_version=$(chroot "$tmp" qemu-system-x86_64 --version |
        sed -n 's/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p')
    [[ -n $qemu_version ]] || { log "cannot run QEMU in the tree"; return 1; }
    if [[ $(printf '%s\n' "$min_qemu" "$qemu_version" | sort -V | head -n1) != "$min_qemu" ]]; then
        log "QEMU $qemu_version in the tree is older than $min_qemu"
        return 1
    fi
    chroot "$tmp" qemu-system-x86_64 -device help 2>/dev/null |
        grep -q '"vhost-user-test-device-pci"' ||
        { log "QEMU lacks vhost-user-test-device-pci"; return 1; }

    local kernel kver config opt
    kernel=$(find "$tmp/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)
    [[ -n $kernel ]] || { log "no kernel in $tmp/boot"; return 1; }
    kver=${kernel##*/vmlinuz-}
    config=$tmp/boot/config-$kver
    # The initramfs carries no modules: everything the guest needs to reach
    # a virtiofs mount must be built in.
    for opt in CONFIG_VIRTIO_PCI CONFIG_FUSE_FS CONFIG_VIRTIO_FS CONFIG_FUSE_DAX \
        CONFIG_SERIAL_8250_CONSOLE CONFIG_DEVTMPFS CONFIG_BLK_DEV_INITRD; do
        grep -qx "$opt=y" "$config" ||
            { log "kernel $kver: $opt is not built in ($(grep "^$opt=" "$config" || echo unset))"; return 1; }
    done

    local busybox
    for busybox in "$tmp/usr/bin/busybox" "$tmp/bin/busybox"; do
        [[ -x $busybox && ! -L $busybox ]] && break
    done

    rm -rf "$tree"
    mv "$tmp" "$tree"
    {
        printf 'DAXFSD_VM_CACHE=%q\n' "$cache"
        printf 'DAXFSD_VM_TREE=%q\n' "$tree"
        printf 'DAXFSD_VM_KERNEL=%q\n' "$tree/boot/vmlinuz-$kver"
        printf 'DAXFSD_VM_KERNEL_VERSION=%q\n' "$kver"
        printf 'DAXFSD_VM_QEMU_VERSION=%q\n' "$qemu_version"
        printf 'DAXFSD_VM_BUSYBOX=%q\n' "$tree${busybox#"$tmp"}"
    } >"$envfile"
    printf '%s\n' "$hash" >"$stamp"
    log "tree ready: QEMU $qemu_version, kernel $kver"
    cat "$envfile"
    exec 9>&-
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    daxfsd_vm_env_main "$@"
else
    # Sourced: build in a child shell with strict options, then export the
    # assignments here without changing the caller's shell options.
    _daxfsd_vm_env_out=$(bash "${BASH_SOURCE[0]}" "$@") || return
    eval "$_daxfsd_vm_env_out"
    export DAXFSD_VM_CACHE DAXFSD_VM_TREE DAXFSD_VM_KERNEL \
        DAXFSD_VM_KERNEL_VERSION DAXFSD_VM_QEMU_VERSION DAXFSD_VM_BUSYBOX
    unset _daxfsd_vm_env_out
fi
