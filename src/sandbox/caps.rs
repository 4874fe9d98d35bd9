//! Capabilities: the set the daemon keeps, `--modcaps` edits to it, and dropping the rest from
//! the effective, permitted, inheritable, ambient and bounding sets.

use super::{SandboxError, sys};

/// Capability names (capability.h order: the index is the number).
const NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// capability.h numbers the daemon refers to by name.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
const CAP_LEASE: u32 = 28;

/// A set of capabilities as a bit mask (bit N = capability N).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// What passthrough needs as root, as virtiofsd keeps it: CHOWN (SETATTR uid/gid),
    /// DAC_OVERRIDE and FOWNER (root's file access for the guest's root), FSETID (keep setgid
    /// bits on chown/write as root does), SETGID and SETUID (per-thread fsuid/fsgid and groups
    /// for the caller's credentials), MKNOD (MKNOD of devices), SETFCAP (security.capability
    /// xattrs). With a DAX window also LEASE: leases (I5) on files the daemon does not own.
    pub fn daemon_default(dax: bool) -> CapSet {
        let mut s = CapSet::default();
        for name in ["chown", "dac_override", "fowner", "fsetid", "setgid", "setuid", "mknod", "setfcap"] {
            s.insert(number(name).unwrap_or(0));
        }
        if dax {
            s.insert(CAP_LEASE);
        }
        s
    }

    /// Adds capability `n`.
    pub fn insert(&mut self, n: u32) {
        self.0 |= 1u64.checked_shl(n).unwrap_or(0);
    }

    /// Removes capability `n`.
    pub fn remove(&mut self, n: u32) {
        self.0 &= !1u64.checked_shl(n).unwrap_or(0);
    }

    /// Whether `n` is in the set.
    pub fn contains(self, n: u32) -> bool {
        self.0 & 1u64.checked_shl(n).unwrap_or(0) != 0
    }

    /// Applies `--modcaps`: `+name` adds, `-name` removes, items separated by ':' (or ',').
    /// Names are case-insensitive, with or without the `cap_` prefix.
    pub fn modify(mut self, spec: &str) -> Result<CapSet, SandboxError> {
        for item in spec.split([':', ',']).filter(|s| !s.is_empty()) {
            let bad = || SandboxError::Modcaps(item.to_string());
            let (add, name) = match item.split_at_checked(1) {
                Some(("+", n)) => (true, n),
                Some(("-", n)) => (false, n),
                _ => return Err(bad()),
            };
            let n = number(name).ok_or_else(bad)?;
            if add { self.insert(n) } else { self.remove(n) }
        }
        Ok(self)
    }

    /// The names in the set, for the startup log.
    pub fn names(self) -> Vec<&'static str> {
        NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| u32::try_from(*i).is_ok_and(|i| self.contains(i)))
            .map(|(_, n)| *n)
            .collect()
    }
}

/// The number of capability `name` (`sys_admin`, `CAP_SYS_ADMIN`, ...).
fn number(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    NAMES.iter().position(|n| *n == bare).and_then(|i| u32::try_from(i).ok())
}

/// Reduces the calling thread (and every thread it creates later) to `keep`: the bounding set
/// first (that needs CAP_SETPCAP, which goes last), then ambient, then effective, permitted and
/// inheritable. A daemon without root in its user namespace has nothing to drop.
pub fn restrict_to(keep: CapSet) -> Result<(), SandboxError> {
    if sys::geteuid() != 0 {
        return Ok(());
    }
    for n in 0..64u32 {
        if !keep.contains(n) && sys::in_bounding_set(n) {
            sys::drop_bounding_cap(n).map_err(SandboxError::Caps)?;
        }
    }
    sys::clear_ambient_caps().map_err(SandboxError::Caps)?;
    sys::capset(keep.0).map_err(SandboxError::Caps)?;
    let (eff, perm) = sys::capget().map_err(SandboxError::Caps)?;
    if eff & !keep.0 != 0 || perm & !keep.0 != 0 {
        return Err(SandboxError::Caps(std::io::Error::from_raw_os_error(libc::EPERM)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modcaps_adds_and_removes_by_any_spelling() {
        let s = CapSet::daemon_default(false).modify("+sys_admin:-CAP_MKNOD,-chown").unwrap();
        assert!(s.contains(21));
        assert!(!s.contains(27));
        assert!(!s.contains(0));
        assert!(s.contains(1));
    }

    #[test]
    fn modcaps_unknown_name_is_an_error() {
        assert!(matches!(CapSet::default().modify("+sys_everything"), Err(SandboxError::Modcaps(_))));
        assert!(matches!(CapSet::default().modify("sys_admin"), Err(SandboxError::Modcaps(_))));
    }

    #[test]
    fn daemon_default_has_lease_only_with_dax() {
        assert!(CapSet::daemon_default(true).contains(CAP_LEASE));
        assert!(!CapSet::daemon_default(false).contains(CAP_LEASE));
        assert!(!CapSet::daemon_default(true).contains(21));
        assert_eq!(CapSet::daemon_default(false).names().len(), 8);
    }
}
