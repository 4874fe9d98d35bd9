//! daxfsd: a vhost-user virtio-fs device. The library holds the layers so tests can reuse them;
//! `main.rs` wires them into the daemon.
#![deny(unsafe_code)]

pub mod cli;
pub mod dax;
pub mod device;
pub mod fs;
pub mod fuse;
pub mod guard;
pub mod log_limit;
pub mod sandbox;
