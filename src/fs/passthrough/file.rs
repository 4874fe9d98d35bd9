//! Data transfer between a host file and guest buffers, looping over short transfers.

use std::io;
use std::os::fd::BorrowedFd;

use crate::fs::{ZeroCopyReader, ZeroCopyWriter};

/// Reads up to `size` bytes at `offset` into the guest buffers; stops at EOF.
pub fn read_into(fd: BorrowedFd<'_>, w: &mut dyn ZeroCopyWriter, size: usize, offset: u64) -> io::Result<usize> {
    let mut done = 0usize;
    while done < size {
        let off = offset.checked_add(done as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        match w.read_from(fd, size - done, off) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if done > 0 => {
                log::debug!("short read after {done} bytes: {e}");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes `size` bytes from the guest buffers at `offset`, with the per-write flags `rwf`
/// (with RWF_APPEND, at the file's EOF whatever `offset` says).
pub fn write_from(
    fd: BorrowedFd<'_>,
    r: &mut dyn ZeroCopyReader,
    size: usize,
    offset: u64,
    rwf: libc::c_int,
) -> io::Result<usize> {
    let mut done = 0usize;
    while done < size {
        let off = offset.checked_add(done as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        match r.write_to(fd, size - done, off, rwf) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if done > 0 => {
                log::debug!("short write after {done} bytes: {e}");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
