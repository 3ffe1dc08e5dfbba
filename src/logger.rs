//! The `log` backend: one line per record on standard output, as text (`LEVEL [target] message`,
//! the format simple_logger writes) or, with `LOG_FORMAT=json`, as one JSON object (SPEC §6); access
//! records, which come here directly rather than through the `log` macros; and lines written
//! whatever the level says (`write_line`: the metrics' EMF lines).
//!
//! Why not simple_logger itself (SPEC §4 names it): it prints with `println!`, which panics when
//! standard output is gone (the log reader exited: EPIPE). A panic in the signal thread meant
//! SIGTERM no longer stopped the server, and in a worker it cost connections. Here a failed write
//! is dropped, never raised. Each line is formatted into a per-thread buffer and written with one
//! `write_all` under the stdout lock, so lines from different threads never interleave and an
//! access-log line costs one `write` system call and no allocation once warmed up.
//!
//! Owns: levels per target, the line formats (text and JSON), and the escaping of everything a
//! client sent (`escape`: one function, both formats).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::clock::{self, UtcTime};

/// Log targets with levels of their own, whatever `LOG_LEVEL` says.
pub const ACCESS: &str = "access";
/// The startup line (with the effective configuration), signals and the drain: always shown.
pub const LIFECYCLE: &str = "lifecycle";

/// What the logger is told at startup (`LOG_LEVEL`, `ACCESS_LOG`, `LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub level: LevelFilter,
    pub access_log: bool,
    pub format: Format,
}

/// How each record is written (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `LEVEL [target] message`, as simple_logger writes it.
    Text,
    /// One JSON object per line, for CloudWatch Logs Insights (SPEC §6).
    Json,
}

#[derive(Debug)]
pub struct Logger {
    level: LevelFilter,
    access: LevelFilter,
    format: Format,
}

/// The installed logger, for `access`; the `log` macros reach it through `log::logger()`.
static LOGGER: OnceLock<Logger> = OnceLock::new();

impl Logger {
    /// `level` for everything, except the access log (`access_log` on or off) and lifecycle
    /// lines (always at info).
    pub fn new(settings: Settings) -> Logger {
        let access = if settings.access_log { LevelFilter::Info } else { LevelFilter::Off };
        Logger { level: settings.level, access, format: settings.format }
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
        let _ = writeln!(out, "{:<5} [{}] {}", record.level(), target_of(record), record.args());
    }
}

fn target_of<'a>(record: &Record<'a>) -> &'a str {
    if record.target().is_empty() { record.module_path().unwrap_or_default() } else { record.target() }
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Formats one line with `format` into this thread's buffer and writes it to standard output, with
/// one `write_all` under the stdout lock. No level applies: the `log` records and access records
/// come here once their level lets them, and the metrics' EMF lines come here directly, since SPEC
/// §6 writes them whatever `LOG_LEVEL` and `ACCESS_LOG` say.
pub fn write_line(format: &dyn Fn(&mut String)) {
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
            match self.format {
                Format::Text => write_line(&|buf| Logger::format(record, buf)),
                Format::Json => write_line(&|buf| json_record(record, clock::unix_millis_now(), buf)),
            }
        }
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// One request as the access log shows it (SPEC §4, §6). Everything but the numbers came from the
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
    /// The `User-Agent` as sent (not necessarily UTF-8), at most `MAX_LOGGED_USER_AGENT` bytes.
    pub user_agent: Option<&'a [u8]>,
    /// The ALB's `X-Amzn-Trace-Id` as sent, at most `MAX_LOGGED_TRACE_ID` bytes.
    pub trace_id: Option<&'a [u8]>,
}

/// Whether access records are written (`ACCESS_LOG`; never while no logger is installed): a
/// request keeps what only its record shows (the user agent, the trace id), and a response's
/// duration is measured for it, only then.
pub fn access_enabled() -> bool {
    LOGGER.get().is_some_and(|l| l.access >= LevelFilter::Info)
}

/// Writes `record` to the access log, if it is on, in the configured format.
pub fn access(record: &Access<'_>) {
    let Some(logger) = LOGGER.get().filter(|l| l.access >= LevelFilter::Info) else { return };
    match logger.format {
        Format::Text => write_line(&|buf| access_line(record, buf)),
        Format::Json => write_line(&|buf| access_json(record, buf)),
    }
}

/// The text form: `INFO  [access] TIME CLIENT "METHOD PATH" STATUS BYTES DURATIONus "USER-AGENT"`,
/// the user agent `"-"` when none was sent (nginx's combined format ends the same way). The trace
/// id is in the JSON form only: it means something only behind an ALB, where the logs are JSON.
pub fn access_line(r: &Access<'_>, out: &mut String) {
    let time = UtcTime::from_unix_millis(r.unix_ms).rfc3339_millis();
    let _ = write!(
        out,
        "INFO  [{ACCESS}] {time} {} \"{} {}\" {} {} {}us \"",
        r.client,
        Escaped(r.method),
        Escaped(r.path),
        r.status,
        r.bytes,
        r.duration_us
    );
    let _ = escape(out, r.user_agent.unwrap_or(b"-"), Style::Text);
    out.push_str("\"\n");
}

