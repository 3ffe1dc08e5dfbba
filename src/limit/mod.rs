//! Rate limiting (SPEC §3): which counters a request touches, what a store's answer means, and the
//! handle each worker asks.
//!
//! Owns: `Rate` and `Cidr` syntax, the client key (IPv4 address or IPv6 /64), the policy (the
//! global counter plus one per page), turning counter states into a `Decision`, and the handle each
//! worker asks (`Limiter`). Does not own: the counting itself (`memory`), or talking to Redis
//! (`remote`, the store shared by every task).
//!
//! Algorithm: a fixed window per counter that starts at the key's first hit and refills whole when
//! it ends (Flask-Limiter's default). Every counter of a request is incremented, allowed or not, so
//! the in-memory and Redis stores give the same decisions for the same traffic.

pub mod memory;
pub mod remote;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub use memory::MemoryStore;

use crate::decimal;
use crate::route::Page;

/// A limit: at most `limit` requests per `period_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub limit: u32,
    pub period_secs: u32,
}

impl Rate {
    pub const fn per_minute(limit: u32) -> Rate {
        Rate { limit, period_secs: 60 }
    }

    /// Parses `N/unit` or `N per unit`, unit one of second, minute, hour, day (singular or plural,
    /// any case), N from 1 to 10^9.
    pub fn parse(s: &str) -> Option<Rate> {
        let s = s.trim();
        let (n, unit) = match s.split_once('/') {
            Some((n, unit)) => (n.trim(), unit.trim()),
            None => {
                let mut words = s.split_ascii_whitespace();
                let (n, per, unit) = (words.next()?, words.next()?, words.next()?);
                if !per.eq_ignore_ascii_case("per") || words.next().is_some() {
                    return None;
                }
                (n, unit)
            }
        };
        let limit = decimal::parse(n.as_bytes()).filter(|n| (1..=1_000_000_000).contains(n))? as u32;
        let unit = unit.to_ascii_lowercase();
        let period_secs = match unit.strip_suffix('s').unwrap_or(&unit) {
            "second" => 1,
            "minute" => 60,
            "hour" => 3_600,
            "day" => 86_400,
            _ => return None,
        };
        Some(Rate { limit, period_secs })
    }
}

impl fmt::Display for Rate {
    /// Flask-Limiter's wording, used in the 429 message: "10 per 1 minute".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_secs {
            1 => "second",
            60 => "minute",
            3_600 => "hour",
            _ => "day",
        };
        write!(f, "{} per 1 {}", self.limit, unit)
    }
}

/// An address range from `RATE_LIMIT_EXEMPT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix` or a bare address (/32 or /128). Host bits set are an error, not rounded off:
    /// `10.0.0.1/16` is more likely a typo than a wish to exempt 10.0.0.0/16.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max: u64 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max as u8,
            Some(p) => decimal::parse(p.as_bytes()).filter(|&p| p <= max)? as u8,
        };
        let cidr = Cidr { addr, prefix };
        (bits(addr) & !cidr.mask() == 0).then_some(cidr)
    }

    fn mask(&self) -> u128 {
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        let ones = u128::MAX.checked_shl(width - u32::from(self.prefix)).unwrap_or(0);
        if width == 32 { ones & u128::from(u32::MAX) } else { ones }
    }

    /// Whether `ip` is inside; an IPv4-mapped IPv6 address counts as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && bits(ip) & self.mask() == bits(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Whom a counter belongs to: an IPv4 address, or the /64 of an IPv6 one (one host usually holds a
/// whole /64, so keying by address would let it rotate through 2^64 keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for ClientKey {
    /// The key's text form, as Redis keys use it: `1.2.3.4` or `2001:db8:0:1::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ClientKey::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(a)),
            ClientKey::V6Prefix(p) => write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(p) << 64)),
        }
    }
}

/// The counters a client has: `Global` counts every request, `Page` the requests for one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterId {
    Global,
    Page(Page),
}

