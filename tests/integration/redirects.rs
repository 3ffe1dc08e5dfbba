//! HTTPS enforcement and proxy trust (SPEC §2).

use crate::support::Server;

#[test]
fn plain_http_get_is_301_to_https_with_path_and_query() {
    let server = Server::start(&[]);
    let r = server.get_with("/status?a=1&b=2", &["X-Forwarded-Proto: http"]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Location"), Some("https://example.com/status?a=1&b=2"));
    assert!(r.header("Strict-Transport-Security").is_some(), "redirects carry the security headers");
    assert_eq!(r.header("Content-Length"), Some("0"));
}

#[test]
fn redirect_drops_the_port_of_host() {
    let server = Server::start(&[]);
    let r = server.exchange(b"GET /x HTTP/1.1\r\nHost: example.com:8443\r\nX-Forwarded-Proto: http\r\n\r\n");
    assert_eq!(r.header("Location"), Some("https://example.com/x"));
}

#[test]
fn other_methods_get_308() {
    let server = Server::start(&[]);
    let r = server.exchange(
        b"POST /status HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-Proto: http\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 308);
    assert_eq!(r.header("Location"), Some("https://example.com/status"));
}

#[test]
fn head_gets_301() {
    let server = Server::start(&[]);
    let r = server.exchange(b"HEAD /status HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-Proto: http\r\n\r\n");
    assert_eq!(r.status, 301);
}

#[test]
fn health_is_never_redirected() {
    let server = Server::start(&[]);
    assert_eq!(server.get_with("/health", &["X-Forwarded-Proto: http"]).status, 200);
    assert_eq!(server.get_with("/health?probe", &["X-Forwarded-Proto: http"]).status, 200);
}

#[test]
fn https_or_no_proto_is_not_redirected() {
    let server = Server::start(&[]);
    assert_eq!(server.get_with("/status", &["X-Forwarded-Proto: https"]).status, 200);
    assert_eq!(server.get("/status").status, 200);
    // The rightmost entry is the one our proxy wrote.
    assert_eq!(server.get_with("/status", &["X-Forwarded-Proto: http, https"]).status, 200);
    assert_eq!(server.get_with("/status", &["X-Forwarded-Proto: https, http"]).status, 301);
}

#[test]
fn public_host_wins_over_the_request_host() {
    let server = Server::start(&[("PUBLIC_HOST", "www.example.org")]);
    let r = server.get_with("/status", &["X-Forwarded-Proto: http"]);
    assert_eq!(r.header("Location"), Some("https://www.example.org/status"));
}

#[test]
fn malformed_host_is_400_never_a_redirect() {
    let server = Server::start(&[]);
    for host in ["evil.com/phish", "user@evil.com", "evil.com:x", "a b", "[::1"] {
        let raw = format!("GET /status HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Proto: http\r\n\r\n");
        let r = server.exchange(raw.as_bytes());
        assert_eq!(r.status, 400, "{host}");
        assert!(r.header("Location").is_none());
    }
}

#[test]
fn zero_trusted_hops_ignores_forwarded_fields() {
    let server = Server::start(&[("TRUSTED_PROXY_HOPS", "0")]);
    assert_eq!(server.get_with("/status", &["X-Forwarded-Proto: http"]).status, 200);
}

#[test]
fn http10_without_host_redirects_only_with_public_host() {
    let server = Server::start(&[]);
    let r = server.exchange(b"GET /status HTTP/1.0\r\nX-Forwarded-Proto: http\r\n\r\n");
    assert_eq!(r.status, 400, "nowhere to redirect to");
    let server = Server::start(&[("PUBLIC_HOST", "p.example")]);
    let r = server.exchange(b"GET /status HTTP/1.0\r\nX-Forwarded-Proto: http\r\n\r\n");
    assert_eq!(r.header("Location"), Some("https://p.example/status"));
}
