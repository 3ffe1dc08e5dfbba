//! What each request gets (SPEC §2): 429 when over a limit, else the HTTPS redirect, else the
//! route: the two pages, 405 for other methods on them, 404 for any other path.
//!
//! Owns: the order of those checks and the `Location` of redirects. Pure: a `Request` and a
//! limiter `Decision` in, a `Response` out.

use crate::http::{self, Head, Target, Version};
use crate::limit::Decision;
use crate::limits::{MAX_LOGGED_TRACE_ID, MAX_LOGGED_USER_AGENT};
use crate::proxy::{Forwarded, Scheme};
use crate::response::{Body, RateHeaders, Response};
use crate::route::Page;

/// What we keep of a request once its head is parsed: owned, so that it can wait for a limiter
/// decision while the input buffer moves on. Its text lives in one `String` that a connection
/// hands from one request to the next (`Request::new`, `into_buffers`): no allocation per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method, the target as sent, then the host, one after the other.
    text: String,
    method_end: usize,
    target_end: usize,
    has_host: bool,
    /// Where the path lies in the target (see `http::Target`).
    span: (usize, usize),
    /// The page the path names, if any: routing and the limiter's endpoint counters both read it.
    pub page: Option<Page>,
    pub version: Version,
    pub keep_alive: bool,
    pub forwarded: Forwarded,
    /// For the access log only (SPEC §6), kept only while it is on (`keep_logged_fields`): the
    /// `User-Agent`, then the `X-Amzn-Trace-Id`, as sent (a header value need not be UTF-8, so
    /// not in `text`), each cut to its limit. A second buffer handed along like `text`.
    logged: Vec<u8>,
    /// Where the user agent ends in `logged`, if one was sent.
    user_agent_end: Option<usize>,
    has_trace_id: bool,
}

impl Request {
    /// The request `head` describes, written into `text` (cleared first).
    pub fn new(mut text: String, head: &Head<'_, '_>, forwarded: Forwarded) -> Request {
        let (method, target, host) = (head.method, head.target.raw, head.host);
        text.clear();
        text.reserve(method.len() + target.len() + host.map_or(0, str::len)); // one allocation at most
        text.push_str(method);
        text.push_str(target);
        text.push_str(host.unwrap_or(""));
        Request {
            method_end: method.len(),
            target_end: method.len() + target.len(),
            has_host: host.is_some(),
            span: head.target.span,
            page: Page::of(head.target.path()),
            text,
            version: head.version,
            keep_alive: head.keep_alive,
            forwarded,
            logged: Vec::new(),
            user_agent_end: None,
            has_trace_id: false,
        }
    }

    /// Keeps the first `User-Agent` and `X-Amzn-Trace-Id` of `head` for the access record, in
    /// `buf` (cleared first).
    pub fn keep_logged_fields(&mut self, mut buf: Vec<u8>, head: &Head<'_, '_>) {
        let field = |name: &str| head.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
        buf.clear();
        if let Some(agent) = field("user-agent") {
            buf.extend_from_slice(&agent[..agent.len().min(MAX_LOGGED_USER_AGENT)]);
            self.user_agent_end = Some(buf.len());
        }
        if let Some(trace) = field("x-amzn-trace-id") {
            buf.extend_from_slice(&trace[..trace.len().min(MAX_LOGGED_TRACE_ID)]);
            self.has_trace_id = true;
        }
        self.logged = buf;
    }

    /// Gives back the buffers, for the connection's next request.
    pub fn into_buffers(self) -> (String, Vec<u8>) {
        (self.text, self.logged)
    }

    /// The `User-Agent` as sent, at most `MAX_LOGGED_USER_AGENT` bytes, if kept.
    pub fn user_agent(&self) -> Option<&[u8]> {
        self.user_agent_end.map(|end| &self.logged[..end])
    }

    /// The `X-Amzn-Trace-Id` as sent, at most `MAX_LOGGED_TRACE_ID` bytes, if kept.
    pub fn trace_id(&self) -> Option<&[u8]> {
        self.has_trace_id.then(|| &self.logged[self.user_agent_end.unwrap_or(0)..])
    }

    pub fn method(&self) -> &str {
        &self.text[..self.method_end]
    }

