//! Reader and Writer over a virtio descriptor chain in guest memory.
//! Lengths are validated once, up front; file I/O goes straight between guest memory and the
//! host file with preadv/pwritev (no bounce copy). Never forms a Rust slice into guest memory.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, BorrowedFd};

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::fs::{ZeroCopyReader, ZeroCopyWriter};

/// Guest memory as the daemon maps it (no dirty-page bitmap).
pub type GuestMem = GuestMemoryMmap<()>;

/// At most this many iovecs go into one preadv/pwritev (IOV_MAX on Linux).
const MAX_IOVECS: usize = 1024;

/// A descriptor chain the guest handed us that we cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The guest gave a descriptor outside its memory.
    #[error("descriptor at {addr:#x}+{len} is outside guest memory")]
    OutOfMemory {
        /// Guest physical address of the descriptor.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The guest gave a chain whose lengths overflow.
    #[error("descriptor chain length overflows")]
    LengthOverflow,
    /// The request needs more bytes than the guest's buffers hold.
    #[error("needed {needed} bytes, only {available} left in the chain")]
    Short {
        /// Bytes requested.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
}

impl From<ChainError> for io::Error {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Short { .. } => io::Error::from_raw_os_error(libc::ERANGE),
            ChainError::OutOfMemory { .. } | ChainError::LengthOverflow => io::Error::from_raw_os_error(libc::EFAULT),
        }
    }
}

/// A list of guest-memory buffers consumed from the front.
struct Buffers<'a> {
    bufs: VecDeque<VolatileSlice<'a, ()>>,
    available: usize,
    consumed: usize,
}

impl<'a> Buffers<'a> {
    fn collect<M>(mem: &'a GuestMem, chain: DescriptorChain<M>, writable: bool) -> Result<Self, ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut bufs = VecDeque::new();
        let mut available = 0usize;
        for desc in chain.filter(|d| d.is_write_only() == writable) {
            let len = usize::try_from(desc.len()).map_err(|_| ChainError::LengthOverflow)?;
            available = available.checked_add(len).ok_or(ChainError::LengthOverflow)?;
            let bad = || ChainError::OutOfMemory { addr: desc.addr().0, len: desc.len() };
            for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), len) {
                bufs.push_back(slice.map_err(|_| bad())?);
            }
        }
        Ok(Buffers { bufs, available, consumed: 0 })
    }

    /// Removes `n` bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.available = self.available.saturating_sub(n);
        self.consumed = self.consumed.saturating_add(n);
        while n > 0 {
            let Some(front) = self.bufs.pop_front() else { return };
            if n < front.len() {
                // `n < len`, so `offset(n)` is in bounds and cannot fail.
                if let Ok(rest) = front.offset(n) {
                    self.bufs.push_front(rest);
                }
                return;
            }
            n -= front.len();
        }
    }

    /// Splits off everything past the first `n` bytes into a new list.
    fn split_off(&mut self, n: usize) -> Result<Buffers<'a>, ChainError> {
        if n > self.available {
            return Err(ChainError::Short { needed: n, available: self.available });
        }
        let mut tail = Buffers { bufs: VecDeque::new(), available: self.available - n, consumed: 0 };
        let mut kept = 0usize;
        let mut head = VecDeque::new();
        while let Some(buf) = self.bufs.pop_front() {
            if kept >= n {
                tail.bufs.push_back(buf);
            } else if kept + buf.len() <= n {
                kept += buf.len();
                head.push_back(buf);
            } else {
                let (a, b) = buf.split_at(n - kept).map_err(|_| ChainError::LengthOverflow)?;
                kept = n;
                head.push_back(a);
                tail.bufs.push_back(b);
            }
        }
        self.bufs = head;
        self.available = n;
        Ok(tail)
    }

    /// iovecs covering at most `count` bytes from the front.
    fn iovecs(&self, count: usize) -> Vec<libc::iovec> {
        let mut left = count;
        let mut iovs = Vec::new();
        for buf in self.bufs.iter().take(MAX_IOVECS) {
            if left == 0 {
                break;
            }
            let len = buf.len().min(left);
            let guard = buf.ptr_guard_mut();
            iovs.push(libc::iovec { iov_base: guard.as_ptr().cast(), iov_len: len });
            left -= len;
        }
        iovs
    }
}

/// The device-readable part of a chain: the request.
pub struct Reader<'a>(Buffers<'a>);

impl<'a> Reader<'a> {
    /// Collects the readable descriptors of `chain`.
    pub fn new<M>(mem: &'a GuestMem, chain: DescriptorChain<M>) -> Result<Self, ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        Buffers::collect(mem, chain, false).map(Reader)
    }

