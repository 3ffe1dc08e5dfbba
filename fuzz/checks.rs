//! The invariants each fuzz target asserts: one public function per target, taking the raw input,
//! panicking when an invariant fails. "No panic" is never the whole check.
//!
//! One file, included with `#[path]` by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, nightly
//! and libFuzzer) and by the corpus replay (`tests/corpus/main.rs`, stable `cargo test`), so both
//! run exactly the same checks, and the server crate carries no fuzz-only code.
//!
//! Inputs are read as the server reads them: raw bytes for the parsers, and for the functions that
//! take structured values (proxy headers, environment variables) a small documented decoding of
//! the bytes, so that libFuzzer's byte mutations stay meaningful.

#![allow(dead_code)] // Each fuzz target uses one of these functions, the replay all of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use zayzoon::config::{Config, ConfigError, VARS, parse_cidr_list};
use zayzoon::conn::{AfterFlush, Session};
use zayzoon::http::{self, ChunkedDecoder, Fed, Framing, HttpError, Parse, Target, Version};
use zayzoon::limit::remote::{RedisUrl, Secret, TLS, UrlError, redact_userinfo};
use zayzoon::limit::{Cidr, ClientKey, Decision, Policy, Rate, Strategy};
use zayzoon::limits::{MAX_BODY_BYTES, MAX_HEAD_BYTES, MAX_HEADERS, MAX_PENDING_OUTPUT};
use zayzoon::limits::{MAX_LIMITS_PER_VAR, MAX_RATE_PERIOD_SECS};
use zayzoon::metrics::Counts;
use zayzoon::proxy::{self, Scheme};

/// The session harness of `conn`'s unit tests: the same worker's-eye view of a session.
#[path = "../src/conn/tests/harness.rs"]
mod harness;

/// The strict JSON reader of the integration tests: the judge of "valid JSON" for the logs.
#[path = "../tests/support/json.rs"]
mod json;

// ---------------------------------------------------------------------------------------------
// http_head: `http::parse_head`.

/// What one parse gave, owned, so that parses of different buffers can be compared.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Partial,
    Error(HttpError),
    Complete(HeadInfo),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct HeadInfo {
    method: String,
    target: String,
    /// The authority of an absolute-form target.
    authority: Option<String>,
    version: Version,
    headers: Vec<(String, Vec<u8>)>,
    len: usize,
    host: Option<String>,
    keep_alive: bool,
    framing: Framing,
    expect_continue: bool,
}

fn parse(buf: &[u8]) -> Outcome {
    let mut headers = http::empty_headers();
    match http::parse_head(buf, &mut headers) {
        Ok(Parse::Partial) => Outcome::Partial,
        Err(e) => Outcome::Error(e),
        Ok(Parse::Complete(h)) => Outcome::Complete(HeadInfo {
            method: h.method.to_owned(),
            target: h.target.raw.to_owned(),
            authority: h.target.authority.map(str::to_owned),
            version: h.version,
            headers: h.headers.iter().map(|f| (f.name.to_owned(), f.value.to_vec())).collect(),
            len: h.len,
            host: h.host.map(str::to_owned),
            keep_alive: h.keep_alive,
            framing: h.framing,
            expect_continue: h.expect_continue,
        }),
    }
}

/// `parse_head` is deterministic; an error is one of SPEC §2's statuses; a prefix of the input
/// (what a server reading in pieces sees first) is either still `Partial` or already gives the
/// answer for the whole input; a complete head is consistent with its fields (framing, Host,
/// keep-alive) and, written back in canonical form, parses to the same request.
pub fn http_head(data: &[u8]) {
    let whole = parse(data);
    assert_eq!(parse(data), whole, "same bytes, same result");
    match &whole {
        Outcome::Complete(h) => check_head(data, h),
        Outcome::Error(e) => assert!(matches!(e.status(), 400 | 413 | 431 | 501 | 505), "{e:?}"),
        Outcome::Partial => assert!(data.len() < MAX_HEAD_BYTES, "a full window is never Partial"),
    }
    for cut in cuts(hash(data), data.len(), 8) {
        let first = parse(&data[..cut]);
        assert!(first == Outcome::Partial || first == whole, "prefix {cut} gave {first:?}, the whole {whole:?}");
    }
}

fn check_head(data: &[u8], h: &HeadInfo) {
    assert!(h.len <= data.len() && h.len <= MAX_HEAD_BYTES, "consumed {} of {}", h.len, data.len());
    assert!(data[..h.len].ends_with(b"\r\n\r\n"), "a head ends with its blank line");
    assert!(h.headers.len() <= MAX_HEADERS);
    assert_eq!(parse(&data[..h.len]), Outcome::Complete(h.clone()), "the head alone decides");
    check_fields(h);
    check_escaped(&h.method);
    check_escaped(&h.target);
    for (_, value) in &h.headers {
        check_escaped(value); // a User-Agent or X-Amzn-Trace-Id goes to the access log
    }
    let canonical = write_back(h);
    match parse(&canonical) {
        Outcome::Complete(again) => {
            assert_eq!(HeadInfo { len: h.len, ..again }, *h, "written back: {:?}", String::from_utf8_lossy(&canonical))
        }
        Outcome::Error(e) if canonical.len() > MAX_HEAD_BYTES => assert_eq!(e.status(), 431),
        other => panic!("written back {:?}, parsed to {other:?}", String::from_utf8_lossy(&canonical)),
    }
}

