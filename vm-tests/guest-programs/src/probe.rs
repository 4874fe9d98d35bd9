//! Copies to and from a shared file mapping that turn a SIGBUS into a
//! return value instead of killing the program.
//!
//! # How it works (x86_64 only)
//!
//! Every access to mapped file memory goes through one routine written in
//! assembly, `daxfsd_probe_copy(dst, src, len, &fault)`, whose whole copy is
//! one `rep movsb` instruction at a known address (`..._insn`). A string
//! instruction that faults stops with its registers describing the progress
//! so far (rcx = bytes left, rsi/rdi advanced), exactly as the kernel's own
//! `copy_from_user` relies on.
//!
//! The SIGBUS handler (installed by [`install`], SA_SIGINFO) looks at the
//! interrupted instruction pointer. If it is that `rep movsb`, the handler
//! puts the fault address (`si_addr`) into rdx and moves rip to the fixup
//! label right after the instruction; returning from the handler resumes
//! there, and the routine returns the bytes not copied and stores the fault
//! address. Nothing is unwound, no `setjmp`/`longjmp` is involved (Rust
//! cannot call `sigsetjmp` soundly), no global state is touched, so it works
//! in any number of threads at once: a SIGBUS from a memory access is
//! delivered to the thread that faulted.
//!
//! A SIGBUS anywhere else is a real crash: the handler writes a line to
//! stderr, restores the default action and returns, so the access faults
//! again and the process dies with SIGBUS (init then reports the exit).
//!
//! What a fault means is up to the caller: past the guest-visible EOF it is
//! expected (Linux raises SIGBUS for a mapped page wholly past i_size); below
//! it, it is a failure.

use std::sync::OnceLock;

use crate::sys::Mapping;
use crate::{Error, Result};

// daxfsd_probe_copy(rdi = dst, rsi = src, rdx = len, rcx = *mut usize fault)
//   -> rax = bytes not copied (0 on success); *fault = fault address or 0.
// The SysV ABI guarantees DF = 0 on entry, so rep movsb copies upwards.
std::arch::global_asm!(
    ".pushsection .text.daxfsd_probe,\"ax\",@progbits",
    ".globl daxfsd_probe_copy",
    ".type daxfsd_probe_copy,@function",
    "daxfsd_probe_copy:",
    "    mov r8, rcx",
    "    mov rcx, rdx",
    "    xor edx, edx",
    ".globl daxfsd_probe_copy_insn",
    "daxfsd_probe_copy_insn:",
    "    rep movsb",
    ".globl daxfsd_probe_copy_fixup",
    "daxfsd_probe_copy_fixup:",
    "    mov qword ptr [r8], rdx",
    "    mov rax, rcx",
    "    ret",
    ".size daxfsd_probe_copy, .-daxfsd_probe_copy",
    ".popsection",
);

unsafe extern "C" {
    fn daxfsd_probe_copy(dst: *mut u8, src: *const u8, len: usize, fault: *mut usize) -> usize;
    // Code labels: only their addresses are used, never their contents.
    safe static daxfsd_probe_copy_insn: u8;
    safe static daxfsd_probe_copy_fixup: u8;
}

fn insn_addr() -> usize {
    (&raw const daxfsd_probe_copy_insn) as usize
}

fn fixup_addr() -> usize {
    (&raw const daxfsd_probe_copy_fixup) as usize
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let rip_idx = libc::REG_RIP as usize;
    let rdx_idx = libc::REG_RDX as usize;
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext
    // of the interrupted thread; we are its only user while the handler runs.
    let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
    let rip = uc.uc_mcontext.gregs[rip_idx] as usize;
    if rip == insn_addr() {
        // SAFETY: info is the valid siginfo the kernel passed with the signal.
        let addr = unsafe { (*info).si_addr() } as usize;
        uc.uc_mcontext.gregs[rdx_idx] = addr as i64;
        uc.uc_mcontext.gregs[rip_idx] = fixup_addr() as i64;
        return;
    }
    const MSG: &[u8] = b"DAXFSD-INFO SIGBUS outside a probed copy: crashing\n";
    // SAFETY: write(2) and signal(2) are async-signal-safe; MSG is static.
    unsafe {
        libc::write(2, MSG.as_ptr().cast::<libc::c_void>(), MSG.len());
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

/// Install the SIGBUS handler (idempotent). Call before any mapped access.
pub fn install() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: sigaction is plain data; all-zero is a valid value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        // SAFETY: sa is valid; on_sigbus has the SA_SIGINFO signature and only
        // does async-signal-safe work.
        let r = unsafe { libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) };
        if r == 0 { Ok(()) } else { Err(format!("sigaction(SIGBUS): {}", std::io::Error::last_os_error())) }
    })
    .clone()
    .map_err(Error)
}

