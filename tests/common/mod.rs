//! Shared test frontend: `vmm` plays the VMM over a real vhost-user socket, `fuse` is a small
//! FUSE client and daemon launcher on top of it.
#![allow(
    unsafe_code,
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block,
    clippy::too_many_lines,
    clippy::print_stderr,
    clippy::too_many_arguments
)]

pub mod fuse;
pub mod vmm;

/// For benchmarks: every READ reply lands in a fresh Vec. glibc's adaptive thresholds may serve
/// large ones from brk and trim them on free, so each READ pays a page fault per page in the
/// frontend (daxbench, seen with perf: 438 MB/s of READ after its window loop, 3400 before).
/// Keep freed memory and serve large blocks from the heap, so the numbers measure the daemon.
pub fn keep_heap() {
    // SAFETY: mallopt only tunes the allocator; no memory is touched.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20) };
    // SAFETY: as above.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) };
}