/// The JSON form (SPEC §6): `{"time":…,"level":"INFO","target":"access","client":…,"method":…,
/// "path":…,"status":N,"bytes":N,"duration_us":N}`, with `"user_agent"` and `"trace_id"` when sent.
pub fn access_json(r: &Access<'_>, out: &mut String) {
    out.push('{');
    json_head(out, r.unix_ms, Level::Info, ACCESS);
    let _ = write!(out, ",\"client\":\"{}\",\"method\":\"", r.client);
    let _ = escape(out, r.method.as_bytes(), Style::Json);
    out.push_str("\",\"path\":\"");
    let _ = escape(out, r.path.as_bytes(), Style::Json);
    let _ = write!(out, "\",\"status\":{},\"bytes\":{},\"duration_us\":{}", r.status, r.bytes, r.duration_us);
    for (name, value) in [("user_agent", r.user_agent), ("trace_id", r.trace_id)] {
        if let Some(value) = value {
            let _ = write!(out, ",\"{name}\":\"");
            let _ = escape(out, value, Style::Json);
            out.push('"');
        }
    }
    out.push_str("}\n");
}

/// The JSON form of a `log` record: `{"time":…,"level":…,"target":…,"message":…}`. The message is
/// escaped like a client's bytes: it may quote some.
pub fn json_record(record: &Record<'_>, unix_ms: i64, out: &mut String) {
    out.push('{');
    json_head(out, unix_ms, record.level(), target_of(record));
    out.push_str(",\"message\":\"");
    let _ = write!(JsonString(out), "{}", record.args());
    out.push_str("\"}\n");
}

/// `"time":"…","level":"…","target":"…"`: the fields every JSON record starts with.
fn json_head(out: &mut String, unix_ms: i64, level: Level, target: &str) {
    let time = UtcTime::from_unix_millis(unix_ms).rfc3339_millis();
    let _ = write!(out, "\"time\":\"{time}\",\"level\":\"{}\",\"target\":\"", level.as_str());
    let _ = escape(out, target.as_bytes(), Style::Json);
    out.push('"');
}

/// Escapes what is written through it for a JSON string: a record's message goes straight from
/// its `format_args!` into the line.
struct JsonString<'a>(&'a mut String);

impl fmt::Write for JsonString<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s.as_bytes(), Style::Json)
    }
}

/// How `escape` writes a byte that may not go out as itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// The text format: `\xHH`. A space is escaped too: it separates the line's fields.
    Text,
    /// The inside of a JSON string: `\"`, `\\`, and `\u00HH` for any other byte outside printable
    /// ASCII (RFC 8259 §7), one escape per byte, whether or not the bytes are UTF-8. A JSON reader
    /// decodes `\u00HH` to the character U+00HH; each such character stands for the byte HH.
    Json,
}

/// Writes `bytes` with every byte outside printable ASCII, and `"` and `\`, escaped as `style`
/// says, so that nothing a client sends can end a line, close a field or forge one (SPEC §4, §6).
/// The one place where client bytes are escaped, for both formats.
pub fn escape(out: &mut impl fmt::Write, bytes: &[u8], style: Style) -> fmt::Result {
    // Runs of plain bytes go out whole: a `write!` per byte cost more than the rest of the line.
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let printable = b.is_ascii_graphic() || (b == b' ' && style == Style::Json);
        if printable && b != b'"' && b != b'\\' {
            continue;
        }
        out.write_str(plain(&bytes[start..i]))?;
        match (style, b) {
            (Style::Json, b'"') => out.write_str("\\\"")?,
            (Style::Json, b'\\') => out.write_str("\\\\")?,
            (Style::Json, _) => hex(out, "\\u00", b)?,
            (Style::Text, _) => hex(out, "\\x", b)?,
        }
        start = i + 1;
    }
    out.write_str(plain(&bytes[start..]))
}

/// `prefix` and `b` in two lower-case hex digits.
fn hex(out: &mut impl fmt::Write, prefix: &str, b: u8) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.write_str(prefix)?;
    out.write_char(char::from(DIGITS[usize::from(b >> 4)]))?;
    out.write_char(char::from(DIGITS[usize::from(b & 15)]))
}

/// Displays a client's text (or bytes) as the text format writes it (`escape`, `Style::Text`).
pub struct Escaped<'a, T: ?Sized>(pub &'a T);

impl<T: AsRef<[u8]> + ?Sized> fmt::Display for Escaped<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        escape(f, self.0.as_ref(), Style::Text)
    }
}

/// Displays a client's text (or bytes) as the inside of a JSON string (`escape`, `Style::Json`).
pub struct JsonEscaped<'a, T: ?Sized>(pub &'a T);

