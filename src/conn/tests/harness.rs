//! A session without sockets, driven as a worker drives it: the one harness of `conn`'s unit tests
//! and of the `conn_bytes` fuzz check (`fuzz/checks.rs` includes this file), so both feed input,
//! take output and pass time the same way. Written against the public API with `zayzoon::` paths,
//! which the library also answers to (`extern crate self as zayzoon` in lib.rs).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use zayzoon::conn::{Ctx, Session, Settings};
use zayzoon::limit::{self, Limiter, MemoryStore, Policy, Rate, Strategy};
use zayzoon::response::Renderer;

/// A fixed wall clock (RFC 9110's example date), so that two runs render byte-identical `Date`
/// headers and pages.
pub const WALL_MS: i64 = 784_111_777_000;

/// The settings of a default configuration: one trusted proxy, no `PUBLIC_HOST`.
pub fn settings() -> Settings {
    Settings {
        trusted_proxy_hops: 1,
        public_host: None,
        header_timeout: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(75),
    }
}

/// Limits of `default` per client and `endpoint` per page, with the fixed window.
pub fn limits(default: u32, endpoint: u32) -> limit::Settings {
    limit::Settings {
        enabled: true,
        strategy: Strategy::FixedWindow,
        default: vec![Rate::per_minute(default)],
        endpoint: vec![Rate::per_minute(endpoint)],
        exempt: vec![],
    }
}

/// Limiting off.
pub fn unlimited() -> limit::Settings {
    limit::Settings { enabled: false, ..limits(1, 1) }
}

/// What a worker gives its sessions, with an in-memory store of `capacity` clients.
pub fn ctx(settings: Settings, limits: limit::Settings, capacity: usize) -> Ctx {
    let policy = Policy::leak(limits);
    let memory = Arc::new(MemoryStore::new(capacity, policy.slots()));
    Ctx {
        now: std::time::Instant::now(),
        wall_ms: WALL_MS,
        settings: Arc::new(settings),
        limiter: Limiter::new(policy, memory, None),
        renderer: Renderer::new(WALL_MS),
        draining: false,
        metrics: None,
    }
}

/// A new session from `peer`.
pub fn session(peer: &str, ctx: &Ctx) -> Session {
    let peer: IpAddr = peer.parse().expect("an address");
    Session::new(peer, 1, ctx)
}

/// Takes everything pending, as a client that reads promptly would, resuming held-back input.
pub fn drain(s: &mut Session, out: &mut Vec<u8>, ctx: &mut Ctx) {
    while !s.pending_output().is_empty() {
        out.extend_from_slice(s.pending_output());
        s.wrote(s.pending_output().len());
        s.resume(ctx);
    }
}

/// Feeds `input` to a new session in the pieces `cuts` makes, draining after each; returns what
/// the client received, and the session.
pub fn run_split(ctx: &mut Ctx, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Session) {
    let mut s = session("192.0.2.1", ctx);
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        s.receive(&input[start..end], ctx);
        drain(&mut s, &mut out, ctx);
        start = end;
    }
    (out, s)
}

/// The status codes of the responses in `out`, in order.
pub fn statuses(out: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(out);
    text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok()).collect()
}
