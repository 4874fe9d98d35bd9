//! The FUSE wire ABI, mirroring the kernel's `include/uapi/linux/fuse.h` (7.41).
//! Declarative only: structs, opcodes and flag constants, no logic beyond decoding an opcode.
//! Struct names are the kernel's in CamelCase; fields and constants keep their kernel names,
//! except `type`, spelled `typ` (zerocopy's derives reject raw identifiers).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Protocol major version we speak.
pub const FUSE_KERNEL_VERSION: u32 = 7;
/// Highest protocol minor version we speak.
pub const FUSE_KERNEL_MINOR_VERSION: u32 = 41;
/// Oldest guest minor version we accept (virtio-fs appeared with 7.31 in Linux 5.4).
pub const FUSE_MIN_MINOR_VERSION: u32 = 27;

macro_rules! wire_struct {
    ($(#[$m:meta])* $name:ident, $size:expr, { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
        const _: () = assert!(size_of::<$name>() == $size);
    };
}

wire_struct!(/// `fuse_in_header`.
    InHeader, 40, { len: u32, opcode: u32, unique: u64, nodeid: u64, uid: u32, gid: u32, pid: u32,
    /// Length of request extensions, in units of 8 bytes.
    total_extlen: u16, padding: u16 });
wire_struct!(/// `fuse_out_header`.
    OutHeader, 16, { len: u32, error: i32, unique: u64 });
wire_struct!(/// `fuse_attr`.
    Attr, 88, { ino: u64, size: u64, blocks: u64, atime: u64, mtime: u64, ctime: u64,
    atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32, nlink: u32, uid: u32, gid: u32,
    rdev: u32, blksize: u32, flags: u32 });
wire_struct!(/// `fuse_entry_out`.
    EntryOut, 128, { nodeid: u64, generation: u64, entry_valid: u64, attr_valid: u64,
    entry_valid_nsec: u32, attr_valid_nsec: u32, attr: Attr });
wire_struct!(/// `fuse_forget_in`.
    ForgetIn, 8, { nlookup: u64 });
wire_struct!(/// `fuse_forget_one`.
    ForgetOne, 16, { nodeid: u64, nlookup: u64 });
wire_struct!(/// `fuse_batch_forget_in`.
    BatchForgetIn, 8, { count: u32, dummy: u32 });
wire_struct!(/// `fuse_getattr_in`.
    GetattrIn, 16, { getattr_flags: u32, dummy: u32, fh: u64 });
wire_struct!(/// `fuse_attr_out`.
    AttrOut, 104, { attr_valid: u64, attr_valid_nsec: u32, dummy: u32, attr: Attr });
wire_struct!(/// `fuse_mknod_in`.
    MknodIn, 16, { mode: u32, rdev: u32, umask: u32, padding: u32 });
wire_struct!(/// `fuse_mkdir_in`.
    MkdirIn, 8, { mode: u32, umask: u32 });
wire_struct!(/// `fuse_rename_in`.
    RenameIn, 8, { newdir: u64 });
wire_struct!(/// `fuse_rename2_in`.
    Rename2In, 16, { newdir: u64, flags: u32, padding: u32 });
wire_struct!(/// `fuse_link_in`.
    LinkIn, 8, { oldnodeid: u64 });
wire_struct!(/// `fuse_setattr_in`.
    SetattrIn, 88, { valid: u32, padding: u32, fh: u64, size: u64, lock_owner: u64, atime: u64,
    mtime: u64, ctime: u64, atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32,
    unused4: u32, uid: u32, gid: u32, unused5: u32 });
wire_struct!(/// `fuse_open_in`.
    OpenIn, 8, { flags: u32, open_flags: u32 });
wire_struct!(/// `fuse_create_in` (also TMPFILE).
    CreateIn, 16, { flags: u32, mode: u32, umask: u32, open_flags: u32 });
wire_struct!(/// `fuse_open_out`.
    OpenOut, 16, { fh: u64, open_flags: u32, backing_id: i32 });
wire_struct!(/// `fuse_release_in`.
    ReleaseIn, 24, { fh: u64, flags: u32, release_flags: u32, lock_owner: u64 });
wire_struct!(/// `fuse_flush_in`.
    FlushIn, 24, { fh: u64, unused: u32, padding: u32, lock_owner: u64 });
wire_struct!(/// `fuse_read_in`.
    ReadIn, 40, { fh: u64, offset: u64, size: u32, read_flags: u32, lock_owner: u64, flags: u32,
    padding: u32 });
wire_struct!(/// `fuse_write_in`.
    WriteIn, 40, { fh: u64, offset: u64, size: u32, write_flags: u32, lock_owner: u64, flags: u32,
    padding: u32 });
wire_struct!(/// `fuse_write_out`.
    WriteOut, 8, { size: u32, padding: u32 });
wire_struct!(/// `fuse_kstatfs`.
    Kstatfs, 80, { blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64, bsize: u32,
    namelen: u32, frsize: u32, padding: u32, spare: [u32; 6] });
wire_struct!(/// `fuse_fsync_in`.
    FsyncIn, 16, { fh: u64, fsync_flags: u32, padding: u32 });
wire_struct!(/// `fuse_setxattr_in` as sent with FUSE_SETXATTR_EXT.
    SetxattrIn, 16, { size: u32, flags: u32, setxattr_flags: u32, padding: u32 });
wire_struct!(/// `fuse_setxattr_in` before FUSE_SETXATTR_EXT (FUSE_COMPAT_SETXATTR_IN_SIZE).
    SetxattrInCompat, 8, { size: u32, flags: u32 });
wire_struct!(/// `fuse_getxattr_in`.
    GetxattrIn, 8, { size: u32, padding: u32 });
wire_struct!(/// `fuse_getxattr_out`.
    GetxattrOut, 8, { size: u32, padding: u32 });
wire_struct!(/// `fuse_file_lock`.
    FileLock, 24, { start: u64, end: u64, typ: u32, pid: u32 });
wire_struct!(/// `fuse_lk_in`.
    LkIn, 48, { fh: u64, owner: u64, lk: FileLock, lk_flags: u32, padding: u32 });
wire_struct!(/// `fuse_lk_out`.
    LkOut, 24, { lk: FileLock });
wire_struct!(/// `fuse_access_in`.
    AccessIn, 8, { mask: u32, padding: u32 });
wire_struct!(/// `fuse_init_in` (64 bytes since 7.36; older guests send the first 16).
    InitIn, 64, { major: u32, minor: u32, max_readahead: u32, flags: u32, flags2: u32,
    unused: [u32; 11] });
wire_struct!(/// The pre-7.36 `fuse_init_in`.
    InitInCompat, 16, { major: u32, minor: u32, max_readahead: u32, flags: u32 });
wire_struct!(/// `fuse_init_out`, always sent whole (64 bytes): map_alignment and flags2 live past 24.
    InitOut, 64, { major: u32, minor: u32, max_readahead: u32, flags: u32, max_background: u16,
    congestion_threshold: u16, max_write: u32, time_gran: u32, max_pages: u16,
    map_alignment: u16, flags2: u32, max_stack_depth: u32, request_timeout: u16,
    unused: [u16; 11] });
wire_struct!(/// `fuse_interrupt_in`.
    InterruptIn, 8, { unique: u64 });
wire_struct!(/// `fuse_fallocate_in`.
    FallocateIn, 32, { fh: u64, offset: u64, length: u64, mode: u32, padding: u32 });
wire_struct!(/// `fuse_dirent` without its name.
    Dirent, 24, { ino: u64, off: u64, namelen: u32, typ: u32 });
wire_struct!(/// `fuse_lseek_in`.
    LseekIn, 24, { fh: u64, offset: u64, whence: u32, padding: u32 });
wire_struct!(/// `fuse_lseek_out`.
    LseekOut, 8, { offset: u64 });
wire_struct!(/// `fuse_copy_file_range_in`.
    CopyFileRangeIn, 56, { fh_in: u64, off_in: u64, nodeid_out: u64, fh_out: u64, off_out: u64,
    len: u64, flags: u64 });
wire_struct!(/// `fuse_syncfs_in`.
    SyncfsIn, 8, { padding: u64 });
wire_struct!(/// `fuse_statx_in`.
    StatxIn, 24, { getattr_flags: u32, reserved: u32, fh: u64, sx_flags: u32, sx_mask: u32 });
wire_struct!(/// `fuse_sx_time`.
    SxTime, 16, { tv_sec: i64, tv_nsec: u32, reserved: i32 });
wire_struct!(/// `fuse_statx`.
    Statx, 256, { mask: u32, blksize: u32, attributes: u64, nlink: u32, uid: u32, gid: u32,
    mode: u16, spare0: u16, ino: u64, size: u64, blocks: u64, attributes_mask: u64,
    atime: SxTime, btime: SxTime, ctime: SxTime, mtime: SxTime, rdev_major: u32,
    rdev_minor: u32, dev_major: u32, dev_minor: u32, spare2: [u64; 14] });
wire_struct!(/// `fuse_statx_out`.
    StatxOut, 288, { attr_valid: u64, attr_valid_nsec: u32, flags: u32, spare: [u64; 2],
    stat: Statx });
wire_struct!(/// `fuse_ext_header`: each request extension starts with one.
    ExtHeader, 8, { size: u32, typ: u32 });
wire_struct!(/// `fuse_supp_groups` without its array.
    SuppGroups, 4, { nr_groups: u32 });
wire_struct!(/// `fuse_setupmapping_in` (DAX).
    SetupmappingIn, 40, { fh: u64, foffset: u64, len: u64, flags: u64, moffset: u64 });
wire_struct!(/// `fuse_removemapping_in`: 4 bytes, so the array that follows is unaligned.
    RemovemappingIn, 4, { count: u32 });
wire_struct!(/// `fuse_removemapping_one`.
    RemovemappingOne, 16, { moffset: u64, len: u64 });

/// FUSE opcodes (`enum fuse_opcode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum Opcode {
    Lookup = 1,
    Forget = 2,
    Getattr = 3,
    Setattr = 4,
    Readlink = 5,
    Symlink = 6,
    Mknod = 8,
    Mkdir = 9,
    Unlink = 10,
    Rmdir = 11,
    Rename = 12,
    Link = 13,
    Open = 14,
    Read = 15,
    Write = 16,
    Statfs = 17,
    Release = 18,
    Fsync = 20,
    Setxattr = 21,
    Getxattr = 22,
    Listxattr = 23,
    Removexattr = 24,
    Flush = 25,
    Init = 26,
    Opendir = 27,
    Readdir = 28,
    Releasedir = 29,
    Fsyncdir = 30,
    Getlk = 31,
    Setlk = 32,
    Setlkw = 33,
    Access = 34,
    Create = 35,
    Interrupt = 36,
    Bmap = 37,
    Destroy = 38,
    Ioctl = 39,
    Poll = 40,
    NotifyReply = 41,
    BatchForget = 42,
    Fallocate = 43,
    Readdirplus = 44,
    Rename2 = 45,
    Lseek = 46,
    CopyFileRange = 47,
    Setupmapping = 48,
    Removemapping = 49,
    Syncfs = 50,
    Tmpfile = 51,
    Statx = 52,
}

