//! Hostile clients against the real binary (issue 5): no client can crash, stall or bloat the
//! server. Each test measures something and prints what it measured (`cargo test --test hostile
//! -- --nocapture` shows the numbers).
//!
//! Every loop here is bounded in count or time, and every wait has a timeout. The suite takes
//! about a minute; `HOSTILE_PIPELINE_SECS` (default 30) sets how long the client that never reads
//! keeps pipelining.

#[path = "../support/mod.rs"]
mod support;

use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use support::requests::{chunked_of_wire_size, head_of_size, with_body, with_fields};
use support::{PATIENCE, Response, Server, closed_by_server, read_response, read_to_close};

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// Raises this process's soft open-file limit to at least `n` with prlimit(1) (no unsafe, no
/// libc), up to the hard limit; the servers it starts inherit it.
fn ensure_fd_limit(n: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (soft, hard) = (nums[0], nums[1]);
    if soft >= n {
        return;
    }
    assert!(hard >= n, "this test needs {n} open files; the hard limit is {hard}");
    let pid = std::process::id().to_string();
    let ok = Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={hard}:{hard}")]).status().unwrap();
    assert!(ok.success(), "prlimit");
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

/// Asserts a bound on the server's memory, except under scripts/sanitize.sh: AddressSanitizer's
/// quarantine keeps freed memory resident and its shadow adds to every byte, so there the
/// numbers are printed but bound nothing. Every other assertion holds under the sanitizer too.
fn assert_memory(ok: bool, what: &str) {
    if std::env::var_os("ZAYZOON_SANITIZER").is_some() {
        eprintln!("(not asserted under a sanitizer: {what})");
    } else {
        assert!(ok, "{what}");
    }
}

/// Waits until `f` holds, checking every 50 ms, for at most `within`.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------

/// 1,000 connections each send part of a head and then a byte now and then (slowloris). /health
/// keeps answering promptly on fresh connections, and every slow connection is ended by the header
/// timeout, counted from its first byte, with a 408.
#[test]
fn slowloris_thousand_connections_while_health_answers() {
    const SLOW: usize = 1_000;
    // Long enough that the measuring window stays wide when opening 1,000 connections is slow
    // (a loaded machine, a sanitizer build).
    const HEADER_TIMEOUT: Duration = Duration::from_secs(8);
    ensure_fd_limit(3 * SLOW as u64 + 200);
    let server = Server::start(&[("HEADER_TIMEOUT_S", "8"), ("RATE_LIMIT_ENABLED", "false"), ("ACCESS_LOG", "false")]);
    let fds_before = server.open_fds();
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut s = server.connect();
            s.set_nodelay(true).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: example.com\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    let opened = started.elapsed();
    assert!(
        eventually(PATIENCE, || server.open_fds() >= fds_before + SLOW),
        "the server holds all {SLOW}: {} fds",
        server.open_fds()
    );

    // Trickle a byte on every slow connection every 100 ms, and meanwhile ask for /health.
    let mut latencies = Vec::new();
    while started.elapsed() < HEADER_TIMEOUT - Duration::from_millis(1500) {
        for s in &mut slow {
            s.write_all(b"x").unwrap();
        }
        let t = Instant::now();
        let r = server.exchange(HEALTH);
        latencies.push(t.elapsed());
        assert_eq!(r.status, 200);
        thread::sleep(Duration::from_millis(100));
    }
    latencies.sort();
    let (p50, max) = (percentile(&latencies, 50), *latencies.last().unwrap());
    assert!(latencies.len() >= 5, "{} /health requests", latencies.len());
    assert!(max < Duration::from_millis(500), "/health took {max:?} (p50 {p50:?}) beside {SLOW} slow clients");

    // The header timeout ends each of them with a 408, however many bytes they trickled.
    let mut timed_out = 0;
    for s in &mut slow {
        let r = read_response(s, false).expect("a 408 for each slow connection");
        assert_eq!((r.status, r.header("Connection")), (408, Some("close")));
        assert!(closed_by_server(s));
        timed_out += 1;
    }
    let all_closed = started.elapsed();
    // Timeouts fire up to one sweep (250 ms) late; the last connection opened `opened` after the first.
    assert!(all_closed < HEADER_TIMEOUT + opened + Duration::from_secs(2), "closed after {all_closed:?}");
    drop(slow);
    assert!(eventually(PATIENCE, || server.open_fds() <= fds_before), "fds back to {fds_before}");
    assert_eq!(server.exchange(HEALTH).status, 200);
    eprintln!(
        "slowloris: {SLOW} connections opened in {opened:?}; /health p50 {p50:?} max {max:?} over {} requests; \
         {timed_out} got 408, all closed {all_closed:?} after the first byte (header timeout {HEADER_TIMEOUT:?})",
        latencies.len()
    );
}

// ---------------------------------------------------------------------------------------------

/// The server's file-descriptor limit is lowered to a few more than it uses, and more clients
/// connect than fit. Accepting fails (EMFILE): the server keeps serving the connections it has,
/// backs off instead of spinning (its CPU time over 3 s is measured), and once clients leave it
/// accepts again by itself.
#[test]
fn fd_exhaustion_backs_off_then_recovers() {
    const SPARE: usize = 16;
    const CLIENTS: usize = 64;
    let server = Server::start(&[("RATE_LIMIT_ENABLED", "false"), ("HEADER_TIMEOUT_S", "60")]);
    let in_use = server.open_fds();
    let limit = in_use + SPARE;
    let pid = server.pid().to_string();
    let ok = Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={limit}:{limit}")]).status().unwrap();
    assert!(ok.success(), "prlimit");

    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| server.connect()).collect();
    assert!(server.wait_for_line("accept failed").is_some(), "no EMFILE:\n{}", server.log_text());
    // (The limit caps descriptor numbers; one inherited from the test runner may sit above it.)
    let accepted = server.open_fds() - in_use;
    assert!(accepted <= SPARE + 1, "{accepted} accepted with {SPARE} spare");

    // While out of descriptors: a connection accepted before still gets answers...
    clients[0].write_all(HEALTH).unwrap();
    assert_eq!(read_response(&mut clients[0], false).unwrap().status, 200);
    // ...and the CPU is not spinning on the listener.
    let (ticks_before, t) = (server.cpu_ticks(), Instant::now());
    thread::sleep(Duration::from_secs(3));
    let (ticks, measured) = (server.cpu_ticks() - ticks_before, t.elapsed());
    let share = ticks as f64 / 100.0 / measured.as_secs_f64();
    assert!(share < 0.10, "{ticks} ticks in {measured:?} ({:.1}% of a core) while out of descriptors", share * 100.0);
    let warnings = server.log_lines("accept failed").len();
    assert!(warnings <= 2, "{warnings} warnings: one per worker, not one per retry");

    // Clients leave: the server accepts again without help.
    drop(clients);
    let t = Instant::now();
    let recovered = eventually(PATIENCE, || {
        let Ok(mut s) = TcpStream::connect(server.addr) else { return false };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(HEALTH).is_ok() && read_response(&mut s, false).is_ok_and(|r| r.status == 200)
    });
    assert!(recovered, "no recovery:\n{}", server.log_text());
    assert!(server.wait_for_line("accepting again").is_some());
    eprintln!(
        "fd exhaustion: limit {limit} ({in_use} in use), {CLIENTS} clients, {accepted} accepted; CPU {ticks} ticks in {measured:?} \
         ({:.1}% of a core) while accept failed; serving again {:?} after the clients left",
        share * 100.0,
        t.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------

/// Clients pipeline requests as fast as they can and never read a response. The server stops
/// reading from them once their responses back up (so they soon cannot send at all), its memory
/// stays bounded while it holds them, and it keeps answering others.
#[test]
fn pipelining_without_reading_keeps_memory_bounded() {
    const CLIENTS: usize = 16;
    let secs: u64 = std::env::var("HOSTILE_PIPELINE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let run = Duration::from_secs(secs);
    let server = Server::start(&[
        ("KEEPALIVE_TIMEOUT_S", &(secs + 120).to_string()),
        ("RATE_LIMIT_ENABLED", "false"),
        ("ACCESS_LOG", "false"),
    ]);
    assert_eq!(server.exchange(HEALTH).status, 200);
    let rss_before = server.proc_status_kb("VmRSS");
    let batch = b"GET /status HTTP/1.1\r\nHost: example.com\r\n\r\n".repeat(64);
    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let half = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut s = server.connect();
            s.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
            let (batch, start, half) = (batch.clone(), Arc::clone(&start), Arc::clone(&half));
            thread::spawn(move || {
                start.wait();
                let (mut sent, mut sent_late) = (0u64, 0u64);
                let deadline = Instant::now() + run;
                let mut at = 0;
                while Instant::now() < deadline {
                    match s.write(&batch[at..]) {
                        Ok(n) => {
                            sent += n as u64;
                            if half.load(Ordering::Relaxed) {
                                sent_late += n as u64;
                            }
                            at = (at + n) % batch.len();
                        }
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                        Err(e) => panic!("the server dropped a client that was only slow: {e}"),
                    }
                }
                (s, sent, sent_late)
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < run {
        thread::sleep(Duration::from_millis(500));
        samples.push((t0.elapsed(), server.proc_status_kb("VmRSS")));
        if t0.elapsed() >= run / 2 {
            half.store(true, Ordering::Relaxed);
        }
    }
    // Others are still served meanwhile.
    let t = Instant::now();
    assert_eq!(server.exchange(HEALTH).status, 200);
    let health = t.elapsed();
    let results: Vec<(TcpStream, u64, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let rss_max = samples.iter().map(|s| s.1).max().unwrap();
    let rss_mid = samples.iter().find(|s| s.0 >= run / 2).unwrap().1;
    let rss_end = samples.last().unwrap().1;
    let most_sent = results.iter().map(|r| r.1).max().unwrap();
    let late = results.iter().map(|r| r.2).max().unwrap();
    eprintln!(
        "pipelining without reading: {CLIENTS} clients for {run:?}; RSS {rss_before} kB before, max {rss_max} kB, \
         {rss_mid} kB at half time, {rss_end} kB at the end; most any client sent {} MiB, at most {late} bytes \
         in the second half; /health meanwhile in {health:?}",
        most_sent / (1 << 20)
    );
    // Per client the server holds at most ~64 KiB of responses plus one read's worth of requests.
    assert_memory(rss_max < rss_before + CLIENTS as u64 * 512 + 16 * 1024, &format!("RSS grew to {rss_max} kB"));
    assert_memory(rss_end <= rss_mid + 2 * 1024, &format!("RSS still growing: {rss_mid} kB → {rss_end} kB"));
    // The server stopped reading: once the socket buffers filled, nothing more could be sent.
    assert!(late < 64 * 1024, "a client still sent {late} bytes in the second half");
    assert!(health < Duration::from_millis(500), "/health took {health:?}");
    // The responses that were made are all there, in order, once a client reads.
    let (mut s, _, _) = results.into_iter().next().unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    for _ in 0..100 {
        assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    }
}

// ---------------------------------------------------------------------------------------------

/// Reads `n` responses from `s` as fast as it can; returns how many had each status.
fn read_statuses(s: &mut TcpStream, n: usize, buf: &mut Vec<u8>) -> [usize; 6] {
    let mut counts = [0; 6]; // 1xx..5xx by first digit; [0] for 429.
    let mut got = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    while got < n {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf).unwrap() {
            httparse::Status::Complete(len) => {
                let code = resp.code.unwrap();
                let cl = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length")).unwrap();
                let body: usize = std::str::from_utf8(cl.value).unwrap().parse().unwrap();
                if buf.len() >= len + body {
                    counts[if code == 429 { 0 } else { usize::from(code / 100) }] += 1;
                    buf.drain(..len + body);
                    got += 1;
                    continue;
                }
            }
            httparse::Status::Partial => {}
        }
        let k = s.read(&mut chunk).unwrap();
        assert!(k > 0, "the server closed after {got} responses");
        buf.extend_from_slice(&chunk[..k]);
    }
    counts
}

/// Sends `count` requests, each from its own client address by `X-Forwarded-For` (the proxy's
/// entry), starting at number `from`: even numbers IPv4, odd numbers an IPv6 address in its own
/// /64. Returns the status counts.
fn flood(server: &Server, from: u32, count: u32) -> [usize; 6] {
    const THREADS: u32 = 4;
    const BATCH: u32 = 250;
    let per = count / THREADS;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let mut s = server.connect();
            let first = from + t * per;
            thread::spawn(move || {
                let mut counts = [0; 6];
                let mut buf = Vec::new();
                let mut n = first;
                while n < first + per {
                    let end = (n + BATCH).min(first + per);
                    let mut req = Vec::with_capacity(100 * BATCH as usize);
                    for i in n..end {
                        let client = if i % 2 == 0 {
                            std::net::Ipv4Addr::from(0x0b00_0000 + i).to_string()
                        } else {
                            format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)
                        };
                        write!(req, "GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1, {client}\r\n\r\n")
                            .unwrap();
                    }
                    s.write_all(&req).unwrap();
                    let c = read_statuses(&mut s, (end - n) as usize, &mut buf);
                    counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
                    n = end;
                }
                counts
            })
        })
        .collect();
    let mut counts = [0; 6];
    for h in handles {
        counts.iter_mut().zip(h.join().unwrap()).for_each(|(a, b)| *a += b);
    }
    counts
}

/// A flood of distinct client addresses (IPv4, and IPv6 each in its own /64) fills the in-memory
/// limiter store to its cap (100,000 clients) and then no further: the server's memory grows while
/// the store fills (and once more when its tables rehash past the evictions' tombstones), then not
/// at all, however many more addresses come. Each address is counted, and a new client costs
/// about as much once the store is full as before (it once cost ~10x: see limit/memory.rs).
#[test]
fn flood_of_distinct_clients_keeps_the_store_bounded() {
    const CAP: u32 = 100_000; // config::MAX_LIMITER_ENTRIES
    let server = Server::start(&[("ACCESS_LOG", "false"), ("RATE_LIMIT_DEFAULT", "5/hour"), ("WORKERS", "2")]);
    let rss0 = server.proc_status_kb("VmRSS");
    let t = Instant::now();
    let first = flood(&server, 0, CAP);
    let (rss1, t1) = (server.proc_status_kb("VmRSS"), t.elapsed());
    let more = flood(&server, CAP, CAP);
    let (rss2, t2) = (server.proc_status_kb("VmRSS"), t.elapsed());
    let more_again = flood(&server, 2 * CAP, CAP);
    let (rss3, t3) = (server.proc_status_kb("VmRSS"), t.elapsed());
    eprintln!(
        "address flood: RSS {rss0} kB → {rss1} kB after {CAP} clients ({t1:?}) → {rss2} kB after {} ({t2:?}) → \
         {rss3} kB after {} ({t3:?}); statuses {first:?} {more:?} {more_again:?}",
        2 * CAP,
        3 * CAP,
    );
    // Every request was counted (404 with rate headers) and none refused: each is a new client.
    for counts in [first, more, more_again] {
        assert_eq!(counts[0], 0, "429s for new clients: {counts:?}");
        assert_eq!(counts[4] as u32 + counts[2] as u32, counts.iter().sum::<usize>() as u32);
    }
    assert_memory(rss1 >= rss0 + 3 * 1024, &format!("the store did not visibly fill: {rss0} kB → {rss1} kB"));
    assert_memory(rss3 <= rss2 + 1024, &format!("the store kept growing past its cap: {rss1} → {rss2} → {rss3} kB"));
    assert_memory(rss3 <= rss0 + 32 * 1024, &format!("{rss0} → {rss3} kB for a store of {CAP} clients"));
    let (full, filling) = (t3 - t2, t1);
    assert!(
        full < filling * 3 + Duration::from_secs(3),
        "{CAP} new clients took {full:?} when full, {filling:?} before"
    );
    // And limiting still works for a client that stays: a sixth request in the hour is refused.
    let repeat = |s: &Server| s.get_with("/x", &["X-Forwarded-For: 203.0.113.50"]).status;
    let statuses: Vec<u16> = (0..6).map(|_| repeat(&server)).collect();
    assert_eq!(statuses, [404, 404, 404, 404, 404, 429]);
}

// ---------------------------------------------------------------------------------------------

/// How a row of the table must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// This error status, a JSON body, `Connection: close`, then the server closes.
    Close(u16),
    /// Served (at a limit, not past it): this status, and the connection stays usable.
    Served(u16),
}

/// Every kind of malformed or oversized head SPEC §2 names, each limit at and one past it, sent in
/// one write and again in small pieces: the same status either way (the split must not matter),
/// the fixed JSON body with the reason phrase, every security header, and a close after errors.
#[test]
fn malformed_and_oversized_heads() {
    let h = |s: &str| s.as_bytes().to_vec();
    let cl_at = with_body("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n", &[b'b'; 65536]);
    let te = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let table: Vec<(&str, Vec<u8>, Expect)> = vec![
        // 431: the head's size and field count, at and one past the limit.
        ("head of 8 KiB", head_of_size(8192), Expect::Served(200)),
        ("head of 8 KiB + 1", head_of_size(8193), Expect::Close(431)),
        ("head of 64 KiB", head_of_size(65536), Expect::Close(431)),
        (
            "request line past 8 KiB",
            h(&format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000))),
            Expect::Close(431),
        ),
        ("64 fields", with_fields(64), Expect::Served(200)),
        ("65 fields", with_fields(65), Expect::Close(431)),
        ("1000 fields", with_fields(1000), Expect::Close(431)),
        // 413: bodies, at and one past the limit.
        ("Content-Length 65536", cl_at, Expect::Served(404)),
        ("Content-Length 65537", h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n"), Expect::Close(413)),
        (
            "Content-Length 2^64",
            h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n"),
            Expect::Close(413),
        ),
        ("chunked of 65536", with_body(te, &chunked_of_wire_size(65536)), Expect::Served(404)),
        ("chunked of 65537", with_body(te, &chunked_of_wire_size(65537)), Expect::Close(413)),
        ("chunk size past the limit", with_body(te, b"10001\r\n"), Expect::Close(413)),
        ("chunk size overflowing u64", with_body(te, b"fffffffffffffffffffff\r\n"), Expect::Close(413)),
        // 400: Host.
        ("no Host in HTTP/1.1", h("GET /health HTTP/1.1\r\n\r\n"), Expect::Close(400)),
        ("two Hosts", h("GET /health HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), Expect::Close(400)),
        ("Host with a path", h("GET /health HTTP/1.1\r\nHost: a/b\r\n\r\n"), Expect::Close(400)),
        ("Host with userinfo", h("GET /health HTTP/1.1\r\nHost: u@a\r\n\r\n"), Expect::Close(400)),
        ("Host with port 65536", h("GET /health HTTP/1.1\r\nHost: a:65536\r\n\r\n"), Expect::Close(400)),
        ("empty Host", h("GET /health HTTP/1.1\r\nHost:\r\n\r\n"), Expect::Close(400)),
        ("Host not UTF-8", b"GET /health HTTP/1.1\r\nHost: \xff\r\n\r\n".to_vec(), Expect::Close(400)),
        ("Host percent-encoded", h("GET /health HTTP/1.1\r\nHost: ex%41mple.com\r\n\r\n"), Expect::Close(400)),
        ("Host with a sub-delim", h("GET /health HTTP/1.1\r\nHost: a!b\r\n\r\n"), Expect::Close(400)),
        // Issue 14: hosts real deployments send (RFC 3986 reg-names, an empty port) are served.
        ("Host my_app:8443", h("GET /health HTTP/1.1\r\nHost: my_app:8443\r\n\r\n"), Expect::Served(200)),
        ("Host zayzoon_web_1", h("GET /health HTTP/1.1\r\nHost: zayzoon_web_1\r\n\r\n"), Expect::Served(200)),
        ("Host with an empty port", h("GET /health HTTP/1.1\r\nHost: example.com:\r\n\r\n"), Expect::Served(200)),
        ("Host svc~1.internal", h("GET /health HTTP/1.1\r\nHost: svc~1.internal\r\n\r\n"), Expect::Served(200)),
        // 400: framing (request smuggling).
        (
            "CL.TE",
            with_body(
                "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"0\r\n\r\nG",
            ),
            Expect::Close(400),
        ),
        (
            "TE.CL",
            with_body(
                "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                b"8\r\nSMUGGLED\r\n0\r\n\r\n",
            ),
            Expect::Close(400),
        ),
        (
            "differing Content-Lengths",
            h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
            Expect::Close(400),
        ),
        ("differing list", h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd"), Expect::Close(400)),
        (
            "signed Content-Length",
            h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"),
            Expect::Close(400),
        ),
        ("empty Content-Length", h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n"), Expect::Close(400)),
        (
            "Content-Length not a number",
            h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc"),
            Expect::Close(400),
        ),
        ("negative Content-Length", h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), Expect::Close(400)),
        // Issue 14: an empty list member makes Content-Length invalid (it was read as 1).
        ("Content-Length 1,", h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1,\r\n\r\nx"), Expect::Close(400)),
        ("Content-Length 1,,1", h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1,,1\r\n\r\nx"), Expect::Close(400)),
        ("Content-Length ,1", h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: ,1\r\n\r\nx"), Expect::Close(400)),
        ("Content-Length 1, 1", h("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx"), Expect::Served(404)),
        (
            "chunked twice",
            h("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Expect::Close(400),
        ),
        (
            "chunked with parameters",
            h("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n"),
            Expect::Close(400),
        ),
        // Issue 14: chunked not the final coding is 400 (RFC 9112 §6.3), not 501.
        (
            "chunked then identity",
            h("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
            Expect::Close(400),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            h("POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Expect::Close(400),
        ),
        (
            "obs-fold",
            h("GET /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"),
            Expect::Close(400),
        ),
        (
            "space before the colon",
            h("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"),
            Expect::Close(400),
        ),
        ("bad chunk size", with_body(te, b"0x5\r\nhello\r\n0\r\n\r\n"), Expect::Close(400)),
        ("chunk data without CRLF", with_body(te, b"3\r\nabcX\r\n0\r\n\r\n"), Expect::Close(400)),
        ("chunk line with bare LF", with_body(te, b"3\nabc\n0\n\n"), Expect::Close(400)),
        // Issue 14: a chunk line is RFC 9112 §7.1's grammar exactly; whitespace only before a `;`.
        ("chunk size 5 6", with_body(te, b"5 6\r\nhello\r\n0\r\n\r\n"), Expect::Close(400)),
        ("last chunk 0 1", with_body(te, b"0 1\r\nx\r\n0\r\n\r\n"), Expect::Close(400)),
        ("chunk size then a space", with_body(te, b"5 \r\nhello\r\n0\r\n\r\n"), Expect::Close(400)),
        ("chunk size then a tab", with_body(te, b"5\t\r\nhello\r\n0\r\n\r\n"), Expect::Close(400)),
        ("chunk size then words", with_body(te, b"5 xyz\r\nhello\r\n0\r\n\r\n"), Expect::Close(400)),
        ("chunk extension with a space", with_body(te, b"5;a b\r\nhello\r\n0\r\n\r\n"), Expect::Close(400)),
        ("chunk extension unclosed quote", with_body(te, b"5;a=\"b\r\nhello\r\n0\r\n\r\n"), Expect::Close(400)),
        ("chunk extension after BWS", with_body(te, b"5 ;a=b\r\nhello\r\n0;c=\"d\"\r\n\r\n"), Expect::Served(404)),
        // Issue 14: trailer lines are header fields, checked as the head's are.
        ("trailer without a colon", with_body(te, b"0\r\nbogus\r\n\r\n"), Expect::Close(400)),
        ("trailer with a space before the colon", with_body(te, b"0\r\nX : 1\r\n\r\n"), Expect::Close(400)),
        ("trailer name not a token", with_body(te, b"0\r\nX(y): 1\r\n\r\n"), Expect::Close(400)),
        ("trailer that is a status line", with_body(te, b"0\r\nHTTP/1.1 200 OK\r\n\r\n"), Expect::Close(400)),
        ("trailer fields", with_body(te, b"0\r\nX: 1\r\nY:\r\n\r\n"), Expect::Served(404)),
        // 400: the request line and fields.
        ("bare LF line ends", h("GET /health HTTP/1.1\nHost: a\n\n"), Expect::Close(400)),
        ("bare LF inside", h("GET /health HTTP/1.1\r\nHost: a\nX: y\r\n\r\n"), Expect::Close(400)),
        ("bare CR", h("GET /health HTTP/1.1\rHost: a\r\n\r\n"), Expect::Close(400)),
        ("NUL in a field", b"GET /health HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n".to_vec(), Expect::Close(400)),
        ("field without a colon", h("GET /health HTTP/1.1\r\nHost: a\r\nBroken\r\n\r\n"), Expect::Close(400)),
        ("space in a field name", h("GET /health HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"), Expect::Close(400)),
        ("two spaces in the request line", h("GET  /health HTTP/1.1\r\nHost: a\r\n\r\n"), Expect::Close(400)),
        ("target without a slash", h("GET health HTTP/1.1\r\nHost: a\r\n\r\n"), Expect::Close(400)),
        ("authority-form", h("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), Expect::Close(400)),
        ("TLS hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(), Expect::Close(400)),
        ("version word too long", h("GET /health HTTP/1.1x\r\nHost: a\r\n\r\n"), Expect::Close(400)),
        // 501 and 505.
        ("unknown coding", h("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"), Expect::Close(501)),
        (
            "coding before chunked",
            h("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Expect::Close(501),
        ),
        ("HTTP/2.0", h("GET /health HTTP/2.0\r\nHost: a\r\n\r\n"), Expect::Close(505)),
        ("HTTP/1.2", h("GET /health HTTP/1.2\r\nHost: a\r\n\r\n"), Expect::Close(505)),
        ("HTTP/0.9", h("GET /health HTTP/0.9\r\n\r\n"), Expect::Close(505)),
        ("HTTP/2 preface", h("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Expect::Close(505)),
        // 408: a head that never ends.
        ("head never ends", h("GET /health HTTP/1.1\r\nHost: a\r\n"), Expect::Close(408)),
    ];
    let server = Server::start(&[("HEADER_TIMEOUT_S", "2"), ("RATE_LIMIT_ENABLED", "false"), ("ACCESS_LOG", "false")]);
    for (what, raw, expect) in &table {
        for pieces in [1, 37] {
            let r = send_in_pieces(&server, raw, pieces, *expect).unwrap_or_else(|e| panic!("{what} in {pieces}: {e}"));
            let status = match expect {
                Expect::Close(s) | Expect::Served(s) => *s,
            };
            assert_eq!(r.status, status, "{what} in {pieces} pieces");
            for name in ["Content-Security-Policy", "Strict-Transport-Security", "X-Content-Type-Options", "Date"] {
                assert!(r.header(name).is_some(), "{what}: no {name}");
            }
            if status >= 400 {
                assert_eq!(r.header("Content-Type"), Some("application/json"), "{what}");
                let reason = r.head.lines().next().unwrap()[13..].to_owned();
                assert!(r.body_text().starts_with(&format!("{{\"error\":\"{reason}\"")), "{what}: {}", r.body_text());
            }
        }
    }
    eprintln!("malformed and oversized heads: {} cases, each in 1 and 37 pieces", table.len());
}

/// Sends `raw` on a new connection in `pieces` writes (with a pause between, so they arrive as
/// separate reads), reads the response, and checks the connection's fate.
fn send_in_pieces(server: &Server, raw: &[u8], pieces: usize, expect: Expect) -> Result<Response, String> {
    let mut s = server.connect();
    s.set_nodelay(true).unwrap();
    let size = raw.len().div_ceil(pieces).max(1);
    for piece in raw.chunks(size) {
        // After an early answer the server may close while we still send: that is its right.
        if s.write_all(piece).is_err() {
            break;
        }
        if pieces > 1 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    let r = read_response(&mut s, false).map_err(|e| e.to_string())?;
    match expect {
        Expect::Close(_) => {
            if r.header("Connection") != Some("close") {
                return Err(format!("no Connection: close in\n{}", r.head));
            }
            let rest = read_to_close(&mut s);
            if !rest.is_empty() {
                return Err(format!("more after the error: {:?}", String::from_utf8_lossy(&rest)));
            }
        }
        Expect::Served(_) => {
            s.write_all(HEALTH).map_err(|e| e.to_string())?;
            let next = read_response(&mut s, false).map_err(|e| e.to_string())?;
            if next.status != 200 {
                return Err(format!("the connection is not usable after: {}", next.status));
            }
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------

/// After a mix of hostile traffic (every connection answered and closed first), SIGTERM still
/// ends the server cleanly with exit 0. Under scripts/sanitize.sh this is where LeakSanitizer
/// looks at the server's heap: a leak turns the exit code into 23 and leaves a report.
#[test]
fn clean_exit_after_hostile_traffic() {
    let mut server = Server::start(&[("HEADER_TIMEOUT_S", "1"), ("RATE_LIMIT_DEFAULT", "1000/minute")]);
    // Each input, with how many responses it gets (the last one closing, for the bad ones).
    let mut inputs: Vec<(Vec<u8>, usize)> = vec![
        (HEALTH.repeat(20), 20), // the last 10 over /health's 10/minute: 429
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 1),
        (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), 1),
        (head_of_size(9000), 1),
        (with_fields(70), 1),
        (b"GET /health HTTP/1.1\r\nHost: a\r\n".to_vec(), 1), // 408 after a second
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00".to_vec(), 1),
    ];
    inputs.extend((0..10).map(|i| {
        (format!("GET /status HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 2001:db8::{i}\r\n\r\n").into_bytes(), 1)
    }));
    let handles: Vec<_> = inputs
        .into_iter()
        .map(|(raw, responses)| {
            let mut s = server.connect();
            thread::spawn(move || {
                let _ = s.write_all(&raw);
                (0..responses).map(|_| read_response(&mut s, false).map(|r| r.status)).collect::<Result<Vec<_>, _>>()
            })
        })
        .collect();
    let mut statuses: Vec<u16> = handles.into_iter().flat_map(|h| h.join().unwrap().expect("responses")).collect();
    statuses.sort();
    statuses.dedup();
    assert_eq!(statuses, [200, 400, 404, 408, 429, 431]);
    server.signal("TERM");
    let status = server.wait_exit(PATIENCE).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
}

// ---------------------------------------------------------------------------------------------

/// Sanity for the CPU reading the fd test relies on: a busy server does show CPU time, so "few
/// ticks" above means idle, not a broken measurement.
#[test]
fn cpu_reading_sees_a_busy_server() {
    let server = Server::start(&[("RATE_LIMIT_ENABLED", "false"), ("ACCESS_LOG", "false")]);
    let before = server.cpu_ticks();
    let mut s = server.connect();
    let batch = HEALTH.repeat(100);
    let (t, mut sent) = (Instant::now(), 0);
    let mut buf = Vec::new();
    while t.elapsed() < Duration::from_secs(2) {
        s.write_all(&batch).unwrap();
        assert_eq!(read_statuses(&mut s, 100, &mut buf)[2], 100);
        sent += 100;
    }
    let ticks = server.cpu_ticks() - before;
    assert!(ticks >= 20, "{ticks} ticks for {sent} requests in 2 s");
}
