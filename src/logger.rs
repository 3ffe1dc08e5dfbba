//! The `log` backend: one line per record on standard output, `LEVEL [target] message`, the same
//! format simple_logger writes.
//!
//! Why not simple_logger itself (SPEC §4 names it): it prints with `println!`, which panics when
//! standard output is gone (the log reader exited: EPIPE). A panic in the signal thread meant
//! SIGTERM no longer stopped the server, and in a worker it cost connections. Here a failed write
//! is dropped, never raised. Each line is formatted into a per-thread buffer and written with one
//! `write_all` under the stdout lock, so lines from different threads never interleave and an
//! access-log line costs one `write` system call and no allocation once warmed up.

use std::cell::RefCell;
use std::io::Write as _;

use log::{LevelFilter, Log, Metadata, Record};

/// Log targets with levels of their own, whatever `LOG_LEVEL` says.
pub const ACCESS: &str = "access";
/// The startup line (with the effective configuration), signals and the drain: always shown.
pub const LIFECYCLE: &str = "lifecycle";

#[derive(Debug)]
pub struct Logger {
    level: LevelFilter,
    access: LevelFilter,
}

impl Logger {
    /// `level` for everything, except the access log (`access_log` on or off) and lifecycle
    /// lines (always at info).
    pub fn new(level: LevelFilter, access_log: bool) -> Logger {
        Logger { level, access: if access_log { LevelFilter::Info } else { LevelFilter::Off } }
    }

    /// Installs this logger for the `log` macros.
    pub fn install(self) -> Result<(), log::SetLoggerError> {
        log::set_max_level(self.level.max(self.access).max(LevelFilter::Info));
        // Leaked once: the logger lives as long as the process, as `log` requires.
        log::set_logger(Box::leak(Box::new(self)))
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        match target {
            ACCESS => self.access,
            LIFECYCLE => LevelFilter::Info,
            _ => self.level,
        }
    }

    /// The line for `record`, newline included, into `out`.
    pub fn format(record: &Record<'_>, out: &mut String) {
        use std::fmt::Write as _;
        let target =
            if record.target().is_empty() { record.module_path().unwrap_or_default() } else { record.target() };
        let _ = writeln!(out, "{:<5} [{}] {}", record.level(), target, record.args());
    }
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        LINE.with(|line| {
            // A record whose arguments log in turn would find the buffer borrowed: format that
            // one into a fresh string rather than panic.
            let mut fresh = String::new();
            let mut borrowed = line.try_borrow_mut();
            let buf = borrowed.as_deref_mut().unwrap_or(&mut fresh);
            buf.clear();
            Logger::format(record, buf);
            // Dropped on error: there is nowhere left to report it.
            let _ = std::io::stdout().lock().write_all(buf.as_bytes());
            if buf.capacity() > 4096 {
                *buf = String::new(); // one huge line should not pin its memory forever
            }
        });
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    fn line(level: Level, target: &str, msg: &str) -> String {
        let mut out = String::new();
        Logger::format(&Record::builder().level(level).target(target).args(format_args!("{msg}")).build(), &mut out);
        out
    }

    #[test]
    fn format_matches_simple_logger() {
        assert_eq!(line(Level::Info, "access", "x y"), "INFO  [access] x y\n");
        assert_eq!(line(Level::Warn, "zayzoon::server", "w"), "WARN  [zayzoon::server] w\n");
        assert_eq!(line(Level::Error, "t", ""), "ERROR [t] \n");
    }

    #[test]
    fn levels_per_target() {
        let quiet = Logger::new(LevelFilter::Warn, false);
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(!quiet.enabled(&meta(Level::Info, "zayzoon::server")));
        assert!(quiet.enabled(&meta(Level::Warn, "zayzoon::server")));
        assert!(!quiet.enabled(&meta(Level::Info, ACCESS)), "ACCESS_LOG=false");
        assert!(quiet.enabled(&meta(Level::Info, LIFECYCLE)), "lifecycle lines always show");
        assert!(!quiet.enabled(&meta(Level::Debug, LIFECYCLE)));
        let chatty = Logger::new(LevelFilter::Error, true);
        assert!(chatty.enabled(&meta(Level::Info, ACCESS)), "ACCESS_LOG=true at any LOG_LEVEL");
        assert!(!chatty.enabled(&meta(Level::Warn, "zayzoon::conn")));
    }
}
