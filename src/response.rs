//! Writing responses: the status line, the headers every response carries, the fixed JSON error
//! bodies and the one HTML page template.
//!
//! Owns: the bytes on the wire for a `Response`, and caching what changes only once a second (the
//! `Date` header and the two pages, which show the time). Does not own: which response a request
//! gets (`app`). No request bytes are ever copied into a body; the only request-derived value
//! written anywhere is a redirect's `Location`, built by `app` from validated parts.

use std::borrow::Cow;

use crate::clock::UtcTime;
use crate::decimal;
use crate::logger::{self, Style};
use crate::route::Page;

/// The page's whole stylesheet. The CSP allows exactly this text by its hash, so any edit here
/// must update `STYLE_HASH` (a unit test recomputes it).
pub const STYLE: &str = concat!(
    ":root{color-scheme:light dark}",
    "body{margin:0;min-height:100vh;display:grid;place-items:center;",
    "font:1.1rem/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;background:#0f172a;color:#e2e8f0}",
    "main{margin:1rem;padding:2rem 3rem;border-radius:1rem;background:#1e293b;box-shadow:0 10px 30px #0006;",
    "text-align:center}",
    "h1{margin:0 0 .5rem;font-size:2rem}",
    "p{margin:0;color:#94a3b8}",
);

/// base64(sha256(STYLE)), as CSP level 2 hash sources want it.
pub const STYLE_HASH: &str = "tBtkZOygc5WQW+QQn3Mx//zd+gcsCVUGxWo61RRdEc4=";

/// Headers on every response, errors and redirects included (SPEC §2). No `Server` header at all.
/// X-XSS-Protection is 0 on OWASP's advice: the old filter could itself be abused.
const SECURITY_HEADERS: &str = concat!(
    "Content-Security-Policy: default-src 'none'; style-src 'sha256-",
    "tBtkZOygc5WQW+QQn3Mx//zd+gcsCVUGxWo61RRdEc4=",
    "'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n",
    "Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n",
    "X-Content-Type-Options: nosniff\r\n",
    "X-Frame-Options: DENY\r\n",
    "X-XSS-Protection: 0\r\n",
    "Referrer-Policy: no-referrer\r\n",
    "Cross-Origin-Opener-Policy: same-origin\r\n",
    "Cross-Origin-Resource-Policy: same-origin\r\n",
    "Cache-Control: no-store\r\n",
);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Page(Page),
    /// `{"error": <reason phrase>, "message": ..., "status": ...}`; borrowed when made at startup
    /// (a limit's 429).
    Json(Cow<'static, str>),
    /// No body (redirects).
    Empty,
}

/// What the `Connection` header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// HTTP/1.1 keeping the connection: no header needed.
    Default,
    /// HTTP/1.0 keeping the connection: it must be said.
    KeepAlive,
    Close,
}

/// The `RateLimit-*` fields (and `Retry-After` on a 429).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit: u32,
    pub remaining: u64,
    pub reset_secs: u64,
    /// `Retry-After`, on a 429.
    pub retry_after: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Body,
    /// For HEAD: the headers of the GET response, no body.
    pub head_only: bool,
    pub location: Option<String>,
    /// `Allow: GET, HEAD` (on 405).
    pub allow: bool,
    pub rate: Option<RateHeaders>,
    pub connection: Connection,
}

impl Response {
    pub fn new(status: u16, body: Body) -> Response {
        Response {
            status,
            body,
            head_only: false,
            location: None,
            allow: false,
            rate: None,
            connection: Connection::Default,
        }
    }

    /// A JSON error with the standard message for `status`.
    pub fn error(status: u16) -> Response {
        Response::new(status, Body::Json(json_error(status, default_message(status)).into()))
    }
}

