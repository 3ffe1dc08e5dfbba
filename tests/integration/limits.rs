//! Rate limiting with the in-memory store (SPEC §3): each limit at the limit and one past it.

use crate::support::{Response, Server};

fn from(server: &Server, path: &str, client: &str) -> Response {
    server.get_with(path, &[&format!("X-Forwarded-For: {client}")])
}

#[test]
fn default_limit_at_and_past_the_limit() {
    let server = Server::start(&[("RATE_LIMIT_DEFAULT", "3/minute"), ("RATE_LIMIT_ENDPOINT", "100/minute")]);
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

#[test]
fn endpoint_limit_at_and_past_the_limit_per_path() {
    let server = Server::start(&[("RATE_LIMIT_ENDPOINT", "2 per minute")]);
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

#[test]
fn the_check_runs_before_the_redirect() {
    let server = Server::start(&[("RATE_LIMIT_DEFAULT", "1/minute")]);
    let redirect = ["X-Forwarded-For: 192.0.2.50", "X-Forwarded-Proto: http"];
    assert_eq!(server.get_with("/status", &redirect).status, 301);
    assert_eq!(server.get_with("/status", &redirect).status, 429);
}

#[test]
fn window_refills_after_it_ends() {
    let server = Server::start(&[("RATE_LIMIT_DEFAULT", "2/second")]);
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

#[test]
fn ipv6_clients_share_their_64() {
    let server = Server::start(&[("RATE_LIMIT_DEFAULT", "2/minute")]);
    assert_eq!(from(&server, "/nowhere", "2001:db8:1:2::1").status, 404);
    assert_eq!(from(&server, "/nowhere", "2001:db8:1:2:ffff::9").status, 404);
    assert_eq!(from(&server, "/nowhere", "2001:db8:1:2:abcd::").status, 429, "same /64");
    assert_eq!(from(&server, "/nowhere", "2001:db8:1:3::1").status, 404, "another /64");
}

#[test]
fn ipv4_mapped_is_ipv4() {
    let server = Server::start(&[("RATE_LIMIT_DEFAULT", "1/minute")]);
    assert_eq!(from(&server, "/nowhere", "::ffff:192.0.2.77").status, 404);
    assert_eq!(from(&server, "/nowhere", "192.0.2.77").status, 429);
}

#[test]
fn spoofed_entries_left_of_the_proxy_do_not_change_the_key() {
    let server = Server::start(&[("RATE_LIMIT_DEFAULT", "1/minute")]);
    assert_eq!(from(&server, "/nowhere", "1.1.1.1, 192.0.2.60").status, 404);
    assert_eq!(from(&server, "/nowhere", "2.2.2.2, 192.0.2.60").status, 429);
}

#[test]
fn exempt_clients_are_never_counted() {
    let server = Server::start(&[("RATE_LIMIT_DEFAULT", "1/minute"), ("RATE_LIMIT_EXEMPT", "10.0.0.0/16, 127.0.0.1")]);
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

#[test]
fn headers_describe_the_most_restrictive_limit() {
    let server = Server::start(&[("RATE_LIMIT_DEFAULT", "5/minute"), ("RATE_LIMIT_ENDPOINT", "3/hour")]);
    let r = from(&server, "/status", "192.0.2.33");
    // endpoint: 2 left of 3 (per hour); global: 4 left of 5. Fewest remaining wins.
    assert_eq!(r.header("RateLimit-Limit"), Some("3"));
    assert_eq!(r.header("RateLimit-Remaining"), Some("2"));
    let reset: u64 = r.header("RateLimit-Reset").unwrap().parse().unwrap();
    assert!(reset > 3500 && reset <= 3600, "{reset}");
}
