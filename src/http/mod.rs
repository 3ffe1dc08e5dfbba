//! Request parsing and framing: httparse tokenizes the head; the rules here decide what it means.
//!
//! Owns: the head size and header-count limits, the version, `Host`, `Connection`, `Expect`, and
//! message framing per RFC 9112 §6.3 (`Content-Length`, `Transfer-Encoding`, chunked bodies).
//! Everything here is a pure function of bytes: no sockets, no clocks, so it is unit-tested and
//! fuzzed directly. Does not own: what a request gets as an answer (`app`), or which client sent it
//! (`proxy`).
//!
//! We are strict where leniency lets two parsers disagree about where a request ends (request
//! smuggling): bare LF line endings, repeated or malformed `Content-Length`, and `Transfer-Encoding`
//! with anything but a single final `chunked` are refused rather than guessed at.

use std::fmt;

use crate::decimal;
use crate::limits::{MAX_BODY_BYTES, MAX_HEAD_BYTES, MAX_HEADERS};

mod chunked;
pub use chunked::{ChunkedDecoder, Fed};

/// The protocol versions we speak. Others get 505.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes (at most `MAX_BODY_BYTES`).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A request head that parsed and passed our rules. Borrows the input and the header array.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    pub method: &'b str,
    /// The request target, split once.
    pub target: Target<'b>,
    pub version: Version,
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of input the head took, blank line included.
    pub len: usize,
    /// The request's host, validated (see `valid_host`): an absolute-form target's authority, which
    /// takes precedence (RFC 9112 §3.2.2), else the `Host` field; `None` only for HTTP/1.0 without
    /// either.
    pub host: Option<&'b str>,
    /// Whether the client wants the connection kept open after this request.
    pub keep_alive: bool,
    pub framing: Framing,
    /// `Expect: 100-continue`: the client may wait for us before sending its body.
    pub expect_continue: bool,
}

/// Incomplete is not invalid: `Partial` means "need more bytes" (httparse's `Status`).
#[derive(Debug, PartialEq, Eq)]
pub enum Parse<T> {
    Complete(T),
    Partial,
}

/// Why a request could not be served. Each maps to one status; none carries request bytes, so
/// nothing a client sent can reach a response body. The `&'static str` is for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// 400: malformed request line, header, `Host`, framing or chunk.
    BadRequest(&'static str),
    /// 408: the request did not arrive within `HEADER_TIMEOUT_S`.
    Timeout,
    /// 413: a body larger than `MAX_BODY_BYTES`.
    BodyTooLarge,
    /// 431: a head larger than `MAX_HEAD_BYTES`, or more than `MAX_HEADERS` fields.
    HeadTooLarge(&'static str),
    /// 501: a transfer coding other than chunked.
    UnknownCoding,
    /// 505: a well-formed version other than HTTP/1.0 and HTTP/1.1.
    Version,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::Timeout => 408,
            HttpError::BodyTooLarge => 413,
            HttpError::HeadTooLarge(_) => 431,
            HttpError::UnknownCoding => 501,
            HttpError::Version => 505,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::BadRequest(why) => write!(f, "bad request: {why}"),
            HttpError::Timeout => f.write_str("request not received in time"),
            HttpError::BodyTooLarge => write!(f, "body larger than {MAX_BODY_BYTES} bytes"),
            HttpError::HeadTooLarge(why) => write!(f, "head too large: {why}"),
            HttpError::UnknownCoding => f.write_str("unsupported transfer coding"),
            HttpError::Version => f.write_str("unsupported HTTP version"),
        }
    }
}

impl std::error::Error for HttpError {}

/// An empty header array for `parse_head`.
pub fn empty_headers<'b>() -> [httparse::Header<'b>; MAX_HEADERS] {
    [httparse::EMPTY_HEADER; MAX_HEADERS]
}

