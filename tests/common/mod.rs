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
