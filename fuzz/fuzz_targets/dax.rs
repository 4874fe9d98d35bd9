//! `dax`: sequences of SETUPMAPPING, REMOVEMAPPING, shrinks, grows, resets and reconnects
//! against the DAX window, through a recording mapper that enforces QEMU 11.1's rules (no map
//! over any part of a piece, unmaps match one piece exactly). After every step the frontend's
//! pieces must be exactly the table's, inside the window, aligned, and never wholly past EOF;
//! and no map may take the frontend past its memory slots (the first input byte says how many
//! regions of its own it announced).
#![no_main]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use daxfsd::dax::{Dax, DaxError, FileOffset, InodeId, LeasePolicy, Mapper, WinRange};
use libfuzzer_sys::fuzz_target;

const PAGE: u64 = 4096;
const WINDOW: u64 = 16 << 20;
/// Initial sizes: EOF mid-page, exactly 2 MiB, empty, and a read-only file.
const SIZES: [u64; 4] = [3 * PAGE + 100, 2 << 20, 0, 5000];
/// The daemon's GET_MAX_MEM_SLOTS answer, and the slots it is told to keep free: 24 remain for
/// the frontend's own regions and the pieces, so inputs reach the limit.
const MAX_SLOTS: usize = 509;
const RESERVED: usize = 485;

/// The frontend: installed pieces by window start.
#[derive(Default)]
struct RecordingMapper {
    pieces: Mutex<BTreeMap<u64, u64>>,
    /// Calls left before one fails (0: none fails).
    fail_in: AtomicUsize,
    /// Memory regions of the frontend's own.
    regions: AtomicUsize,
}

impl RecordingMapper {
    fn fail_now(&self) -> bool {
        let n = self.fail_in.load(Ordering::Relaxed);
        if n == 0 {
            return false;
        }
        self.fail_in.store(n - 1, Ordering::Relaxed);
        n == 1
    }

    fn installed(&self) -> Vec<(u64, u64)> {
        self.pieces.lock().unwrap().iter().map(|(s, l)| (*s, *l)).collect()
    }
}

fn refused() -> DaxError {
    DaxError::Frontend(std::io::Error::from_raw_os_error(libc::EINVAL))
}

impl Mapper for RecordingMapper {
    fn map(&self, r: WinRange, _fd: BorrowedFd<'_>, _f: FileOffset, _w: bool) -> Result<(), DaxError> {
        if self.fail_now() {
            return Err(refused());
        }
        let (start, end) = (r.start.0, r.start.0.checked_add(r.len).expect("map range overflows"));
        assert!(r.len > 0 && end <= WINDOW, "map {start:#x}+{:#x} outside the window", r.len);
        assert!(start.is_multiple_of(PAGE) && r.len.is_multiple_of(PAGE), "misaligned map {start:#x}+{:#x}", r.len);
        let mut p = self.pieces.lock().unwrap();
        let overlaps = p.iter().any(|(s, l)| *s < end && start < s + l);
        assert!(!overlaps, "map {start:#x}+{:#x} over an installed piece: {p:x?}", r.len);
        let regions = self.regions.load(Ordering::Relaxed);
        assert!(
            p.len() + 1 + regions <= MAX_SLOTS - RESERVED,
            "map past the memory slots: {} pieces + {regions}",
            p.len()
        );
        p.insert(start, r.len);
        Ok(())
    }

    fn unmap(&self, r: WinRange) -> Result<(), DaxError> {
        if self.fail_now() {
            return Err(refused());
        }
        let mut p = self.pieces.lock().unwrap();
        if p.get(&r.start.0) == Some(&r.len) {
            p.remove(&r.start.0);
            return Ok(());
        }
        // The daemon's REPLY_ACK check unmaps the last page of an empty window and wants a refusal.
        let ack_probe = p.is_empty() && r.start.0 == WINDOW - PAGE && r.len == PAGE;
        assert!(ack_probe, "inexact unmap {:#x}+{:#x}: {p:x?}", r.start.0, r.len);
        Err(refused())
    }
}

struct State {
    dax: Dax,
    mapper: Mutex<Arc<RecordingMapper>>,
    files: Vec<Arc<OwnedFd>>,
    _dir: tempfile::TempDir,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = Vec::new();
        for (i, size) in SIZES.into_iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            File::create(&path).and_then(|f| f.set_len(size)).expect("create file");
            let f = if i == 3 { File::open(&path) } else { File::options().read(true).write(true).open(&path) };
            files.push(Arc::new(OwnedFd::from(f.expect("open file"))));
        }
        let dax = Dax::new(WINDOW, PAGE, LeasePolicy::Unprotected, RESERVED).expect("dax");
        let mapper = Arc::new(RecordingMapper::default());
        dax.attach(mapper.clone());
        State { dax, mapper: Mutex::new(mapper), files, _dir: dir }
    })
}

