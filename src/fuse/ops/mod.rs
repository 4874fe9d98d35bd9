//! Opcode handlers, by family. Each decodes its arguments, calls the filesystem, encodes.

mod attr;
mod dax;
mod dir;
mod entry;
mod io;
mod lock;
mod session;
mod xattr;
