//! Rate limits for log lines a guest can trigger: an occurrence is logged at counts 1, 2, 4, 8,
//! ... and only counted otherwise, so a guest repeating a fault cannot flood the log. A leaf
//! every layer may use (std and `log` only, no other module).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the occurrences of one kind of event and says which of them to log.
#[derive(Debug, Default)]
pub struct LogLimit {
    count: AtomicU64,
}

impl LogLimit {
    /// A limit that has seen nothing yet (usable in a `static`).
    pub const fn new() -> LogLimit {
        LogLimit { count: AtomicU64::new(0) }
    }

    /// Counts one occurrence; returns the count so far when this one should be logged (the
    /// 1st, 2nd, 4th, 8th, ...), `None` when it should only be counted.
    pub fn hit(&self) -> Option<u64> {
        let n = self.count.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        n.is_power_of_two().then_some(n)
    }
}

/// `log!` at `$level`, rate-limited per call site with a [`LogLimit`]; the count so far is
/// appended. Use it for every warn/error/info line a guest can cause.
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        if let Some(n) = LIMIT.hit() {
            log::log!($level, "{} ({n} times so far)", format_args!($($arg)+));
        }
    }};
}

/// `warn!`, rate-limited per call site (see [`log_limited!`]).
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::log_limit::log_limited!(log::Level::Warn, $($arg)+) };
}

/// `error!`, rate-limited per call site (see [`log_limited!`]).
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::log_limit::log_limited!(log::Level::Error, $($arg)+) };
}

/// `info!`, rate-limited per call site (see [`log_limited!`]).
macro_rules! info_limited {
    ($($arg:tt)+) => { $crate::log_limit::log_limited!(log::Level::Info, $($arg)+) };
}

pub(crate) use {error_limited, info_limited, log_limited, warn_limited};

#[cfg(test)]
mod tests {
    use super::LogLimit;

    #[test]
    fn hit_powers_of_two_are_logged() {
        let l = LogLimit::new();
        let logged: Vec<u64> = (0..100).filter_map(|_| l.hit()).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64]);
    }

    #[test]
    fn hit_limits_are_independent() {
        let (a, b) = (LogLimit::new(), LogLimit::new());
        for _ in 0..5 {
            a.hit();
        }
        assert_eq!(b.hit(), Some(1));
        assert_eq!(a.hit(), None);
    }

    #[test]
    fn macro_call_site_logs_without_panicking() {
        for i in 0..10 {
            super::warn_limited!("guest did thing {i}");
            super::info_limited!("guest did other thing {i}");
        }
    }
}