/// Parses one request head from the start of `buf` (which may hold more: a body, or pipelined
/// requests). Only the first `MAX_HEAD_BYTES` are looked at.
pub fn parse_head<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; MAX_HEADERS],
) -> Result<Parse<Head<'h, 'b>>, HttpError> {
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let mut req = httparse::Request::new(headers);
    let status = match req.parse(window) {
        // httparse refuses `HTTP/2` at its `2`; whether that is 505 or 400 depends on the rest of
        // the word, so until the line ends it is incomplete, not yet an error.
        Err(httparse::Error::Version) if version_cut_short(window) => Ok(httparse::Status::Partial),
        other => other,
    };
    let len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if window.len() == MAX_HEAD_BYTES => {
            return Err(HttpError::HeadTooLarge("head longer than 8 KiB"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parse::Partial),
        Err(e) => return Err(from_httparse(e, window)),
    };
    if has_bare_lf(&window[..len]) {
        return Err(HttpError::BadRequest("bare LF line ending"));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequest("incomplete request line"));
    };
    let version = if version == 0 { Version::Http10 } else { Version::Http11 };
    let target = Target::parse(method, target)?;
    let fields = Fields::scan(req.headers)?;
    let host = match (version, fields.host_count) {
        (_, 0) if version == Version::Http10 => None,
        (_, 0) => return Err(HttpError::BadRequest("missing Host")),
        (_, 1) => Some(fields.host),
        _ => return Err(HttpError::BadRequest("more than one Host")),
    };
    if let Some(host) = host
        && !valid_host(host.as_bytes())
    {
        return Err(HttpError::BadRequest("malformed Host"));
    }
    let host = target.authority.or(host);
    let framing = framing(version, &fields)?;
    let keep_alive = !fields.close && (version == Version::Http11 || fields.keep_alive);
    Ok(Parse::Complete(Head {
        method,
        target,
        version,
        headers: req.headers,
        len,
        host,
        keep_alive,
        framing,
        expect_continue: fields.expect_continue,
    }))
}

/// httparse's error, mapped to a status. A bad version token is 505 only when it is a well-formed
/// `HTTP/x.y` (RFC 9110 §15.6.6); anything else there is a malformed request line.
fn from_httparse(e: httparse::Error, buf: &[u8]) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::HeadTooLarge("more than 64 header fields"),
        httparse::Error::Version if well_formed_version(buf) => HttpError::Version,
        httparse::Error::Version => HttpError::BadRequest("malformed HTTP version"),
        httparse::Error::HeaderName => HttpError::BadRequest("invalid header name"),
        httparse::Error::HeaderValue => HttpError::BadRequest("invalid header value"),
        httparse::Error::NewLine => HttpError::BadRequest("invalid line ending"),
        httparse::Error::Token | httparse::Error::Status => HttpError::BadRequest("malformed request line"),
    }
}

/// Whether the request line's third word is `HTTP/d.d`.
fn well_formed_version(buf: &[u8]) -> bool {
    matches!(version_word(buf), Some((version, _)) if version.len() == 8 && version_prefix(version))
}

/// Whether the request line has not ended yet and its third word so far could still become
/// `HTTP/d.d`: then the same bytes with more after them may be a 505 or a 400, so neither is
/// decided yet (found by fuzzing: `GET / HTTP/2` in one read was 400, `GET / HTTP/2.0\r\n` 505).
fn version_cut_short(buf: &[u8]) -> bool {
    matches!(version_word(buf), Some((version, false)) if version_prefix(version))
}

/// The request line's third word, and whether the line has ended (by CR or LF).
fn version_word(buf: &[u8]) -> Option<(&[u8], bool)> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let line = &buf[start..];
    let end = line.iter().position(|&b| b == b'\r' || b == b'\n');
    let mut words = line[..end.unwrap_or(line.len())].split(|&b| b == b' ');
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some(_), Some(_), Some(v), None) => Some((v, end.is_some())),
        _ => None,
    }
}

/// Whether `word` is `HTTP/d.d` or the start of it.
fn version_prefix(word: &[u8]) -> bool {
    word.len() <= 8 && word.iter().zip(b"HTTP/0.0").all(|(&b, &p)| if p == b'0' { b.is_ascii_digit() } else { b == p })
}