impl CounterId {
    /// How many counters a client has.
    pub const COUNT: usize = 1 + Page::ALL.len();

    /// A small number for each counter, below `COUNT`.
    pub fn index(self) -> usize {
        match self {
            CounterId::Global => 0,
            CounterId::Page(p) => 1 + p as usize,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CounterId::Global => "global",
            CounterId::Page(p) => p.name(),
        }
    }
}

/// Who is limited, and how much.
#[derive(Clone, Debug)]
pub struct Policy {
    pub enabled: bool,
    pub default: Rate,
    pub endpoint: Rate,
    pub exempt: Vec<Cidr>,
}

/// The counters one request touches, with their limits: at most two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    items: [(CounterId, Rate); 2],
    len: usize,
}

impl Counters {
    pub fn as_slice(&self) -> &[(CounterId, Rate)] {
        &self.items[..self.len]
    }
}

impl Policy {
    /// `None` when the client is not limited at all (limiting off, or an exempt client).
    pub fn counters(&self, client: IpAddr, page: Option<Page>) -> Option<Counters> {
        if !self.enabled || self.exempt.iter().any(|c| c.contains(client)) {
            return None;
        }
        let global = (CounterId::Global, self.default);
        Some(match page {
            Some(page) => Counters { items: [global, (CounterId::Page(page), self.endpoint)], len: 2 },
            None => Counters { items: [global, global], len: 1 },
        })
    }
}

/// One counter after a hit: its count including this request, and milliseconds until its window
/// ends. This is what the Redis script returns per key (`INCR`, `PTTL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterState {
    pub count: u64,
    pub ttl_ms: u64,
}

/// What the limiter says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not limited (limiting off, or an exempt client): no `RateLimit-*` headers.
    Unlimited,
    /// Counted. `rate`, `remaining` and `reset_secs` describe the most restrictive counter.
    Limited { allowed: bool, rate: Rate, remaining: u64, reset_secs: u64 },
}

impl Decision {
    /// Combines the counters' states. The request is allowed when every count is within its
    /// limit. The headers describe the counter with the fewest remaining, ties broken by the later
    /// reset, so `Retry-After` on a 429 is when every exhausted counter has refilled. SPEC §3.
    pub fn from_states(counters: &[(CounterId, Rate)], states: &[CounterState]) -> Decision {
        let mut allowed = true;
        let mut worst: Option<(Rate, u64, u64)> = None;
        for (&(_, rate), state) in counters.iter().zip(states) {
            allowed &= state.count <= u64::from(rate.limit);
            let remaining = u64::from(rate.limit).saturating_sub(state.count);
            let reset_secs = state.ttl_ms.div_ceil(1000).max(1);
            let worse = match worst {
                None => true,
                Some((_, r, s)) => remaining < r || (remaining == r && reset_secs > s),
            };
            if worse {
                worst = Some((rate, remaining, reset_secs));
            }
        }
        match worst {
            None => Decision::Unlimited,
            Some((rate, remaining, reset_secs)) => Decision::Limited { allowed, rate, remaining, reset_secs },
        }
    }
}

/// The answer to `Limiter::check`.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Decided now.
    Ready(Decision),
    /// Sent to a remote store; the decision arrives through `Limiter::take_answers`, after the
    /// worker's waker fires.
    Pending,
}

/// One worker's way to ask for decisions. The memory store answers at once; the Redis store
/// answers later, and the connection waits meanwhile without blocking the worker.
///
/// A check that waits is known by a `waiter`: a number the worker chooses (it names one of its
/// connections) and gets back with the decision. The limiter never looks inside it.
#[derive(Debug)]
pub struct Limiter {
    policy: Arc<Policy>,
    memory: Arc<MemoryStore>,
    remote: Option<remote::Remote>,
    /// Metrics (issue 11): checks this worker decided from memory because Redis was down.
    fallbacks: u64,
}

