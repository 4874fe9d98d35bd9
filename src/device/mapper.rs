//! The DAX `Mapper` over the vhost-user backend channel: SHMEM_MAP/SHMEM_UNMAP on shm region 0,
//! each waiting for the frontend's REPLY_ACK before returning (I1).

use std::os::fd::BorrowedFd;

use log::trace;
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

use crate::dax::{DaxError, FileOffset, Mapper, WinRange};

/// virtio_fs.h VIRTIO_FS_SHMCAP_ID_CACHE: the DAX window is shared memory region 0.
const SHMID_CACHE: u8 = 0;

/// Maps through the frontend (QEMU's vhost-user-test-device).
pub struct VhostMapper {
    backend: Backend,
}

impl VhostMapper {
    /// A mapper over the channel the frontend gave with SET_BACKEND_REQ_FD.
    pub fn new(backend: Backend) -> VhostMapper {
        VhostMapper { backend }
    }
}

impl Mapper for VhostMapper {
    fn map(&self, range: WinRange, fd: BorrowedFd<'_>, foffset: FileOffset, writable: bool) -> Result<(), DaxError> {
        let flags = if writable { VhostUserMMapFlags::WRITABLE.bits() } else { 0 };
        let req = VhostUserMMap {
            shmid: SHMID_CACHE,
            fd_offset: foffset.0,
            shm_offset: range.start.0,
            len: range.len,
            flags,
            ..Default::default()
        };
        trace!("SHMEM_MAP {:#x}+{:#x} <- file {:#x} w={writable}", range.start.0, range.len, foffset.0);
        self.backend.shmem_map(&req, &fd).map(drop).map_err(DaxError::Frontend)
    }

    fn unmap(&self, range: WinRange) -> Result<(), DaxError> {
        let req = VhostUserMMap { shmid: SHMID_CACHE, shm_offset: range.start.0, len: range.len, ..Default::default() };
        trace!("SHMEM_UNMAP {:#x}+{:#x}", range.start.0, range.len);
        self.backend.shmem_unmap(&req).map(drop).map_err(DaxError::Frontend)
    }
}