/// How a probed copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// Every byte was copied.
    All,
    /// SIGBUS: `done` bytes were copied, then the access at mapping offset
    /// `fault_off` faulted.
    Fault {
        /// Bytes copied before the fault.
        done: usize,
        /// Offset in the mapping of the faulting address.
        fault_off: usize,
    },
}

fn check_range(map: &Mapping, off: usize, len: usize) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= map.len() => Ok(()),
        _ => Err(Error(format!("probe: range {off}+{len} outside the {}-byte mapping", map.len()))),
    }
}

fn finish(map: &Mapping, len: usize, left: usize, fault: usize) -> Result<Copied> {
    if left == 0 && fault == 0 {
        return Ok(Copied::All);
    }
    let fault_off = fault.wrapping_sub(map.addr());
    if fault == 0 || fault_off >= map.len() || left > len {
        return Err(Error(format!(
            "probe: fault at {fault:#x} outside the mapping at {:#x}+{:#x} (left {left})",
            map.addr(),
            map.len()
        )));
    }
    Ok(Copied::Fault { done: len - left, fault_off })
}

/// Copy `dst.len()` bytes from mapping offset `off` into `dst`.
pub fn read(map: &Mapping, off: usize, dst: &mut [u8]) -> Result<Copied> {
    install()?;
    check_range(map, off, dst.len())?;
    let mut fault = 0usize;
    // SAFETY: the source range lies inside the live mapping (checked above);
    // dst is a valid writable buffer of that length; a SIGBUS on the source
    // is turned into a short copy by the installed handler.
    let left = unsafe { daxfsd_probe_copy(dst.as_mut_ptr(), map.ptr().add(off), dst.len(), &mut fault) };
    finish(map, dst.len(), left, fault)
}

/// Copy `src` into the mapping at offset `off` (the mapping must be
/// writable).
pub fn write(map: &Mapping, off: usize, src: &[u8]) -> Result<Copied> {
    install()?;
    check_range(map, off, src.len())?;
    let mut fault = 0usize;
    // SAFETY: the destination range lies inside the live mapping (checked
    // above); src is a valid buffer; a SIGBUS on the destination is turned
    // into a short copy by the installed handler.
    let left = unsafe { daxfsd_probe_copy(map.ptr().add(off), src.as_ptr(), src.len(), &mut fault) };
    finish(map, src.len(), left, fault)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sigbus_past_eof_is_a_short_copy() -> Result<()> {
        let path = std::env::temp_dir().join(format!("probe-test-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error(e.to_string()))?;
        f.write_all(&[7u8; 5000]).map_err(|e| Error(e.to_string()))?;
        let map = Mapping::new(&f, 0, 4 * 4096, true).map_err(|e| Error(e.to_string()))?;
        let _ = std::fs::remove_file(&path);
        let mut buf = vec![0u8; 3 * 4096];
        // Page 1 holds EOF: its tail reads as zeros; page 2 is past EOF.
        let r = read(&map, 100, &mut buf)?;
        assert_eq!(r, Copied::Fault { done: 2 * 4096 - 100, fault_off: 2 * 4096 });
        assert!(buf[..4900].iter().all(|&b| b == 7));
        assert!(buf[4900..8092].iter().all(|&b| b == 0));
        assert_eq!(read(&map, 0, &mut buf[..4096])?, Copied::All);
        let w = write(&map, 3 * 4096 - 10, &[1u8; 20])?;
        assert_eq!(w, Copied::Fault { done: 0, fault_off: 3 * 4096 - 10 });
        assert_eq!(write(&map, 4990, &[9u8; 20])?, Copied::All);
        assert!(read(&map, 4 * 4096 - 1, &mut buf[..2]).is_err());
        // Many threads faulting at once.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut b = vec![0u8; 4096];
                    for _ in 0..200 {
                        assert!(matches!(read(&map, 2 * 4096, &mut b), Ok(Copied::Fault { done: 0, .. })));
                    }
                });
            }
        });
        Ok(())
    }
}
