//! Extended attributes (--xattr). Off, they answer ENOSYS so the guest stops asking. POSIX ACL
//! names are hidden unless --posix-acl. Only regular files and directories are opened for this.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;

use super::dax::IoFd;
use super::{Passthrough, errno};
use crate::fs::cred::ScopedCreds;
use crate::fs::{Context, NodeId, XattrReply, sys};

/// Largest value or list we fetch (the kernel's XATTR_SIZE_MAX / XATTR_LIST_MAX).
const XATTR_MAX: u32 = 65536;

fn is_acl_name(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

impl Passthrough {
    fn xattr_fd(&self, node: NodeId, name: Option<&CStr>) -> io::Result<IoFd> {
        if !self.cfg.xattr {
            return Err(errno(libc::ENOSYS));
        }
        if let Some(name) = name
            && !self.cfg.posix_acl
            && is_acl_name(name.to_bytes())
        {
            return Err(errno(libc::EOPNOTSUPP));
        }
        let inode = self.inode(node)?;
        if !inode.is_openable() {
            return Err(errno(libc::EOPNOTSUPP));
        }
        self.io_fd(&inode, libc::O_RDONLY | libc::O_NONBLOCK)
    }

    pub(super) fn do_setxattr(
        &self,
        ctx: &Context,
        node: NodeId,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let fd = self.xattr_fd(node, Some(name))?;
        let flags = i32::try_from(flags).map_err(|_| errno(libc::EINVAL))?;
        let _creds = ScopedCreds::switch(ctx)?;
        sys::fsetxattr(fd.as_fd(), name, value, flags)
    }

    pub(super) fn do_getxattr(&self, node: NodeId, name: &CStr, size: u32) -> io::Result<XattrReply> {
        let fd = self.xattr_fd(node, Some(name))?;
        if size == 0 {
            let n = sys::fgetxattr(fd.as_fd(), name, &mut [])?;
            return Ok(XattrReply::Size(u32::try_from(n).unwrap_or(u32::MAX)));
        }
        let mut buf = vec![0u8; size.min(XATTR_MAX) as usize];
        let n = sys::fgetxattr(fd.as_fd(), name, &mut buf)?;
        buf.truncate(n);
        Ok(XattrReply::Value(buf))
    }

    pub(super) fn do_listxattr(&self, node: NodeId, size: u32) -> io::Result<XattrReply> {
        let fd = self.xattr_fd(node, None)?;
        let mut buf = vec![0u8; XATTR_MAX as usize];
        let n = sys::flistxattr(fd.as_fd(), &mut buf)?;
        buf.truncate(n);
        if !self.cfg.posix_acl {
            buf = buf
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty() && !is_acl_name(n))
                .flat_map(|n| n.iter().copied().chain(std::iter::once(0)))
                .collect();
        }
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        if size == 0 {
            Ok(XattrReply::Size(len))
        } else if len > size {
            Err(errno(libc::ERANGE))
        } else {
            Ok(XattrReply::Value(buf))
        }
    }

    pub(super) fn do_removexattr(&self, ctx: &Context, node: NodeId, name: &CStr) -> io::Result<()> {
        let fd = self.xattr_fd(node, Some(name))?;
        let _creds = ScopedCreds::switch(ctx)?;
        sys::fremovexattr(fd.as_fd(), name)
    }
}
