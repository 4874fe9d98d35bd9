//! User-namespace id maps for rootless mode: virtiofsd's `--uid-map/--gid-map` syntax
//! (`:namespace_id:host_id:count:`, any non-alphanumeric delimiter), and writing them for a
//! child, directly for a map of our own id or through newuidmap/newgidmap otherwise.

use std::process::Command;

use super::{SandboxError, sys};

/// One range: `count` ids from `host` on the host appear as `ns` and up in the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub ns: u32,
    pub host: u32,
    pub count: u32,
}

impl std::str::FromStr for IdMap {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<IdMap, SandboxError> {
        let bad = || SandboxError::IdMap(s.to_string());
        let delim = s.chars().next().filter(|c| !c.is_ascii_alphanumeric()).ok_or_else(bad)?;
        let inner = s.strip_prefix(delim).and_then(|r| r.strip_suffix(delim)).ok_or_else(bad)?;
        let f: Vec<u32> = inner.split(delim).map(str::parse).collect::<Result<_, _>>().map_err(|_| bad())?;
        match f.as_slice() {
            [ns, host, count] if *count > 0 => Ok(IdMap { ns: *ns, host: *host, count: *count }),
            _ => Err(bad()),
        }
    }
}

/// The maps to write for a user namespace.
pub struct Maps {
    uid: Vec<IdMap>,
    gid: Vec<IdMap>,
    own_uid: u32,
    own_gid: u32,
}

/// The maps a rootless daemon gets: as given, or by default our own ids as 0. None as root
/// (no user namespace); maps given to a root daemon are an error, as in virtiofsd.
pub fn plan(userns: bool, uid: &[IdMap], gid: &[IdMap]) -> Result<Option<Maps>, SandboxError> {
    if !userns {
        return if uid.is_empty() && gid.is_empty() { Ok(None) } else { Err(SandboxError::MapsAsRoot) };
    }
    let own_uid = sys::geteuid();
    let own_gid = sys::getegid();
    let or_own = |m: &[IdMap], own| if m.is_empty() { vec![IdMap { ns: 0, host: own, count: 1 }] } else { m.to_vec() };
    Ok(Some(Maps { uid: or_own(uid, own_uid), gid: or_own(gid, own_gid), own_uid, own_gid }))
}

fn is_just(m: &[IdMap], own: u32) -> bool {
    matches!(m, [IdMap { host, count: 1, .. }] if *host == own)
}

fn lines(m: &[IdMap]) -> String {
    m.iter().map(|r| format!("{} {} {}\n", r.ns, r.host, r.count)).collect()
}

fn helper(tool: &str, pid: libc::pid_t, m: &[IdMap]) -> Result<(), SandboxError> {
    let mut cmd = Command::new(tool);
    cmd.arg(pid.to_string());
    for r in m {
        cmd.args([r.ns.to_string(), r.host.to_string(), r.count.to_string()]);
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(SandboxError::MapHelper(tool.to_string(), s.to_string())),
        Err(e) => Err(SandboxError::MapHelper(tool.to_string(), e.to_string())),
    }
}

/// Writes `maps` for process `pid` (which unshared its user namespace and waits for them).
pub fn write(pid: libc::pid_t, maps: &Maps) -> Result<(), SandboxError> {
    let proc = format!("/proc/{pid}");
    let w = |file: &str, text: &str| {
        std::fs::write(format!("{proc}/{file}"), text)
            .map_err(|e| SandboxError::Setup("writing a user-namespace map", e))
    };
    if is_just(&maps.uid, maps.own_uid) {
        w("uid_map", &lines(&maps.uid))?;
    } else {
        helper("newuidmap", pid, &maps.uid)?;
    }
    if is_just(&maps.gid, maps.own_gid) {
        // An unprivileged writer may map its own gid only after setgroups is denied.
        w("setgroups", "deny")?;
        w("gid_map", &lines(&maps.gid))?;
    } else {
        helper("newgidmap", pid, &maps.gid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idmap_parses_virtiofsd_syntax_with_any_delimiter() {
        assert_eq!(":0:1000:1:".parse::<IdMap>().unwrap(), IdMap { ns: 0, host: 1000, count: 1 });
        assert_eq!("/1/100000/65536/".parse::<IdMap>().unwrap(), IdMap { ns: 1, host: 100_000, count: 65536 });
    }

    #[test]
    fn idmap_rejects_malformed_maps() {
        for s in ["0:1000:1", ":0:1000:1", ":0:1000:", ":0:1000:0:", "a0a1a1a", ":x:1:1:", ":0:1:1:1:", ""] {
            assert!(matches!(s.parse::<IdMap>(), Err(SandboxError::IdMap(_))), "{s}");
        }
    }

    #[test]
    fn maps_given_to_a_root_daemon_are_an_error() {
        let m = [IdMap { ns: 0, host: 0, count: 1 }];
        assert!(matches!(plan(false, &m, &[]), Err(SandboxError::MapsAsRoot)));
        assert!(plan(false, &[], &[]).unwrap().is_none());
    }
}
