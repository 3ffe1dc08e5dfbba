//! The `healthcheck` subcommand: the scratch image has no curl, so Docker's `HEALTHCHECK` and the
//! ECS container health check run the binary itself (SPEC §1).
//!
//! Owns: one GET over a blocking std socket, within `HEALTHCHECK_TIMEOUT` all told. Only plain
//! `http://` URLs with an IP address or a name the system can resolve (in a scratch container,
//! use an address: there is no resolver configuration).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::{Duration, Instant};

use crate::decimal;
use crate::limits::HEALTHCHECK_TIMEOUT;

/// The default URL: the server's own `/health` on loopback, at `$PORT` (8443 when unset).
pub fn default_url(port: Option<&str>) -> String {
    let port = port.filter(|p| !p.trim().is_empty()).unwrap_or("8443").trim();
    format!("http://127.0.0.1:{port}/health")
}

/// A URL split for the request: `http://host[:port][/path]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Url<'a> {
    pub authority: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
}

pub fn parse_url(url: &str) -> Result<Url<'_>, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    if !crate::http::valid_host(authority.as_bytes()) {
        return Err(format!("{url:?}: malformed host"));
    }
    if path.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!("{url:?}: malformed path"));
    }
    let host = crate::http::host_without_port(authority);
    let port = match authority.strip_prefix(host).and_then(|p| p.strip_prefix(':')) {
        // An empty port is the default (RFC 3986 §3.2.3); `valid_host` allows at most 5 digits.
        None | Some("") => 80,
        Some(p) => decimal::parse(p.as_bytes())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or(format!("{url:?}: malformed port"))?,
    };
    Ok(Url { authority, host: host.trim_start_matches('[').trim_end_matches(']'), port, path })
}

/// Runs the check; `Ok` on a 200 within the time budget.
pub fn check(url: &str) -> Result<(), String> {
    let deadline = Instant::now() + HEALTHCHECK_TIMEOUT;
    let url = parse_url(url)?;
    let addrs: Vec<SocketAddr> =
        (url.host, url.port).to_socket_addrs().map_err(|e| format!("cannot resolve {}: {e}", url.host))?.collect();
    let addr = addrs.first().ok_or_else(|| format!("no address for {}", url.host))?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(addr, left()).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: zayzoon-healthcheck\r\nConnection: close\r\n\r\n",
        url.path, url.authority
    );
    stream.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
    stream.write_all(request.as_bytes()).map_err(|e| format!("cannot send the request: {e}"))?;
    // The status line is all we need: read until its end, the connection's end, or the deadline.
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        stream.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            // A read timeout shows up as WouldBlock on Linux.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err("no response within 2 s".into());
            }
            Err(e) => return Err(format!("no response: {e}")),
        }
        if Instant::now() >= deadline {
            return Err("no response within 2 s".into());
        }
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let line = line.lines().next().unwrap_or("");
    if line.starts_with("HTTP/1.1 200 ") || line.starts_with("HTTP/1.0 200 ") {
        Ok(())
    } else {
        Err(format!("unhealthy: {:?}", line.escape_debug().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8443/health"),
            Ok(Url { authority: "127.0.0.1:8443", host: "127.0.0.1", port: 8443, path: "/health" })
        );
        assert_eq!(parse_url("http://[::1]:9/x?y").unwrap().host, "::1");
        assert_eq!(
            parse_url("http://localhost").unwrap(),
            Url { authority: "localhost", host: "localhost", port: 80, path: "/" }
        );
        assert_eq!(parse_url("http://h:/x").unwrap().port, 80, "an empty port is the default");
        for bad in ["https://h/", "h:80/", "http://", "http://h:99999/", "http://u@h/", "http://h/a b"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_url_follows_port() {
        assert_eq!(default_url(None), "http://127.0.0.1:8443/health");
        assert_eq!(default_url(Some("9000")), "http://127.0.0.1:9000/health");
        assert_eq!(default_url(Some("")), "http://127.0.0.1:8443/health");
    }
}
