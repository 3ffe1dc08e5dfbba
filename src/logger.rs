//! The `log` backend: one line per record on standard output, `LEVEL [target] message`, the same
//! format simple_logger writes; and access records, which come here directly rather than through
//! the `log` macros.
//!
//! Why not simple_logger itself (SPEC §4 names it): it prints with `println!`, which panics when
//! standard output is gone (the log reader exited: EPIPE). A panic in the signal thread meant
//! SIGTERM no longer stopped the server, and in a worker it cost connections. Here a failed write
//! is dropped, never raised. Each line is formatted into a per-thread buffer and written with one
//! `write_all` under the stdout lock, so lines from different threads never interleave and an
//! access-log line costs one `write` system call and no allocation once warmed up.
//!
//! Owns: levels per target, the line formats, and the escaping of everything a client sent.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;

use log::{LevelFilter, Log, Metadata, Record};

use crate::clock::UtcTime;

/// Log targets with levels of their own, whatever `LOG_LEVEL` says.
pub const ACCESS: &str = "access";
/// The startup line (with the effective configuration), signals and the drain: always shown.
pub const LIFECYCLE: &str = "lifecycle";

/// What the logger is told at startup (`LOG_LEVEL`, `ACCESS_LOG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub level: LevelFilter,
    pub access_log: bool,
}

#[derive(Debug)]
pub struct Logger {
    level: LevelFilter,
    access: LevelFilter,
}

/// The installed logger, for `access`; the `log` macros reach it through `log::logger()`.
static LOGGER: OnceLock<Logger> = OnceLock::new();

impl Logger {
    /// `level` for everything, except the access log (`access_log` on or off) and lifecycle
    /// lines (always at info).
    pub fn new(settings: Settings) -> Logger {
        let access = if settings.access_log { LevelFilter::Info } else { LevelFilter::Off };
        Logger { level: settings.level, access }
    }

    /// Installs this logger for the `log` macros and for `access`.
    pub fn install(self) -> Result<(), log::SetLoggerError> {
        log::set_max_level(self.level.max(self.access).max(LevelFilter::Info));
        // Lives as long as the process, as `log` requires.
        let logger = LOGGER.get_or_init(|| self);
        log::set_logger(logger)
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
        let target =
            if record.target().is_empty() { record.module_path().unwrap_or_default() } else { record.target() };
        let _ = writeln!(out, "{:<5} [{}] {}", record.level(), target, record.args());
    }
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Formats one line with `format` into this thread's buffer and writes it to standard output.
fn write_line(format: impl FnOnce(&mut String)) {
    LINE.with(|line| {
        // A record whose arguments log in turn would find the buffer borrowed: format that one into
        // a fresh string rather than panic.
        let mut fresh = String::new();
        let mut borrowed = line.try_borrow_mut();
        let buf = borrowed.as_deref_mut().unwrap_or(&mut fresh);
        buf.clear();
        format(buf);
        // Dropped on error: there is nowhere left to report it.
        let _ = std::io::stdout().lock().write_all(buf.as_bytes());
        if buf.capacity() > 4096 {
            *buf = String::new(); // one huge line should not pin its memory forever
        }
    });
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            write_line(|buf| Logger::format(record, buf));
        }
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// One request as the access log shows it (SPEC §4). Everything but the numbers came from the
/// client, and is escaped when written.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    pub unix_ms: i64,
    pub client: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub duration_us: u64,
}

/// Writes `record` to the access log, if it is on (`ACCESS_LOG`; off while no logger is installed).
pub fn access(record: &Access<'_>) {
    if LOGGER.get().is_some_and(|l| l.access >= LevelFilter::Info) {
        write_line(|buf| access_line(record, buf));
    }
}

/// The text form: `INFO  [access] TIME CLIENT "METHOD PATH" STATUS BYTES DURATIONus`.
pub fn access_line(r: &Access<'_>, out: &mut String) {
    let time = UtcTime::from_unix_millis(r.unix_ms).rfc3339_millis();
    let _ = writeln!(
        out,
        "INFO  [{ACCESS}] {time} {} \"{} {}\" {} {} {}us",
        r.client,
        Escaped(r.method),
        Escaped(r.path),
        r.status,
        r.bytes,
        r.duration_us
    );
}

/// Displays text with every byte outside printable ASCII, and `"` and `\`, as `\xHH`: nothing a
/// client sends can end a log line or forge a field.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Runs of plain bytes go out whole: a `write!` per byte cost more than the rest of the line.
        let bytes = self.0.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !(b.is_ascii_graphic() && b != b'"' && b != b'\\') {
                f.write_str(plain(&bytes[start..i]))?;
                write!(f, "\\x{b:02x}")?;
                start = i + 1;
            }
        }
        f.write_str(plain(&bytes[start..]))
    }
}

/// A run of plain bytes as text: they are printable ASCII, so always UTF-8.
fn plain(run: &[u8]) -> &str {
    std::str::from_utf8(run).unwrap_or_default()
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
        let quiet = Logger::new(Settings { level: LevelFilter::Warn, access_log: false });
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(!quiet.enabled(&meta(Level::Info, "zayzoon::server")));
        assert!(quiet.enabled(&meta(Level::Warn, "zayzoon::server")));
        assert!(!quiet.enabled(&meta(Level::Info, ACCESS)), "ACCESS_LOG=false");
        assert!(quiet.enabled(&meta(Level::Info, LIFECYCLE)), "lifecycle lines always show");
        assert!(!quiet.enabled(&meta(Level::Debug, LIFECYCLE)));
        let chatty = Logger::new(Settings { level: LevelFilter::Error, access_log: true });
        assert!(chatty.enabled(&meta(Level::Info, ACCESS)), "ACCESS_LOG=true at any LOG_LEVEL");
        assert!(!chatty.enabled(&meta(Level::Warn, "zayzoon::conn")));
    }

    #[test]
    fn access_lines_escape_what_the_client_sent() {
        let mut out = String::new();
        let record = Access {
            unix_ms: 1_795_765_457_042,
            client: "192.0.2.1".parse().unwrap(),
            method: "G\"ET",
            path: "/a\nINFO  [access] forged\\\u{e9}",
            status: 200,
            bytes: 1234,
            duration_us: 56,
        };
        access_line(&record, &mut out);
        assert_eq!(
            out,
            "INFO  [access] 2026-11-27T07:44:17.042Z 192.0.2.1 \"G\\x22ET \
             /a\\x0aINFO\\x20\\x20[access]\\x20forged\\x5c\\xc3\\xa9\" 200 1234 56us\n"
        );
    }
}
