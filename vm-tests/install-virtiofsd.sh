#!/usr/bin/env bash
# install-virtiofsd.sh — install the reference daemon virtiofsd (Rust, from
# crates.io) for side-by-side vm-tests and benchmarks against daxfsd.
#
# Usage:  vm-tests/install-virtiofsd.sh
# Env:    VIRTIOFSD_VERSION (default 1.14.0)
#         VIRTIOFSD_ROOT    (default /opt/virtiofsd; binary in $VIRTIOFSD_ROOT/bin)
#
# Idempotent: does nothing when $VIRTIOFSD_ROOT/bin/virtiofsd already reports
# the wanted version. Needs root for apt-get (libcap-ng-dev, libseccomp-dev)
# and cargo on PATH. Compiling takes a few minutes on 2 cores; it runs niced.
# Prints the binary's path on stdout as its last line.
set -euo pipefail

version=${VIRTIOFSD_VERSION:-1.14.0}
root=${VIRTIOFSD_ROOT:-/opt/virtiofsd}
bin=$root/bin/virtiofsd

log() { printf 'install-virtiofsd: %s\n' "$*" >&2; }

if [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -qw -- "$version"; then
    log "virtiofsd $version already installed"
    printf '%s\n' "$bin"
    exit 0
fi

# Build dependencies (headers for the libcap-ng and libseccomp bindings).
missing=()
for pkg in libcap-ng-dev libseccomp-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
fi

command -v cargo >/dev/null || { log "cargo not found on PATH"; exit 1; }

log "building virtiofsd $version into $root (takes a few minutes)"
nice -n 10 cargo install virtiofsd --version "$version" --locked --root "$root" >&2
"$bin" --version >&2
printf '%s\n' "$bin"
