//! The Redis store against a real `redis-server`: batching, exact counts, failures at run time
//! (killed, restarted, stalled) and at startup (unreachable, wrong password, bad database).

use std::io::Write as _;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::{BIN, PATIENCE, Server, read_response};

fn start(redis: &RedisServer, env: &[(&str, &str)]) -> Server {
    let url = redis.url();
    let mut env = env.to_vec();
    env.push(("REDIS_URL", &url));
    env.push(("ACCESS_LOG", "false"));
    Server::start(&env)
}

/// Sends `per_conn` keep-alive requests on each of `conns` parallel connections, the client of
/// connection i being 198.51.100.(i % clients); returns the slowest response time seen.
fn load(server: &Server, conns: usize, per_conn: usize, clients: usize) -> Duration {
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let addr = server.addr;
    std::thread::scope(|scope| {
        for i in 0..conns {
            let slowest = Arc::clone(&slowest);
            scope.spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                let req =
                    format!("GET /nowhere HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.{}\r\n\r\n", i % clients);
                for _ in 0..per_conn {
                    let start = Instant::now();
                    s.write_all(req.as_bytes()).unwrap();
                    let r = read_response(&mut s, false).unwrap();
                    assert_eq!(r.status, 404);
                    let took = start.elapsed();
                    let mut worst = slowest.lock().unwrap();
                    *worst = (*worst).max(took);
                }
            });
        }
    });
    *slowest.lock().unwrap()
}

#[test]
fn concurrent_counts_are_exact_and_batched() {
    let redis = RedisServer::start(&[]);
    // Exact counts need every check decided by Redis: a timeout generous enough that a loaded
    // machine's slow round trip doesn't send some checks to the memory store.
    let server = start(&redis, &[("RATE_LIMIT_DEFAULT", "1000000/minute"), ("REDIS_TIMEOUT_MS", "5000")]);
    let (conns, per_conn, clients) = (32, 50, 8);
    let reads_before = redis.info_number("total_reads_processed");
    load(&server, conns, per_conn, clients);
    let reads = redis.info_number("total_reads_processed") - reads_before;
    // No lost or double increments: each client's counter holds exactly its requests.
    for c in 0..clients {
        let count: u64 =
            redis.cli(&["--raw", "GET", &format!("zayzoon:{{198.51.100.{c}}}:global:1000000/60s")]).parse().unwrap();
        assert_eq!(count, (conns / clients * per_conn) as u64, "client {c}");
    }
    let requests = (conns * per_conn) as u64;
    assert_eq!(redis.command_calls("evalsha"), requests, "one script call per request");
    // Batching: fewer reads by Redis (≈ round trips) than requests, and the server's own count agrees.
    assert!(reads < requests, "{reads} reads for {requests} requests");
    server.signal("TERM");
    let line = server.wait_for_line("redis: ").expect("stats line");
    let round_trips: u64 = line.split(" checks in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(line.contains(&format!("redis: {requests} checks in ")), "{line}");
    assert!(round_trips < requests, "{line}");
    eprintln!("{requests} requests: {round_trips} round trips, {reads} Redis reads");
    redis.assert_every_key_expires();
}

#[test]
fn killed_redis_falls_back_to_memory_and_comes_back() {
    let mut redis = RedisServer::start(&[]);
    let server = start(&redis, &[("REDIS_TIMEOUT_MS", "100"), ("RATE_LIMIT_DEFAULT", "1000000/minute")]);
    assert_eq!(server.get("/health").status, 200);
    redis.kill();
    // Every request is still answered, none waits much longer than the timeout.
    let slowest = load(&server, 8, 25, 4);
    assert!(slowest < Duration::from_millis(600), "slowest {slowest:?}");
    server.wait_for_line("come from memory").expect("one WARN when Redis goes");
    assert_eq!(server.log_lines("rate limits come from memory").len(), 1, "{}", server.log_text());

    redis.restart();
    // Back within seconds: the INFO line, then counts land in Redis again.
    server.wait_for_line("come from Redis again").expect("one INFO when Redis is back");
    assert_eq!(server.get_with("/nowhere", &["X-Forwarded-For: 192.0.2.200"]).status, 404);
    assert_eq!(redis.cli(&["--raw", "GET", "zayzoon:{192.0.2.200}:global:1000000/60s"]), "1");
    assert_eq!(server.log_lines("come from Redis again").len(), 1);
}

#[test]
fn stalled_redis_is_waited_for_at_most_the_timeout() {
    let redis = RedisServer::start(&[]);
    let server = start(&redis, &[("REDIS_TIMEOUT_MS", "50")]);
    assert_eq!(server.get("/health").status, 200);
    // Redis stops answering anyone for 2 s, keeping the connections open.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "2000"]), "OK");
    let start = Instant::now();
    let r = server.get("/status");
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(r.header("RateLimit-Limit"), Some("10"), "decided (from memory), not skipped");
    server.wait_for_line("failed").expect("WARN");
}

#[test]
fn silent_redis_at_startup_exits_1_after_the_retries() {
    // Accepts connections (the kernel's backlog does) and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://:hunter2@{}", silent.local_addr().unwrap());
    let start = Instant::now();
    let out = std::process::Command::new(BIN)
        .env_clear()
        .envs([("REDIS_URL", url.as_str()), ("REDIS_CONNECT_RETRIES", "2"), ("REDIS_TIMEOUT_MS", "100"), ("PORT", "0")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(start.elapsed() < PATIENCE);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("after 2 attempt(s)"), "{text}");
    assert!(!text.contains("hunter2"), "password redacted: {text}");
    assert!(text.contains("redis://:***@127.0.0.1:"), "{text}");
    assert!(!text.contains("listening on"), "{text}");
}

fn startup_failure(url: &str, retries: &str) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let out = std::process::Command::new(BIN)
        .env_clear()
        .envs([("REDIS_URL", url), ("REDIS_CONNECT_RETRIES", retries), ("PORT", "0")])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), start.elapsed())
}

