//! The session without sockets: bytes in, bytes out. Fragmentation lives here: every request is
//! fed at every split point and must give the same responses.

mod harness;

use super::*;
use crate::limit::{self, MemoryStore, Policy};
use harness::{drain, statuses};

/// A harness: the context a worker would give, limiting off unless a test sets a policy.
struct Harness {
    ctx: Ctx,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_policy(harness::unlimited())
    }

    fn with_policy(limits: limit::Settings) -> Harness {
        Harness { ctx: harness::ctx(harness::settings(), limits, 1000) }
    }

    fn session(&self) -> Session {
        harness::session("192.0.2.1", &self.ctx)
    }

    fn run_split(&mut self, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Session) {
        harness::run_split(&mut self.ctx, input, cuts)
    }

    fn run(&mut self, input: &[u8]) -> (String, Session) {
        let (out, s) = self.run_split(input, &[]);
        (String::from_utf8(out).unwrap(), s)
    }
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
    assert_eq!(statuses(out.as_bytes()), [200, 405, 404, 200, 200, 301]);
    assert!(out.contains("\r\nLocation: https://a/status\r\n"));
    assert!(s.is_idle());
}

/// Metrics (SPEC §6): each response is counted once as it is queued, by class, parser errors and
/// timeouts included; a worker without metrics counts nothing.
#[test]
fn every_response_is_counted_once_in_its_class() {
    let mut h = Harness::new();
    h.ctx.metrics = Some(Counts::default());
    let (out, _) = h.run(MIXED);
    let (bad, _) = h.run(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n");
    let mut late = h.session();
    late.receive(b"GET / HT", &mut h.ctx);
    h.ctx.now += Duration::from_secs(10);
    late.on_tick(&mut h.ctx);
    let all = [out.as_bytes(), bad.as_bytes(), late.pending_output()].concat();
    assert_eq!(statuses(&all), [200, 405, 404, 200, 200, 301, 400, 408]);
    let counts = h.ctx.metrics.as_ref().unwrap();
    assert_eq!((counts.requests, counts.classes, counts.rate_limited), (8, [3, 1, 4, 0], 0));
    assert!(counts.latency_max().is_some());
    let mut off = Harness::new();
    off.run(MIXED);
    assert!(off.ctx.metrics.is_none());
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
    s.receive(&input, &mut h.ctx);
    let pending = s.pending_output().len();
    assert!(pending >= MAX_PENDING_OUTPUT, "{pending}");
    assert!(pending < MAX_PENDING_OUTPUT + 4096, "at most one response past the cap: {pending}");
    assert!(!s.wants_read(), "no reading while the client does not read");
    let mut out = Vec::new();
    drain(&mut s, &mut out, &mut h.ctx);
    assert_eq!(statuses(&out).len(), 500);
    assert!(s.wants_read());
    assert!(s.is_idle());
}

#[test]
fn http10_closes_unless_asked() {
    let (out, s) = Harness::new().run(b"GET /health HTTP/1.0\r\n\r\nGET /health HTTP/1.0\r\n\r\n");
    assert_eq!(statuses(out.as_bytes()), [200], "nothing after a closing response");
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
    assert_eq!(s.after_flush(&Harness::new().ctx), AfterFlush::Close);
}

#[test]
fn malformed_request_gets_400_and_closes_lingering() {
    let (out, mut s) =
        Harness::new().run(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nBAD REQUEST\r\n\r\nGET /health HTTP/1.1\r\n");
    assert_eq!(statuses(out.as_bytes()), [200, 400]);
    assert!(out.ends_with(r#"{"error":"Bad Request","message":"The browser (or proxy) sent a request that this server could not understand.","status":400}"#));
    let mut h = Harness::new();
    assert_eq!(s.after_flush(&h.ctx), AfterFlush::ShutdownWrite);
    assert!(s.wants_read(), "lingering reads and discards");
    s.receive(b"more", &mut h.ctx);
    assert!(s.pending_output().is_empty());
    s.on_eof();
    assert!(s.is_closed());
}

#[test]
fn oversized_body_gets_413() {
    let (out, _) = Harness::new().run(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n");
    assert_eq!(statuses(out.as_bytes()), [413]);
    assert!(out.contains("\r\nConnection: close\r\n"));
}

#[test]
fn bad_chunk_after_head_gets_400_only() {
    let (out, s) = Harness::new().run(b"POST /status HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(statuses(out.as_bytes()), [400], "the request is not also answered");
    assert!(matches!(s.state, State::Closing { linger: true }));
}

#[test]
fn expect_continue_is_answered_without_reading_the_body() {
    let (out, s) =
        Harness::new().run(b"POST /status HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(statuses(out.as_bytes()), [405]);
    assert!(out.contains("\r\nConnection: close\r\n"));
    assert!(matches!(s.state, State::Closing { linger: true }));
}

#[test]
fn partial_head_times_out_with_408() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(b"GET /health HTTP/1.1\r\n", &mut h.ctx);
    h.ctx.now += Duration::from_secs(9);
    s.on_tick(&mut h.ctx);
    assert!(s.pending_output().is_empty(), "not yet");
    h.ctx.now += Duration::from_secs(1);
    s.on_tick(&mut h.ctx);
    let out = String::from_utf8(s.pending_output().to_vec()).unwrap();
    assert_eq!(statuses(out.as_bytes()), [408]);
}

#[test]
fn slow_body_times_out_from_the_first_byte_of_the_request() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab", &mut h.ctx);
    h.ctx.now += Duration::from_secs(10);
    s.on_tick(&mut h.ctx);
    assert_eq!(statuses(s.pending_output()), [408]);
}

#[test]
fn idle_connections_close_silently() {
    let mut h = Harness::new();
    let mut s = h.session();
    h.ctx.now += Duration::from_secs(10);
    s.on_tick(&mut h.ctx);
    assert!(s.is_closed(), "a new connection has the header timeout to start");
    let mut s = h.session();
    s.receive(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx);
    let mut out = Vec::new();
    drain(&mut s, &mut out, &mut h.ctx);
    h.ctx.now += Duration::from_secs(74);
    s.on_tick(&mut h.ctx);
    assert!(!s.is_closed());
    h.ctx.now += Duration::from_secs(1);
    s.on_tick(&mut h.ctx);
    assert!(s.is_closed(), "keep-alive timeout");
    assert!(s.pending_output().is_empty());
}

#[test]
fn client_not_reading_is_closed_after_the_keepalive_timeout() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(&b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n".repeat(3), &mut h.ctx);
    s.wrote(10);
    h.ctx.now += Duration::from_secs(75);
    s.on_tick(&mut h.ctx);
    assert!(s.is_closed());
}

#[test]
fn eof_after_complete_requests_answers_them_then_closes() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET /sta", &mut h.ctx);
    s.on_eof();
    assert_eq!(statuses(s.pending_output()), [200]);
    let n = s.pending_output().len();
    s.wrote(n);
    assert_eq!(s.after_flush(&h.ctx), AfterFlush::Close);
}

#[test]
fn draining_closes_after_the_response() {
    let mut h = Harness::new();
    h.ctx.draining = true;
    let (out, _) = h.run(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(statuses(out.as_bytes()), [200]);
    assert!(out.contains("\r\nConnection: close\r\n"));
}

#[test]
fn limits_apply_per_client_and_path() {
    let mut h = Harness::with_policy(harness::limits(100, 2));
    let req = b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n";
    let (out, _) = h.run(&req.repeat(3));
    assert_eq!(statuses(out.as_bytes()), [200, 200, 429]);
    assert!(out.contains("\r\nRateLimit-Remaining: 1\r\n"));
    assert!(out.contains("\r\nRetry-After: 60\r\n"));
    // Another client (per X-Forwarded-For from the trusted proxy) has its own counters.
    let (out, _) = h.run(b"GET /status HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n");
    assert_eq!(statuses(out.as_bytes()), [200]);
    // /health is counted apart from /status.
    let (out, _) = h.run(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(statuses(out.as_bytes()), [200]);
}

#[test]
fn idle_sessions_hold_no_buffers() {
    let mut h = Harness::new();
    let mut s = h.session();
    s.receive(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx);
    let n = s.pending_output().len();
    s.wrote(n);
    assert_eq!(s.input.capacity(), 0);
    let buf = s.take_output_buffer().expect("a buffer to give back");
    assert!(buf.capacity() > 0 && buf.is_empty());
    assert_eq!(s.output.capacity(), 0);
    assert!(s.give_output_buffer(buf).is_none());
}

/// A harness whose limiter waits for answers, as with Redis; returns the answer channel.
fn waiting_harness() -> (Harness, std::sync::mpsc::Sender<crate::limit::remote::Answers>) {
    let mut h = Harness::new();
    let policy = Policy::leak(harness::limits(100, 10));
    let memory = Arc::new(MemoryStore::new(100, policy.slots()));
    let (remote, answers) = crate::limit::remote::tests::detached(Duration::from_millis(100), Arc::clone(&memory));
    h.ctx.limiter = Limiter::new(policy, memory, Some(remote));
    (h, answers)
}

fn limited(remaining: u64) -> Decision {
    Decision::Limited { limit: 10, remaining, reset_secs: 30, refused: None }
}

#[test]
fn pipelined_requests_wait_for_their_decision_in_order() {
    let (mut h, _answers) = waiting_harness();
    let mut s = h.session();
    s.receive(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx);
    assert!(s.pending_output().is_empty(), "nothing before the first decision");
    assert!(!s.wants_read());
    s.on_decision(limited(7), &mut h.ctx);
    let out = std::str::from_utf8(s.pending_output()).unwrap().to_owned();
    assert_eq!(statuses(out.as_bytes()), [200]);
    assert!(out.contains("RateLimit-Remaining: 7"));
    // The second request is now waiting for its own decision.
    s.on_decision(limited(3), &mut h.ctx);
    let out = std::str::from_utf8(s.pending_output()).unwrap().to_owned();
    assert_eq!(statuses(out.as_bytes()), [200, 200]);
    assert!(out.contains("RateLimit-Remaining: 3"));
}

/// Answers that are not for the current request never reach the session: a late one is dropped by
/// the limiter (`remote`'s `a_late_answer_does_not_answer_a_later_check`), one for a closed
/// connection by the worker (`server`'s `an_answer_for_a_closed_connection_finds_no_one`). A
/// session that is not waiting ignores a decision.
#[test]
fn a_decision_when_not_deciding_is_ignored() {
    let (mut h, _answers) = waiting_harness();
    let mut s = h.session();
    s.on_decision(limited(1), &mut h.ctx);
    assert!(s.pending_output().is_empty() && s.is_idle());
    s.receive(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx);
    s.on_decision(limited(9), &mut h.ctx);
    assert!(std::str::from_utf8(s.pending_output()).unwrap().contains("RateLimit-Remaining: 9"));
    let n = s.pending_output().len();
    s.wrote(n);
    s.on_decision(limited(1), &mut h.ctx);
    assert!(s.pending_output().is_empty() && s.is_idle());
}

#[test]
fn a_limiter_that_never_answers_gets_500_not_a_hang() {
    let (mut h, _answers) = waiting_harness();
    let mut s = h.session();
    s.receive(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx);
    h.ctx.now += Duration::from_secs(10);
    s.on_tick(&mut h.ctx);
    let out = std::str::from_utf8(s.pending_output()).unwrap().to_owned();
    assert_eq!(statuses(out.as_bytes()), [500]);
    assert!(out.contains("\"error\":\"Internal Server Error\""));
    assert!(out.contains("\r\nConnection: close\r\n"));
}

#[test]
fn abort_sends_a_500_only_when_nothing_else_is_queued() {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut h = Harness::new();
    h.ctx.metrics = Some(Counts::default());
    for queued in [false, true] {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let mut conn = Conn::new(mio::net::TcpStream::from_std(server_side), h.session());
        if queued {
            conn.session.receive(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", &mut h.ctx);
        }
        conn.abort_with_500(&mut h.ctx);
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
    // Both responses count (SPEC §6 Requests: responses written): the 200 queued, the 500 sent.
    let counts = h.ctx.metrics.unwrap();
    assert_eq!((counts.requests, counts.classes), (2, [1, 0, 0, 1]));
}
