//! A conformance probe of the frontend's SHMEM_MAP/UNMAP rules that the window logic relies on
//! (DESIGN.md §3, measured on QEMU 11.1): overlapping maps refused, unmaps only of one exact
//! earlier map, no map past the file's size, adjacent pieces fine. Runs once, on the last pages
//! of the window, in answer to the guest's first SETUPMAPPING (never before the device runs).

use std::os::fd::AsFd;

use log::{error, info};

use super::{FileOffset, Mapper, WinOffset, WinRange, sys};

const PAGE: u64 = 4096;

/// One check: its name, whether the frontend should accept it, and the request.
type Check<'a> = (&'static str, bool, Box<dyn Fn() -> bool + 'a>);

/// Runs the probe; returns (checks as expected, checks run). Logs one line per check.
pub fn run(mapper: &dyn Mapper, window_len: u64) -> (usize, usize) {
    let fd = match sys::memfd(c"daxfsd-probe", 8 * PAGE) {
        Ok(fd) => fd,
        Err(e) => {
            error!("frontend conformance: cannot create a memfd: {e}");
            return (0, 1);
        }
    };
    let base = window_len - 4 * PAGE;
    let r = |off: u64, pages: u64| WinRange { start: WinOffset(base + off * PAGE), len: pages * PAGE };
    let map = |range, foff: u64| mapper.map(range, fd.as_fd(), FileOffset(foff * PAGE), false).is_ok();
    let checks: [Check<'_>; 9] = [
        ("map two pages", true, Box::new(|| map(r(0, 2), 0))),
        ("map over part of a piece", false, Box::new(|| map(r(1, 2), 0))),
        ("map an adjacent page", true, Box::new(|| map(r(2, 1), 2))),
        ("map past the file's size", false, Box::new(|| map(r(3, 1), 8))),
        ("unmap part of a piece", false, Box::new(|| mapper.unmap(r(0, 1)).is_ok())),
        ("unmap across two pieces", false, Box::new(|| mapper.unmap(r(0, 3)).is_ok())),
        ("unmap an exact piece", true, Box::new(|| mapper.unmap(r(0, 2)).is_ok())),
        ("unmap the adjacent piece", true, Box::new(|| mapper.unmap(r(2, 1)).is_ok())),
        ("unmap twice", false, Box::new(|| mapper.unmap(r(2, 1)).is_ok())),
    ];
    let mut good = 0;
    for (name, want, check) in &checks {
        let got = check();
        if got == *want {
            good += 1;
            info!("frontend conformance: {name}: {} as expected", if got { "accepted" } else { "refused" });
        } else {
            error!("frontend conformance: {name}: {} UNEXPECTEDLY", if got { "accepted" } else { "refused" });
        }
    }
    info!("frontend conformance: {good}/{} checks as expected", checks.len());
    (good, checks.len())
}
