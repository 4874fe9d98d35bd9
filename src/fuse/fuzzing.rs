//! Fuzzing support for the cargo-fuzz targets in `fuzz/` (crosvm `fuse/src/fuzzing.rs`): puts
//! raw request bytes into a one-chain split queue over a small guest memory and serves them
//! with `Server::handle`. Not used by the daemon; it must stay free of policy.

use std::io;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::FromBytes;

use super::abi::OutHeader;
use super::chain::{GuestMem, Reader, Writer};
use super::server::Server;
use crate::fs::Filesystem;

/// Most descriptors on either side of a chain.
pub const MAX_DESCRIPTORS: usize = 4;
/// Largest request put in a chain: a whole WRITE of `MAX_WRITE` plus its headers and slack.
pub const MAX_REQUEST: usize = (1 << 20) + (64 << 10);
/// Largest reply buffer a chain offers.
pub const MAX_REPLY: usize = (1 << 20) + (64 << 10);

const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u32 = 0;
const AVAIL_RING: u32 = 0x1000;
const USED_RING: u32 = 0x2000;
const IN_BASE: u64 = 0x1_0000;
const OUT_BASE: u64 = IN_BASE + MAX_REQUEST as u64;
const MEM_SIZE: usize = 0x1_0000 + MAX_REQUEST + MAX_REPLY;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// How one request is laid out in its chain.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Device-readable descriptors holding the request (1 to `MAX_DESCRIPTORS`).
    pub readable: usize,
    /// Device-writable descriptors for the reply (1 to `MAX_DESCRIPTORS`).
    pub writable: usize,
    /// Total bytes of the reply buffers (at most `MAX_REPLY`).
    pub reply_len: usize,
}

/// What the server did with one chain.
#[derive(Debug)]
pub struct Served {
    /// The used length `Server::handle` returned.
    pub used: usize,
    /// The first `used` bytes of the reply buffers (empty when the chain was unusable).
    pub reply: Vec<u8>,
}

/// A guest memory with room for one chain, reused for every request.
pub struct Harness {
    mem: GuestMem,
}

/// `n` bytes cut into `parts` nearly equal lengths (the last takes the remainder).
fn split_len(n: usize, parts: usize) -> Vec<usize> {
    let parts = parts.clamp(1, MAX_DESCRIPTORS);
    let each = n / parts;
    let mut v = vec![each; parts - 1];
    v.push(n - each * (parts - 1));
    v
}

fn fault(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Harness {
    /// Allocates the guest memory.
    pub fn new() -> io::Result<Harness> {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).map_err(fault)?;
        Ok(Harness { mem })
    }

    /// Writes the descriptor table and the avail ring for one chain at head 0.
    fn write_chain(&self, request_len: usize, shape: Shape) -> io::Result<()> {
        let mut descs = Vec::new();
        let mut addr = IN_BASE;
        for len in split_len(request_len, shape.readable) {
            descs.push((addr, len, 0));
            addr += len as u64;
        }
        let mut addr = OUT_BASE;
        for len in split_len(shape.reply_len.min(MAX_REPLY), shape.writable) {
            descs.push((addr, len, VRING_DESC_F_WRITE));
            addr += len as u64;
        }
        let count = descs.len();
        for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
            let last = i + 1 == count;
            let next = if last { 0 } else { u16::try_from(i + 1).map_err(fault)? };
            let flags = if last { flags } else { flags | VRING_DESC_F_NEXT };
            let len = u32::try_from(len).map_err(fault)?;
            let d = Descriptor::new(addr, len, flags, next);
            let at = u64::from(DESC_TABLE) + u64::try_from(i * 16).map_err(fault)?;
            self.mem.write_obj(d, GuestAddress(at)).map_err(fault)?;
        }
        // avail ring: flags 0, idx 1, ring[0] = head 0.
        self.mem.write_obj([0u16, 1, 0], GuestAddress(u64::from(AVAIL_RING))).map_err(fault)?;
        self.mem.write_obj([0u16, 0], GuestAddress(u64::from(USED_RING))).map_err(fault)
    }

    fn queue() -> io::Result<Queue> {
        let mut q = Queue::new(QUEUE_SIZE).map_err(fault)?;
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(DESC_TABLE), Some(0));
        q.set_avail_ring_address(Some(AVAIL_RING), Some(0));
        q.set_used_ring_address(Some(USED_RING), Some(0));
        q.set_ready(true);
        Ok(q)
    }

    /// Serves `request` (cut to `MAX_REQUEST`) through `server` in a chain shaped by `shape`.
    pub fn serve<F: Filesystem>(&self, server: &Server<F>, request: &[u8], shape: Shape) -> io::Result<Served> {
        let request = request.get(..request.len().min(MAX_REQUEST)).unwrap_or_default();
        let reply_len = shape.reply_len.min(MAX_REPLY);
        self.mem.write_slice(request, GuestAddress(IN_BASE)).map_err(fault)?;
        self.mem.write_slice(&vec![0u8; reply_len], GuestAddress(OUT_BASE)).map_err(fault)?;
        self.write_chain(request.len(), shape)?;
        let mut q = Self::queue()?;
        let chain = q.pop_descriptor_chain(&self.mem).ok_or_else(|| fault("no chain"))?;
        let mut r = Reader::new(&self.mem, chain.clone()).map_err(fault)?;
        let mut w = Writer::new(&self.mem, chain).map_err(fault)?;
        let used = server.handle(&mut r, &mut w, false);
        let mut reply = vec![0u8; used.min(reply_len)];
        self.mem.read_slice(&mut reply, GuestAddress(OUT_BASE)).map_err(fault)?;
        Ok(Served { used, reply })
    }
}

impl Served {
    /// The reply's out-header, when the server wrote one.
    pub fn header(&self) -> Option<OutHeader> {
        OutHeader::read_from_prefix(&self.reply).ok().map(|(h, _)| h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FsCapabilities, Negotiated};
    use crate::fuse::abi::{FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, InHeader, InitInCompat};
    use zerocopy::IntoBytes;

    struct NullFs;
    impl Filesystem for NullFs {
        fn capabilities(&self) -> FsCapabilities {
            FsCapabilities::default()
        }
        fn init(&self, _: Negotiated) -> io::Result<()> {
            Ok(())
        }
        fn destroy(&self) {}
    }

    fn request(opcode: u32, unique: u64, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(size_of::<InHeader>() + body.len()).unwrap();
        let hdr = InHeader { len, opcode, unique, nodeid: 1, ..InHeader::default() };
        [hdr.as_bytes(), body].concat()
    }

    #[test]
    fn serve_init_then_unknown_opcode_is_enosys() {
        let h = Harness::new().unwrap();
        let server = Server::new(NullFs);
        let init = InitInCompat { major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, ..Default::default() };
        let shape = Shape { readable: 3, writable: 2, reply_len: 4096 };
        let s = h.serve(&server, &request(26, 1, init.as_bytes()), shape).unwrap();
        assert_eq!(s.header().map(|o| (o.len as usize, o.error, o.unique)), Some((s.used, 0, 1)));
        let s = h.serve(&server, &request(9999, 2, &[]), shape).unwrap();
        assert_eq!(s.header().map(|o| (o.len, o.error, o.unique)), Some((16, -libc::ENOSYS, 2)));
    }

    #[test]
    fn serve_splits_lengths_into_descriptors() {
        assert_eq!(split_len(10, 3), vec![3, 3, 4]);
        assert_eq!(split_len(1, 4), vec![0, 0, 0, 1]);
        assert_eq!(split_len(5, 0), vec![5]);
    }
}
