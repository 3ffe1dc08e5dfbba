//! The session without sockets: bytes in, bytes out. Fragmentation lives here: every request is
//! fed at every split point and must give the same responses.

use super::*;
use crate::limit::{CheckId, MemoryStore, Policy, Rate};
use std::sync::Arc;

struct Harness {
    settings: Settings,
    limiter: Limiter,
    renderer: Renderer,
    now: Instant,
    draining: bool,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_policy(Policy {
            enabled: false,
            default: Rate::per_minute(1),
            endpoint: Rate::per_minute(1),
            exempt: vec![],
        })
    }

    fn with_policy(policy: Policy) -> Harness {
        Harness {
            settings: Settings {
                trusted_proxy_hops: 1,
                public_host: None,
                header_timeout: Duration::from_secs(10),
                keepalive_timeout: Duration::from_secs(75),
                access_log: false,
            },
            limiter: Limiter::new(Arc::new(policy), Arc::new(MemoryStore::default()), None),
            renderer: Renderer::new(784_111_777_000),
            now: Instant::now(),
            draining: false,
        }
    }

    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            now: self.now,
            wall_ms: 784_111_777_000,
            settings: &self.settings,
            limiter: &mut self.limiter,
            renderer: &self.renderer,
            draining: self.draining,
        }
    }

    fn session(&mut self) -> Session {
        let ctx = self.ctx();
        Session::new("192.0.2.1".parse().unwrap(), Ticket { slot: 0, serial: 0 }, &ctx)
    }

    /// Feeds `input` in the given pieces, taking the output as a fast reader would.
    fn run_split(&mut self, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Session) {
        let mut s = self.session();
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            s.receive(&input[start..end], &mut self.ctx());
            drain(&mut s, &mut out, &mut self.ctx());
            start = end;
        }
        (out, s)
    }

    fn run(&mut self, input: &[u8]) -> (String, Session) {
        let (out, s) = self.run_split(input, &[]);
        (String::from_utf8(out).unwrap(), s)
    }
}

/// Takes everything pending, as a client that reads promptly would, resuming held-back input.
fn drain(s: &mut Session, out: &mut Vec<u8>, ctx: &mut Ctx<'_>) {
    loop {
        let pending = s.pending_output().to_vec();
        if pending.is_empty() {
            break;
        }
        out.extend_from_slice(&pending);
        s.wrote(pending.len(), ctx);
        s.resume(ctx);
    }
}

fn statuses(out: &str) -> Vec<u16> {
    out.match_indices("HTTP/1.1 ").map(|(i, _)| out[i + 9..i + 12].parse().unwrap()).collect()
}

const MIXED: &[u8] = b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n\
POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /nowhere HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
HEAD /health HTTP/1.1\r\nHost: a\r\n\r\n\
GET /health HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\n\r\n\
GET /status HTTP/1.1\r\nHost: a:8080\r\nX-Forwarded-Proto: http\r\n\r\n";

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (out, s) = Harness::new().run(MIXED);
    assert_eq!(statuses(&out), [200, 405, 404, 200, 200, 301]);
    assert!(out.contains("\r\nLocation: https://a/status\r\n"));
    assert!(s.is_idle());
}

#[test]
fn every_split_point_gives_the_same_output() {
    let mut h = Harness::new();
    let (whole, _) = h.run_split(MIXED, &[]);
    for cut in 1..MIXED.len() {
        let (out, _) = h.run_split(MIXED, &[cut]);
        assert_eq!(out, whole, "split at {cut}");
    }
}

#[test]
fn byte_by_byte_gives_the_same_output() {
    let mut h = Harness::new();
    let (whole, _) = h.run_split(MIXED, &[]);
    let cuts: Vec<usize> = (1..MIXED.len()).collect();
    let (out, _) = h.run_split(MIXED, &cuts);
    assert_eq!(out, whole);
}

#[test]
fn backpressure_stops_processing_until_output_drains() {
    let mut h = Harness::new();
    let mut s = h.session();
    let one = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
    let input = one.repeat(500);
    s.receive(&input, &mut h.ctx());
    let pending = s.pending_output().len();
    assert!(pending >= MAX_PENDING_OUTPUT, "{pending}");
    assert!(pending < MAX_PENDING_OUTPUT + 4096, "at most one response past the cap: {pending}");
    assert!(!s.wants_read(), "no reading while the client does not read");
    let mut out = Vec::new();
    drain(&mut s, &mut out, &mut h.ctx());
    assert_eq!(statuses(&String::from_utf8(out).unwrap()).len(), 500);
    assert!(s.wants_read());
    assert!(s.is_idle());
}

