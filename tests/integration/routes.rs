//! SPEC §2's table: each route, the headers on every response, HEAD, the page itself.

use std::io::Write as _;

use crate::support::{Response, Server, read_response};

/// Every header SPEC §2 puts on every response, with its exact value where it is fixed.
fn assert_common_headers(r: &Response) {
    let csp = r.header("Content-Security-Policy").expect("CSP");
    assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"), "{csp}");
    assert!(csp.ends_with("'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"));
    for (name, value) in [
        ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("X-XSS-Protection", "0"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
        ("Cache-Control", "no-store"),
    ] {
        assert_eq!(r.header(name), Some(value), "{name} in\n{}", r.head);
    }
    let date = r.header("Date").expect("Date");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    assert!(r.header("Content-Type").is_some());
    assert!(r.header("Server").is_none(), "no Server header");
    if !r.head.starts_with("HTTP/1.1 200") || !r.body.is_empty() {
        assert_eq!(r.header("Content-Length"), Some(r.body.len().to_string().as_str()));
    }
}

fn assert_json_error(r: &Response, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.head);
    assert_common_headers(r);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let body = r.body_text();
    assert!(body.starts_with(&format!("{{\"error\":\"{reason}\",\"message\":\"")), "{body}");
    assert!(body.ends_with(&format!("\",\"status\":{status}}}")), "{body}");
}

#[test]
fn status_page() {
    let server = Server::start(&[]);
    let r = server.get("/status");
    assert_eq!(r.status, 200);
    assert_common_headers(&r);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let body = r.body_text();
    assert!(body.starts_with("<!DOCTYPE html>"));
    assert!(body.contains("<title>Status</title>"));
    assert!(body.contains("Zayzoon rocking here! 🚀"));
    assert!(body.contains(" UTC</time>"));
}

#[test]
fn health_page() {
    let server = Server::start(&[]);
    let r = server.get("/health");
    assert_eq!(r.status, 200);
    assert_common_headers(&r);
    let body = r.body_text();
    assert!(body.contains("<title>Health</title>"));
    assert!(body.contains("Status: Healthy ✅"));
}

#[test]
fn page_time_is_current_utc() {
    let server = Server::start(&[]);
    let body = server.get("/health").body_text();
    let shown = body.split("<time>").nth(1).unwrap().split(" UTC</time>").next().unwrap().to_owned();
    let now = std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M"]).output().unwrap();
    let now = String::from_utf8(now.stdout).unwrap();
    // Minute precision: the test may straddle a second, not (realistically) a minute boundary twice.
    assert!(shown.starts_with(now.trim()) || shown[..13] == now.trim()[..13], "{shown} vs {now}");
}

#[test]
fn head_gets_get_headers_without_body() {
    let server = Server::start(&[("RATE_LIMIT_ENABLED", "false")]);
    let get = server.get("/status");
    let head = server.exchange(b"HEAD /status HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("Content-Length"), get.header("Content-Length"));
    assert_eq!(head.header("Content-Type"), get.header("Content-Type"));
    assert_common_headers(&head);
    // Nothing follows the head on the wire: the next response starts right after it.
    let mut s = server.connect();
    s.write_all(b"HEAD /health HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, true).unwrap().status, 200);
    assert_eq!(read_response(&mut s, false).unwrap().status, 404);
}

#[test]
fn other_paths_are_404_json() {
    let server = Server::start(&[]);
    for path in ["/", "/st%61tus", "/status/", "/Status", "/health.json", "/favicon.ico", "//status"] {
        assert_json_error(&server.get(path), 404, "Not Found");
    }
}

#[test]
fn query_string_is_ignored_for_routing() {
    let server = Server::start(&[]);
    assert_eq!(server.get("/health?x=1&y").status, 200);
    assert_eq!(server.get("/status?").status, 200);
}

#[test]
fn absolute_form_routes_by_path() {
    let server = Server::start(&[]);
    let r = server.exchange(b"GET http://example.com/health HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body_text().contains("Healthy"));
}

#[test]
fn other_methods_are_405_with_allow() {
    let server = Server::start(&[]);
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
        let r =
            server.exchange(format!("{method} /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").as_bytes());
        assert_json_error(&r, 405, "Method Not Allowed");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    }
    let r = server.exchange(b"POST /elsewhere HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_json_error(&r, 404, "Not Found");
}

#[test]
fn parser_errors_carry_every_header_too() {
    let server = Server::start(&[]);
    let r = server.exchange(b"GET / HTTP/1.1\r\n\r\n");
    assert_json_error(&r, 400, "Bad Request");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(r.header("RateLimit-Limit").is_none(), "parse errors don't reach the limiter");
    let r = server.exchange(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n");
    assert_json_error(&r, 505, "HTTP Version Not Supported");
}

#[test]
fn rendered_page_passes_html_sanity_checks() {
    let server = Server::start(&[]);
    let body = server.get("/status").body_text();
    // One inline stylesheet, no script, nothing loaded from elsewhere (the CSP allows none).
    assert_eq!(body.matches("<style>").count(), 1);
    for forbidden in ["<script", "<link", "<img", "src=", "href=", "style=\""] {
        assert!(!body.contains(forbidden), "{forbidden}");
    }
}

#[test]
fn access_log_has_one_escaped_line_per_request() {
    let server = Server::start(&[]);
    let r = server.exchange("GET /caf\u{e9}\"x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n".as_bytes());
    assert_eq!(r.status, 404);
    let line = server.wait_for_line("[access]").expect("access line");
    // time, client, "method path", status, bytes, duration
    let fields: Vec<&str> = line.split("[access] ").nth(1).unwrap().split(' ').collect();
    assert!(fields[0].ends_with('Z') && fields[0].contains('T'), "{line}");
    assert_eq!(fields[1], "203.0.113.7");
    assert_eq!(fields[2], "\"GET");
    assert_eq!(fields[3], "/caf\\xc3\\xa9\\x22x\"");
    assert_eq!(fields[4], "404");
    assert_eq!(fields[5].parse::<usize>().unwrap(), r.head.len() + r.body.len());
    assert!(fields[6].ends_with("us"), "{line}");
}

#[test]
fn access_log_can_be_turned_off() {
    let server = Server::start(&[("ACCESS_LOG", "false")]);
    assert_eq!(server.get("/health").status, 200);
    // A request that produces a log line of its own kind shows the log is flowing.
    assert_eq!(server.get("/status").status, 200);
    assert!(server.wait_for_line_within("[access]", std::time::Duration::from_millis(500)).is_none());
}