/// A plain reading of SPEC §2 over the fields, to compare with what `parse_head` decided.
fn check_fields(h: &HeadInfo) {
    let named = |name: &str| -> Vec<&(String, Vec<u8>)> {
        h.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).collect()
    };
    let items = |v: &[u8]| -> Vec<Vec<u8>> {
        v.split(|&b| b == b',').map(|i| i.trim_ascii().to_vec()).filter(|i| !i.is_empty()).collect()
    };
    // The host is an absolute-form target's authority, else the one Host field (RFC 9112 §3.2.2).
    let hosts = named("host");
    match (h.version, hosts.len()) {
        (Version::Http10, 0) => assert_eq!(h.host, h.authority),
        (_, 1) if h.authority.is_some() => assert_eq!(h.host, h.authority),
        (_, 1) => assert_eq!(h.host.as_deref().map(str::as_bytes), Some(&hosts[0].1[..])),
        other => panic!("accepted with {other:?} Host fields"),
    }
    if let Some(host) = hosts.first() {
        assert!(http::valid_host(&host.1), "{host:?}");
    }
    if let Some(host) = &h.host {
        assert!(http::valid_host(host.as_bytes()), "{host:?}");
    }
    // Every member of every Content-Length, empty ones kept: `1,` is invalid, not 1 (issue 14).
    let members = |v: &[u8]| -> Vec<Vec<u8>> { v.split(|&b| b == b',').map(|i| i.trim_ascii().to_vec()).collect() };
    let lengths: Vec<Vec<u8>> = named("content-length").into_iter().flat_map(|(_, v)| members(v)).collect();
    let codings: Vec<Vec<u8>> = named("transfer-encoding").into_iter().flat_map(|(_, v)| items(v)).collect();
    if !named("transfer-encoding").is_empty() {
        assert_eq!(h.framing, Framing::Chunked, "Transfer-Encoding means chunked or an error");
        assert!(lengths.is_empty() && h.version == Version::Http11);
        assert_eq!(codings.len(), 1, "exactly one coding: {codings:?}");
        assert!(codings[0].eq_ignore_ascii_case(b"chunked"));
    } else if !lengths.is_empty() {
        // Digits only (no sign, no space), all the same number (`07` is `7`: RFC 9112 §6.3 asks
        // for identical decimal values), small enough to read.
        let numbers: Vec<u64> = lengths
            .iter()
            .map(|l| {
                assert!(!l.is_empty() && l.iter().all(u8::is_ascii_digit), "Content-Length {l:?}");
                std::str::from_utf8(l).unwrap().parse().expect("a length within the limit fits u64")
            })
            .collect();
        let n = numbers[0];
        assert!(numbers.iter().all(|&m| m == n), "differing lengths accepted: {lengths:?}");
        let want = if n == 0 { Framing::None } else { Framing::Length(n) };
        assert_eq!(h.framing, want);
        assert!(n <= MAX_BODY_BYTES);
    } else {
        assert_eq!(h.framing, Framing::None);
    }
    let tokens: Vec<Vec<u8>> = named("connection").into_iter().flat_map(|(_, v)| items(v)).collect();
    let has = |t: &[u8]| tokens.iter().any(|x| x.eq_ignore_ascii_case(t));
    let keep_alive = !has(b"close") && (h.version == Version::Http11 || has(b"keep-alive"));
    assert_eq!(h.keep_alive, keep_alive, "Connection: {tokens:?}");
}

/// What the access log prints of a client's text (`logger::Escaped`) is one printable-ASCII word
/// with no `"` (which delimits it in the line), and decodes back to exactly the text. In the JSON
/// format (`logger::JsonEscaped`, SPEC §6) it is printable ASCII that, in quotes, is one valid JSON
/// string (by the tests' strict reader), whose characters are each U+0000 to U+00FF and are exactly
/// the bytes; its only escapes are `\"`, `\\` and `\u00XX`.
fn check_escaped(text: impl AsRef<[u8]>) {
    let text = text.as_ref();
    let shown = zayzoon::logger::Escaped(text).to_string();
    assert!(shown.bytes().all(|b| b.is_ascii_graphic() && b != b'"'), "{shown:?}");
    let mut back = Vec::new();
    let mut rest = shown.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\\' {
            let hex = std::str::from_utf8(&tail[1..3]).unwrap();
            assert_eq!(tail[0], b'x', "{shown:?}");
            back.push(u8::from_str_radix(hex, 16).unwrap());
            rest = &tail[3..];
        } else {
            back.push(b);
            rest = tail;
        }
    }
    assert_eq!(back, text, "{shown:?}");

    let shown = zayzoon::logger::JsonEscaped(text).to_string();
    assert!(shown.bytes().all(|b| (b' '..=b'~').contains(&b)), "{shown:?}");
    let mut rest = shown.as_bytes();
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        let escape = &rest[at + 1..];
        let len = match escape {
            [b'"' | b'\\', ..] => 1,
            [b'u', b'0', b'0', h, l, ..] if [h, l].iter().all(|b| b.is_ascii_hexdigit()) => 5,
            _ => panic!("escape {:?} in {shown:?}", String::from_utf8_lossy(escape)),
        };
        rest = &escape[len..];
    }
    match json::parse(&format!("\"{shown}\"")) {
        Ok(json::Json::String(s)) => assert_eq!(json::latin1_bytes(&s).as_deref(), Some(text), "{shown:?}"),
        other => panic!("{shown:?} in quotes is {other:?}"),
    }
}

/// The request in canonical form: single spaces, `name: value`, CRLF line ends.
fn write_back(h: &HeadInfo) -> Vec<u8> {
    let minor = if h.version == Version::Http10 { 0 } else { 1 };
    let mut out = format!("{} {} HTTP/1.{minor}\r\n", h.method, h.target).into_bytes();
    for (name, value) in &h.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------------------------------------
// chunked: `http::ChunkedDecoder::feed`.

/// The first byte seeds the split points; the rest is a body. The decoder never consumes more than
/// it is given, consumes everything until it is done, gives the same answer however the body is
/// split (all at once, at random cuts, byte by byte), stays done, and never takes more than
/// `MAX_BODY_BYTES`. Its answer is the one a plain reading of RFC 9112 §7.1 gives (`reference`):
/// what it accepts, chunk lines and trailers included, is the grammar, and what it refuses is not.
/// Separately, a valid chunked encoding built from the input (chunk sizes from its bytes, hex
/// case, extensions and trailers varied) is accepted exactly up to its end.
pub fn chunked(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else { return };
    let whole = decode(body, &[]);
    let status = |r: &Result<(bool, usize), HttpError>| r.as_ref().map(|ok| *ok).map_err(HttpError::status);
    assert_eq!(status(&whole), reference(body).verdict(), "{:?}", String::from_utf8_lossy(body));
    let split = decode(body, &cuts(u64::from(seed) ^ hash(body), body.len(), 16));
    let bytes: Vec<usize> = (1..body.len()).collect();
    assert_eq!(split, whole, "random cuts");
    assert_eq!(decode(body, &bytes), whole, "byte by byte");
    let encoded = encode_chunked(data);
    let mut input = encoded.clone();
    input.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let fed = decode(&input, &cuts(hash(&input), input.len(), 8));
    if encoded.len() as u64 <= MAX_BODY_BYTES {
        assert_eq!(fed, Ok((true, encoded.len())), "{:?}", String::from_utf8_lossy(&encoded));
    } else {
        assert_eq!(fed, Err(HttpError::BodyTooLarge));
    }
}

/// Feeds `body` in the pieces `cuts` make: whether the body ended, and the bytes it took.
fn decode(body: &[u8], cuts: &[usize]) -> Result<(bool, usize), HttpError> {
    let mut d = ChunkedDecoder::default();
    let mut taken = 0;
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&body.len())) {
        let piece = &body[start..end];
        match d.feed(piece) {
            Ok(Fed { consumed, done }) => {
                assert!(consumed <= piece.len(), "consumed {consumed} of {}", piece.len());
                taken += consumed;
                assert!(taken as u64 <= MAX_BODY_BYTES);
                if done {
                    let after = d.feed(&body[start + consumed..]);
                    assert_eq!(after, Ok(Fed { consumed: 0, done: true }), "done stays done");
                    return Ok((true, taken));
                }
                assert_eq!(consumed, piece.len(), "until done, every byte is body");
            }
            Err(e) => {
                assert!(matches!(e, HttpError::BadRequest(_) | HttpError::BodyTooLarge), "{e:?}");
                return Err(e);
            }
        }
        start = end;
    }
    Ok((false, taken))
}

