//! Rate limiting (SPEC §3): which counters a request touches, what a store's answer means, and the
//! handle each worker asks.
//!
//! Owns: `Rate` syntax (Flask-Limiter's, several per variable), `Cidr` syntax, the client key
//! (IPv4 address or IPv6 /64), the policy (every counter, built once), the two strategies' per
//! counter arithmetic (shared by both stores, so that they decide alike), turning counter states
//! into a `Decision`, and the handle each worker asks (`Limiter`). Does not own: keeping the
//! counters (`memory`, which also holds the refusal cache), or talking to Redis (`remote`).
//!
//! Strategies (`RATE_LIMIT_STRATEGY`):
//! - fixed window: a count per counter, refilled whole when its window (which starts at the
//!   counter's first hit) ends, as Flask-Limiter's default. Every counter of a request is counted,
//!   allowed or not.
//! - token bucket (GCRA): per counter a theoretical arrival time (TAT), `d` = how far it is ahead of
//!   now. A request takes one token from every counter, and only if each has one (`d + T <= P`,
//!   `T = P/N` the emission interval): a refused request takes nothing. Integer microseconds, with
//!   `T` rounded down (and at least 1 µs), in memory and in the Redis script alike.
//!
//! Refusal cache: once a counter refuses a client, that client's requests touching it are refused
//! by the memory store's record of it until the refusal's `Retry-After` has passed, without asking
//! the store and counting against nothing (SPEC §3). `MemoryStore::refused`.

pub mod memory;
pub mod remote;

use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

pub use memory::MemoryStore;

use crate::decimal;
use crate::limits::{MAX_LIMITS_PER_VAR, MAX_RATE_PERIOD_SECS};
use crate::response::json_error;
use crate::route::Page;

/// Most counters one request touches: the global limits and one page's.
pub const MAX_COUNTERS: usize = 2 * MAX_LIMITS_PER_VAR;

/// A unit of a limit's period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    const ALL: [Unit; 4] = [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day];

    fn secs(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
        }
    }
}

/// A limit: at most `limit` requests per `multiple` `unit`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub limit: u32,
    pub multiple: u32,
    pub unit: Unit,
}

impl Rate {
    pub const fn per_minute(limit: u32) -> Rate {
        Rate { limit, multiple: 1, unit: Unit::Minute }
    }

    pub fn period_secs(&self) -> u64 {
        u64::from(self.multiple) * self.unit.secs()
    }

    /// Parses one limit in Flask-Limiter's syntax: `N/unit`, `N per unit`, `N/M units` or
    /// `N per M units`, any case, unit second, minute, hour or day (singular or plural); N from 1
    /// to 10^9, the period at most `MAX_RATE_PERIOD_SECS`.
    pub fn parse(s: &str) -> Option<Rate> {
        let s = s.trim();
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, rest) = s.split_at(digits(s));
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('/') {
            Some(rest) => rest,
            None if rest.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("per")) => &rest[3..],
            None => return None,
        }
        .trim_start();
        let (m, unit) = rest.split_at(digits(rest));
        let unit = unit.trim().to_ascii_lowercase();
        let unit = unit.strip_suffix('s').unwrap_or(&unit);
        let unit = Unit::ALL.into_iter().find(|u| u.name() == unit)?;
        let limit = decimal::parse(n.as_bytes()).filter(|n| (1..=1_000_000_000).contains(n))?;
        let multiple = if m.is_empty() { Some(1) } else { decimal::parse(m.as_bytes()) };
        let multiple =
            multiple.filter(|&m| m >= 1 && m.checked_mul(unit.secs()).is_some_and(|p| p <= MAX_RATE_PERIOD_SECS))?;
        Some(Rate { limit: limit as u32, multiple: multiple as u32, unit })
    }

    /// Parses one or more limits separated by `;` or `,` (an empty one is an error), at most
    /// `MAX_LIMITS_PER_VAR`. A limit given twice counts once: it would be the same counter.
    pub fn parse_list(s: &str) -> Option<Vec<Rate>> {
        let mut rates: Vec<Rate> = Vec::new();
        for item in s.split([';', ',']) {
            let rate = Rate::parse(item)?;
            if !rates.iter().any(|r| r.limit == rate.limit && r.period_secs() == rate.period_secs()) {
                rates.push(rate);
            }
        }
        (rates.len() <= MAX_LIMITS_PER_VAR).then_some(rates)
    }

    /// A list the way `parse_list` reads it, for the startup line.
    pub fn list(rates: &[Rate]) -> String {
        rates.iter().map(Rate::to_string).collect::<Vec<_>>().join("; ")
    }
}

impl fmt::Display for Rate {
    /// Flask-Limiter's wording, used in the 429 message: "10 per 1 minute".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {} {}", self.limit, self.multiple, self.unit.name())
    }
}

