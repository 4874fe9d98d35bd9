//! The opcode switch: which handler serves which opcode. Nothing else.

use std::io;

use super::abi::Opcode;
use super::chain::Writer;
use super::server::{OpResult, Reply, Request, Server};
use crate::fs::Filesystem;

fn enosys() -> OpResult {
    Err(io::Error::from_raw_os_error(libc::ENOSYS).into())
}

impl<F: Filesystem> Server<F> {
    /// Runs the handler for `op`. WRITE never gets here (its payload stays in the chain).
    pub(super) fn dispatch(&self, op: Opcode, req: &mut Request<'_>, w: &mut Writer<'_>) -> OpResult {
        use Opcode::*;
        match op {
            Init => self.init(req),
            Destroy => self.destroy(),
            Lookup => self.lookup(req),
            Forget => self.forget(req),
            BatchForget => self.batch_forget(req),
            Getattr => self.getattr(req),
            Setattr => self.setattr(req),
            Statx => self.statx(req),
            Readlink => self.readlink(req),
            Symlink => self.symlink(req),
            Mknod => self.mknod(req),
            Mkdir => self.mkdir(req),
            Unlink => self.unlink(req, false),
            Rmdir => self.unlink(req, true),
            Rename => self.rename(req, false),
            Rename2 => self.rename(req, true),
            Link => self.link(req),
            Open => self.open(req),
            Create => self.create(req, false),
            Tmpfile => self.create(req, true),
            Read => self.read(req, w),
            Statfs => self.statfs(req),
            Release => self.release(req),
            Fsync => self.fsync(req, false),
            Fsyncdir => self.fsync(req, true),
            Flush => self.flush(req),
            Setxattr => self.setxattr(req),
            Getxattr => self.getxattr(req),
            Listxattr => self.listxattr(req),
            Removexattr => self.removexattr(req),
            Opendir => self.opendir(req),
            Readdir => self.readdir(req, w, false),
            Readdirplus => self.readdir(req, w, true),
            Releasedir => self.releasedir(req),
            Getlk => self.getlk(req),
            Setlk => self.setlk(req, false),
            Setlkw => self.setlk(req, true),
            Access => self.access(req),
            Fallocate => self.fallocate(req),
            Lseek => self.lseek(req),
            CopyFileRange => self.copy_file_range(req),
            Syncfs => self.syncfs(req),
            // Requests run to completion; there is nothing to interrupt. No reply is expected.
            Interrupt | NotifyReply => Ok(Reply::None),
            // The kernel maps ENOSYS to ENOTTY for ioctl and falls back for poll/bmap.
            Bmap | Ioctl | Poll => enosys(),
            Setupmapping => self.setupmapping(req),
            Removemapping => self.removemapping(req),
            Write => Err(io::Error::from_raw_os_error(libc::EINVAL).into()),
        }
    }
}
