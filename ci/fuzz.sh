#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a fixed number of executions on a
# copy of the committed seed corpus (CI never grows it). Fails on any crash, leak or timeout;
# the crashing input is kept under fuzz/artifacts/<target>/. Works on the stable toolchain:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags (AddressSanitizer, sancov).
# FUZZ_RUNS=N overrides every target's count; FUZZ_TARGETS="dax decode" picks targets.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never RUSTC_BOOTSTRAP=1

CARGO_FUZZ_VERSION=0.13.2
declare -A RUNS=([decode]=100000 [dispatch]=30000 [dax]=100000)
targets=${FUZZ_TARGETS:-decode dispatch dax}

if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked
fi

(cd fuzz && cargo fmt --check)
# fuzz/Cargo.lock is committed: refuse to run with a lockfile that would have to change.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml > /dev/null
echo "### cargo fuzz build (sanitizer: address)"
cargo fuzz build --sanitizer address

# The seeds are copied; the dispatch target's shared directory lives under $TMPDIR, on tmpfs
# when there is one (its requests create and delete files by the thousand).
base=/dev/shm
[[ -d $base && -w $base ]] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/daxfsd-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tmp"
fail=0
for t in $targets; do
    runs=${FUZZ_RUNS:-${RUNS[$t]}}
    cp -r "fuzz/corpus/$t" "$work/$t"
    mkdir -p "fuzz/artifacts/$t"
    echo "### fuzz $t: $runs runs"
    start=$SECONDS
    set +e
    TMPDIR="$work/tmp" "fuzz/target/x86_64-unknown-linux-gnu/release/$t" \
        -runs="$runs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" "$work/$t" > "$work/$t.log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    echo "fuzz $t: ${execs:-?} executions in $((SECONDS - start)) s, exit $rc"
    if [[ $rc -ne 0 ]]; then
        tail -n 60 "$work/$t.log"
        ls -l "fuzz/artifacts/$t/" || true
        fail=1
    fi
done
if [[ $fail -ne 0 ]]; then
    echo "fuzz: a target failed; reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>"
    exit 1
fi
echo "fuzz: all targets clean"