/// The standard reason phrase (RFC 9110 §15), also the `error` field of JSON bodies.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Fixed messages, worded like the Werkzeug errors the Flask service sent. None of them echoes
/// anything from the request.
fn default_message(status: u16) -> &'static str {
    match status {
        400 => "The browser (or proxy) sent a request that this server could not understand.",
        404 => "The requested URL was not found on the server.",
        405 => "The method is not allowed for the requested URL.",
        408 => "The request was not received in time.",
        413 => "The request body is larger than this server accepts.",
        431 => "The request header fields are too large.",
        501 => "The server does not support the transfer coding of the request.",
        505 => "The server does not support the HTTP version of the request.",
        _ => "The server encountered an internal error and was unable to complete your request.",
    }
}

/// A JSON error body. `message` is ours (fixed text or a configured rate), escaped all the same.
pub fn json_error(status: u16, message: &str) -> String {
    let mut s = String::with_capacity(64 + message.len());
    s.push_str("{\"error\":\"");
    let _ = logger::escape(&mut s, reason(status).as_bytes(), Style::Json);
    s.push_str("\",\"message\":\"");
    let _ = logger::escape(&mut s, message.as_bytes(), Style::Json);
    s.push_str("\",\"status\":");
    s.push_str(&status.to_string());
    s.push('}');
    s
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page template. Every value is escaped.
pub fn render_page(title: &str, message: &str, time: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n<h1>{}</h1>\n\
         <p>Current UTC time: <time>{}</time></p>\n</main>\n</body>\n</html>\n",
        html_escape(title),
        html_escape(message),
        html_escape(time),
    )
}

/// The parts of a response that change once a second, made once a second per worker.
pub struct Renderer {
    second: i64,
    date_line: String,
    status_page: String,
    health_page: String,
}

impl Renderer {
    pub fn new(unix_ms: i64) -> Renderer {
        let mut r = Renderer {
            second: i64::MIN,
            date_line: String::new(),
            status_page: String::new(),
            health_page: String::new(),
        };
        r.refresh(unix_ms);
        r
    }

    /// Redoes the cached text if the wall clock has moved to another second.
    pub fn refresh(&mut self, unix_ms: i64) {
        let second = unix_ms.div_euclid(1000);
        if second == self.second {
            return;
        }
        let t = UtcTime::from_unix_millis(second * 1000);
        self.second = second;
        self.date_line = format!("Date: {}\r\n", t.http_date());
        let time = t.page_time();
        self.status_page = render_page(Page::Status.title(), Page::Status.message(), &time);
        self.health_page = render_page(Page::Health.title(), Page::Health.message(), &time);
    }

    fn page(&self, page: Page) -> &str {
        match page {
            Page::Status => &self.status_page,
            Page::Health => &self.health_page,
        }
    }