impl Limiter {
    pub fn new(policy: Arc<Policy>, memory: Arc<MemoryStore>, remote: Option<remote::Remote>) -> Limiter {
        Limiter { policy, memory, remote, fallbacks: 0 }
    }

    /// Counts a request from `client` for `page` and decides, or starts deciding, whether it may go on.
    pub fn check(&mut self, client: IpAddr, page: Option<Page>, waiter: u64, now: Instant) -> Check {
        let Some(counters) = self.policy.counters(client, page) else {
            return Check::Ready(Decision::Unlimited);
        };
        let key = ClientKey::of(client);
        if let Some(remote) = self.remote.as_mut().filter(|r| r.is_up()) {
            remote.submit(waiter, key, counters, now);
            return Check::Pending;
        }
        // Metrics (issue 11): with the Redis store down, memory decides instead: a fallback.
        self.fallbacks += u64::from(self.remote.is_some());
        Check::Ready(self.memory.decide(key, &counters, now))
    }

    /// Metrics (issue 11): the checks of this worker decided from memory instead of Redis since the
    /// last call (Redis down, no answer in time, or the limiter thread's memory answer), for
    /// `RedisFallbacks` (SPEC §6). Always 0 without the Redis store.
    pub fn take_fallbacks(&mut self) -> u64 {
        let remote = self.remote.as_mut().map_or(0, remote::Remote::take_fallbacks);
        std::mem::take(&mut self.fallbacks) + remote
    }

    /// Sends the checks of this loop turn on their way (one message for all of them).
    pub fn flush(&mut self) {
        if let Some(remote) = &mut self.remote {
            remote.flush();
        }
    }

    /// Decisions for the waiters of checks that got `Check::Pending`: answers that arrived, and
    /// memory decisions for those that waited `REDIS_TIMEOUT_MS` in vain.
    pub fn take_answers(&mut self, now: Instant) -> Vec<(u64, Decision)> {
        self.remote.as_mut().map_or_else(Vec::new, |r| r.take_answers(now))
    }

