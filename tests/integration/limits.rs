//! Rate limiting (SPEC §3): each limit at the limit and one past it. Every test runs twice, once
//! with the in-memory store and once against a real `redis-server`, and must give the same answers;
//! after each Redis run, every key left in Redis must have a TTL.

use crate::support::redis::RedisServer;
use crate::support::{Response, Server};

/// Which store a test runs against.
pub enum Store {
    Memory,
    Redis(RedisServer),
}

impl Store {
    /// Starts zayzoon with `env`, on this store.
    fn start(&self, env: &[(&str, &str)]) -> Server {
        match self {
            Store::Memory => Server::start(env),
            Store::Redis(redis) => {
                let url = redis.url();
                let mut env = env.to_vec();
                env.push(("REDIS_URL", &url));
                Server::start(&env)
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Store::Redis(redis) = self
            && !std::thread::panicking()
        {
            assert!(!redis.keys().is_empty(), "the test left no keys in Redis: did it use Redis at all?");
            redis.assert_every_key_expires();
        }
    }
}

/// Runs each named test once per store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::$name(&super::Store::Memory) })*
        }
        mod redis {
            $(#[test] fn $name() { super::$name(&super::Store::Redis(crate::support::redis::RedisServer::start(&[]))) })*
        }
    };
}

on_both_stores!(
    default_limit_at_and_past_the_limit,
    endpoint_limit_at_and_past_the_limit_per_path,
    the_check_runs_before_the_redirect,
    window_refills_after_it_ends,
    ipv6_clients_share_their_64,
    ipv4_mapped_is_ipv4,
    spoofed_entries_left_of_the_proxy_do_not_change_the_key,
    exempt_clients_are_never_counted,
    headers_describe_the_most_restrictive_limit,
    several_limits_in_one_variable,
    token_bucket_five_per_minute,
    token_bucket_refills_one_token_at_a_time,
    refused_requests_count_against_nothing,
);

fn from(server: &Server, path: &str, client: &str) -> Response {
    server.get_with(path, &[&format!("X-Forwarded-For: {client}")])
}

fn default_limit_at_and_past_the_limit(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_DEFAULT", "3/minute"), ("RATE_LIMIT_ENDPOINT", "100/minute")]);
    for remaining in [2, 1, 0] {
        let r = from(&server, "/nowhere", "203.0.113.1");
        assert_eq!(r.status, 404, "404s count too");
        assert_eq!(r.header("RateLimit-Limit"), Some("3"));
        assert_eq!(r.header("RateLimit-Remaining"), Some(remaining.to_string().as_str()));
        assert!(r.header("Retry-After").is_none());
    }
    let r = from(&server, "/status", "203.0.113.1");
    assert_eq!(r.status, 429);
    assert_eq!(
        r.body_text(),
        r#"{"error":"Too Many Requests","message":"Rate limit exceeded: 3 per 1 minute","status":429}"#
    );
    assert_eq!(r.header("RateLimit-Remaining"), Some("0"));
    let reset: u64 = r.header("RateLimit-Reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "{reset}");
    assert_eq!(r.header("Retry-After"), Some(reset.to_string().as_str()));
    assert!(r.header("Content-Security-Policy").is_some(), "429s carry the security headers");
    // Another client is unaffected.
    assert_eq!(from(&server, "/status", "203.0.113.2").status, 200);
}

fn endpoint_limit_at_and_past_the_limit_per_path(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_ENDPOINT", "2 per minute")]);
    assert_eq!(from(&server, "/status", "198.51.100.1").status, 200);
    let r = from(&server, "/status", "198.51.100.1");
    assert_eq!((r.status, r.header("RateLimit-Limit"), r.header("RateLimit-Remaining")), (200, Some("2"), Some("0")));
    let r = from(&server, "/status", "198.51.100.1");
    assert_eq!(r.status, 429);
    assert!(r.body_text().contains("Rate limit exceeded: 2 per 1 minute"));
    // /health has its own counter; other paths only the global one.
    assert_eq!(from(&server, "/health", "198.51.100.1").status, 200);
    let r = from(&server, "/elsewhere", "198.51.100.1");
    assert_eq!((r.status, r.header("RateLimit-Limit")), (404, Some("100")));
}

fn the_check_runs_before_the_redirect(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_DEFAULT", "1/minute")]);
    let redirect = ["X-Forwarded-For: 192.0.2.50", "X-Forwarded-Proto: http"];
    assert_eq!(server.get_with("/status", &redirect).status, 301);
    assert_eq!(server.get_with("/status", &redirect).status, 429);
}

fn window_refills_after_it_ends(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_DEFAULT", "2/second")]);
    assert_eq!(from(&server, "/nowhere", "192.0.2.9").status, 404);
    assert_eq!(from(&server, "/nowhere", "192.0.2.9").status, 404);
    let r = from(&server, "/nowhere", "192.0.2.9");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Retry-After"), Some("1"));
    // Wait out the window (bounded: at most ~1 s plus scheduling).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if from(&server, "/nowhere", "192.0.2.9").status == 404 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "window never refilled");
    }
}

