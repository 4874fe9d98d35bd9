//! The FUSE wire protocol, without policy: ABI structs, Reader/Writer over descriptor chains,
//! request decoding, dispatch to the `Filesystem` trait, reply encoding.

pub mod abi;
pub mod chain;
mod convert;
mod dispatch;
#[doc(hidden)]
pub mod fuzzing;
mod ops;
pub mod request;
pub mod server;

pub use server::Server;