    /// Appends `resp` to `out`; returns the number of bytes appended.
    ///
    /// Plain appends, no `write!`: the formatting machinery cost more than all the rest of a
    /// response together (callgrind, issue 6).
    pub fn write(&self, resp: &Response, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let (content_type, body) = match &resp.body {
            Body::Page(p) => ("text/html; charset=utf-8", self.page(*p).as_bytes()),
            Body::Json(s) => ("application/json", s.as_bytes()),
            Body::Empty => ("text/plain; charset=utf-8", &b""[..]),
        };
        out.extend_from_slice(b"HTTP/1.1 ");
        decimal::push(out, resp.status.into());
        push_all(out, &[" ", reason(resp.status), "\r\n", SECURITY_HEADERS, &self.date_line]);
        push_all(out, &["Content-Type: ", content_type, "\r\nContent-Length: "]);
        decimal::push(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
        if resp.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        if let Some(location) = &resp.location {
            push_all(out, &["Location: ", location, "\r\n"]);
        }
        if let Some(r) = &resp.rate {
            out.extend_from_slice(b"RateLimit-Limit: ");
            decimal::push(out, r.limit.into());
            out.extend_from_slice(b"\r\nRateLimit-Remaining: ");
            decimal::push(out, r.remaining);
            out.extend_from_slice(b"\r\nRateLimit-Reset: ");
            decimal::push(out, r.reset_secs);
            out.extend_from_slice(b"\r\n");
            if let Some(secs) = r.retry_after {
                out.extend_from_slice(b"Retry-After: ");
                decimal::push(out, secs);
                out.extend_from_slice(b"\r\n");
            }
        }
        match resp.connection {
            Connection::Default => {}
            Connection::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            Connection::Close => out.extend_from_slice(b"Connection: close\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        if !resp.head_only {
            out.extend_from_slice(body);
        }
        out.len() - start
    }
}

fn push_all(out: &mut Vec<u8>, parts: &[&str]) {
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
            }
        }
        out
    }

    #[test]
    fn style_hash_matches_the_stylesheet() {
        assert_eq!(base64(b"hi"), "aGk=");
        assert_eq!(STYLE_HASH, base64(&sha2::Sha256::digest(STYLE.as_bytes())));
        assert!(SECURITY_HEADERS.contains(&format!("'sha256-{STYLE_HASH}'")));
        assert!(!SECURITY_HEADERS.contains("unsafe-inline"));
    }

    #[test]
    fn page_contains_exactly_the_hashed_style() {
        let page = render_page("T", "M", "now");
        let start = page.find("<style>").unwrap() + "<style>".len();
        let end = page.find("</style>").unwrap();
        assert_eq!(&page[start..end], STYLE);
    }

    #[test]
    fn template_escapes_every_value() {
        let page = render_page("<t>&", "\"m'", "<script>");
        assert!(page.contains("<title>&lt;t&gt;&amp;</title>"));
        assert!(page.contains("<h1>&quot;m&#39;</h1>"));
        assert!(page.contains("<time>&lt;script&gt;</time>"));
        assert!(!page.contains("<script>"));
    }

    #[test]
    fn json_errors() {
        assert_eq!(
            json_error(429, "Rate limit exceeded: 10 per 1 minute"),
            r#"{"error":"Too Many Requests","message":"Rate limit exceeded: 10 per 1 minute","status":429}"#
        );
        assert_eq!(json_error(400, "a\"b\\c\n"), r#"{"error":"Bad Request","message":"a\"b\\c\u000a","status":400}"#);
    }

    #[test]
    fn every_status_we_send_has_a_reason() {
        for s in [200, 301, 308, 400, 404, 405, 408, 413, 429, 431, 500, 501, 503, 505] {
            assert_ne!(reason(s), "Unknown", "{s}");
        }
    }

    fn written(resp: &Response) -> String {
        let r = Renderer::new(784_111_777_000);
        let mut out = Vec::new();
        let n = r.write(resp, &mut out);
        assert_eq!(n, out.len());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn page_response() {
        let text = written(&Response::new(200, Body::Page(Page::Health)));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
        assert!(head.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        assert!(body.contains("Status: Healthy ✅"));
        assert!(body.contains("1994-11-06 08:49:37 UTC"));
        assert!(!head.to_ascii_lowercase().contains("server:"));
    }

    #[test]
    fn head_response_has_get_headers_and_no_body() {
        let get = written(&Response::new(200, Body::Page(Page::Status)));
        let head = written(&Response { head_only: true, ..Response::new(200, Body::Page(Page::Status)) });
        assert_eq!(head, get.split_once("\r\n\r\n").unwrap().0.to_owned() + "\r\n\r\n");
    }

    #[test]
    fn optional_headers() {
        let resp = Response {
            location: Some("https://example.com/status".into()),
            allow: true,
            rate: Some(RateHeaders { limit: 10, remaining: 0, reset_secs: 42, retry_after: Some(42) }),
            connection: Connection::Close,
            ..Response::error(429)
        };
        let text = written(&resp);
        for line in [
            "Location: https://example.com/status",
            "Allow: GET, HEAD",
            "RateLimit-Limit: 10",
            "RateLimit-Remaining: 0",
            "RateLimit-Reset: 42",
            "Retry-After: 42",
            "Connection: close",
            "Content-Type: application/json",
        ] {
            assert!(text.contains(&format!("\r\n{line}\r\n")), "{line}");
        }
        let keep = written(&Response { connection: Connection::KeepAlive, ..Response::error(404) });
        assert!(keep.contains("\r\nConnection: keep-alive\r\n"));
        assert!(!keep.contains("Retry-After"));
    }
}