/// RFC 9112 §2.2 lets a recipient accept a bare LF as a line end; we don't, because a proxy in
/// front that doesn't would see different header boundaries than we do.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// A request target, split once: origin-form (`/path?query`), absolute-form (`http://host/path`)
/// or, for OPTIONS, `*`. Authority-form (CONNECT's `host:port`) and anything else are malformed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The target as sent.
    pub raw: &'a str,
    /// The authority of an absolute-form target (validated like a `Host`).
    pub authority: Option<&'a str>,
    /// Where the path lies in `raw`; a query, if any, follows its end after a `?`. Empty for an
    /// absolute-form target without a path, which means `/`.
    pub span: (usize, usize),
}

impl<'a> Target<'a> {
    /// Checks and splits `raw`. The scheme of an absolute-form target is matched without regard to
    /// case (RFC 3986 §3.1).
    pub fn parse(method: &str, raw: &'a str) -> Result<Target<'a>, HttpError> {
        let bad = Err(HttpError::BadRequest("malformed request target"));
        let (start, authority) = match scheme_rest(raw) {
            Some(rest) => {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                if !valid_host(&rest.as_bytes()[..end]) {
                    return bad;
                }
                (raw.len() - rest.len() + end, Some(&rest[..end]))
            }
            None if raw.starts_with('/') || (raw == "*" && method == "OPTIONS") => (0, None),
            None => return bad,
        };
        let end = raw[start..].find('?').map_or(raw.len(), |i| start + i);
        Ok(Target { raw, authority, span: (start, end) })
    }

    /// The path, compared byte for byte by routing (no percent-decoding); never empty.
    pub fn path(&self) -> &'a str {
        let (start, end) = self.span;
        if start == end { "/" } else { &self.raw[start..end] }
    }

    /// What follows the path's `?`, without it.
    pub fn query(&self) -> Option<&'a str> {
        self.raw[self.span.1..].strip_prefix('?')
    }
}

fn scheme_rest(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then(|| &target[scheme.len()..])
    })
}

/// Whether `host` is a `Host` value we accept (SPEC §2): `reg-name[:port]`, `IPv4[:port]` or
/// `[IPv6][:port]`, the port at most 5 digits up to 65535, or empty (RFC 3986 §3.2.3: `host:` is the
/// scheme's default port). The value may be echoed into a redirect's `Location`: every byte outside
/// an IPv6 literal is a letter, a digit, `-`, `.`, `_`, `~` or the port's `:`, none of which can end
/// a URL's authority (a `/`, `?`, `#`, `@` or `\` could, in some parser).
pub fn valid_host(host: &[u8]) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else { return false };
        let ok = std::str::from_utf8(&rest[..close]).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return false;
        }
        match &rest[close + 1..] {
            [] => (&b""[..], None),
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return false,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
            None => (host, None),
        }
    };
    let port_ok = port
        .is_none_or(|p| p.is_empty() || p.len() <= 5 && decimal::parse(p).is_some_and(|n| n <= u64::from(u16::MAX)));
    let bracketed = host.first() == Some(&b'[');
    port_ok && (bracketed || valid_reg_name(name))
}