impl<T: AsRef<[u8]> + ?Sized> fmt::Display for JsonEscaped<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        escape(f, self.0.as_ref(), Style::Json)
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
        let quiet = Logger::new(Settings { level: LevelFilter::Warn, access_log: false, format: Format::Text });
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(!quiet.enabled(&meta(Level::Info, "zayzoon::server")));
        assert!(quiet.enabled(&meta(Level::Warn, "zayzoon::server")));
        assert!(!quiet.enabled(&meta(Level::Info, ACCESS)), "ACCESS_LOG=false");
        assert!(quiet.enabled(&meta(Level::Info, LIFECYCLE)), "lifecycle lines always show");
        assert!(!quiet.enabled(&meta(Level::Debug, LIFECYCLE)));
        let chatty = Logger::new(Settings { level: LevelFilter::Error, access_log: true, format: Format::Json });
        assert!(chatty.enabled(&meta(Level::Info, ACCESS)), "ACCESS_LOG=true at any LOG_LEVEL");
        assert!(!chatty.enabled(&meta(Level::Warn, "zayzoon::conn")));
    }

    /// A request whose every client field tries to end the line or forge a field.
    fn hostile() -> Access<'static> {
        Access {
            unix_ms: 1_795_765_457_042,
            client: "192.0.2.1".parse().unwrap(),
            method: "G\"ET",
            path: "/a\nINFO  [access] forged\\\u{e9}",
            status: 200,
            bytes: 1234,
            duration_us: 56,
            user_agent: Some(b"curl \"x\"\t\xff\r\n{\"status\":1}"),
            trace_id: Some(b"Root=1-5759e988-bd862e3fe1be46a994272793"),
        }
    }

    #[test]
    fn access_lines_escape_what_the_client_sent() {
        let mut out = String::new();
        access_line(&hostile(), &mut out);
        assert_eq!(
            out,
            "INFO  [access] 2026-11-27T07:44:17.042Z 192.0.2.1 \"G\\x22ET \
             /a\\x0aINFO\\x20\\x20[access]\\x20forged\\x5c\\xc3\\xa9\" 200 1234 56us \
             \"curl\\x20\\x22x\\x22\\x09\\xff\\x0d\\x0a{\\x22status\\x22:1}\"\n"
        );
        out.clear();
        access_line(&Access { user_agent: None, ..hostile() }, &mut out);
        assert!(out.ends_with(" 56us \"-\"\n"), "{out}");
    }

    #[test]
    fn access_records_in_json_escape_what_the_client_sent() {
        let mut out = String::new();
        access_json(&hostile(), &mut out);
        assert_eq!(
            out,
            "{\"time\":\"2026-11-27T07:44:17.042Z\",\"level\":\"INFO\",\"target\":\"access\",\
             \"client\":\"192.0.2.1\",\"method\":\"G\\\"ET\",\
             \"path\":\"/a\\u000aINFO  [access] forged\\\\\\u00c3\\u00a9\",\
             \"status\":200,\"bytes\":1234,\"duration_us\":56,\
             \"user_agent\":\"curl \\\"x\\\"\\u0009\\u00ff\\u000d\\u000a{\\\"status\\\":1}\",\
             \"trace_id\":\"Root=1-5759e988-bd862e3fe1be46a994272793\"}\n"
        );
        out.clear();
        access_json(&Access { user_agent: None, trace_id: None, method: "-", path: "-", ..hostile() }, &mut out);
        assert!(
            out.ends_with(",\"method\":\"-\",\"path\":\"-\",\"status\":200,\"bytes\":1234,\"duration_us\":56}\n"),
            "{out}"
        );
    }

    #[test]
    fn log_records_in_json() {
        let mut out = String::new();
        let args = format_args!("drain \"now\"\n{}", "\u{1b}[31m");
        json_record(&Record::builder().level(Level::Warn).target(LIFECYCLE).args(args).build(), 0, &mut out);
        assert_eq!(
            out,
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"level\":\"WARN\",\"target\":\"lifecycle\",\
             \"message\":\"drain \\\"now\\\"\\u000a\\u001b[31m\"}\n"
        );
    }

    #[test]
    fn every_byte_escapes_one_way_per_style() {
        for b in 0..=255u8 {
            let (text, json) = (Escaped(&[b][..]).to_string(), JsonEscaped(&[b][..]).to_string());
            match b {
                b'"' => assert_eq!((text.as_str(), json.as_str()), ("\\x22", "\\\"")),
                b'\\' => assert_eq!((text.as_str(), json.as_str()), ("\\x5c", "\\\\")),
                b' ' => assert_eq!((text.as_str(), json.as_str()), ("\\x20", " ")),
                b'!'..=b'~' => assert_eq!((text.len(), json.len()), (1, 1)),
                _ => assert_eq!((text, json), (format!("\\x{b:02x}"), format!("\\u00{b:02x}"))),
            }
        }
    }
}