fn ipv6_clients_share_their_64(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_DEFAULT", "2/minute")]);
    assert_eq!(from(&server, "/nowhere", "2001:db8:1:2::1").status, 404);
    assert_eq!(from(&server, "/nowhere", "2001:db8:1:2:ffff::9").status, 404);
    assert_eq!(from(&server, "/nowhere", "2001:db8:1:2:abcd::").status, 429, "same /64");
    assert_eq!(from(&server, "/nowhere", "2001:db8:1:3::1").status, 404, "another /64");
}

fn ipv4_mapped_is_ipv4(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_DEFAULT", "1/minute")]);
    assert_eq!(from(&server, "/nowhere", "::ffff:192.0.2.77").status, 404);
    assert_eq!(from(&server, "/nowhere", "192.0.2.77").status, 429);
}

fn spoofed_entries_left_of_the_proxy_do_not_change_the_key(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_DEFAULT", "1/minute")]);
    assert_eq!(from(&server, "/nowhere", "1.1.1.1, 192.0.2.60").status, 404);
    assert_eq!(from(&server, "/nowhere", "2.2.2.2, 192.0.2.60").status, 429);
}

fn exempt_clients_are_never_counted(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_DEFAULT", "1/minute"), ("RATE_LIMIT_EXEMPT", "10.0.0.0/16, 127.0.0.1")]);
    for _ in 0..3 {
        // No X-Forwarded-For: the TCP peer, 127.0.0.1, is the client (like the ALB's health checker).
        let r = server.get("/health");
        assert_eq!(r.status, 200);
        assert!(r.header("RateLimit-Limit").is_none(), "no RateLimit headers for exempt clients");
        assert_eq!(from(&server, "/health", "10.0.200.3").status, 200);
    }
    assert_eq!(from(&server, "/nowhere", "10.1.0.1").status, 404);
    assert_eq!(from(&server, "/nowhere", "10.1.0.1").status, 429, "just outside the range");
}

#[test]
fn limiting_off_sends_no_headers() {
    let server = Server::start(&[("RATE_LIMIT_ENABLED", "false"), ("RATE_LIMIT_DEFAULT", "1/minute")]);
    for _ in 0..3 {
        let r = server.get("/status");
        assert_eq!(r.status, 200);
        assert!(r.header("RateLimit-Limit").is_none());
    }
}

fn headers_describe_the_most_restrictive_limit(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_DEFAULT", "5/minute"), ("RATE_LIMIT_ENDPOINT", "3/hour")]);
    let r = from(&server, "/status", "192.0.2.33");
    // endpoint: 2 left of 3 (per hour); global: 4 left of 5. Fewest remaining wins.
    assert_eq!(r.header("RateLimit-Limit"), Some("3"));
    assert_eq!(r.header("RateLimit-Remaining"), Some("2"));
    let reset: u64 = r.header("RateLimit-Reset").unwrap().parse().unwrap();
    assert!(reset > 3500 && reset <= 3600, "{reset}");
}

