#!/usr/bin/env bash
# What CI runs (.ci/run calls this): formatting, lints, structure, the README's test command,
# then the quick VM tier, the posix tier (pjdfstest), the 200000-file tree walk and the
# libvirt tier. Installs what it needs; safe to run on a fresh machine as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { echo; echo "### $*"; }

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "guest programs: cargo fmt --check, clippy -D warnings"
(cd vm-tests/guest-programs && cargo fmt --check && cargo clippy --locked --all-targets -- -D warnings)

step "structure checks"
ci/check-structure.sh

step "cargo test (the README's test command)"
cargo test --locked

step "fuzz: decode, dispatch, dax (cargo-fuzz on stable via RUSTC_BOOTSTRAP=1, ASan)"
ci/fuzz.sh

if [[ ${DAXFSD_SKIP_VM:-0} == 1 ]]; then
    echo "vm-tests skipped (DAXFSD_SKIP_VM=1)"
elif [[ $(id -u) -ne 0 ]]; then
    echo "vm-tests skipped: they need root (mmdebstrap, chroot)"
else
    step "vm-tests quick tier: smoke and frontend conformance"
    vm-tests/quick.sh --daemon target/debug/daxfsd
    step "vm-tests quick tier: the matrix (posix-smoke, dax-stress, fsx, external-truncate)"
    vm-tests/matrix.sh --tier quick --daemon target/debug/daxfsd
    step "vm-tests posix tier: pjdfstest in the guest, without DAX and with dax=always"
    vm-tests/posix.sh --daemon target/debug/daxfsd
    step "vm-tests tree-walk: 200000 files under --rlimit-nofile 4096 (file handles pass, never fails loudly)"
    vm-tests/tree-walk.sh --daemon target/debug/daxfsd
    step "vm-tests libvirt tier: libvirtd starts daxfsd from a domain's virtiofs filesystem"
    vm-tests/libvirt.sh --daemon target/debug/daxfsd
fi
echo "ci: all green"