    /// When `take_answers` must next be called even if no answer arrives.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.remote.as_ref().and_then(remote::Remote::next_deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_syntax() {
        assert_eq!(Rate::parse("100/minute"), Some(Rate { limit: 100, period_secs: 60 }));
        assert_eq!(Rate::parse("10 per minute"), Some(Rate { limit: 10, period_secs: 60 }));
        assert_eq!(Rate::parse(" 3 PER Hours "), Some(Rate { limit: 3, period_secs: 3600 }));
        assert_eq!(Rate::parse("1/second"), Some(Rate { limit: 1, period_secs: 1 }));
        assert_eq!(Rate::parse("2 / days"), Some(Rate { limit: 2, period_secs: 86400 }));
        assert_eq!(Rate::parse("1000000000/day").map(|r| r.limit), Some(1_000_000_000));
        for bad in [
            "",
            "0/minute",
            "1000000001/day",
            "-1/minute",
            "+1/minute",
            "ten/minute",
            "10/fortnight",
            "10/",
            "/minute",
            "10 minute",
            "10 per",
            "10 per minute extra",
            "10 each minute",
            "10/2 minutes",
            "99999999999999999999/minute",
        ] {
            assert_eq!(Rate::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rate_wording() {
        assert_eq!(Rate::per_minute(10).to_string(), "10 per 1 minute");
        assert_eq!(Rate::parse("5/hour").unwrap().to_string(), "5 per 1 hour");
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.0.0.0/16").unwrap();
        assert!(c.contains("10.0.255.255".parse().unwrap()));
        assert!(!c.contains("10.1.0.0".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.3.4".parse().unwrap()), "IPv4-mapped matches IPv4 ranges");
        assert!(!c.contains("::a00:1".parse().unwrap()), "IPv4-compatible is not IPv4-mapped");
        let all4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains("203.0.113.1".parse().unwrap()));
        assert!(!all4.contains("2001:db8::1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert_eq!(one.to_string(), "::1/128");
        assert!(one.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
        assert_eq!(Cidr::parse("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
        for bad in ["10.0.0.1/16", "10.0.0.0/33", "::1/129", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/+8", "host", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn client_keys() {
        let k = |s: &str| ClientKey::of(s.parse().unwrap());
        assert_eq!(k("192.0.2.1"), ClientKey::V4(0xC000_0201));
        assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.1"));
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), k("2001:db8:1:2:ffff::"));
        assert_ne!(k("2001:db8:1:2::"), k("2001:db8:1:3::"));
        assert_eq!(k("2001:db8:1:2:3:4:5:6").to_string(), "2001:db8:1:2::/64");
        assert_eq!(k("192.0.2.1").to_string(), "192.0.2.1");
    }

    fn policy() -> Policy {
        Policy {
            enabled: true,
            default: Rate::per_minute(100),
            endpoint: Rate::per_minute(10),
            exempt: vec![Cidr::parse("10.0.0.0/8").unwrap()],
        }
    }

    #[test]
    fn policy_counters() {
        let p = policy();
        let ip = "192.0.2.1".parse().unwrap();
        let status = Page::of("/status");
        let c = p.counters(ip, status).unwrap();
        assert_eq!(c.as_slice(), &[(CounterId::Global, p.default), (CounterId::Page(Page::Status), p.endpoint)]);
        let c = p.counters(ip, Page::of("/health")).unwrap();
        assert_eq!(c.as_slice()[1].0, CounterId::Page(Page::Health));
        assert_eq!(p.counters(ip, Page::of("/other")).unwrap().as_slice(), &[(CounterId::Global, p.default)]);
        assert_eq!(p.counters(ip, Page::of("/status/")).unwrap().as_slice().len(), 1, "paths compare exactly");
        assert_eq!(p.counters("10.1.2.3".parse().unwrap(), status), None, "exempt");
        assert_eq!(p.counters("::ffff:10.1.2.3".parse().unwrap(), status), None, "mapped exempt");
        let off = Policy { enabled: false, ..policy() };
        assert_eq!(off.counters(ip, status), None);
        assert_eq!(CounterId::Page(Page::Health).index(), CounterId::COUNT - 1);
    }

    #[test]
    fn decision_picks_fewest_remaining_then_later_reset() {
        let g = (CounterId::Global, Rate::per_minute(100));
        let s = (CounterId::Page(Page::Status), Rate::per_minute(10));
        let st = |count, ttl_ms| CounterState { count, ttl_ms };
        let d = Decision::from_states(&[g, s], &[st(5, 30_000), st(3, 59_001)]);
        assert_eq!(d, Decision::Limited { allowed: true, rate: s.1, remaining: 7, reset_secs: 60 });
        // At the limit: allowed, nothing remaining.
        let d = Decision::from_states(&[g, s], &[st(50, 1_000), st(10, 2_000)]);
        assert_eq!(d, Decision::Limited { allowed: true, rate: s.1, remaining: 0, reset_secs: 2 });
        // One past it: refused.
        let d = Decision::from_states(&[g, s], &[st(50, 1_000), st(11, 2_000)]);
        assert!(matches!(d, Decision::Limited { allowed: false, .. }));
        // Both exhausted: the later reset wins, so Retry-After covers both.
        let d = Decision::from_states(&[g, s], &[st(101, 9_000), st(11, 2_000)]);
        assert_eq!(d, Decision::Limited { allowed: false, rate: g.1, remaining: 0, reset_secs: 9 });
        // Equal remaining: later reset wins.
        let d = Decision::from_states(&[g, g], &[st(1, 1_000), st(1, 5_000)]);
        assert_eq!(d, Decision::Limited { allowed: true, rate: g.1, remaining: 99, reset_secs: 5 });
        assert_eq!(Decision::from_states(&[], &[]), Decision::Unlimited);
    }
}
