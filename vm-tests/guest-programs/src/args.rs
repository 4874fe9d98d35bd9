//! A tiny command-line parser: `PROG [MOUNT_DIR] [--name VALUE | --name=VALUE
//! | --flag]...`. Every option is declared with a default and a help line,
//! so `--help` is generated and unknown options are errors.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::{Error, Result, bail};

/// One declared option.
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    /// Name without the leading `--`.
    pub name: &'static str,
    /// Default value; `None` marks a boolean flag (no value).
    pub default: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
}

/// Parsed arguments.
#[derive(Debug)]
pub struct Args {
    /// The mount point (first positional argument, default `/mnt`).
    pub mount: PathBuf,
    values: HashMap<&'static str, String>,
    flags: Vec<&'static str>,
}

/// What [`parse`] found.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these arguments.
    Run(Args),
    /// `--help`: the usage text to print.
    Help(String),
}

/// Usage text for `prog` with the given options.
pub fn usage(prog: &str, about: &str, opts: &[Opt]) -> String {
    let mut s = format!("{prog} — {about}\n\nUsage: {prog} [MOUNT_DIR (default /mnt)] [options]\n");
    for o in opts {
        match o.default {
            Some(d) => s.push_str(&format!("  --{} V  {} (default {d})\n", o.name, o.help)),
            None => s.push_str(&format!("  --{}  {}\n", o.name, o.help)),
        }
    }
    s
}

/// Parse `argv` (without the program name) against `opts`.
pub fn parse(prog: &str, about: &str, opts: &[Opt], argv: impl IntoIterator<Item = String>) -> Result<Parsed> {
    let mut values = HashMap::new();
    let mut flags = Vec::new();
    let mut mount = None;
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help(usage(prog, about, opts)));
        }
        let Some(body) = arg.strip_prefix("--") else {
            if mount.is_some() {
                bail!("unexpected argument {arg:?}");
            }
            mount = Some(PathBuf::from(arg));
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let Some(opt) = opts.iter().find(|o| o.name == name) else {
            bail!("unknown option --{name} (see --help)");
        };
        if opt.default.is_none() {
            if inline.is_some() {
                bail!("--{name} takes no value");
            }
            flags.push(opt.name);
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| Error(format!("--{name} needs a value")))?,
        };
        values.insert(opt.name, value);
    }
    for o in opts {
        if let Some(d) = o.default {
            values.entry(o.name).or_insert_with(|| d.to_owned());
        }
    }
    Ok(Parsed::Run(Args { mount: mount.unwrap_or_else(|| PathBuf::from("/mnt")), values, flags }))
}

impl Args {
    /// The value of a declared option.
    pub fn str(&self, name: &str) -> Result<&str> {
        self.values.get(name).map(String::as_str).ok_or_else(|| Error(format!("option --{name} is not declared")))
    }

    /// A declared boolean flag.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// An unsigned number; accepts `0x` hex and K/M/G suffixes (powers of 2).
    pub fn u64(&self, name: &str) -> Result<u64> {
        let v = self.str(name)?;
        parse_size(v).ok_or_else(|| Error(format!("--{name}: not a number: {v:?}")))
    }

    /// Like [`Args::u64`], as usize.
    pub fn usize(&self, name: &str) -> Result<usize> {
        let v = self.u64(name)?;
        usize::try_from(v).map_err(|_| Error(format!("--{name}: too large: {v}")))
    }
}

/// `123`, `0x7b`, `4K`, `1M`, `2G`.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = match num.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => num.parse::<u64>().ok()?,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: &[Opt] = &[
        Opt { name: "ops", default: Some("10"), help: "ops" },
        Opt { name: "size", default: Some("1M"), help: "size" },
        Opt { name: "verbose", default: None, help: "more" },
    ];

    fn run(v: &[&str]) -> Result<Args> {
        match parse("t", "test", OPTS, v.iter().map(|s| (*s).to_owned()))? {
            Parsed::Run(a) => Ok(a),
            Parsed::Help(_) => bail!("help"),
        }
    }

    #[test]
    fn parses() -> Result<()> {
        let a = run(&["/x", "--ops", "5", "--size=2K", "--verbose"])?;
        assert_eq!(a.mount, PathBuf::from("/x"));
        assert_eq!(a.u64("ops")?, 5);
        assert_eq!(a.u64("size")?, 2048);
        assert!(a.flag("verbose"));
        let d = run(&[])?;
        assert_eq!(d.mount, PathBuf::from("/mnt"));
        assert_eq!(d.u64("size")?, 1 << 20);
        assert!(!d.flag("verbose"));
        assert!(run(&["--nope"]).is_err());
        assert!(run(&["--ops"]).is_err());
        assert!(run(&["a", "b"]).is_err());
        Ok(())
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0x10"), Some(16));
        assert_eq!(parse_size("3G"), Some(3 << 30));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("x"), None);
    }
}