#[test]
fn http10_closes_unless_asked() {
    let (out, s) = Harness::new().run(b"GET /health HTTP/1.0\r\n\r\nGET /health HTTP/1.0\r\n\r\n");
    assert_eq!(statuses(&out), [200], "nothing after a closing response");
    assert!(out.contains("\r\nConnection: close\r\n"));
    assert!(matches!(s.state, State::Closing { linger: false }));
    let (out, s) = Harness::new().run(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(out.contains("\r\nConnection: keep-alive\r\n"));
    assert!(s.is_idle());
}

#[test]
fn connection_close_is_honoured() {
    let (out, s) = Harness::new().run(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert!(out.contains("\r\nConnection: close\r\n"));
    let mut s = s;
    assert_eq!(s.after_flush(&Harness::new().ctx()), AfterFlush::Close);
}

#[test]
fn malformed_request_gets_400_and_closes_lingering() {
    let (out, mut s) =
        Harness::new().run(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nBAD REQUEST\r\n\r\nGET /health HTTP/1.1\r\n");
    assert_eq!(statuses(&out), [200, 400]);
    assert!(out.ends_with(r#"{"error":"Bad Request","message":"The browser (or proxy) sent a request that this server could not understand.","status":400}"#));
    let h = Harness::new();
    let mut h = h;
    assert_eq!(s.after_flush(&h.ctx()), AfterFlush::ShutdownWrite);
    assert!(s.wants_read(), "lingering reads and discards");
    s.receive(b"more", &mut h.ctx());
    assert!(s.pending_output().is_empty());
    s.on_eof();
    assert!(s.is_closed());
}

#[test]
fn oversized_body_gets_413() {
    let (out, _) = Harness::new().run(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n");
    assert_eq!(statuses(&out), [413]);
    assert!(out.contains("\r\nConnection: close\r\n"));
}

#[test]
fn bad_chunk_after_head_gets_400_only() {
    let (out, s) = Harness::new().run(b"POST /status HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(statuses(&out), [400], "the request is not also answered");
    assert!(matches!(s.state, State::Closing { linger: true }));
}

#[test]
fn expect_continue_is_answered_without_reading_the_body() {
    let (out, s) =
        Harness::new().run(b"POST /status HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(statuses(&out), [405]);
    assert!(out.contains("\r\nConnection: close\r\n"));
    assert!(matches!(s.state, State::Closing { linger: true }));
}

#[test]
fn partial_head_times_out_with_408() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(b"GET /health HTTP/1.1\r\n", &mut h.ctx());
    h.now += Duration::from_secs(9);
    s.on_tick(&mut h.ctx());
    assert!(s.pending_output().is_empty(), "not yet");
    h.now += Duration::from_secs(1);
    s.on_tick(&mut h.ctx());
    let out = String::from_utf8(s.pending_output().to_vec()).unwrap();
    assert_eq!(statuses(&out), [408]);
}

#[test]
fn slow_body_times_out_from_the_first_byte_of_the_request() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab", &mut h.ctx());
    h.now += Duration::from_secs(10);
    s.on_tick(&mut h.ctx());
    assert_eq!(statuses(std::str::from_utf8(s.pending_output()).unwrap()), [408]);
}

#[test]
fn idle_connections_close_silently() {
    let mut h = Harness::new();
    let mut s = h.session();
    h.now += Duration::from_secs(10);
    s.on_tick(&mut h.ctx());
    assert!(s.is_closed(), "a new connection has the header timeout to start");
    let mut s = h.session();
    s.receive(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx());
    let mut out = Vec::new();
    drain(&mut s, &mut out, &mut h.ctx());
    h.now += Duration::from_secs(74);
    s.on_tick(&mut h.ctx());
    assert!(!s.is_closed());
    h.now += Duration::from_secs(1);
    s.on_tick(&mut h.ctx());
    assert!(s.is_closed(), "keep-alive timeout");
    assert!(s.pending_output().is_empty());
}

#[test]
fn client_not_reading_is_closed_after_the_keepalive_timeout() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(&b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n".repeat(3), &mut h.ctx());
    s.wrote(10, &h.ctx());
    h.now += Duration::from_secs(75);
    s.on_tick(&mut h.ctx());
    assert!(s.is_closed());
}

#[test]
fn eof_after_complete_requests_answers_them_then_closes() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET /sta", &mut h.ctx());
    s.on_eof();
    assert_eq!(statuses(std::str::from_utf8(s.pending_output()).unwrap()), [200]);
    let n = s.pending_output().len();
    s.wrote(n, &h.ctx());
    assert_eq!(s.after_flush(&h.ctx()), AfterFlush::Close);
}

#[test]
fn draining_closes_after_the_response() {
    let mut h = Harness::new();
    h.draining = true;
    let (out, _) = h.run(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(statuses(&out), [200]);
    assert!(out.contains("\r\nConnection: close\r\n"));
}

#[test]
fn limits_apply_per_client_and_path() {
    let policy =
        Policy { enabled: true, default: Rate::per_minute(100), endpoint: Rate::per_minute(2), exempt: vec![] };
    let mut h = Harness::with_policy(policy);
    let req = b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n";
    let (out, _) = h.run(&req.repeat(3));
    assert_eq!(statuses(&out), [200, 200, 429]);
    assert!(out.contains("\r\nRateLimit-Remaining: 1\r\n"));
    assert!(out.contains("\r\nRetry-After: 60\r\n"));
    // Another client (per X-Forwarded-For from the trusted proxy) has its own counters.
    let (out, _) = h.run(b"GET /status HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n");
    assert_eq!(statuses(&out), [200]);
    // /health is counted apart from /status.
    let (out, _) = h.run(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(statuses(&out), [200]);
}

#[test]
fn idle_sessions_hold_no_buffers() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx());
    let n = s.pending_output().len();
    s.wrote(n, &h.ctx());
    assert_eq!(s.input.capacity(), 0);
    let buf = s.take_output_buffer().expect("a buffer to give back");
    assert!(buf.capacity() > 0 && buf.is_empty());
    assert_eq!(s.output.capacity(), 0);
    assert!(s.give_output_buffer(buf).is_none());
}

#[test]
fn access_log_escapes_what_clients_send() {
    assert_eq!(Escaped("/a b\"c\\d\u{1b}[31m\u{e9}").to_string(), "/a\\x20b\\x22c\\x5cd\\x1b[31m\\xc3\\xa9");
}

/// A harness whose limiter waits for answers, as with Redis; returns the answer channel.
fn waiting_harness() -> (Harness, std::sync::mpsc::Sender<Vec<(CheckId, Decision)>>) {
    let mut h = Harness::new();
    let memory = Arc::new(MemoryStore::default());
    let (remote, answers) = crate::limit::redis::detached(Duration::from_millis(100), Arc::clone(&memory));
    h.limiter = Limiter::new(
        Arc::new(Policy {
            enabled: true,
            default: Rate::per_minute(100),
            endpoint: Rate::per_minute(10),
            exempt: vec![],
        }),
        memory,
        Some(remote),
    );
    (h, answers)
}

fn limited(remaining: u64) -> Decision {
    Decision::Limited { allowed: true, rate: Rate::per_minute(10), remaining, reset_secs: 30 }
}

#[test]
fn pipelined_requests_wait_for_their_decision_in_order() {
    let (mut h, _answers) = waiting_harness();
    let mut s = h.session();
    s.receive(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx());
    assert!(s.pending_output().is_empty(), "nothing before the first decision");
    assert!(!s.wants_read());
    let first = CheckId { conn: Ticket { slot: 0, serial: 0 }, request: 1 };
    s.on_decision(first, limited(7), &mut h.ctx());
    let out = std::str::from_utf8(s.pending_output()).unwrap().to_owned();
    assert_eq!(statuses(&out), [200]);
    assert!(out.contains("RateLimit-Remaining: 7"));
    // The second request is now waiting for its own decision.
    s.on_decision(CheckId { request: 2, ..first }, limited(3), &mut h.ctx());
    let out = std::str::from_utf8(s.pending_output()).unwrap().to_owned();
    assert_eq!(statuses(&out), [200, 200]);
    assert!(out.contains("RateLimit-Remaining: 3"));
}

#[test]
fn stale_decisions_are_ignored() {
    let (mut h, _answers) = waiting_harness();
    let mut s = h.session();
    s.receive(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx());
    let current = CheckId { conn: Ticket { slot: 0, serial: 0 }, request: 1 };
    // An answer for an earlier request, and one for another connection that had this slot.
    s.on_decision(CheckId { request: 0, ..current }, limited(1), &mut h.ctx());
    s.on_decision(CheckId { conn: Ticket { slot: 0, serial: 5 }, ..current }, limited(1), &mut h.ctx());
    assert!(s.pending_output().is_empty());
    s.on_decision(current, limited(9), &mut h.ctx());
    assert!(std::str::from_utf8(s.pending_output()).unwrap().contains("RateLimit-Remaining: 9"));
}

#[test]
fn a_limiter_that_never_answers_gets_500_not_a_hang() {
    let (mut h, _answers) = waiting_harness();
    let mut s = h.session();
    s.receive(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx());
    h.now += Duration::from_secs(10);
    s.on_tick(&mut h.ctx());
    let out = std::str::from_utf8(s.pending_output()).unwrap().to_owned();
    assert_eq!(statuses(&out), [500]);
    assert!(out.contains("\"error\":\"Internal Server Error\""));
    assert!(out.contains("\r\nConnection: close\r\n"));
}

#[test]
fn abort_sends_a_500_only_when_nothing_else_is_queued() {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut h = Harness::new();
    for queued in [false, true] {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let mut conn = Conn::new(mio::net::TcpStream::from_std(server_side), h.session());
        if queued {
            conn.session.receive(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx());
        }
        conn.abort_with_500(&h.renderer);
        drop(conn);
        let mut got = String::new();
        (&client).read_to_string(&mut got).unwrap();
        if queued {
            assert!(got.is_empty(), "no 500 in the middle of other output: {got}");
        } else {
            assert!(got.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{got}");
            assert!(got.contains("\r\nContent-Security-Policy: "));
            assert!(got.contains("\r\nConnection: close\r\n"));
            assert!(got.ends_with(r#""status":500}"#));
        }
    }
}