impl TryFrom<u32> for Opcode {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        use Opcode::*;
        const ALL: [Opcode; 50] = [
            Lookup,
            Forget,
            Getattr,
            Setattr,
            Readlink,
            Symlink,
            Mknod,
            Mkdir,
            Unlink,
            Rmdir,
            Rename,
            Link,
            Open,
            Read,
            Write,
            Statfs,
            Release,
            Fsync,
            Setxattr,
            Getxattr,
            Listxattr,
            Removexattr,
            Flush,
            Init,
            Opendir,
            Readdir,
            Releasedir,
            Fsyncdir,
            Getlk,
            Setlk,
            Setlkw,
            Access,
            Create,
            Interrupt,
            Bmap,
            Destroy,
            Ioctl,
            Poll,
            NotifyReply,
            BatchForget,
            Fallocate,
            Readdirplus,
            Rename2,
            Lseek,
            CopyFileRange,
            Setupmapping,
            Removemapping,
            Syncfs,
            Tmpfile,
            Statx,
        ];
        ALL.into_iter().find(|op| *op as u32 == v).ok_or(v)
    }
}

// INIT flags (`flags`, and `flags2` shifted up by 32).
pub const FUSE_ASYNC_READ: u64 = 1 << 0;
pub const FUSE_POSIX_LOCKS: u64 = 1 << 1;
pub const FUSE_ATOMIC_O_TRUNC: u64 = 1 << 3;
pub const FUSE_EXPORT_SUPPORT: u64 = 1 << 4;
pub const FUSE_BIG_WRITES: u64 = 1 << 5;
pub const FUSE_DONT_MASK: u64 = 1 << 6;
pub const FUSE_FLOCK_LOCKS: u64 = 1 << 10;
pub const FUSE_HAS_IOCTL_DIR: u64 = 1 << 11;
pub const FUSE_AUTO_INVAL_DATA: u64 = 1 << 12;
pub const FUSE_DO_READDIRPLUS: u64 = 1 << 13;
pub const FUSE_READDIRPLUS_AUTO: u64 = 1 << 14;
pub const FUSE_ASYNC_DIO: u64 = 1 << 15;
pub const FUSE_WRITEBACK_CACHE: u64 = 1 << 16;
pub const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
pub const FUSE_POSIX_ACL: u64 = 1 << 20;
pub const FUSE_MAX_PAGES: u64 = 1 << 22;
pub const FUSE_MAP_ALIGNMENT: u64 = 1 << 26;
pub const FUSE_SUBMOUNTS: u64 = 1 << 27;
pub const FUSE_HANDLE_KILLPRIV_V2: u64 = 1 << 28;
pub const FUSE_SETXATTR_EXT: u64 = 1 << 29;
pub const FUSE_INIT_EXT: u64 = 1 << 30;
pub const FUSE_HAS_INODE_DAX: u64 = 1 << 33;
pub const FUSE_CREATE_SUPP_GROUP: u64 = 1 << 34;
pub const FUSE_DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;

