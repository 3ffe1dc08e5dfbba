//! HEADER_TIMEOUT_S and KEEPALIVE_TIMEOUT_S with short values. Deadlines are checked every 250 ms,
//! so a timeout fires between its value and a quarter second later.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::support::{Server, closed_by_server, read_response, read_to_close};

fn short() -> Server {
    Server::start(&[("HEADER_TIMEOUT_S", "1"), ("KEEPALIVE_TIMEOUT_S", "2")])
}

#[test]
fn partial_head_gets_408_after_the_header_timeout() {
    let server = short();
    let mut s = server.connect();
    let start = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n").unwrap();
    let r = read_response(&mut s, false).unwrap();
    let waited = start.elapsed();
    assert_eq!((r.status, r.header("Connection")), (408, Some("close")));
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
    assert!(closed_by_server(&mut s));
}

#[test]
fn trickled_head_is_timed_from_its_first_byte() {
    // Slowloris: a byte every 200 ms never completes the head; the deadline does not move.
    let server = short();
    let mut s = server.connect();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    for b in b"GET /health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never timed out");
    }
    assert!(got.starts_with(b"HTTP/1.1 408 "), "{:?}", String::from_utf8_lossy(&got));
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn slow_body_counts_against_the_header_timeout() {
    let server = short();
    let mut s = server.connect();
    s.write_all(b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc").unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.status, 408);
}

#[test]
fn silent_new_connection_is_closed_without_a_response() {
    let server = short();
    let mut s = server.connect();
    let start = Instant::now();
    assert!(read_to_close(&mut s).is_empty());
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let server = short();
    let mut s = server.connect();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    let start = Instant::now();
    assert!(read_to_close(&mut s).is_empty(), "closed silently");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4), "{waited:?}");
}

#[test]
fn keep_alive_timeout_restarts_after_each_response() {
    let server = short();
    let mut s = server.connect();
    for _ in 0..3 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, false).unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(1200));
    }
}
