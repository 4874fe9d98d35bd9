#!/usr/bin/env bash
# install-pjdfstest.sh — build (once) the static pjdfstest binary the posix tier runs in the guest:
# `cargo install pjdfstest` (the Rust rewrite, from crates.io) with glibc crt-static, cached.
#
# Usage:  vm-tests/install-pjdfstest.sh
# Env:    PJDFSTEST_VERSION (default 0.2.2)
#         PJDFSTEST_ROOT    (default $DAXFSD_VM_CACHE/pjdfstest-VERSION, cache /var/cache/daxfsd-vm)
#
# Idempotent: does nothing when the binary is already there. Needs cargo on PATH and crates.io.
# Compiling takes a few minutes on 2 cores; it runs niced. Prints the binary's path on stdout.
set -euo pipefail

version=${PJDFSTEST_VERSION:-0.2.2}
root=${PJDFSTEST_ROOT:-${DAXFSD_VM_CACHE:-/var/cache/daxfsd-vm}/pjdfstest-$version}
bin=$root/bin/pjdfstest

log() { printf 'install-pjdfstest: %s\n' "$*" >&2; }

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [[ -x $bin ]]; then
    log "pjdfstest $version already built ($bin)"
    printf '%s\n' "$bin"
    exit 0
fi
command -v cargo >/dev/null || { log "cargo not found on PATH"; exit 1; }
log "building pjdfstest $version (static) into $root (takes a few minutes)"
# The guest has no libraries: link glibc statically. The explicit --target keeps the flag off
# build scripts and proc macros (which cannot be static).
RUSTFLAGS='-C target-feature=+crt-static' nice -n 10 \
    cargo install pjdfstest --version "$version" --locked --root "$root" \
    --target x86_64-unknown-linux-gnu >&2
if readelf -l "$bin" 2>/dev/null | grep -q INTERP; then
    log "$bin is dynamically linked"
    rm -f "$bin"
    exit 1
fi
printf '%s\n' "$bin"