    fn target(&self) -> Target<'_> {
        Target { raw: &self.text[self.method_end..self.target_end], authority: None, span: self.span }
    }

    pub fn host(&self) -> Option<&str> {
        self.has_host.then(|| &self.text[self.target_end..])
    }

    /// The path, compared byte for byte by routing (no percent-decoding).
    pub fn path(&self) -> &str {
        self.target().path()
    }

    /// What follows the path's `?`, if anything does.
    pub fn query(&self) -> Option<&str> {
        self.target().query()
    }

    fn is_get_or_head(&self) -> bool {
        matches!(self.method(), "GET" | "HEAD")
    }
}

/// The response to `req`, given the limiter's `decision` and the configured `PUBLIC_HOST`.
pub fn respond(req: &Request, decision: Decision, public_host: Option<&str>) -> Response {
    let mut resp = route(req, decision, public_host);
    if let Decision::Limited { limit, remaining, reset_secs, refused } = decision {
        let retry_after = refused.map(|r| r.retry_after_secs);
        resp.rate = Some(RateHeaders { limit, remaining, reset_secs, retry_after });
    }
    resp.head_only = req.method() == "HEAD";
    resp
}

fn route(req: &Request, decision: Decision, public_host: Option<&str>) -> Response {
    if let Decision::Limited { refused: Some(refusal), .. } = decision {
        // Made once, at startup: a flood of refusals costs no formatting.
        return Response::new(429, Body::Json(refusal.by.refusal.as_str().into()));
    }
    let path = req.path();
    // A target that is not a path (`OPTIONS *`) has nothing to redirect to.
    let redirects = req.page.is_none_or(Page::redirects) && path.starts_with('/');
    if req.forwarded.scheme == Some(Scheme::Http) && redirects {
        let Some(host) = public_host.or(req.host().map(http::host_without_port)) else {
            // No host to send the client to (HTTP/1.0 without Host, no PUBLIC_HOST).
            return Response::error(400);
        };
        // `PUBLIC_HOST` keeps its port, but an empty one (`example.com:`, valid in RFC 3986) is the
        // default port: dropped, so that a Location never ends its authority with ':'.
        let host = host.strip_suffix(':').unwrap_or(host);
        let mut location = format!("https://{host}");
        percent_encode_into(&mut location, path);
        if let Some(query) = req.query() {
            location.push('?');
            percent_encode_into(&mut location, query);
        }
        let status = if req.is_get_or_head() { 301 } else { 308 };
        return Response { location: Some(location), ..Response::new(status, Body::Empty) };
    }
    match req.page {
        None => Response::error(404),
        Some(_) if !req.is_get_or_head() => Response { allow: true, ..Response::error(405) },
        Some(page) => Response::new(200, Body::Page(page)),
    }
}