#[test]
fn unreachable_redis_at_startup_exits_1_after_the_retries() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, text, took) = startup_failure(&format!("redis://127.0.0.1:{port}"), "3");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("after 3 attempt(s)"), "{text}");
    assert_eq!(text.matches("not ready (attempt").count(), 2, "a WARN per failed attempt before the last: {text}");
    // Backoff between attempts: 100 ms, then 200 ms.
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

#[test]
fn wrong_password_is_a_clear_error_at_once() {
    let redis = RedisServer::start(&["--requirepass", "right"]);
    let (code, text, _) = startup_failure(&format!("redis://:wrong@127.0.0.1:{}", redis.port), "5");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("after 1 attempt(s)"), "not retried: {text}");
    assert!(text.to_lowercase().contains("pass"), "{text}");
    assert!(!text.contains("wrong@"), "{text}");
    // The right password works.
    let url = format!("redis://:right@127.0.0.1:{}", redis.port);
    let server = Server::start(&[("REDIS_URL", &url)]);
    assert_eq!(server.get("/status").status, 200);
}

#[test]
fn a_percent_encoded_password_is_decoded() {
    // '#', '/', '?' and '@' would end the userinfo or the authority; encoded, they reach AUTH as is.
    let redis = RedisServer::start(&["--requirepass", "p#ss/w?rd@1"]);
    let url = format!("redis://:p%23ss%2Fw%3Frd%401@127.0.0.1:{}", redis.port);
    let server = Server::start(&[("REDIS_URL", &url)]);
    assert_eq!(server.get("/status").status, 200);
    let line = server.log_lines("listening on").concat();
    assert!(line.contains("store=redis://:***@127.0.0.1:"), "{line}");
    assert!(!line.contains("p%23ss"), "{line}");
    // Unencoded, the '#' is refused as a config error rather than cutting the password short.
    let url = format!("redis://:p#ss@127.0.0.1:{}", redis.port);
    let out = std::process::Command::new(BIN)
        .env_clear()
        .envs([("REDIS_URL", url.as_str()), ("PORT", "0"), ("BIND_ADDR", "127.0.0.1")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("REDIS_URL") && text.contains("percent-encoded") && !text.contains("p#ss"), "{text}");
}

#[test]
fn database_out_of_range_is_a_clear_error() {
    let redis = RedisServer::start(&[]);
    let (code, text, _) = startup_failure(&format!("redis://127.0.0.1:{}/99", redis.port), "5");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("DB index is out of range"), "{text}");
}

#[test]
fn selected_database_is_used() {
    let redis = RedisServer::start(&[]);
    let url = format!("redis://127.0.0.1:{}/3", redis.port);
    let server = Server::start(&[("REDIS_URL", &url)]);
    assert_eq!(server.get("/status").status, 200);
    assert_eq!(redis.cli(&["-n", "3", "--raw", "GET", "zayzoon:{127.0.0.1}:status:10/60s"]), "1");
    assert!(redis.keys().is_empty(), "nothing in db 0");
}

#[test]
fn flushed_scripts_are_reloaded() {
    let redis = RedisServer::start(&[]);
    let server = start(&redis, &[("RATE_LIMIT_ENDPOINT", "2/minute")]);
    assert_eq!(server.get("/status").status, 200);
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(server.get("/status").status, 200);
    assert_eq!(server.get("/status").status, 429, "still counted in Redis after NOSCRIPT");
    assert!(server.log_lines("failed").is_empty(), "NOSCRIPT is not a failure: {}", server.log_text());
}

#[test]
fn redis_down_is_never_a_5xx() {
    let mut redis = RedisServer::start(&[]);
    let server = start(&redis, &[("REDIS_TIMEOUT_MS", "100")]);
    redis.kill();
    for i in 0..30 {
        let r = server.get_with("/health", &[&format!("X-Forwarded-For: 203.0.113.{i}")]);
        // A new client each time: allowed, and counted from memory rather than let through.
        assert_eq!(r.status, 200, "{i}");
        assert_eq!(r.header("RateLimit-Remaining"), Some("9"), "{i}");
    }
    assert!(server.wait_for_line("rate limits come from memory").is_some(), "{}", server.log_text());
    assert_eq!(server.log_lines("rate limits come from memory").len(), 1, "one WARN, not one per request");
}