/// What a plain reading of the chunked grammar (RFC 9112 §7.1, RFC 9110 §5.6) makes of a whole
/// input, written independently of the decoder's state machine: recursive descent over the slice,
/// backtracking over whitespace where the grammar looks ahead.
///
/// ```text
/// chunked-body   = *chunk last-chunk trailer-section CRLF
/// chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// last-chunk     = 1*("0") [ chunk-ext ] CRLF
/// chunk-size     = 1*HEXDIG
/// chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
/// chunk-ext-name = token
/// chunk-ext-val  = token / quoted-string
/// quoted-string  = DQUOTE *( qdtext / quoted-pair ) DQUOTE
/// trailer-section = *( field-name ":" OWS field-value OWS CRLF )
/// ```
struct Reference<'a> {
    s: &'a [u8],
    /// The next byte to read.
    i: usize,
    /// The furthest byte looked at: when the input stops being a valid body, the byte that did it.
    seen: usize,
    /// The first hex digit at which a chunk size passed `MAX_BODY_BYTES`.
    size_past_limit: Option<usize>,
}

/// Why the reference stopped before the end of a body.
enum Stop {
    /// The input ended: a valid start of a body.
    Short,
    /// Byte `seen` cannot continue a valid body.
    Bad,
}

fn reference(s: &[u8]) -> Reference<'_> {
    Reference { s, i: 0, seen: 0, size_past_limit: None }
}

impl Reference<'_> {
    /// What the decoder must answer, as `decode` reports it (errors as statuses): the body's end, a
    /// refusal at the first byte that breaks the grammar, or "not yet" — unless the limit comes
    /// first (the decoder counts each byte before it reads it; a size past the limit is refused at
    /// the digit that takes it there).
    fn verdict(mut self) -> Result<(bool, usize), u16> {
        let outcome = self.body();
        let limit = self.size_past_limit.unwrap_or(usize::MAX).min(MAX_BODY_BYTES as usize);
        match outcome {
            Ok(()) if self.i <= limit => Ok((true, self.i)),
            Err(Stop::Bad) if self.seen < limit => Err(400),
            Err(Stop::Short) if self.s.len() <= limit => Ok((false, self.s.len())),
            _ => Err(413),
        }
    }

    fn peek(&mut self) -> Result<u8, Stop> {
        let b = *self.s.get(self.i).ok_or(Stop::Short)?;
        self.seen = self.seen.max(self.i);
        Ok(b)
    }

    /// Takes one byte if `ok` says so.
    fn take(&mut self, ok: impl Fn(u8) -> bool) -> Result<bool, Stop> {
        let b = self.peek()?;
        if ok(b) {
            self.i += 1;
        }
        Ok(ok(b))
    }

    /// Takes as many bytes as `ok` allows; how many.
    fn many(&mut self, ok: impl Fn(u8) -> bool) -> Result<usize, Stop> {
        let mut n = 0;
        while self.take(&ok)? {
            n += 1;
        }
        Ok(n)
    }

    fn expect_byte(&mut self, want: u8) -> Result<(), Stop> {
        if self.take(|b| b == want)? { Ok(()) } else { Err(Stop::Bad) }
    }

    fn crlf(&mut self) -> Result<(), Stop> {
        self.expect_byte(b'\r')?;
        self.expect_byte(b'\n')
    }

    fn body(&mut self) -> Result<(), Stop> {
        loop {
            let (start, mut size) = (self.i, 0u64);
            while self.take(|b| b.is_ascii_hexdigit())? {
                let digit = (self.s[self.i - 1] as char).to_digit(16).unwrap();
                size = size.saturating_mul(16).saturating_add(u64::from(digit));
                if size > MAX_BODY_BYTES && self.size_past_limit.is_none() {
                    self.size_past_limit = Some(self.i - 1);
                }
            }
            if self.i == start {
                return Err(Stop::Bad);
            }
            self.chunk_ext()?;
            self.crlf()?;
            if size == 0 {
                break;
            }
            let data = usize::try_from(size).unwrap_or(usize::MAX);
            if self.s.len() - self.i < data {
                return Err(Stop::Short);
            }
            self.i += data;
            self.crlf()?;
        }
        // The trailer section, then the final CRLF.
        while self.peek()? != b'\r' {
            if self.many(is_tchar)? == 0 {
                return Err(Stop::Bad);
            }
            self.expect_byte(b':')?;
            self.many(|b| b == b'\t' || b == b' ' || is_vchar_or_obs(b))?;
            self.crlf()?;
        }
        self.crlf()
    }

    fn chunk_ext(&mut self) -> Result<(), Stop> {
        let ws = |b: u8| b == b' ' || b == b'\t';
        loop {
            let before = self.i;
            self.many(ws)?;
            if !self.take(|b| b == b';')? {
                self.i = before; // No extension follows: that whitespace was not BWS.
                return Ok(());
            }
            self.many(ws)?;
            if self.many(is_tchar)? == 0 {
                return Err(Stop::Bad);
            }
            let after_name = self.i;
            self.many(ws)?;
            if !self.take(|b| b == b'=')? {
                self.i = after_name; // No value: the next `;` (or the CR) decides.
                continue;
            }
            self.many(ws)?;
            if self.take(|b| b == b'"')? {
                self.quoted_rest()?;
            } else if self.many(is_tchar)? == 0 {
                return Err(Stop::Bad);
            }
        }
    }

    /// A quoted-string after its opening quote: qdtext and quoted-pairs up to the closing quote.
    fn quoted_rest(&mut self) -> Result<(), Stop> {
        loop {
            match self.peek()? {
                b'"' => return self.expect_byte(b'"'),
                b'\\' => {
                    self.i += 1;
                    if !self.take(|b| b == b'\t' || b == b' ' || is_vchar_or_obs(b))? {
                        return Err(Stop::Bad);
                    }
                }
                b if b == b'\t' || b == b' ' || is_vchar_or_obs(b) => self.i += 1,
                _ => return Err(Stop::Bad),
            }
        }
    }
}