/// How requests are counted (`RATE_LIMIT_STRATEGY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    FixedWindow,
    TokenBucket,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        match s.to_ascii_lowercase().as_str() {
            "fixed-window" => Some(Strategy::FixedWindow),
            "token-bucket" => Some(Strategy::TokenBucket),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::FixedWindow => "fixed-window",
            Strategy::TokenBucket => "token-bucket",
        }
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

/// The limits as configured (SPEC §1: `RATE_LIMIT_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub enabled: bool,
    pub strategy: Strategy,
    /// Limits on every request.
    pub default: Vec<Rate>,
    /// Limits on each page's requests, each page its own counters.
    pub endpoint: Vec<Rate>,
    pub exempt: Vec<Cidr>,
}

/// One counter of every client: a limit over all requests or over one page's. Built once, at
/// startup, with what the request path needs ready: no allocation per request.
#[derive(Debug, PartialEq, Eq)]
pub struct Counter {
    pub rate: Rate,
    /// Its place in a client's record in the memory store, below `Policy::slots`.
    pub slot: usize,
    /// Its Redis key after `zayzoon:{client}:`, e.g. `status:10/60s`: the rate is part of the name,
    /// so that a changed limit starts afresh instead of reading another limit's state, and the
    /// token bucket's keys (`:tb`) never meet the fixed window's.
    pub name: String,
    /// The body of a 429 that this counter refused, naming its limit.
    pub refusal: String,
    pub period_us: u64,
    /// The token bucket's emission interval `T = P/N`, rounded down, at least 1 µs.
    pub interval_us: u64,
}

impl Counter {
    fn new(rate: Rate, scope: &str, slot: usize, strategy: Strategy) -> Counter {
        let period_us = rate.period_secs() * 1_000_000;
        let suffix = if strategy == Strategy::TokenBucket { ":tb" } else { "" };
        Counter {
            rate,
            slot,
            name: format!("{scope}:{}/{}s{suffix}", rate.limit, rate.period_secs()),
            refusal: json_error(429, &format!("Rate limit exceeded: {rate}")),
            period_us,
            interval_us: (period_us / u64::from(rate.limit)).max(1),
        }
    }

    fn limit(&self) -> u64 {
        u64::from(self.rate.limit)
    }

    /// A fixed window after a hit: `count` with this request, `ttl_us` until the window ends.
    pub fn fixed_window(&self, count: u64, ttl_us: u64) -> CounterState {
        let wait_us = if count >= self.limit() { ttl_us } else { 0 };
        CounterState {
            remaining: self.limit().saturating_sub(count),
            reset_us: ttl_us,
            wait_us,
            over: count > self.limit(),
        }
    }

    /// A token bucket after a decision: `d_us`, how far its TAT is now ahead of the clock, and
    /// whether it had a token for this request (`over` when it had none).
    pub fn token_bucket(&self, d_us: u64, over: bool) -> CounterState {
        let room = self.period_us.saturating_sub(d_us);
        CounterState {
            remaining: (room / self.interval_us).min(self.limit()),
            reset_us: d_us,
            wait_us: (d_us + self.interval_us).saturating_sub(self.period_us),
            over,
        }
    }

    /// Whether a token bucket `d_us` ahead has a token for one more request.
    pub fn has_token(&self, d_us: u64) -> bool {
        d_us + self.interval_us <= self.period_us
    }
}

/// Every policy made, held on purpose for the life of the process (see `Policy::leak`). Listed
/// here so that it has an owner that LeakSanitizer (scripts/sanitize.sh) can see: memory no one
/// can reach is a leak, memory a static holds is not.
static KEPT: std::sync::Mutex<Vec<&'static Policy>> = std::sync::Mutex::new(Vec::new());

/// The policy of a running server: the settings, and every counter built from them.
#[derive(Debug)]
pub struct Policy {
    pub settings: Settings,
    global: Vec<Counter>,
    /// Per page (`Page as usize`), that page's counters.
    pages: Vec<Vec<Counter>>,
}

impl Policy {
    /// Builds the counters and keeps the policy for the rest of the process: the request path
    /// borrows 429 bodies and Redis key names from it for free (a server makes one; tests, many).
    pub fn leak(settings: Settings) -> &'static Policy {
        let strategy = settings.strategy;
        let global: Vec<Counter> =
            settings.default.iter().enumerate().map(|(i, &r)| Counter::new(r, "global", i, strategy)).collect();
        let pages = Page::ALL
            .iter()
            .map(|p| {
                let first = global.len() + *p as usize * settings.endpoint.len();
                let counter = |(i, &rate)| Counter::new(rate, p.name(), first + i, strategy);
                settings.endpoint.iter().enumerate().map(counter).collect()
            })
            .collect();
        let policy: &'static Policy = Box::leak(Box::new(Policy { settings, global, pages }));
        KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(policy);
        policy
    }

    /// How many counters a client has, all scopes together.
    pub fn slots(&self) -> usize {
        self.global.len() + self.pages.iter().map(Vec::len).sum::<usize>()
    }

    /// `None` when the client is not limited at all (limiting off, or an exempt client).
    pub fn counters(&'static self, client: IpAddr, page: Option<Page>) -> Option<Counters> {
        if !self.settings.enabled || self.settings.exempt.iter().any(|c| c.contains(client)) {
            return None;
        }
        let page = page.map_or(&[][..], |p| &self.pages[p as usize][..]);
        Some(Counters { global: &self.global, page, strategy: self.settings.strategy })
    }
}

