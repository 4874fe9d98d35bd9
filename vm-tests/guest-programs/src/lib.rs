//! Shared code of daxfsd's guest-side test programs.
//!
//! The programs run as static binaries from the vm-tests initramfs
//! (`vm-tests/guest/init` starts `/tests/NAME /mnt [ARGS]`) and report with
//! the line protocol the launcher parses:
//!
//! ```text
//! DAXFSD-RESULT name=N status=pass|fail|skip detail=free text
//! DAXFSD-INFO free text
//! DAXFSD-READY name=N ...        (external-truncate: host side may start)
//! ```
//!
//! Modules: [`report`] (that protocol, errors), [`args`] (a tiny option
//! parser), [`rng`] (xorshift PRNG), [`sys`] (libc wrappers), [`probe`]
//! (copies to/from shared mappings that survive SIGBUS).

pub mod args;
pub mod probe;
pub mod report;
pub mod rng;
pub mod sys;

pub use report::{Context, Error, Result};