/// RFC 9110 §5.6.2 tchar, written out.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// VCHAR (RFC 5234) or obs-text (RFC 9110 §5.5).
fn is_vchar_or_obs(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Chunk extensions of every shape the grammar allows (BWS around `;` and `=`, token and quoted
/// values, escapes, obs-text), for `encode_chunked` to pick from.
const EXTENSIONS: [&str; 4] = [";name=\"v a\"", " \t;a ; b = c", ";q=\"\\\"\u{e9}\\\\\";t=1", ";!#$%&'*+-.^_`|~"];

/// A valid chunked body from arbitrary bytes: each byte `n` starts a chunk of the next `n % 32`
/// bytes (ending the body at a zero), written with the byte's bits choosing upper-case hex, a
/// leading zero and an extension (which one: the chunk's size); the last byte's bits choose a
/// trailer field.
fn encode_chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let size = usize::from(n % 32).min(tail.len());
        if size == 0 {
            break;
        }
        let hex = if n & 0x20 != 0 { format!("{size:X}") } else { format!("{size:x}") };
        let zero = if n & 0x40 != 0 { "0" } else { "" };
        let ext = if n & 0x80 != 0 { EXTENSIONS[size % EXTENSIONS.len()] } else { "" };
        out.extend_from_slice(format!("{zero}{hex}{ext}\r\n").as_bytes());
        out.extend_from_slice(&tail[..size]);
        out.extend_from_slice(b"\r\n");
        rest = &tail[size..];
    }
    out.extend_from_slice(b"0\r\n");
    if data.last().is_some_and(|b| b & 1 != 0) {
        out.extend_from_slice(b"X-Trailer: yes\r\n");
    }
    if data.last().is_some_and(|b| b & 2 != 0) {
        out.extend_from_slice(b"!#$%&'*+-.^_`|~:\t \xe9\"v\" \r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------------------------------------
// conn_bytes: `conn::Session`, the whole per-connection state machine, without sockets.

/// `flags` bits: 0 limiting on (2/minute per endpoint, 5/minute in all); 1 the peer is exempt;
/// 2–3 trusted hops; 4 `PUBLIC_HOST`; 5 draining.
fn world(flags: u8) -> zayzoon::conn::Ctx {
    let limits = zayzoon::limit::Settings {
        enabled: flags & 1 != 0,
        exempt: if flags & 2 != 0 { vec![Cidr::parse("192.0.2.0/24").unwrap()] } else { vec![] },
        ..harness::limits(5, 2)
    };
    let settings = zayzoon::conn::Settings {
        trusted_proxy_hops: usize::from(flags >> 2 & 3),
        public_host: (flags & 16 != 0).then(|| "example.com".to_owned()),
        ..harness::settings()
    };
    let mut ctx = harness::ctx(settings, limits, 64);
    ctx.draining = flags & 32 != 0;
    ctx.metrics = Some(Counts::default());
    ctx
}

/// Most bytes one response takes: the status page with every header is about 2.5 KiB, but a
/// redirect's `Location` holds the request's host and target (at most `MAX_HEAD_BYTES` together),
/// percent-encoding tripling their non-ASCII bytes.
const MAX_RESPONSE: usize = 3 * MAX_HEAD_BYTES + 4096;

/// Input: a flags byte (see `world`; bit 6 ends the input with EOF rather than a timeout,
/// bit 7 makes the peer IPv6), a seed byte for split points and reading pace, then the bytes a
/// client sends. The same bytes must get the same responses whether they arrive at once, in random
/// pieces, or to a client that reads its responses a few bytes at a time while it keeps sending
/// (backpressure must delay responses, never change them). Pending output never passes the cap
/// by more than one response, and what comes out is a well-formed sequence of responses, each with
/// SPEC §2's headers, nothing after a `Connection: close`.
pub fn conn_bytes(data: &[u8]) {
    let [flags, seed, input @ ..] = data else { return };
    let whole = converse(*flags, input, &[], None);
    let pieces = cuts(u64::from(*seed) ^ hash(input), input.len(), 12);
    same_output(&converse(*flags, input, &pieces, None), &whole, &format!("split at {pieces:?}"));
    let pace = 64 + usize::from(*seed) * 61;
    let slow = converse(*flags, input, &pieces, Some((pace, u64::from(*seed))));
    same_output(&slow, &whole, &format!("read {pace} bytes at a time, split at {pieces:?}"));
    check_responses(&whole);
}

fn same_output(got: &[u8], want: &[u8], how: &str) {
    if got != want {
        let (got, want) = (String::from_utf8_lossy(got), String::from_utf8_lossy(want));
        panic!("{how}: different responses.\n--- all at once:\n{want}\n--- {how}:\n{got}");
    }
}

/// Runs one connection the way `Conn::drive` does, with a client that sends `input` cut at `cuts`
/// and reads everything at once (`slow` = None) or `slow.0` bytes at a time, interleaved with its
/// sending by the seed `slow.1`. Ends with EOF or, when the client neither closes nor sends more,
/// with the header and keep-alive timeouts passing. Returns every byte the client received.
fn converse(flags: u8, input: &[u8], cuts: &[usize], slow: Option<(usize, u64)>) -> Vec<u8> {
    let mut w = world(flags);
    let mut s: Session = harness::session(if flags & 128 != 0 { "2001:db8::1" } else { "192.0.2.1" }, &w);
    let ends: Vec<usize> = cuts.iter().copied().chain([input.len()]).collect();
    let mut pieces = ends.iter().scan(0, |start, &end| {
        let piece = &input[*start..end];
        *start = end;
        Some(piece)
    });
    let mut out = Vec::new();
    let mut rng = slow.map_or(0, |(_, seed)| seed);
    let mut eof = flags & 64 == 0; // Not ending with EOF: treat as already sent.
    let mut ticks = 0;
    // Bounded: every step writes, reads or ends, and there are finitely many bytes either way.
    for step in 0.. {
        assert!(step < 1_000_000, "the conversation does not end");
        let pending = s.pending_output().len();
        assert!(pending <= MAX_PENDING_OUTPUT + MAX_RESPONSE, "pending output {pending}");
        rng = splitmix(rng);
        let reader_turn = slow.is_none() || rng & 1 == 0 || !s.wants_read();
        if pending > 0 && reader_turn {
            let n = slow.map_or(pending, |(pace, _)| pace.min(pending));
            out.extend_from_slice(&s.pending_output()[..n]);
            s.wrote(n);
            s.resume(&mut w);
            continue;
        }
        if pending == 0 && s.after_flush(&w) == AfterFlush::Close {
            break;
        }
        if s.wants_read() {
            if let Some(piece) = pieces.next() {
                s.receive(piece, &mut w);
                continue;
            }
            if !eof {
                eof = true;
                s.on_eof();
                continue;
            }
        }
        if pending > 0 {
            continue; // The client is still sending and reading; the server waits to write.
        }
        if s.is_closed() || ticks == 2 {
            break;
        }
        // Nothing to read or write: let the deadlines pass (a 408 for a partial request).
        ticks += 1;
        w.now += Duration::from_secs(if ticks == 1 { 10 } else { 75 });
        s.on_tick(&mut w);
    }
    assert!(s.pending_output().is_empty() || s.is_closed(), "the loop ended with output left");
    check_counted(&w, &out, s.pending_output());
    out
}

/// Every response queued, written or not, is counted once for the metrics (SPEC §6: `Requests`,
/// parser errors included), in its class.
fn check_counted(w: &zayzoon::conn::Ctx, written: &[u8], pending: &[u8]) {
    let statuses = harness::statuses(&[written, pending].concat());
    let counts = w.metrics.as_ref().expect("counting");
    assert_eq!(counts.requests, statuses.len() as u64, "{statuses:?}");
    let class = |c: u16| statuses.iter().filter(|&&s| s / 100 == c).count() as u64;
    assert_eq!(counts.classes, [class(2), class(3), class(4), class(5)], "{statuses:?}");
    assert_eq!(counts.rate_limited, statuses.iter().filter(|&&s| s == 429).count() as u64);
}

/// The headers SPEC §2 puts on every response.
const EVERY_RESPONSE: &[&str] = &[
    "content-security-policy",
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
    "referrer-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "cache-control",
    "date",
    "content-length",
    "content-type",
];

/// Parses `out` as a sequence of responses and checks each.
fn check_responses(out: &[u8]) {
    let mut rest = out;
    let mut closed = false;
    while !rest.is_empty() {
        assert!(!closed, "a response after Connection: close");
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("not a response: {other:?} at {:?}", String::from_utf8_lossy(rest)),
        };
        assert_eq!(resp.version, Some(1));
        let status = resp.code.unwrap();
        let value = |name: &str| {
            let mut v = resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
            let first = v.next().map(|h| std::str::from_utf8(h.value).unwrap());
            assert!(v.next().is_none(), "{name} repeated");
            first
        };
        for name in EVERY_RESPONSE {
            assert!(value(name).is_some(), "{status} without {name}");
        }
        assert!(value("server").is_none());
        if let Some(location) = value("location") {
            assert!(matches!(status, 301 | 308) && location.starts_with("https://"), "{status} {location}");
        }
        let length: usize = value("content-length").unwrap().parse().unwrap();
        // A HEAD response has the GET length and no body: the next response follows at once.
        let body = if rest[len..].is_empty() || rest[len..].starts_with(b"HTTP/1.1 ") { 0 } else { length };
        assert!(rest.len() >= len + body, "body cut short");
        if status >= 400 && body > 0 {
            assert_eq!(value("content-type"), Some("application/json"));
            assert!(rest[len..].starts_with(b"{\"error\":\""), "{status} body");
        }
        closed = value("connection") == Some("close");
        if matches!(status, 400 | 408 | 413 | 431 | 501 | 505) {
            assert!(closed, "{status} must close");
        }
        rest = &rest[len + body..];
    }
}

// ---------------------------------------------------------------------------------------------
// proxy_headers: `proxy::resolve` and the client key.

/// Input: a byte for the trusted hops (0–3, or 32), a byte choosing the peer's family, the peer's
/// address bytes, then header lines split at `\n`, each starting with a byte that picks its name
/// (`X-Forwarded-For` or `-Proto` in various cases, or a name from the line up to `:`). The
/// client is always the peer or one of the offered `X-Forwarded-For` addresses (exactly the one
/// ProxyFix picks, by a plain left-to-right reading), never an IPv4-mapped address; the scheme is
/// only ever what the rightmost `X-Forwarded-Proto` entry says; and the client key is the same
/// for an address in any of its spellings.
pub fn proxy_headers(data: &[u8]) {
    let [hops, family, rest @ ..] = data else { return };
    let hops = if hops % 8 == 7 { 32 } else { usize::from(hops % 4) };
    let (peer, rest): (IpAddr, &[u8]) = if family & 1 == 0 {
        let Some((a, rest)) = rest.split_first_chunk::<4>() else { return };
        (Ipv4Addr::from(*a).into(), rest)
    } else {
        let Some((a, rest)) = rest.split_first_chunk::<16>() else { return };
        let v6 = Ipv6Addr::from(*a);
        // Often a mapped IPv4 peer, as a dual-stack socket reports one.
        let [.., a, b, c, d] = v6.octets();
        let peer = if family & 2 != 0 { Ipv4Addr::new(a, b, c, d).to_ipv6_mapped() } else { v6 };
        (peer.into(), rest)
    };
    let owned: Vec<(String, &[u8])> = rest.split(|&b| b == b'\n').filter_map(header_line).collect();
    let headers: Vec<httparse::Header<'_>> =
        owned.iter().map(|(name, value)| httparse::Header { name, value }).collect();
    let got = proxy::resolve(peer, hops, &headers);
    assert_eq!(proxy::resolve(peer, hops, &headers), got, "deterministic");

    let fields = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect()
    };
    let parse_ip = |e: &[u8]| std::str::from_utf8(e).ok()?.parse::<IpAddr>().ok();
    let xff = fields("x-forwarded-for");
    let offered: Vec<IpAddr> = xff.iter().filter_map(|e| parse_ip(e)).map(|ip| ip.to_canonical()).collect();
    assert!(got.client == peer.to_canonical() || offered.contains(&got.client), "{got:?} not offered");
    assert!(matches!(got.client, IpAddr::V4(_)) || got.client.to_canonical() == got.client, "mapped client");
    let want_client = match hops {
        0 => None,
        n if xff.len() >= n => parse_ip(xff[xff.len() - n]),
        _ => None,
    };
    assert_eq!(got.client, want_client.unwrap_or(peer).to_canonical(), "hops {hops}, entries {xff:?}");
    let proto = fields("x-forwarded-proto");
    let want_scheme = match proto.last() {
        _ if hops == 0 => None,
        Some(p) if p.eq_ignore_ascii_case(b"http") => Some(Scheme::Http),
        Some(p) if p.eq_ignore_ascii_case(b"https") => Some(Scheme::Https),
        _ => None,
    };
    assert_eq!(got.scheme, want_scheme, "protos {proto:?}");

    // The key: an IPv4 address and its mapped form are one client; an IPv6 client is its /64.
    let key = ClientKey::of(got.client);
    assert_eq!(ClientKey::of(peer), ClientKey::of(peer.to_canonical()));
    let shown = key.to_string();
    let back: IpAddr = shown.trim_end_matches("/64").parse().expect("a key displays as an address");
    assert_eq!(ClientKey::of(back), key, "{shown}");
    if let (ClientKey::V6Prefix(_), IpAddr::V6(v6)) = (key, got.client) {
        let sibling = IpAddr::V6(Ipv6Addr::from(u128::from(v6) ^ u128::from(u64::MAX)));
        // (Unless the flip made an IPv4-mapped address, in ::/64: that one is an IPv4 client.)
        if sibling.to_canonical() == sibling {
            assert_eq!(ClientKey::of(sibling), key, "the same /64");
        }
    }
}

fn header_line(line: &[u8]) -> Option<(String, &[u8])> {
    let (&pick, rest) = line.split_first()?;
    let name = match pick % 8 {
        0 | 1 => "X-Forwarded-For",
        2 => "x-forwarded-for",
        3 | 4 => "X-Forwarded-Proto",
        5 => "X-FORWARDED-PROTO",
        _ => {
            let colon = rest.iter().position(|&b| b == b':')?;
            let name = std::str::from_utf8(&rest[..colon]).ok()?;
            return Some((name.to_owned(), &rest[colon + 1..]));
        }
    };
    Some((name.to_owned(), rest))
}

// ---------------------------------------------------------------------------------------------
// host: `http::valid_host`, `http::host_without_port`, `http::split_target`,
// `healthcheck::parse_url`.

/// A valid `Host` holds only bytes that are safe in a `Location` (letters, digits, `-._~` and the
/// port's `:`, or an IPv6 literal's `[]`): a reg-name accepted is one or more unreserved characters
/// (RFC 3986 §2.3, SPEC §2), its port up to 5 digits naming at most 65535, or empty. Its port-less
/// form is a valid prefix of it followed by nothing or `:port`, never ends in `:`, and a redirect
/// built from it names exactly that host; a request carrying it parses with it. `Target::parse`
/// gives parts that put together make the target again. A URL `parse_url` accepts is made of its
/// parts, and the request the health check sends for it parses with our own parser.
pub fn host(data: &[u8]) {
    if http::valid_host(data) {
        assert!(data.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b)), "{data:?}");
        let s = std::str::from_utf8(data).unwrap();
        if !s.starts_with('[') {
            let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
            let (name, port) = s.split_once(':').map_or((s, None), |(n, p)| (n, Some(p)));
            assert!(!name.is_empty() && name.bytes().all(unreserved), "reg-name {name:?} of {s:?}");
            let port_ok = |p: &str| p.is_empty() || p.len() <= 5 && p.parse::<u16>().is_ok();
            assert!(port.is_none_or(port_ok), "port of {s:?}");
        }
        let name = http::host_without_port(s);
        assert!(http::valid_host(name.as_bytes()) && !name.ends_with(':'), "{name:?} of {s:?}");
        let port = &s[name.len()..];
        assert!(port.is_empty() || port.starts_with(':') && (port == ":" || port[1..].parse::<u16>().is_ok()), "{s:?}");
        let location = format!("https://{name}/p?q");
        let t = Target::parse("GET", &location).unwrap();
        assert_eq!((t.authority, t.path(), t.query()), (Some(name), "/p", Some("q")));
        let request = format!("GET / HTTP/1.1\r\nHost: {s}\r\n\r\n");
        match parse(request.as_bytes()) {
            Outcome::Complete(h) => assert_eq!(h.host.as_deref(), Some(s)),
            // A reg-name has no length limit of its own; the head's 8 KiB is the one.
            Outcome::Error(e) if request.len() > MAX_HEAD_BYTES => assert_eq!(e.status(), 431),
            other => panic!("Host {s:?}: {other:?}"),
        }
    }
    let Ok(s) = std::str::from_utf8(data) else { return };
    check_split_target(s);
    if let Ok(url) = zayzoon::healthcheck::parse_url(s) {
        assert!(http::valid_host(url.authority.as_bytes()));
        assert!(url.path.starts_with('/'));
        let rebuilt = format!("http://{}{}", url.authority, url.path);
        assert!(rebuilt == s || (url.path == "/" && s == format!("http://{}", url.authority)), "{s:?}");
        let port = &url.authority[http::host_without_port(url.authority).len()..];
        let given = port.strip_prefix(':').filter(|p| !p.is_empty());
        assert_eq!(url.port, given.map_or(80, |p| p.parse().unwrap()), "{s:?}");
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: zayzoon-healthcheck\r\nConnection: close\r\n\r\n",
            url.path, url.authority
        );
        match parse(request.as_bytes()) {
            Outcome::Complete(h) => assert_eq!((h.target.as_str(), h.host.as_deref()), (url.path, Some(url.authority))),
            Outcome::Error(e) if request.len() > MAX_HEAD_BYTES => assert_eq!(e.status(), 431),
            other => panic!("the health check's own request for {s:?}: {other:?}"),
        }
    }
}

