#!/usr/bin/env bash
# mkinitramfs.sh — build the vm-tests guest initramfs (cpio newc, gzip):
# a static busybox with all its applets, vm-tests/guest/init as /init, a
# minimal /etc, and any extra files (static guest programs, configs).
#
# Usage:
#   vm-tests/mkinitramfs.sh -o OUT.cpio.gz [--busybox PATH] [--init FILE]
#                           [SRC[:DEST]]...
#
#   -o, --output OUT   initramfs to write (required)
#   --busybox PATH     static busybox (default: the one in the env.sh tree)
#   --init FILE        init script (default: vm-tests/guest/init)
#   --tree-program P   copy the dynamically linked program P (a path inside
#                      the env.sh tree, e.g. /usr/bin/fio) to the same path,
#                      with every library it needs (resolved by ldd in the
#                      tree) at its tree path; repeatable
#   SRC[:DEST]         extra file copied to DEST in the initramfs (default
#                      DEST: /bin/<basename of SRC>). Guest programs must be
#                      statically linked (Rust: RUSTFLAGS='-C
#                      target-feature=+crt-static'); a program placed in
#                      /tests/NAME or /bin/NAME runs as test NAME (see init).
#
# The guest kernel (Debian's) has virtio-pci, virtiofs and FUSE DAX built in,
# so no modules are included. Fast (well under a second): run it per boot.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=
busybox=
init=$here/guest/init
extras=()
tree_programs=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { printf 'mkinitramfs.sh: %s\n' "$*" >&2; exit 1; }

while (($#)); do
    case $1 in
        -o | --output) out=${2:?}; shift 2 ;;
        --busybox) busybox=${2:?}; shift 2 ;;
        --init) init=${2:?}; shift 2 ;;
        --tree-program) tree_programs+=("${2:?}"); shift 2 ;;
        -h | --help) usage ;;
        --) shift; extras+=("$@"); break ;;
        -*) die "unknown option $1" ;;
        *) extras+=("$1"); shift ;;
    esac
done
[[ -n $out ]] || usage
if [[ -z $busybox ]] || ((${#tree_programs[@]})); then
    env_out=$("$here/env.sh")
    eval "$env_out"
    busybox=${busybox:-$DAXFSD_VM_BUSYBOX}
fi
[[ -x $busybox ]] || die "no busybox at $busybox"
[[ -f $init ]] || die "no init script at $init"

stage=$(mktemp -d "${TMPDIR:-/tmp}/daxfsd-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,dev,etc,mnt,proc,sys,tmp,tests,root}
ln -s bin "$stage/sbin"
ln -s . "$stage/usr"
install -m 0755 "$busybox" "$stage/bin/busybox"
# The busybox is static, so it runs on the host to list its applets.
"$busybox" --list | while read -r applet; do
    [[ $applet == busybox ]] || ln -s busybox "$stage/bin/$applet"
done
install -m 0755 "$init" "$stage/init"
# The kernel opens /dev/console before running /init; it can only be
# created as root (init copes without it by reopening the console).
if ((EUID == 0)); then
    mknod -m 0600 "$stage/dev/console" c 5 1
fi

# Users and groups some test suites (pjdfstest) expect to exist.
cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/:/bin/false
nobody:x:65534:65534:nobody:/:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
nogroup:x:65534:
EOF

for spec in "${extras[@]}"; do
    src=${spec%%:*}
    dest=/bin/$(basename "$src")
    [[ $spec == *:* ]] && dest=${spec#*:}
    [[ -f $src ]] || die "no such file: $src"
    [[ $dest == /* ]] || die "destination must be absolute: $dest"
    if command -v readelf >/dev/null && readelf -l "$src" 2>/dev/null | grep -q 'INTERP'; then
        die "$src is dynamically linked; the guest has no libraries (build it static)"
    fi
    mkdir -p "$stage$(dirname "$dest")"
    mode=0644
    [[ -x $src ]] && mode=0755
    install -m "$mode" "$src" "$stage$dest"
done

# Programs from the tree, with their libraries at the same paths (the initramfs has
# usr -> ., so /usr/lib/... and /lib/... both land in /lib).
for prog in "${tree_programs[@]}"; do
    [[ $prog == /* && -x $DAXFSD_VM_TREE$prog ]] || die "no program $prog in $DAXFSD_VM_TREE"
    readarray -t libs < <(chroot "$DAXFSD_VM_TREE" ldd "$prog" | grep -o '/[^ ]*')
    ((${#libs[@]})) || die "ldd found no libraries for $prog in the tree"
    for f in "$prog" "${libs[@]}"; do
        mkdir -p "$stage$(dirname "$f")"
        cp -L "$DAXFSD_VM_TREE$f" "$stage$f"
    done
done

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0) | gzip -6 >"$out.tmp"
mv "$out.tmp" "$out"