/// The counters one request touches, in order: the global ones, then its page's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    global: &'static [Counter],
    page: &'static [Counter],
    pub strategy: Strategy,
}

impl Counters {
    pub fn iter(&self) -> impl Iterator<Item = &'static Counter> + use<> {
        self.global.iter().chain(self.page)
    }

    pub fn len(&self) -> usize {
        self.global.len() + self.page.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One counter after a request, as either store reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterState {
    /// Requests it would still allow now.
    pub remaining: u64,
    /// Until its window ends (fixed window) or its bucket is full again (token bucket).
    pub reset_us: u64,
    /// Until it allows one more request: 0 while it has room.
    pub wait_us: u64,
    /// It refused this request.
    pub over: bool,
}

/// What the limiter says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not limited (limiting off, or an exempt client): no `RateLimit-*` headers.
    Unlimited,
    /// Counted. `limit`, `remaining` and `reset_secs` describe the most restrictive counter, the
    /// one with the fewest remaining, ties broken by the later reset (SPEC §3).
    Limited { limit: u32, remaining: u64, reset_secs: u64, refused: Option<Refusal> },
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The counter that refused it (if several did, the one that waits longest).
    pub by: &'static Counter,
    /// Until every counter of the request allows one more: at least 1.
    pub retry_after_secs: u64,
}

impl Decision {
    /// Combines the counters' states; the request was allowed unless a counter is `over`.
    pub fn from_states(counters: Counters, states: &[CounterState]) -> Decision {
        let mut worst: Option<(u32, u64, u64)> = None;
        let mut refused: Option<(&'static Counter, u64)> = None;
        let mut wait = 0;
        for (counter, state) in counters.iter().zip(states) {
            let reset_secs = secs(state.reset_us);
            if worst.is_none_or(|(_, r, s)| state.remaining < r || (state.remaining == r && reset_secs > s)) {
                worst = Some((counter.rate.limit, state.remaining, reset_secs));
            }
            if state.over && refused.is_none_or(|(_, w)| state.wait_us > w) {
                refused = Some((counter, state.wait_us));
            }
            wait = wait.max(state.wait_us);
        }
        let Some((limit, remaining, reset_secs)) = worst else { return Decision::Unlimited };
        let refused = refused.map(|(by, _)| Refusal { by, retry_after_secs: secs(wait) });
        Decision::Limited { limit, remaining, reset_secs, refused }
    }
}

/// Microseconds as whole seconds for a header: rounded up, at least 1.
pub(super) fn secs(us: u64) -> u64 {
    us.div_ceil(1_000_000).max(1)
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
/// answers later, and the connection waits meanwhile without blocking the worker. Refusals the
/// memory store remembers are answered at once either way.
///
/// A check that waits is known by a `waiter`: a number the worker chooses (it names one of its
/// connections) and gets back with the decision. The limiter never looks inside it.
#[derive(Debug)]
pub struct Limiter {
    policy: &'static Policy,
    memory: std::sync::Arc<MemoryStore>,
    remote: Option<remote::Remote>,
    /// Metrics (issue 11): checks this worker decided from memory because Redis was down.
    fallbacks: u64,
}

impl Limiter {
    pub fn new(
        policy: &'static Policy,
        memory: std::sync::Arc<MemoryStore>,
        remote: Option<remote::Remote>,
    ) -> Limiter {
        Limiter { policy, memory, remote, fallbacks: 0 }
    }

    /// Counts a request from `client` for `page` and decides, or starts deciding, whether it may go on.
    pub fn check(&mut self, client: IpAddr, page: Option<Page>, waiter: u64, now: Instant) -> Check {
        let Some(counters) = self.policy.counters(client, page) else {
            return Check::Ready(Decision::Unlimited);
        };
        let key = ClientKey::of(client);
        if let Some(remote) = self.remote.as_mut().filter(|r| r.is_up()) {
            if let Some(refused) = self.memory.refused(key, counters, now) {
                return Check::Ready(refused);
            }
            remote.submit(waiter, key, counters, now);
            return Check::Pending;
        }
        // Metrics (issue 11): with the Redis store down, memory decides instead: a fallback.
        self.fallbacks += u64::from(self.remote.is_some());
        Check::Ready(self.memory.decide(key, counters, now))
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
mod tests;