/// Flask-Limiter's lists: each limit is its own counter; the headers show the tightest, and the
/// 429 names the limit that refused (issue 12).
fn several_limits_in_one_variable(store: &Store) {
    // Fixed windows count every request, refused or not: the refused third one counts toward the
    // hourly limit too.
    let server =
        store.start(&[("RATE_LIMIT_DEFAULT", "2/second; 4 per 1 hour"), ("RATE_LIMIT_ENDPOINT", "100/minute")]);
    let client = "192.0.2.70";
    let r = from(&server, "/nowhere", client);
    assert_eq!((r.header("RateLimit-Limit"), r.header("RateLimit-Remaining")), (Some("2"), Some("1")));
    let r = from(&server, "/nowhere", client);
    // Both have 1 or 0 left: the per-second one has 0.
    assert_eq!((r.header("RateLimit-Limit"), r.header("RateLimit-Remaining")), (Some("2"), Some("0")));
    let r = from(&server, "/nowhere", client);
    assert_eq!(r.status, 429);
    assert!(r.body_text().contains("Rate limit exceeded: 2 per 1 second"), "{}", r.body_text());
    // A second later the per-second window has refilled; the hourly one has one request left.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let r = loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let r = from(&server, "/nowhere", client);
        if r.status == 404 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the per-second limit never refilled");
    };
    assert_eq!((r.header("RateLimit-Limit"), r.header("RateLimit-Remaining")), (Some("4"), Some("0")));
    let r = from(&server, "/nowhere", client);
    assert_eq!(r.status, 429);
    assert!(r.body_text().contains("Rate limit exceeded: 4 per 1 hour"), "{}", r.body_text());
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!(retry > 3500 && retry <= 3600, "{retry}");
}

/// SPEC §3's example, on both stores: five at once (the fifth shows Remaining 0, Reset 60), the
/// sixth refused with `Retry-After: 12`.
fn token_bucket_five_per_minute(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_STRATEGY", "token-bucket"), ("RATE_LIMIT_DEFAULT", "5/minute")]);
    for remaining in (0..5).rev() {
        let r = from(&server, "/nowhere", "192.0.2.80");
        assert_eq!(r.status, 404);
        assert_eq!(r.header("RateLimit-Remaining"), Some(remaining.to_string().as_str()));
        assert!(r.header("Retry-After").is_none());
    }
    let r = from(&server, "/nowhere", "192.0.2.80");
    assert_eq!((r.status, r.header("Retry-After")), (429, Some("12")));
    assert_eq!((r.header("RateLimit-Limit"), r.header("RateLimit-Remaining")), (Some("5"), Some("0")));
    assert_eq!(r.header("RateLimit-Reset"), Some("60"));
    assert!(r.body_text().contains("Rate limit exceeded: 5 per 1 minute"));
}

/// No burst of 2N across a window boundary: a token comes back every P/N, not N at once.
fn token_bucket_refills_one_token_at_a_time(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_STRATEGY", "token-bucket"), ("RATE_LIMIT_DEFAULT", "2/second")]);
    let client = "192.0.2.81";
    assert_eq!(from(&server, "/nowhere", client).status, 404);
    assert_eq!(from(&server, "/nowhere", client).status, 404);
    assert_eq!(from(&server, "/nowhere", client).status, 429);
    // After a token's time (500 ms), one request goes through, and the next is refused again.
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(from(&server, "/nowhere", client).status, 404);
    assert_eq!(from(&server, "/nowhere", client).status, 429, "one token back, not a whole window");
}

/// Once the page's counter has refused a client, its further requests there are refused without
/// counting against the global limit (SPEC §3, refusals are cheap).
fn refused_requests_count_against_nothing(store: &Store) {
    let server = store.start(&[("RATE_LIMIT_DEFAULT", "10/minute"), ("RATE_LIMIT_ENDPOINT", "1/minute")]);
    let client = "192.0.2.90";
    assert_eq!(from(&server, "/status", client).status, 200);
    for _ in 0..5 {
        let r = from(&server, "/status", client);
        assert_eq!((r.status, r.header("RateLimit-Remaining")), (429, Some("0")));
        let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // The global counter saw the first /status and the first refusal only (the refusal that the
    // store answered), then this request: 10 - 3 = 7 left.
    let r = from(&server, "/nowhere", client);
    assert_eq!((r.status, r.header("RateLimit-Limit"), r.header("RateLimit-Remaining")), (404, Some("10"), Some("7")));
}