// fuse_attr.flags
pub const FUSE_ATTR_SUBMOUNT: u32 = 1 << 0;
pub const FUSE_ATTR_DAX: u32 = 1 << 1;

// fuse_open_out.open_flags
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;

// fuse_setattr_in.valid
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;
pub const FATTR_CTIME: u32 = 1 << 10;
pub const FATTR_KILL_SUIDGID: u32 = 1 << 11;

/// fuse_open_in.open_flags / fuse_create_in.open_flags: kill suid/sgid on open(O_TRUNC).
pub const FUSE_OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// fuse_getattr_in.getattr_flags: `fh` is valid.
pub const FUSE_GETATTR_FH: u32 = 1 << 0;
/// fuse_release_in.release_flags.
pub const FUSE_RELEASE_FLUSH: u32 = 1 << 0;
/// fuse_release_in.release_flags: drop flock locks held through this handle.
pub const FUSE_RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;
/// fuse_write_in.write_flags: a writeback-cache write (the fh is a guess).
pub const FUSE_WRITE_CACHE: u32 = 1 << 0;
/// fuse_write_in.write_flags: clear suid/sgid.
pub const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// fuse_fsync_in.fsync_flags.
pub const FUSE_FSYNC_FDATASYNC: u32 = 1 << 0;
/// fuse_lk_in.lk_flags: this is a flock(2) request.
pub const FUSE_LK_FLOCK: u32 = 1 << 0;
/// fuse_setxattr_in.setxattr_flags: clear sgid when setting an access ACL.
pub const FUSE_SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;
/// Request extension type carrying supplementary groups.
pub const FUSE_EXT_GROUPS: u32 = 32;
/// SETUPMAPPING flags.
pub const FUSE_SETUPMAPPING_FLAG_WRITE: u64 = 1 << 0;
/// SETUPMAPPING flags.
pub const FUSE_SETUPMAPPING_FLAG_READ: u64 = 1 << 1;

/// `FUSE_DIRENT_ALIGN`: entries are padded to 8 bytes.
pub const fn dirent_align(x: usize) -> usize {
    (x + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_decodes_every_known_value_and_rejects_gaps() {
        assert_eq!(Opcode::try_from(1), Ok(Opcode::Lookup));
        assert_eq!(Opcode::try_from(52), Ok(Opcode::Statx));
        for v in [0, 7, 19, 53, 4096, u32::MAX] {
            assert_eq!(Opcode::try_from(v), Err(v));
        }
        for v in 1..=52u32 {
            if let Ok(op) = Opcode::try_from(v) {
                assert_eq!(op as u32, v);
            }
        }
    }

    #[test]
    fn dirent_align_pads_to_eight() {
        assert_eq!(dirent_align(24 + 1), 32);
        assert_eq!(dirent_align(32), 32);
        assert_eq!(dirent_align(0), 0);
    }
}