/// An RFC 3986 §3.2.2 reg-name made of unreserved characters only (letters, digits, `-`, `.`, `_`,
/// `~`): no percent-encoding and no sub-delims, so nothing to decode and nothing a URL parser
/// treats specially. Not empty (RFC 9110 §4.2.1: an `http` URI's host is not). An IPv4 address is
/// one too. Nothing more: `my_app` and `zayzoon_web_1` (Docker Compose names) are not DNS names,
/// but real deployments send them, and the 8 KiB head bounds the length.
fn valid_reg_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The `Host` value without its port, for a redirect: `example.com:8080` → `example.com`,
/// `example.com:` (an empty port) → `example.com`, `[::1]:80` → `[::1]`: never a trailing `:`.
/// Expects a value that passed `valid_host`.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// What the head's fields say, collected in one pass over them.
#[derive(Default)]
struct Fields<'b> {
    host: &'b str,
    host_count: usize,
    content_length: Option<u64>,
    /// `Transfer-Encoding` seen at all, and what its codings were.
    transfer_encoding: bool,
    chunked_count: usize,
    other_coding: bool,
    chunked_last: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl<'b> Fields<'b> {
    fn scan(headers: &[httparse::Header<'b>]) -> Result<Fields<'b>, HttpError> {
        let mut f = Fields::default();
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                f.host_count += 1;
                // Non-UTF-8 can't be a valid host; valid_host rejects the empty string we keep instead.
                f.host = std::str::from_utf8(h.value).unwrap_or("");
            } else if name.eq_ignore_ascii_case("content-length") {
                f.content_length(h.value)?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                f.transfer_encoding(h.value)?;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in list(h.value) {
                    f.close |= token.eq_ignore_ascii_case(b"close");
                    f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name.eq_ignore_ascii_case("expect") {
                f.expect_continue |= trim(h.value).eq_ignore_ascii_case(b"100-continue");
            }
        }
        Ok(f)
    }

    /// Each value is a list of decimals; every one of them, in every field, must be the same
    /// (RFC 9112 §6.3 item 5 lets us accept identical repeats; differing ones are an attack). An
    /// empty member (`1,`, `1,,1`, `,1`, or an empty value) makes the field invalid: the grammar is
    /// `1*DIGIT` (RFC 9110 §8.6), and a front end that drops such a field would frame the body
    /// differently.
    fn content_length(&mut self, value: &[u8]) -> Result<(), HttpError> {
        for item in value.split(|&b| b == b',').map(trim) {
            let n = decimal::parse(item).ok_or(HttpError::BadRequest("invalid Content-Length"))?;
            if self.content_length.is_some_and(|old| old != n) {
                return Err(HttpError::BadRequest("differing Content-Length values"));
            }
            self.content_length = Some(n);
        }
        Ok(())
    }

    fn transfer_encoding(&mut self, value: &[u8]) -> Result<(), HttpError> {
        self.transfer_encoding = true;
        let mut any = false;
        for coding in list(value) {
            // A coding may carry parameters (`gzip;q=1`); only the name matters for the verdict.
            let name = trim(coding.split(|&b| b == b';').next().unwrap_or(b""));
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                return Err(HttpError::BadRequest("malformed Transfer-Encoding"));
            }
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            if chunked && coding.contains(&b';') {
                return Err(HttpError::BadRequest("parameters on chunked"));
            }
            self.chunked_count += usize::from(chunked);
            self.other_coding |= !chunked;
            self.chunked_last = chunked;
            any = true;
        }
        if !any {
            return Err(HttpError::BadRequest("empty Transfer-Encoding"));
        }
        Ok(())
    }
}

/// The framing rules of RFC 9112 §6.1 and §6.3, as SPEC §2 lists them.
fn framing(version: Version, f: &Fields<'_>) -> Result<Framing, HttpError> {
    if f.transfer_encoding {
        if version == Version::Http10 {
            // §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            return Err(HttpError::BadRequest("Transfer-Encoding in HTTP/1.0"));
        }
        if f.content_length.is_some() {
            return Err(HttpError::BadRequest("both Transfer-Encoding and Content-Length"));
        }
        // §6.3 item 4: chunked that is not the final coding is 400, whatever the others are; a
        // coding we don't know, under a final chunked or with no chunked at all, is 501 (§6.1).
        if f.chunked_count > 0 && !f.chunked_last {
            return Err(HttpError::BadRequest("chunked not the final coding"));
        }
        if f.chunked_count > 1 {
            return Err(HttpError::BadRequest("chunked applied more than once"));
        }
        if f.other_coding {
            return Err(HttpError::UnknownCoding);
        }
        return Ok(Framing::Chunked);
    }
    match f.content_length {
        None | Some(0) => Ok(Framing::None),
        Some(n) if n > MAX_BODY_BYTES => Err(HttpError::BodyTooLarge),
        Some(n) => Ok(Framing::Length(n)),
    }
}

/// RFC 9110 §5.6.1 list elements, trimmed, empty ones skipped (`a, ,b` is `a`, `b`).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim).filter(|s| !s.is_empty())
}

fn trim(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// RFC 9110 §5.6.2 token characters.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
