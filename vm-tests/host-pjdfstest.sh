#!/usr/bin/env bash
# host-pjdfstest.sh — the host side of the posix tier's comparison: runs pjdfstest 0.2.2 on the
# host, with the tier's configuration and its two runs (everything but the EROFS tests with a
# tmpfs as the secondary file system, then the EROFS tests alone with allow_remount), on
#   ext4   a fresh 1 GiB ext4 image, loop-mounted (the host's own kernel, no FUSE)
#   fuse   libfuse's passthrough_hp example (Debian's fuse3 source, built here and cached) over
#          a directory of the host's ext4, mounted with default_permissions,allow_other as the
#          guest's virtiofs mount is: the host kernel's FUSE client, a daemon that is not ours
# A test that fails through daxfsd in the guest and the same way through passthrough_hp on
# the host is the FUSE client's; one that fails only through daxfsd is ours.
#
# Usage: vm-tests/host-pjdfstest.sh ext4|fuse [OUT_DIR]
# Prints the counts and each test that did not pass; keeps both reports and the merged
# "KIND NAME" results list in OUT_DIR (default: a temp dir, printed). Needs root (mount,
# apt-get for libfuse3-dev, g++, dpkg-dev's apt-get source). Exit status: 0 when both runs
# finished (failures are reported, not judged), 1 otherwise.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kind=${1:?usage: host-pjdfstest.sh ext4|fuse [OUT_DIR]}
out=${2:-$(mktemp -d "${TMPDIR:-/tmp}/daxfsd-host-pjdfstest.XXXXXX")}
cache=${DAXFSD_VM_CACHE:-/var/cache/daxfsd-vm}
log() { printf 'host-pjdfstest: %s\n' "$*" >&2; }
((EUID == 0)) || { log "must run as root"; exit 1; }
mkdir -p "$out"
out=$(realpath "$out")
pjdfstest=$("$here/install-pjdfstest.sh" | tail -n1)
# Short (socket tests bind names under it: sun_path holds 108 bytes) and searchable by the test
# users (pjdfstest switches to nobody and daemon; a 0700 parent makes their tests die on EACCES).
work=$(mktemp -d /tmp/pjd.XXXXXX)
chmod 0755 "$work"
mnt=$work/mnt
mkdir -p "$mnt" "$work/secondary"
fs_pid=
cleanup() {
    if mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
    # passthrough_hp ends by itself at the unmount.
    if [[ -n $fs_pid ]]; then kill "$fs_pid" 2>/dev/null || true; fi
    if mountpoint -q "$work/secondary"; then umount "$work/secondary"; fi
    rm -rf "$work"
}
trap cleanup EXIT

# build_passthrough_hp — prints the path of a passthrough_hp that mounts with allow_other
# (the example hard-codes default_permissions only; the guest's virtiofs mount has both).
build_passthrough_hp() {
    local version bin dir
    version=$(pkg-config --modversion fuse3 2>/dev/null || true)
    if [[ -z $version ]]; then
        log "installing libfuse3-dev g++ pkg-config"
        DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
            install -y -qq libfuse3-dev g++ pkg-config >&2
        version=$(pkg-config --modversion fuse3)
    fi
    dir=$cache/passthrough_hp-$version
    bin=$dir/passthrough_hp
    if [[ -x $bin ]]; then printf '%s\n' "$bin"; return; fi
    mkdir -p "$dir/src" "$dir/apt/lists/partial"
    # Debian's source of the installed libfuse, through a private source list and state dir.
    local codename
    # shellcheck disable=SC1091  # the host's, not ours
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $codename main" \
        >"$dir/apt/sources.list"
    local -a apt=(-o "Dir::Etc::SourceList=$dir/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o "Dir::State::Lists=$dir/apt/lists" -o Acquire::Check-Valid-Until=false)
    apt-get "${apt[@]}" update -qq >&2
    (cd "$dir/src" && apt-get "${apt[@]}" source --download-only "fuse3=$(dpkg-query -W -f='${Version}' libfuse3-dev)" >&2)
    tar -C "$dir/src" -xf "$dir"/src/fuse3_*.orig.tar.xz
    local ex
    ex=$(echo "$dir"/src/fuse-*/example)
    sed 's/"default_permissions,fsname=hpps"/"default_permissions,allow_other,fsname=hpps"/' \
        "$ex/passthrough_hp.cc" >"$dir/passthrough_hp.cc"
    grep -q allow_other "$dir/passthrough_hp.cc" || { log "cannot add allow_other to passthrough_hp"; return 1; }
    # Without these (meson's config.h) the example answers ENOSYS to utimens and fallocate.
    local -a fuse_flags
    read -ra fuse_flags <<<"$(pkg-config --cflags --libs fuse3)"
    g++ -std=c++17 -O2 -DHAVE_UTIMENSAT -DHAVE_POSIX_FALLOCATE -DHAVE_SETXATTR -I "$ex" \
        "$dir/passthrough_hp.cc" "${fuse_flags[@]}" -o "$bin.tmp" >&2
    mv "$bin.tmp" "$bin"
    printf '%s\n' "$bin"
}

case $kind in
    ext4)
        truncate -s 1G "$work/ext4.img"
        mkfs.ext4 -q -F "$work/ext4.img"
        mount -o loop "$work/ext4.img" "$mnt"
        ;;
    fuse)
        hp=$(build_passthrough_hp)
        mkdir -p "$work/source"
        "$hp" --foreground "$work/source" "$mnt" &
        fs_pid=$!
        for _ in $(seq 50); do mountpoint -q "$mnt" && break; sleep 0.1; done
        mountpoint -q "$mnt" || { log "passthrough_hp did not mount"; exit 1; }
        ;;
    *) log "unknown kind $kind (ext4, fuse)"; exit 1 ;;
esac
grep " $mnt " /proc/mounts | sed 's/^/host-pjdfstest: mounted: /' >&2
mount -t tmpfs tmpfs "$work/secondary"
dir=$mnt/pjdfstest
mkdir -p "$dir" && chmod 0755 "$dir"
(cd "$dir" && NO_COLOR=1 "$pjdfstest" -c "$here/guest/pjdfstest.toml" -p "$dir" -s "$work/secondary") \
    >"$out/$kind.main.txt" 2>&1 || true
(cd "$dir" && NO_COLOR=1 "$pjdfstest" -c "$here/guest/pjdfstest-remount.toml" -p "$dir" erofs) \
    >"$out/$kind.erofs.txt" 2>&1 || true
results() {
    awk '/^[^ \t]+ +(ok|FAILED|skipped)$/ {
            s = $NF; if (s == "FAILED") print "fail", $1; else if (s == "skipped") print "skip", $1; else print "pass", $1
         }' "$1"
}
for f in main erofs; do
    grep -q '^Summary:' "$out/$kind.$f.txt" || { log "the $f run did not finish: $out/$kind.$f.txt"; exit 1; }
done
awk 'NR == FNR { seen[$2] = 1; print; next } !($2 in seen)' <(results "$out/$kind.erofs.txt") \
    <(results "$out/$kind.main.txt") | LC_ALL=C sort >"$out/$kind.results"
printf 'host-pjdfstest %s: %s passed, %s failed, %s skipped (results in %s)\n' "$kind" \
    "$(grep -c '^pass ' "$out/$kind.results" || true)" "$(grep -c '^fail ' "$out/$kind.results" || true)" \
    "$(grep -c '^skip ' "$out/$kind.results" || true)" "$out/$kind.results"
grep -v '^pass ' "$out/$kind.results" | sed 's/^/    /' || true