    /// Bytes not yet read.
    pub fn available(&self) -> usize {
        self.0.available
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> usize {
        self.0.consumed
    }

    /// Fills `out` entirely, or fails without consuming anything.
    pub fn read_exact(&mut self, out: &mut [u8]) -> Result<(), ChainError> {
        if out.len() > self.0.available {
            return Err(ChainError::Short { needed: out.len(), available: self.0.available });
        }
        let mut done = 0;
        for buf in &self.0.bufs {
            let Some(dst) = out.get_mut(done..) else { break };
            if dst.is_empty() {
                break;
            }
            done += buf.copy_to(dst);
        }
        self.0.advance(out.len());
        Ok(())
    }

    /// Reads one wire struct.
    pub fn read_obj<T: FromBytes + IntoBytes>(&mut self) -> Result<T, ChainError> {
        let mut v = T::new_zeroed();
        self.read_exact(v.as_mut_bytes())?;
        Ok(v)
    }

    /// Reads `n` bytes into a new buffer (n was already checked against the chain).
    pub fn read_vec(&mut self, n: usize) -> Result<Vec<u8>, ChainError> {
        if n > self.0.available {
            return Err(ChainError::Short { needed: n, available: self.0.available });
        }
        let mut v = vec![0u8; n];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    /// Drops up to `n` bytes.
    pub fn skip(&mut self, n: usize) {
        self.0.advance(n.min(self.0.available));
    }
}

impl ZeroCopyReader for Reader<'_> {
    fn write_to(&mut self, fd: BorrowedFd<'_>, count: usize, off: u64, rwf: libc::c_int) -> io::Result<usize> {
        let iovs = self.0.iovecs(count.min(self.0.available));
        if iovs.is_empty() {
            return Ok(0);
        }
        let off = libc::off_t::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let n_iov = libc::c_int::try_from(iovs.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: every iovec points into guest memory kept mapped by the `GuestMem` borrowed for
        // 'a, with a length inside its VolatileSlice; pwritev2 only reads from them, and a
        // concurrent guest write to that memory can only change the bytes written.
        let n = unsafe { libc::pwritev2(fd.as_raw_fd(), iovs.as_ptr(), n_iov, off, rwf) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        self.0.advance(n);
        Ok(n)
    }
}

/// The device-writable part of a chain: the reply.
pub struct Writer<'a>(Buffers<'a>);

impl<'a> Writer<'a> {
    /// Collects the writable descriptors of `chain`.
    pub fn new<M>(mem: &'a GuestMem, chain: DescriptorChain<M>) -> Result<Self, ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        Buffers::collect(mem, chain, true).map(Writer)
    }

    /// Room left.
    pub fn available(&self) -> usize {
        self.0.available
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.0.consumed
    }

    /// Keeps the first `n` bytes; returns a writer for the rest.
    pub fn split_off(&mut self, n: usize) -> Result<Writer<'a>, ChainError> {
        self.0.split_off(n).map(Writer)
    }

    /// Writes all of `data`, or nothing if it does not fit.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), ChainError> {
        if data.len() > self.0.available {
            return Err(ChainError::Short { needed: data.len(), available: self.0.available });
        }
        let mut done = 0;
        for buf in &self.0.bufs {
            let Some(src) = data.get(done..) else { break };
            if src.is_empty() {
                break;
            }
            let n = src.len().min(buf.len());
            buf.copy_from(src.get(..n).unwrap_or_default());
            done += n;
        }
        self.0.advance(data.len());
        Ok(())
    }

    /// Writes one wire struct.
    pub fn write_obj<T: IntoBytes + Immutable>(&mut self, v: &T) -> Result<(), ChainError> {
        self.write_all(v.as_bytes())
    }
}

impl ZeroCopyWriter for Writer<'_> {
    fn read_from(&mut self, fd: BorrowedFd<'_>, count: usize, off: u64) -> io::Result<usize> {
        let iovs = self.0.iovecs(count.min(self.0.available));
        if iovs.is_empty() {
            return Ok(0);
        }
        let off = libc::off_t::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let n_iov = libc::c_int::try_from(iovs.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: every iovec points into writable guest memory kept mapped by the `GuestMem`
        // borrowed for 'a, with a length inside its VolatileSlice; the guest does not read a
        // buffer it gave us until we return it in the used ring.
        let n = unsafe { libc::preadv(fd.as_raw_fd(), iovs.as_ptr(), n_iov, off) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        self.0.advance(n);
        Ok(n)
    }

    fn available(&self) -> usize {
        self.0.available
    }
}
