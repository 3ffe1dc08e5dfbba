//! SIGTERM/SIGINT drain (SPEC §4): stop accepting, finish in-flight requests, close idle
//! connections, exit 0 within the grace period; a second signal exits at once.

use std::io::Write as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{PATIENCE, Server, closed_by_server, read_response};

/// A connection the server has certainly accepted: it has answered a request on it.
fn accepted(server: &Server) -> TcpStream {
    let mut s = server.connect();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    s
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut busy = server.connect();
    let mut idle = server.connect();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut idle, false).unwrap().status, 200);
    // Half a request is in flight when the signal arrives.
    busy.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    server.signal("TERM");
    server.wait_for_line("draining").expect("drain log line");
    assert!(closed_by_server(&mut idle), "idle keep-alive connections are closed");
    busy.write_all(b"Host: a\r\n\r\n").unwrap();
    let r = read_response(&mut busy, false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"), "responses while draining close");
    let status = server.wait_exit(PATIENCE).expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_drains_too_and_stops_accepting() {
    let mut server = Server::start(&[]);
    let mut busy = accepted(&server);
    busy.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    server.signal("INT");
    server.wait_for_line("draining").expect("drain log line");
    // The listener is closed: new connections are refused (or, racing the close, never served).
    match TcpStream::connect_timeout(&server.addr, Duration::from_secs(1)) {
        Err(_) => {}
        Ok(mut late) => {
            late.set_read_timeout(Some(PATIENCE)).unwrap();
            let _ = late.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(read_response(&mut late, false).is_err(), "a connection after the signal was served");
        }
    }
    busy.write_all(b"Host: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut busy, false).unwrap().status, 200);
    assert_eq!(server.wait_exit(PATIENCE).expect("exits").code(), Some(0));
}

#[test]
fn grace_period_bounds_the_drain() {
    let mut server = Server::start(&[("SHUTDOWN_GRACE_S", "1"), ("HEADER_TIMEOUT_S", "60")]);
    let mut stuck = accepted(&server);
    stuck.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(PATIENCE).expect("exits");
    assert_eq!(status.code(), Some(0));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
    assert!(closed_by_server(&mut stuck));
}

#[test]
fn second_signal_exits_at_once() {
    let mut server = Server::start(&[("SHUTDOWN_GRACE_S", "60"), ("HEADER_TIMEOUT_S", "60")]);
    let mut stuck = accepted(&server);
    stuck.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    server.signal("TERM");
    server.wait_for_line("draining").expect("drain log line");
    let start = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(PATIENCE).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn idle_server_exits_promptly() {
    let mut server = Server::start(&[]);
    let start = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait_exit(PATIENCE).expect("exits").code(), Some(0));
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert!(server.log_text().contains("drained"));
}

#[test]
fn a_broken_stdout_stops_neither_serving_nor_shutdown() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(crate::support::BIN)
        .env_clear()
        .envs([("PORT", "0"), ("BIND_ADDR", "127.0.0.1"), ("WORKERS", "2")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr =
        line.split("listening on ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    // The log reader goes away: every log write from now on fails with EPIPE.
    drop(reader);
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, false).unwrap().status, 200, "access log lines fail quietly");
    }
    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("SIGTERM did not stop a server whose stdout is broken");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_request_crossing_the_signal_on_an_idle_connection_is_answered() {
    // The request's bytes and SIGTERM arrive together: the drain must look at an idle connection's
    // socket before closing it. The race needs the worker to see the signal in the turn before
    // it sees the bytes: under ASan (scripts/sanitize.sh, which runs this suite) that happened
    // about one run in four without the fix; in a plain run it is rare, so this test catches a
    // regression there only by luck.
    for _ in 0..5 {
        let mut server = Server::start(&[]);
        let mut s = accepted(&server);
        s.write_all(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        server.signal("TERM");
        let r = read_response(&mut s, false).expect("the request sent with the signal is answered");
        assert_eq!(r.status, 200);
        // Answered before or after the drain began (then with `Connection: close`); closed either way.
        assert!(closed_by_server(&mut s));
        assert_eq!(server.wait_exit(PATIENCE).expect("exits").code(), Some(0));
    }
}