/// A cursor over the input.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }
}

fn size_of_file(f: &OwnedFd) -> u64 {
    File::from(f.try_clone().expect("dup")).metadata().expect("fstat").len()
}

fn truncate(f: BorrowedFd<'_>, size: u64) -> std::io::Result<()> {
    let size = libc::off_t::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `f` is a valid descriptor for the whole call.
    if unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&f), size) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The frontend's pieces are the table's and the copy slots'; each file piece lies below the
/// page holding its file's EOF.
fn check(st: &State, mapper: &RecordingMapper) {
    let mut table = Vec::new();
    for (i, f) in st.files.iter().enumerate() {
        let eof_page = size_of_file(f).next_multiple_of(PAGE);
        for (w, foff, len) in st.dax.pieces(InodeId(i as u64)) {
            assert!(
                foff + len <= eof_page,
                "inode {i}: piece {w:#x}+{len:#x} at file {foff:#x} past EOF page {eof_page:#x}"
            );
            table.push((w, len));
        }
    }
    // Slots backed for copies are pieces too (of the daemon's memory file, never past its end).
    table.extend(st.dax.backed_slots());
    table.sort();
    // Also after injected failures: a refused map or unmap leaves both sides as they were.
    assert_eq!(table, mapper.installed(), "table and frontend disagree");
}

fn step(st: &State, ops: &mut Ops<'_>) {
    let tag = ops.u8();
    // Low nibble: the step (10-15 are setups too); bits 4-5: the file; bit 6: writable.
    let inode = usize::from(tag >> 4) % SIZES.len();
    let (id, file, writable) = (InodeId(inode as u64), &st.files[inode], tag & 0x40 != 0);
    match tag & 0x0f {
        0 | 10.. => {
            let (m, n, f) =
                (u64::from(ops.u16()) % (WINDOW / PAGE), u64::from(ops.u8()) + 1, u64::from(ops.u16() % 1024));
            if let Ok(s) = st.dax.check(m * PAGE, n * PAGE, f * PAGE, writable) {
                let _ = st.dax.setup(id, file, s);
            }
        }
        1 => {
            let (m, l, f) = (ops.u64(), ops.u64(), ops.u64());
            if let Ok(s) = st.dax.check(m, l, f, writable) {
                let _ = st.dax.setup(id, file, s);
            }
        }
        2 => {
            let (m, n) = (u64::from(ops.u16()) % (WINDOW / PAGE), u64::from(ops.u8()));
            let _ = st.dax.remove(m * PAGE, n * PAGE);
        }
        3 => {
            let _ = st.dax.remove(ops.u64(), ops.u64());
        }
        4 => {
            let size = u64::from(ops.u16()) * 64;
            let _ = st.dax.shrink(id, file.as_fd(), size, || truncate(file.as_fd(), size));
        }
        5 => {
            let size = size_of_file(file) + u64::from(ops.u16()) * 64;
            if truncate(file.as_fd(), size).is_ok() {
                let _ = st.dax.grow(id, file.as_fd());
            }
        }
        6 => st.dax.unmap_all(),
        7 => {
            // A device reset: the frontend dropped everything.
            st.dax.forget_all();
            st.mapper.lock().unwrap().pieces.lock().unwrap().clear();
        }
        8 => {
            // A reconnect: a new frontend with an empty window.
            st.dax.detach();
            let regions = st.mapper.lock().unwrap().regions.load(Ordering::Relaxed);
            let m = Arc::new(RecordingMapper { regions: AtomicUsize::new(regions), ..RecordingMapper::default() });
            st.dax.attach(m.clone());
            st.dax.frontend_regions(&vec![None; regions], std::time::Instant::now());
            *st.mapper.lock().unwrap() = m;
        }
        9 => {
            st.mapper.lock().unwrap().fail_in.store(usize::from(ops.u8() % 8) + 1, Ordering::Relaxed);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let st = state();
    // A fresh connection and the initial file sizes, so each input replays the same way.
    st.dax.detach();
    for (f, size) in st.files.iter().zip(SIZES).take(3) {
        truncate(f.as_fd(), size).expect("reset size");
    }
    let mut ops = Ops(data);
    let regions = usize::from(ops.u8() % 20);
    let mapper = Arc::new(RecordingMapper { regions: AtomicUsize::new(regions), ..RecordingMapper::default() });
    st.dax.attach(mapper.clone());
    st.dax.frontend_regions(&vec![None; regions], std::time::Instant::now());
    *st.mapper.lock().unwrap() = mapper;
    for _ in 0..64 {
        if ops.0.is_empty() {
            break;
        }
        step(st, &mut ops);
        let m = st.mapper.lock().unwrap().clone();
        check(st, &m);
    }
});