/// Refusals are cheap (SPEC §3): a client flooding past its limit costs Redis at most 0.01
/// commands per refused request, because the refusal is remembered until its Retry-After.
#[test]
fn a_flood_past_the_limit_costs_redis_almost_nothing() {
    let redis = RedisServer::start(&[]);
    let server = start(&redis, &[("RATE_LIMIT_DEFAULT", "5/minute")]);
    let mut s = server.connect();
    let req = b"GET /nowhere HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.66\r\n\r\n";
    for _ in 0..6 {
        s.write_all(req).unwrap();
        read_response(&mut s, false).unwrap();
    }
    let before = redis.command_calls("evalsha");
    let refused = 2_000;
    for _ in 0..refused {
        s.write_all(req).unwrap();
        let r = read_response(&mut s, false).unwrap();
        assert_eq!((r.status, r.header("RateLimit-Remaining")), (429, Some("0")));
    }
    let calls = redis.command_calls("evalsha") - before;
    assert!(calls as f64 <= 0.01 * refused as f64, "{calls} Redis scripts for {refused} refused requests");
    assert_eq!(redis.cli(&["--raw", "GET", "zayzoon:{203.0.113.66}:global:5/60s"]), "6", "counted no further");
}

/// The token bucket in Redis decides as the memory store does. Each of 16 clients sends 50
/// requests at random moments against one to three limits with short periods (so that tokens come
/// back during the test), through the Lua script, which takes its time from Redis (`TIME`) and
/// returns it; the memory store, given those same times, must give every decision the same.
#[test]
fn token_bucket_in_redis_decides_as_memory_does() {
    use zayzoon::limit::{ClientKey, Decision, MemoryStore, Policy, Rate, Settings, Strategy, remote};
    const LIMITS: [&str; 6] = ["10/second", "5/second", "8 per 2 seconds", "20 per 3 seconds", "15/second", "3/second"];
    let redis = RedisServer::start(&[]);
    let client = redis::Client::open(redis.url()).unwrap();
    let (decisions, refused): (usize, usize) = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..16u64)
            .map(|seed| {
                let client = &client;
                scope.spawn(move || {
                    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    let mut next = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    let n = 1 + (next() % 3) as usize;
                    let list: Vec<&str> = (0..n).map(|_| LIMITS[(next() % 6) as usize]).collect();
                    let settings = Settings {
                        enabled: true,
                        strategy: Strategy::TokenBucket,
                        default: Rate::parse_list(&list.join(";")).unwrap(),
                        endpoint: vec![Rate::per_minute(1)],
                        exempt: vec![],
                    };
                    let ip = format!("198.51.100.{seed}").parse().unwrap();
                    let policy = Policy::leak(settings);
                    let counters = policy.counters(ip, None).unwrap();
                    let key = ClientKey::of(ip);
                    let mut conn = client.get_connection().unwrap();
                    let memory = MemoryStore::new(16, policy.slots());
                    let t0 = Instant::now();
                    let mut first_now = None;
                    let mut refused = 0;
                    for i in 0..50 {
                        std::thread::sleep(Duration::from_millis(next() % 90));
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(remote::TOKEN_BUCKET).arg(counters.len());
                        for c in counters.iter() {
                            cmd.arg(remote::key_name(key, c));
                        }
                        for c in counters.iter() {
                            cmd.arg(c.interval_us).arg(c.period_us);
                        }
                        let reply: redis::Value = cmd.query(&mut conn).unwrap();
                        let redis::Value::BulkString(text) = &reply else { panic!("{reply:?}") };
                        let now: u64 = String::from_utf8_lossy(text).split(' ').nth(1).unwrap().parse().unwrap();
                        let states = remote::parse_reply(&reply, counters).unwrap();
                        let in_redis = Decision::from_states(counters, &states[..counters.len()]);
                        let since = now - *first_now.get_or_insert(now);
                        let in_memory = memory.decide(key, counters, t0 + Duration::from_micros(since));
                        assert_eq!(in_redis, in_memory, "client {seed}, limits {list:?}, request {i} at {since} µs");
                        refused += usize::from(matches!(in_redis, Decision::Limited { refused: Some(_), .. }));
                    }
                    (50, refused)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).fold((0, 0), |(d, r), (n, m)| (d + n, r + m))
    });
    eprintln!("token bucket, Redis vs memory: {decisions} decisions agreed, {refused} of them refusals");
    assert!(
        refused >= decisions / 10 && refused <= decisions * 9 / 10,
        "{refused} of {decisions} refused: a weak test"
    );
    redis.assert_every_key_expires();
}