fn check_split_target(s: &str) {
    for method in ["GET", "OPTIONS"] {
        let Ok(t) = Target::parse(method, s) else { continue };
        let query = t.query().map(|q| format!("?{q}")).unwrap_or_default();
        assert!(!t.path().is_empty());
        match t.authority {
            None => assert_eq!(format!("{}{query}", t.path()), s),
            Some(a) => {
                assert!(!a.contains(['/', '?', '#']) && http::valid_host(a.as_bytes()), "{a:?}");
                let is = |scheme: &str| s.get(..scheme.len()).is_some_and(|p| p.eq_ignore_ascii_case(scheme));
                let scheme = if is("http://") {
                    7
                } else if is("https://") {
                    8
                } else {
                    panic!("{s:?}: no scheme")
                };
                let rest = &s[scheme + a.len()..];
                let path = t.path();
                assert!(rest == format!("{path}{query}") || (path == "/" && rest == query), "{s:?} → {t:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config_env: `Config::from_lookup`, `Rate::parse`, `Cidr::parse`, `parse_cidr_list`.

/// Input: NUL-separated entries `NAME=value` (later entries win; a name not in `config::VARS` is
/// never asked for), the value read as lossy UTF-8, as `Config::from_env` reads it. Names, not
/// positions in `VARS`, so that a seed keeps its meaning when a variable is added. Every value also goes through
/// the rate and CIDR parsers. A config error names a variable that was set, with the value it had,
/// and prints on one line; an accepted config holds what the variables said, and its startup
/// summary is one line with any Redis password replaced by `***`. A parsed rate or CIDR prints in
/// a form that parses back to the same value. The credentials (`REDIS_USERNAME`, `REDIS_PASSWORD`)
/// never show: the same input with other credentials gives the same error, summary and `Debug`
/// text. A `rediss://` URL is accepted exactly when the same `redis://` one is (in a TLS build;
/// never without TLS) and is redacted the same way. `REDIS_CA_FILE` is left out: it names a
/// file to read, not bytes to parse (its checks are `config`'s unit tests).
pub fn config_env(data: &[u8]) {
    let mut env: Vec<(&str, String)> = Vec::new();
    for entry in data.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else { continue };
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        let Some(name) = VARS.iter().map(|v| v.name).find(|n| n.as_bytes() == name) else { continue };
        env.retain(|(n, _)| *n != name);
        if name != "REDIS_CA_FILE" {
            env.push((name, String::from_utf8_lossy(value).into_owned()));
        }
    }
    for (_, value) in &env {
        check_rate(value);
        check_cidrs(value);
        check_rediss_twin(value);
    }
    let lookup = |name: &str| env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let result = Config::from_lookup(lookup);
    check_credentials_unseen(&env, &result);
    match result {
        Err(e) => {
            let raw = lookup(e.var).expect("the variable named was set");
            if VARS.iter().any(|v| v.name == e.var && v.secret) {
                assert_eq!(e.value, "***", "{e}");
            } else if e.var == "REDIS_URL" {
                // A REDIS_URL may hold a password, so its errors show it redacted: whatever came
                // before the last '@' after "://" ends in `***`, and text with an '@' but no
                // "://" is `***` whole.
                assert_eq!(e.value, zayzoon::limit::remote::redact_userinfo(&raw), "{e}");
                match e.value.split_once("://") {
                    Some((_, rest)) => assert!(rest.rsplit_once('@').is_none_or(|(u, _)| u.ends_with("***")), "{e}"),
                    None => assert!(!raw.contains('@') || e.value == "***", "{e}"),
                }
            } else {
                assert_eq!(raw, e.value, "{e}");
            }
            assert!(!e.value.trim().is_empty(), "a blank value is the default, not an error");
            assert!(!e.to_string().contains(char::is_control), "{e:?}");
        }
        Ok(c) => {
            let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
            if let Some(v) = set("RATE_LIMIT_DEFAULT") {
                assert_eq!(Some(c.policy.default.clone()), Rate::parse_list(v.trim()));
            }
            if let Some(v) = set("RATE_LIMIT_ENDPOINT") {
                assert_eq!(Some(c.policy.endpoint.clone()), Rate::parse_list(v.trim()));
            }
            if let Some(v) = set("RATE_LIMIT_EXEMPT") {
                assert_eq!(Some(c.policy.exempt.clone()), parse_cidr_list(v.trim()));
            }
            assert!(c.session.trusted_proxy_hops <= 32 && c.workers >= 1 && c.max_connections >= 1);
            let summary = c.summary();
            assert!(!summary.contains(char::is_control), "{summary:?}");
            let secret = |name: &str| set(name).map(|v| Secret::new(v.trim()));
            match &c.redis {
                Some(r) => {
                    assert_eq!((&r.username, &r.password), (&secret("REDIS_USERNAME"), &secret("REDIS_PASSWORD")));
                    // Never `#insecure`, nor any fragment.
                    assert!(!r.url.as_str().contains('#'), "{:?}", r.url);
                }
                None => assert!(secret("REDIS_USERNAME").is_none() && secret("REDIS_PASSWORD").is_none()),
            }
            if let Some(url) = c.redis.as_ref().map(|r| &r.url) {
                // Everything up to the last '@' may be userinfo (a password may hold '/', '?' or
                // '@'), so the redaction hides everything from its first ':' to that '@'.
                let shown = url.redacted();
                if let Some((userinfo, _)) = shown.split_once("://").unwrap().1.rsplit_once('@') {
                    assert!(userinfo.ends_with("***"), "{shown}");
                    assert_eq!(userinfo.matches(':').count(), usize::from(userinfo != "***"), "{shown}");
                }
                assert!(summary.contains(&format!("store={shown} ")), "{summary}");
            }
        }
    }
}

/// The same input with other credentials (non-blank, as the originals) gives the same error, or the
/// same summary and `Debug` text: neither depends on what the credentials are.
fn check_credentials_unseen(env: &[(&str, String)], result: &Result<Config, ConfigError>) {
    let secrets = ["REDIS_USERNAME", "REDIS_PASSWORD"];
    if !env.iter().any(|(n, v)| secrets.contains(n) && !v.trim().is_empty()) {
        return;
    }
    let other = |name: &str| {
        let (_, v) = env.iter().find(|(n, _)| *n == name)?;
        Some(if secrets.contains(&name) && !v.trim().is_empty() { "other-credential".to_owned() } else { v.clone() })
    };
    match (result, Config::from_lookup(other)) {
        (Err(a), Err(b)) => assert_eq!(a, &b, "an error depends on a credential"),
        (Ok(a), Ok(b)) => {
            assert_eq!(a.summary(), b.summary(), "the summary depends on a credential");
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "Debug depends on a credential");
        }
        (a, b) => panic!("other credentials changed the outcome: {a:?} / {b:?}"),
    }
}

/// A `rediss://` URL is accepted exactly when the same `redis://` one is, in a TLS build (and in
/// a build without TLS, never, saying so), and its redaction is the same after the scheme.
fn check_rediss_twin(v: &str) {
    let (plain, tls) = match (v.strip_prefix("redis://"), v.strip_prefix("rediss://")) {
        (Some(rest), _) => (v.to_owned(), format!("rediss://{rest}")),
        (None, Some(rest)) => (format!("redis://{rest}"), v.to_owned()),
        (None, None) => return,
    };
    let (a, b) = (RedisUrl::parse(&plain), RedisUrl::parse(&tls));
    if TLS {
        assert_eq!(a.is_ok(), b.is_ok(), "{plain:?} {a:?} / {tls:?} {b:?}");
    } else {
        assert_eq!(b, Err(UrlError::NoTls), "{tls:?}");
    }
    let (a, b) = (redact_userinfo(&plain), redact_userinfo(&tls));
    assert_eq!(a.strip_prefix("redis://"), b.strip_prefix("rediss://"), "{plain:?} / {tls:?}");
}

/// A list that parses prints in a form that parses back to the same list; each limit is in range;
/// a single limit is a list of one.
fn check_rate(v: &str) {
    if let Some(list) = Rate::parse_list(v) {
        assert!(!list.is_empty() && list.len() <= MAX_LIMITS_PER_VAR, "{v:?}");
        assert_eq!(Rate::parse_list(&Rate::list(&list)), Some(list.clone()), "{v:?}");
        for r in &list {
            assert!((1..=1_000_000_000).contains(&r.limit), "{v:?}");
            assert!((1..=MAX_RATE_PERIOD_SECS).contains(&r.period_secs()), "{v:?}");
        }
    }
    let Some(r) = Rate::parse(v) else { return };
    assert_eq!(Rate::parse(&r.to_string()), Some(r), "{v:?} → {r}");
    let unit = r.to_string().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(Rate::parse(&format!("{}/{} {unit}s", r.limit, r.multiple)), Some(r));
    assert_eq!(Rate::parse(&format!(" {v}\t")), Some(r), "surrounding space is ignored");
    assert_eq!(Rate::parse_list(v), Some(vec![r]), "one limit is a list of one");
}

fn check_cidrs(v: &str) {
    if let Some(c) = Cidr::parse(v) {
        let shown = c.to_string();
        assert_eq!(Cidr::parse(&shown), Some(c), "{v:?} → {shown}");
        let addr: IpAddr = shown.split('/').next().unwrap().parse().unwrap();
        assert!(c.contains(addr), "{shown} contains its own address");
        if let IpAddr::V4(v4) = addr {
            assert!(c.contains(v4.to_ipv6_mapped().into()), "{shown}: mapped form");
        }
    }
    if let Some(list) = parse_cidr_list(v) {
        let entries: Vec<&str> = v.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        assert_eq!(list.len(), entries.len());
        for (c, e) in list.iter().zip(entries) {
            assert_eq!(Cidr::parse(e), Some(*c));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// redis_reply: `limit::remote::parse_reply`, on what the `redis` crate makes of a Redis reply.

/// Input: a byte for the number of counters the request touched (0–3, limits of 10, 20 and 30
/// per minute) and, in its bit 4, the strategy; then the bytes of a reply as a Redis server sends
/// them (RESP2 or RESP3), parsed by the `redis` crate as the limiter thread's connection does.
/// `parse_reply` accepts exactly a bulk string of decimal numbers separated by single spaces: for
/// the fixed window a count ≥ 1 and a TTL per counter, for the token bucket `allowed now` and a
/// `d` per counter; it returns the states those make, in order; anything else is an error whose
/// text (which goes to the log) is short. The decision made from accepted states is consistent
/// with them.
pub fn redis_reply(data: &[u8]) {
    let [pick, resp @ ..] = data else { return };
    let n = usize::from(pick % 4);
    let strategy = if pick & 16 != 0 { Strategy::TokenBucket } else { Strategy::FixedWindow };
    let settings = zayzoon::limit::Settings {
        strategy,
        default: ["10/minute", "20/minute", "30/minute"][..n].iter().map(|r| Rate::parse(r).unwrap()).collect(),
        ..harness::limits(1, 1)
    };
    let counters = Policy::leak(settings).counters("192.0.2.1".parse().unwrap(), None).unwrap();
    let Ok(value) = redis::parse_redis_value(resp) else { return };
    match zayzoon::limit::remote::parse_reply(&value, counters) {
        Ok(states) => {
            let redis::Value::BulkString(text) = &value else { panic!("accepted {value:?}") };
            let text = std::str::from_utf8(text).expect("accepted text is ASCII");
            let numbers: Vec<u64> = if text.is_empty() {
                Vec::new()
            } else {
                text.split(' ').map(|s| s.parse().expect("accepted a number")).collect()
            };
            assert_eq!(numbers.iter().map(u64::to_string).collect::<Vec<_>>().join(" "), text, "canonical form");
            let states = &states[..n];
            let over = match strategy {
                Strategy::FixedWindow => {
                    assert_eq!(numbers.len(), 2 * n, "{n} counters, {text:?}");
                    for ((state, pair), counter) in states.iter().zip(numbers.chunks(2)).zip(counters.iter()) {
                        assert!(pair[0] >= 1, "{pair:?}");
                        assert_eq!(*state, counter.fixed_window(pair[0], pair[1].saturating_mul(1000)));
                    }
                    numbers.chunks(2).zip(counters.iter()).any(|(p, c)| p[0] > u64::from(c.rate.limit))
                }
                Strategy::TokenBucket => {
                    assert!(numbers.len() == 2 + n && numbers[0] <= 1, "{n} counters, {text:?}");
                    for ((state, &d), counter) in states.iter().zip(&numbers[2..]).zip(counters.iter()) {
                        assert_eq!(state.reset_us, d);
                        assert_eq!(state.over, numbers[0] == 0 && !counter.has_token(d));
                    }
                    states.iter().any(|s| s.over)
                }
            };
            match Decision::from_states(counters, states) {
                Decision::Unlimited => assert_eq!(n, 0),
                Decision::Limited { limit, remaining, reset_secs, refused } => {
                    assert_eq!(refused.is_some(), over, "{text:?}");
                    assert!(remaining <= u64::from(limit) && reset_secs >= 1);
                    if let Some(r) = refused {
                        assert_eq!(remaining, 0, "refused with {remaining} remaining");
                        assert!(r.retry_after_secs >= 1);
                    }
                }
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.chars().count() <= 160, "{text}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Up to `n` distinct cut points in `1..len`, sorted, from `seed`: the same input always splits
/// the same way, so a failure replays.
fn cuts(seed: u64, len: usize, n: usize) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let mut x = seed;
    let mut v: Vec<usize> = (0..n)
        .map(|_| {
            x = splitmix(x);
            1 + (x % (len as u64 - 1)) as usize
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a.
fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
