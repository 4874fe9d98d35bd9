//! The result protocol (`DAXFSD-RESULT`/`-INFO`/`-READY` lines) and the
//! error type every check returns: an error becomes a `status=fail` line,
//! never a panic.

use std::fmt::{self, Display};
use std::io::{self, Write};

/// A failed check or operation, with enough context to act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_owned())
    }
}

/// Result of a check or an operation.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds what was being done to an `io::Error` (or another error).
pub trait Context<T> {
    /// `op: error` with a fixed description.
    fn ctx(self, what: impl Display) -> Result<T>;
    /// `op: error` with a description built only on failure.
    fn with_ctx<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl Display) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }
    fn with_ctx<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

/// Return early with an [`Error`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::report::Error(format!($($arg)*)))
    };
}

/// Return early with an [`Error`] unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::bail!($($arg)*);
        }
    };
}

/// Status of one result line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The check held.
    Pass,
    /// The check failed: counts against the run.
    Fail,
    /// Not applicable here (feature missing on the host or the daemon).
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// Longest detail text printed (the launcher shows results one per line).
const MAX_DETAIL: usize = 600;

/// One line of free text: control characters become spaces, long text is
/// cut (on a character boundary).
pub fn one_line(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// Print a line and flush it (the console is a pipe; a crash must not eat
/// lines already "printed").
fn emit(line: &str) {
    let mut out = io::stdout().lock();
    // Nothing sensible to do if the console is gone.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `DAXFSD-RESULT name=NAME status=... detail=...`
pub fn result(name: &str, status: Status, detail: &str) {
    emit(&format!("DAXFSD-RESULT name={name} status={} detail={}", status.word(), one_line(detail)));
}

/// `DAXFSD-INFO text`
pub fn info(text: &str) {
    emit(&format!("DAXFSD-INFO {}", one_line(text)));
}

/// `DAXFSD-READY name=NAME extra` — tells the launcher to start its
/// `--host-during` command.
pub fn ready(name: &str, extra: &str) {
    emit(&format!("DAXFSD-READY name={name} {}", one_line(extra)));
}

/// The outcome of one check that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Held; the text says what was seen (may be empty).
    Pass(String),
    /// Not applicable; the text says why.
    Skip(String),
}

/// Counts the results a program printed, for its exit status.
#[derive(Debug, Default)]
pub struct Tally {
    /// `status=pass` lines.
    pub passed: usize,
    /// `status=fail` lines.
    pub failed: usize,
    /// `status=skip` lines.
    pub skipped: usize,
}

impl Tally {
    /// Print one result and count it.
    pub fn record(&mut self, name: &str, status: Status, detail: &str) {
        match status {
            Status::Pass => self.passed += 1,
            Status::Fail => self.failed += 1,
            Status::Skip => self.skipped += 1,
        }
        result(name, status, detail);
    }

    /// Print the result of a check function.
    pub fn check(&mut self, name: &str, r: Result<Outcome>) {
        match r {
            Ok(Outcome::Pass(d)) => self.record(name, Status::Pass, &d),
            Ok(Outcome::Skip(d)) => self.record(name, Status::Skip, &d),
            Err(e) => self.record(name, Status::Fail, &e.0),
        }
    }

    /// Process exit status: 0 when nothing failed.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.failed > 0)
    }
}

/// Is this the "not supported" error of an optional feature?
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENOTTY))
}