/// Copies `s` (a validated target part: visible ASCII and UTF-8) into a `Location`, percent-encoding
/// the non-ASCII bytes, which a header value should not carry raw.
fn percent_encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_graphic() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::Connection;

    /// The request that `method target` with `host` (HTTP/1.0 without a Host when `None`) parses to.
    fn request(text: String, method: &str, target: &str, scheme: Option<Scheme>, host: Option<&str>) -> Request {
        let raw = match host {
            Some(h) => format!("{method} {target} HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            None => format!("{method} {target} HTTP/1.0\r\n\r\n"),
        };
        let mut headers = http::empty_headers();
        let Ok(http::Parse::Complete(head)) = http::parse_head(raw.as_bytes(), &mut headers) else {
            panic!("{raw:?} does not parse")
        };
        let forwarded = Forwarded { client: "203.0.113.9".parse().unwrap(), scheme };
        Request::new(text, &head, forwarded)
    }

    fn req_to(method: &str, target: &str, scheme: Option<Scheme>, host: Option<&str>) -> Request {
        request(String::new(), method, target, scheme, host)
    }

    fn req(method: &str, target: &str, scheme: Option<Scheme>) -> Request {
        req_to(method, target, scheme, Some("example.com:8443"))
    }

    #[test]
    fn request_parts_agree_with_the_parsed_target() {
        for target in [
            "/",
            "/status",
            "/status?",
            "/a?b?c",
            "*",
            "http://h",
            "http://h?q",
            "HTTPS://h:1/p/q?r=s",
            "http://h/",
            "http://h/health",
        ] {
            let r = req_to("OPTIONS", target, None, Some("host.example"));
            let t = Target::parse("OPTIONS", target).unwrap();
            assert_eq!(r.method(), "OPTIONS");
            assert_eq!(r.target().raw, target);
            assert_eq!(r.path(), t.path(), "{target}");
            assert_eq!(r.query(), t.query(), "{target}");
            assert_eq!(r.page, Page::of(t.path()), "{target}");
            assert_eq!(r.host(), Some(t.authority.unwrap_or("host.example")), "{target}");
        }
        assert_eq!(req_to("GET", "/x", None, None).host(), None);
        // The buffer is reused: a longer request and then a shorter one in the same String.
        let long = req_to("OPTIONS", "/a/very/long/target?with=query", None, Some("h")).into_buffers().0;
        let capacity = long.capacity();
        let short = request(long, "GET", "/", None, Some("h"));
        assert_eq!((short.method(), short.target().raw, short.host()), ("GET", "/", Some("h")));
        assert_eq!(short.into_buffers().0.capacity(), capacity);
    }

    /// `raw`'s request with its logged fields kept in `buf`.
    fn logged(raw: &[u8], buf: Vec<u8>) -> Request {
        let mut headers = http::empty_headers();
        let Ok(http::Parse::Complete(head)) = http::parse_head(raw, &mut headers) else { panic!("{raw:?}") };
        let forwarded = Forwarded { client: "203.0.113.9".parse().unwrap(), scheme: None };
        let mut req = Request::new(String::new(), &head, forwarded);
        req.keep_logged_fields(buf, &head);
        req
    }

    #[test]
    fn logged_fields_are_the_first_of_each_as_sent_and_cut_to_their_limits() {
        let r = logged(b"GET / HTTP/1.1\r\nHost: a\r\nuser-AGENT: a\xff\"b\tc\r\nUser-Agent: second\r\n\r\n", vec![]);
        assert_eq!(r.user_agent(), Some(&b"a\xff\"b\tc"[..]));
        assert_eq!(r.trace_id(), None);
        let r = logged(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Amzn-Trace-Id: Root=1-67891233-abcdef012345678912345678\r\n\r\n",
            vec![],
        );
        assert_eq!((r.user_agent(), r.trace_id()), (None, Some(&b"Root=1-67891233-abcdef012345678912345678"[..])));
        let r = logged(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"left over".to_vec());
        assert_eq!((r.user_agent(), r.trace_id()), (None, None));
        // At the limits and one past them.
        for (agent, trace, kept) in [(256, 128, (256, 128)), (257, 129, (256, 128)), (0, 0, (0, 0))] {
            let raw = format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX-Amzn-Trace-Id: {}\r\nUser-Agent: {}\r\n\r\n",
                "t".repeat(trace),
                "u".repeat(agent)
            );
            let r = logged(raw.as_bytes(), vec![]);
            assert_eq!((r.user_agent().unwrap().len(), r.trace_id().unwrap().len()), kept, "{agent} {trace}");
            assert!(r.user_agent().unwrap().iter().all(|&b| b == b'u'));
            assert!(r.trace_id().unwrap().iter().all(|&b| b == b't'));
        }
        // The buffer is handed back for the next request.
        let (_, buf) =
            logged(b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\n\r\n", Vec::with_capacity(300)).into_buffers();
        assert_eq!(buf.capacity(), 300);
    }

    fn get(target: &str) -> Response {
        respond(&req("GET", target, None), Decision::Unlimited, None)
    }

    #[test]
    fn pages() {
        assert_eq!(get("/status"), Response::new(200, Body::Page(Page::Status)));
        assert_eq!(get("/health?probe=1"), Response::new(200, Body::Page(Page::Health)));
        assert_eq!(get("http://example.com/health").body, Body::Page(Page::Health));
        let head = respond(&req("HEAD", "/status", None), Decision::Unlimited, None);
        assert!(head.head_only);
        assert_eq!(head.status, 200);
    }

    #[test]
    fn not_found_compares_bytes() {
        for path in ["/", "/st%61tus", "/status/", "/STATUS", "/health.html", "/favicon.ico"] {
            assert_eq!(get(path).status, 404, "{path}");
        }
        assert_eq!(respond(&req("OPTIONS", "*", None), Decision::Unlimited, None).status, 404);
    }

    #[test]
    fn other_methods_are_405_with_allow() {
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "get", "BREW"] {
            let r = respond(&req(m, "/health", None), Decision::Unlimited, None);
            assert_eq!((r.status, r.allow), (405, true), "{m}");
        }
        assert_eq!(respond(&req("POST", "/other", None), Decision::Unlimited, None).status, 404);
    }

    #[test]
    fn redirects_plain_http_except_health() {
        let r = respond(&req("GET", "/status?a=1&b", Some(Scheme::Http)), Decision::Unlimited, None);
        assert_eq!((r.status, r.location.as_deref()), (301, Some("https://example.com/status?a=1&b")));
        let r = respond(&req("POST", "/nowhere", Some(Scheme::Http)), Decision::Unlimited, None);
        assert_eq!((r.status, r.location.as_deref()), (308, Some("https://example.com/nowhere")));
        let r = respond(&req("HEAD", "/status", Some(Scheme::Http)), Decision::Unlimited, Some("public.example"));
        assert_eq!((r.status, r.location.as_deref()), (301, Some("https://public.example/status")));
        assert_eq!(respond(&req("GET", "/health", Some(Scheme::Http)), Decision::Unlimited, None).status, 200);
        assert_eq!(respond(&req("GET", "/status", Some(Scheme::Https)), Decision::Unlimited, None).status, 200);
        let r = respond(&req("GET", "/caf\u{e9}", Some(Scheme::Http)), Decision::Unlimited, None);
        assert_eq!(r.location.as_deref(), Some("https://example.com/caf%C3%A9"));
    }

    #[test]
    fn redirect_without_any_host_is_400() {
        let r = req_to("GET", "/status", Some(Scheme::Http), None);
        assert_eq!(respond(&r, Decision::Unlimited, None).status, 400);
        assert_eq!(respond(&r, Decision::Unlimited, Some("p.example")).status, 301);
    }

    /// Issue 14: hosts real deployments send redirect to themselves; an empty port, from the
    /// request or `PUBLIC_HOST`, leaves no trailing ':' in the Location.
    #[test]
    fn redirect_to_docker_names_and_empty_ports() {
        let location = |host: &str, public: Option<&str>| {
            let r = req_to("GET", "/status", Some(Scheme::Http), Some(host));
            respond(&r, Decision::Unlimited, public).location
        };
        assert_eq!(location("my_app:8443", None).as_deref(), Some("https://my_app/status"));
        assert_eq!(location("svc~1.internal", None).as_deref(), Some("https://svc~1.internal/status"));
        assert_eq!(location("example.com:", None).as_deref(), Some("https://example.com/status"));
        assert_eq!(location("[::1]:", None).as_deref(), Some("https://[::1]/status"));
        assert_eq!(location("h", Some("public.example:")).as_deref(), Some("https://public.example/status"));
        assert_eq!(location("h", Some("[::1]:")).as_deref(), Some("https://[::1]/status"));
        assert_eq!(location("h", Some("public.example:8443")).as_deref(), Some("https://public.example:8443/status"));
    }

    #[test]
    fn ipv6_host_keeps_its_brackets() {
        let r = req_to("GET", "/status", Some(Scheme::Http), Some("[2001:db8::1]:8080"));
        assert_eq!(respond(&r, Decision::Unlimited, None).location.as_deref(), Some("https://[2001:db8::1]/status"));
    }

    #[test]
    fn limits_come_first_and_show_in_headers() {
        use crate::limit::{Policy, Rate, Refusal, Settings, Strategy};
        let settings = Settings {
            enabled: true,
            strategy: Strategy::FixedWindow,
            default: vec![Rate::per_minute(10)],
            endpoint: vec![Rate::per_minute(5)],
            exempt: vec![],
        };
        let counters = Policy::leak(settings).counters("203.0.113.9".parse().unwrap(), None).unwrap();
        let by = counters.iter().next().unwrap();
        let denied = Decision::Limited {
            limit: 10,
            remaining: 0,
            reset_secs: 17,
            refused: Some(Refusal { by, retry_after_secs: 9 }),
        };
        // Over the limit beats the redirect and the 404.
        let r = respond(&req("GET", "/nowhere", Some(Scheme::Http)), denied, None);
        assert_eq!(r.status, 429);
        let message = r#"{"error":"Too Many Requests","message":"Rate limit exceeded: 10 per 1 minute","status":429}"#;
        assert_eq!(r.body, Body::Json(message.into()));
        assert_eq!(r.rate, Some(RateHeaders { limit: 10, remaining: 0, reset_secs: 17, retry_after: Some(9) }));
        let ok = Decision::Limited { limit: 10, remaining: 3, reset_secs: 5, refused: None };
        let r = respond(&req("GET", "/status", None), ok, None);
        assert_eq!(r.rate, Some(RateHeaders { limit: 10, remaining: 3, reset_secs: 5, retry_after: None }));
        assert_eq!(get("/status").rate, None);
        assert_eq!(get("/status").connection, Connection::Default);
    }
}
