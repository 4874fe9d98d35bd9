//! Name-space operations: create, mknod, mkdir, symlink, link, unlink, rename, access, tmpfile.
//! Creations run under the caller's credentials so the host gives new nodes the right owner.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::handles::OpenMode;
use super::inodes::{Inode, InodeKey};
use super::{Passthrough, check_name, errno};
use crate::fs::cred::{ScopedCreds, ScopedUmask};
use crate::fs::{Context, CreateParams, Entry, HandleId, NodeId, OpenOptions, sys};

/// How often a CREATE without O_EXCL tries create-then-open when the name keeps vanishing.
const CREATE_ATTEMPTS: usize = 4;

impl Passthrough {
    /// Runs `op` on `parent`'s fd as the caller, with the right umask, then looks `name` up.
    fn make_node<F>(&self, ctx: &Context, parent: NodeId, name: &CStr, umask: u32, op: F) -> io::Result<Entry>
    where
        F: FnOnce(BorrowedFd<'_>) -> io::Result<()>,
    {
        self.check_writable()?;
        check_name(name)?;
        // A node the guest could not look up afterwards is not made at all.
        self.check_inode_quota()?;
        let parent = self.inode(parent)?;
        {
            let dir = parent.path_fd()?;
            let _creds = ScopedCreds::switch(ctx)?;
            let _umask = ScopedUmask::set(self.create_umask(umask));
            op(dir.as_fd())?;
        }
        self.do_lookup(&parent, name)
    }

    /// With POSIX ACLs the guest leaves the umask to us; otherwise it already applied it.
    fn create_umask(&self, umask: u32) -> u32 {
        if self.posix_acl.load(std::sync::atomic::Ordering::Relaxed) { umask } else { 0 }
    }

    pub(super) fn do_symlink(&self, ctx: &Context, parent: NodeId, name: &CStr, target: &CStr) -> io::Result<Entry> {
        self.make_node(ctx, parent, name, 0, |dir| sys::symlinkat(target, dir, name))
    }

    pub(super) fn do_mknod(&self, ctx: &Context, parent: NodeId, name: &CStr, p: CreateParams) -> io::Result<Entry> {
        self.make_node(ctx, parent, name, p.umask, |dir| sys::mknodat(dir, name, p.mode, u64::from(p.rdev)))
    }

    pub(super) fn do_mkdir(&self, ctx: &Context, parent: NodeId, name: &CStr, p: CreateParams) -> io::Result<Entry> {
        self.make_node(ctx, parent, name, p.umask, |dir| sys::mkdirat(dir, name, p.mode & 0o7777))
    }

    pub(super) fn do_unlink(&self, ctx: &Context, parent: NodeId, name: &CStr, flags: i32) -> io::Result<()> {
        self.check_writable()?;
        check_name(name)?;
        let parent = self.inode(parent)?;
        let dir = parent.path_fd()?;
        let _creds = ScopedCreds::switch(ctx)?;
        sys::unlinkat(dir.as_fd(), name, flags)
    }

    pub(super) fn do_rename(
        &self,
        ctx: &Context,
        from: (NodeId, &CStr),
        to: (NodeId, &CStr),
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        check_name(from.1)?;
        check_name(to.1)?;
        let old = self.inode(from.0)?;
        let new = self.inode(to.0)?;
        let (old_dir, new_dir) = (old.path_fd()?, new.path_fd()?);
        let _creds = ScopedCreds::switch(ctx)?;
        sys::renameat2(old_dir.as_fd(), from.1, new_dir.as_fd(), to.1, flags)
    }

    pub(super) fn do_link(&self, ctx: &Context, node: NodeId, parent: NodeId, name: &CStr) -> io::Result<Entry> {
        let inode = self.inode(node)?;
        let path = inode.path_fd()?;
        let proc_name = sys::fd_name(path.as_fd());
        let proc_fd = self.proc_fd.as_fd();
        // /proc/self/fd/N followed with AT_SYMLINK_FOLLOW names the inode itself.
        self.make_node(ctx, parent, name, 0, |dir| sys::linkat(proc_fd, &proc_name, dir, name, libc::AT_SYMLINK_FOLLOW))
    }

    pub(super) fn do_access(&self, ctx: &Context, node: NodeId, mask: u32) -> io::Result<()> {
        let inode = self.inode(node)?;
        let mask = i32::try_from(mask).map_err(|_| errno(libc::EINVAL))?;
        if mask & libc::W_OK != 0 {
            self.check_writable()?;
        }
        let path = inode.path_fd()?;
        let _creds = ScopedCreds::switch(ctx)?;
        sys::faccessat(self.proc_fd.as_fd(), &sys::fd_name(path.as_fd()), mask)
    }

    /// CREATE (with a name) or TMPFILE (without): creates, opens and looks up in one go.
    pub(super) fn do_create(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: Option<&CStr>,
        p: CreateParams,
    ) -> io::Result<(Entry, HandleId, OpenOptions)> {
        self.check_writable()?;
        if let Some(name) = name {
            check_name(name)?;
        }
        self.check_inode_quota()?;
        let parent_inode = self.inode(parent)?;
        let guest = i32::from_ne_bytes(p.flags.to_ne_bytes());
        let mut flags = self.host_open_flags(p.flags) | libc::O_NOFOLLOW;
        let dax = self.dax_session().is_some();
        if dax {
            // The created fd becomes the inode's shared DAX file; an O_TRUNC of an existing
            // file goes through the window's shrink instead.
            flags = (flags & !(libc::O_ACCMODE | libc::O_APPEND | libc::O_TRUNC)) | libc::O_RDWR;
        }
        // Both permits before anything is created: a refusal leaves no trace.
        let permit = self.quota.acquire()?;
        let dax_permit = if dax { Some(self.quota.acquire()?) } else { None };
        let fd = self.create_fd(ctx, &parent_inode, name, &p, flags)?;
        let mut entry = match name {
            Some(name) => self.do_lookup(&parent_inode, name)?,
            None => self.insert_open_file(fd.as_fd())?,
        };
        let inode = self.inode(entry.nodeid)?;
        let (fd, mode) = match dax_permit {
            Some(dax_permit) => {
                // The name was looked up again: a host rename in between may have put another
                // file there. Its shared file must be its own (one semaphore and lease per file).
                let (got, mnt_id) = sys::statx(fd.as_fd())?;
                if (InodeKey { dev: got.dev, ino: got.ino, mnt_id }) != inode.key {
                    self.inodes.forget(entry.nodeid, 1);
                    crate::log_limit::warn_limited!(
                        "CREATE: the name changed to another file while it was opened; EIO"
                    );
                    return Err(errno(libc::EIO));
                }
                let shared = self.adopt_shared_file(&inode, fd, dax_permit)?;
                if guest & libc::O_TRUNC != 0 {
                    self.dax_truncate(&inode, shared.as_fd(), 0)?;
                }
                // The entry must show the size after the O_TRUNC (the guest takes it as the new
                // file's), and never a size padded for the EOF page.
                let (attr, mnt_id) = self.dax_stat(&inode)?;
                entry.attr = self.decorate(attr, mnt_id, Some(&parent_inode));
                self.dax_open(&inode, p.flags, &shared)?
            }
            None => (fd, OpenMode::of(flags)),
        };
        let opts = self.file_open_options(&inode);
        let fh = self.handles.insert(fd, inode, mode, permit)?;
        Ok((entry, fh, opts))
    }

    /// Opens the file of a CREATE (`name`) or TMPFILE as the caller: always a regular file.
    /// A named CREATE is tried with O_EXCL first, so it never opens what is already there;
    /// without the guest's O_EXCL an existing name then goes through `open_existing`.
    fn create_fd(
        &self,
        ctx: &Context,
        parent: &Inode,
        name: Option<&CStr>,
        p: &CreateParams,
        flags: i32,
    ) -> io::Result<OwnedFd> {
        let mode = p.mode & 0o7777;
        let dir = parent.path_fd()?;
        let _creds = ScopedCreds::switch(ctx)?;
        let _umask = ScopedUmask::set(self.create_umask(p.umask));
        let Some(name) = name else {
            // O_TMPFILE makes a new unnamed regular file in a directory: it opens nothing else.
            return sys::openat(dir.as_fd(), c".", (flags & !libc::O_NOFOLLOW) | libc::O_TMPFILE, mode);
        };
        let guest_excl = i32::from_ne_bytes(p.flags.to_ne_bytes()) & libc::O_EXCL != 0;
        let mut last = errno(libc::ENOENT);
        // Another host process may unlink the name between the two steps: then create again.
        for _ in 0..CREATE_ATTEMPTS {
            match sys::openat_beneath(dir.as_fd(), name, flags | libc::O_CREAT | libc::O_EXCL, mode) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !guest_excl => {}
                done => return done,
            }
            match self.open_existing(dir.as_fd(), name, flags, p.flags) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => last = e,
                done => return done,
            }
        }
        Err(last)
    }

    /// Opens what a CREATE without O_EXCL found at `name`, only if it is a regular file. The
    /// type comes from statx of an O_PATH fd, which opens nothing: an open(2) of a FIFO would
    /// block the worker and one of a device would hand the guest the host's device.
    /// A file mapped through the window is not opened again (that open would break the
    /// daemon's own lease, I5): its shared file is reused, after the open's permission check
    /// (as the caller, like the open would).
    fn open_existing(&self, dir: BorrowedFd<'_>, name: &CStr, flags: i32, guest_flags: u32) -> io::Result<OwnedFd> {
        let path = sys::openat_beneath(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let (attr, mnt_id) = sys::statx(path.as_fd())?;
        match attr.mode & libc::S_IFMT {
            libc::S_IFREG => {
                let key = InodeKey { dev: attr.dev, ino: attr.ino, mnt_id };
                let shared = self
                    .inodes
                    .find(&key)
                    .and_then(|i| i.dax_file.lock().ok()?.as_ref().map(|f| std::sync::Arc::clone(&f.fd)));
                match shared {
                    Some(shared) => {
                        sys::faccessat(self.proc_fd.as_fd(), &sys::fd_name(path.as_fd()), access_mask(guest_flags))?;
                        shared.try_clone()
                    }
                    None => self.reopen_fd(path.as_fd(), flags),
                }
            }
            // What open(2) with O_CREAT (and, for the symlink, O_NOFOLLOW) answers.
            libc::S_IFDIR => Err(errno(libc::EISDIR)),
            libc::S_IFLNK => Err(errno(libc::ELOOP)),
            // FIFOs, sockets, devices: ENXIO, which open(2) itself answers for a socket and for
            // a device without a driver, so a guest program copes. A Linux guest never sends
            // this for a special file it knows; it opens those locally.
            _ => Err(errno(libc::ENXIO)),
        }
    }

    /// Registers the inode behind an open fd (for O_TMPFILE, which has no name to look up).
    fn insert_open_file(&self, fd: BorrowedFd<'_>) -> io::Result<Entry> {
        let name = sys::fd_name(fd);
        let path_fd = sys::openat(self.proc_fd.as_fd(), &name, libc::O_PATH, 0)?;
        let (attr, mnt_id) = sys::statx(path_fd.as_fd())?;
        let key = InodeKey { dev: attr.dev, ino: attr.ino, mnt_id };
        let nodeid = self.insert_inode(key, attr.mode & libc::S_IFMT, path_fd)?;
        Ok(self.entry(nodeid, self.decorate(attr, mnt_id, None)))
    }
}

/// The access(2) mask an open with the guest's `flags` needs.
fn access_mask(flags: u32) -> i32 {
    let flags = i32::from_ne_bytes(flags.to_ne_bytes());
    let mut mask = match flags & libc::O_ACCMODE {
        libc::O_WRONLY => libc::W_OK,
        libc::O_RDWR => libc::R_OK | libc::W_OK,
        _ => libc::R_OK,
    };
    if flags & libc::O_TRUNC != 0 {
        mask |= libc::W_OK;
    }
    mask
}
