//! Connections over real sockets (SPEC §2 "Connections"): keep-alive, pipelining, HTTP/1.0,
//! bodies read and discarded, what follows an error. Every malformed or oversized request, each
//! limit at and one past it, is a row of the hostile table (`tests/hostile`), sent whole and split.

use std::io::Write as _;

use crate::support::{Server, closed_by_server, read_response, read_to_close};

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = Server::start(&[("RATE_LIMIT_ENABLED", "false")]);
    let mut s = server.connect();
    for _ in 0..20 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let r = read_response(&mut s, false).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.header("Connection").is_none());
    }
}

#[test]
fn pipelined_responses_come_in_request_order() {
    let server = Server::start(&[("RATE_LIMIT_ENABLED", "false")]);
    let mut s = server.connect();
    let mut burst = Vec::new();
    let paths = ["/status", "/nope", "/health", "/status?x", "/other"];
    for p in paths {
        burst.extend(format!("GET {p} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    s.write_all(&burst).unwrap();
    let got: Vec<u16> = paths.iter().map(|_| read_response(&mut s, false).unwrap().status).collect();
    assert_eq!(got, [200, 404, 200, 200, 404]);
}

#[test]
fn http10_closes_by_default_and_keeps_alive_on_request() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert!(closed_by_server(&mut s));

    let mut s = server.connect();
    s.write_all(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
}

#[test]
fn connection_close_is_honoured() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(closed_by_server(&mut s));
}

#[test]
fn bodies_are_read_and_discarded_then_the_connection_goes_on() {
    let server = Server::start(&[("RATE_LIMIT_ENABLED", "false")]);
    let mut s = server.connect();
    s.write_all(b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nGET /x HTTP").unwrap();
    s.write_all(b"POST /status HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n0\r\n\r\n")
        .unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().status, 405);
    assert_eq!(read_response(&mut s, false).unwrap().status, 405);
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
}

#[test]
fn requests_after_a_bad_one_are_not_answered() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(
        b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    assert_eq!(read_response(&mut s, false).unwrap().status, 400);
    assert!(read_to_close(&mut s).is_empty());
}

#[test]
fn large_body_sent_anyway_still_gets_its_413() {
    // The client keeps sending after our 413; lingering close means it reads the response rather
    // than a reset.
    let server = Server::start(&[]);
    let mut s = server.connect();
    let mut req = b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 200_000));
    // A write that outruns our reading may fail once we close; the response must still be there.
    let _ = s.write_all(&req);
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.status, 413);
}

#[test]
fn expect_continue_is_answered_at_once() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(b"POST /status HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n").unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!((r.status, r.header("Connection")), (405, Some("close")));
}

#[test]
fn max_connections_closes_new_ones_at_once() {
    let server = Server::start(&[("MAX_CONNECTIONS", "2"), ("WORKERS", "1")]);
    let mut a = server.connect();
    let mut b = server.connect();
    // Make sure both are accepted and served before the third arrives.
    for s in [&mut a, &mut b] {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(read_response(s, false).unwrap().status, 200);
    }
    let mut c = server.connect();
    assert!(closed_by_server(&mut c), "the third connection is closed at once");
    drop(a);
    // Once one closes, a new connection gets served (the server notices the close first).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut d = server.connect();
        d.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        if let Ok(r) = read_response(&mut d, false) {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no slot freed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn request_and_fin_in_one_segment_on_a_used_connection_is_answered_and_closed() {
    // The request and the client's FIN arrive in one event after the connection was idle: the
    // short read of the request must not hide the EOF behind it (found by the hostile tests; the
    // connection used to linger until the keep-alive timeout).
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let start = std::time::Instant::now();
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    assert!(closed_by_server(&mut s), "the server never closed");
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "closed only after {:?}", start.elapsed());
}
