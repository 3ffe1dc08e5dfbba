//! The Redis store: one limiter thread owns a blocking `redis::Connection`; workers hand it their
//! checks once per loop turn, and it sends everything waiting as one pipeline of `EVALSHA` calls
//! (one round trip per batch: the busier the server, the bigger each batch).
//!
//! Owns: the Lua scripts (one per strategy), key names, batching, reply checking, fallback to the
//! in-memory store, recording refusals in it, and reconnecting; what it is told at startup (the
//! URL, credentials, TLS) is `settings.rs`. Every byte of RESP stays inside the `redis` crate, and every blocking call stays
//! on this thread: a worker never waits on Redis. A worker gives up waiting for an answer after
//! `REDIS_TIMEOUT_MS` and decides from memory instead (see `Remote::take_answers`).
//!
//! Failure handling: a Redis error or a round trip slower than `REDIS_TIMEOUT_MS` marks Redis
//! down (one WARN); workers then ask the memory store directly while this thread reconnects with
//! capped exponential backoff; once a connection works again, it is up again (one INFO).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use redis::{ConnectionLike as _, Value};

use super::{ClientKey, Counter, CounterState, Counters, Decision, MAX_COUNTERS, MemoryStore, Strategy};
use crate::decimal;
use crate::limits::{FIRST_REDIS_BACKOFF, MAX_REDIS_BACKOFF, MAX_REDIS_BATCH};

mod settings;
pub use settings::{CaCerts, NO_TLS, RedisUrl, Secret, Settings, TLS, UrlError, redact_userinfo};

/// The fixed window: INCR each counter; give it its window (PEXPIRE, milliseconds: ARGV) when it
/// was just created, or when it somehow has no expiry (so every key always expires); return each
/// count and its PTTL. Milliseconds rather than EXPIRE's seconds so that the window ends exactly
/// when the memory store's would. The numbers come back as one string, `"count ttl count ttl"`,
/// rather than an array of integers: one RESP value to parse instead of five, which made decoding
/// replies the limiter thread's largest cost (callgrind: ~6,800 instructions per check, now ~1,700).
pub const FIXED_WINDOW: &str = "\
local out = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  local ttl = redis.call('PTTL', key)
  if count == 1 or ttl < 0 then
    redis.call('PEXPIRE', key, ARGV[i])
    ttl = tonumber(ARGV[i])
  end
  out[2 * i - 1] = count
  out[2 * i] = ttl
end
return table.concat(out, ' ')
";

/// The token bucket (GCRA), the memory store's arithmetic in Lua: each key holds its counter's
/// theoretical arrival time in microseconds of Redis's own clock (`TIME`, so tasks whose clocks
/// differ agree); ARGV holds each counter's interval T and period P. The request takes a token
/// from every counter, or, if one has none (`d + T > P`), from none. A key expires when its bucket
/// is full again. Returns `"allowed now d1 d2 ..."`, each `d` how far its TAT is ahead of `now`
/// after the decision. Numbers go through `%d`: Lua's `tostring` keeps only 14 digits.
pub const TOKEN_BUCKET: &str = "\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ahead = {}
local allowed = 1
for i, key in ipairs(KEYS) do
  local d = (tonumber(redis.call('GET', key)) or now) - now
  if d < 0 then d = 0 end
  ahead[i] = d
  if d + tonumber(ARGV[2 * i - 1]) > tonumber(ARGV[2 * i]) then allowed = 0 end
end
local out = {allowed, string.format('%d', now)}
for i, key in ipairs(KEYS) do
  if allowed == 1 then
    ahead[i] = ahead[i] + tonumber(ARGV[2 * i - 1])
    redis.call('SET', key, string.format('%d', now + ahead[i]), 'PX', math.ceil(ahead[i] / 1000))
  end
  out[#out + 1] = string.format('%d', ahead[i])
end
return table.concat(out, ' ')
";

/// The Redis key of one counter: `zayzoon:{client}:` and the counter's name. The client key is a
/// hash tag (`{...}`), so a request's keys share a slot if the Redis behind the URL is ever a
/// cluster proxy.
pub fn key_name(client: ClientKey, counter: &Counter) -> String {
    let mut key = String::new();
    push_key_prefix(&mut key, client);
    key.push_str(&counter.name);
    key
}

/// Appends `zayzoon:{client}:` to `out`. IPv4 octets are written by hand: this runs for every
/// check, and `Ipv4Addr`'s `Display` (padding support and all) cost more than the rest of
/// building the pipeline.
fn push_key_prefix(out: &mut String, client: ClientKey) {
    out.push_str("zayzoon:{");
    match client {
        ClientKey::V4(a) => {
            for (i, octet) in a.to_be_bytes().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        ClientKey::V6Prefix(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{client}");
        }
    }
    out.push_str("}:");
}

/// One check on its way to Redis: `seq` numbers it within its worker's `Remote`.
#[derive(Debug, Clone, Copy)]
struct Job {
    worker: usize,
    seq: u64,
    key: ClientKey,
    counters: Counters,
}

/// Why the server can't start with Redis (exit code 1).
#[derive(Debug)]
pub struct StartError {
    url: String,
    attempts: u32,
    cause: redis::RedisError,
    /// The CAs trusted, for a refused certificate's message (`Explained`).
    trusted: &'static str,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = Explained { error: &self.cause, trusted: self.trusted };
        write!(f, "cannot use Redis at {} after {} attempt(s): {cause}", self.url, self.attempts)
    }
}

/// A connection error in the words an operator needs: a refused certificate or a failed TLS
/// handshake says so first (rustls' own text then says why), and a certificate refused for its
/// issuer says which CAs were trusted. Any other error is the redis crate's text (which
/// for a wrong password is "Password authentication failed"; never the password).
struct Explained<'a> {
    error: &'a redis::RedisError,
    /// What a `rediss://` URL trusted (unread in a build without TLS).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    trusted: &'static str,
}

impl fmt::Display for Explained<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(feature = "tls")]
        if let Some(tls) = tls_error(self.error) {
            use rustls::{CertificateError, Error};
            return match tls {
                // An unknown issuer, or a known one's name on a signature its key did not make.
                Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                    write!(f, "TLS certificate refused: {tls} (not issued by {})", self.trusted)
                }
                Error::InvalidCertificate(_) => write!(f, "TLS certificate refused: {tls}"),
                _ => write!(f, "TLS handshake failed: {tls}"),
            };
        }
        self.error.fmt(f)
    }
}

/// The rustls error inside a redis error, if that is what it is. The redis crate keeps an I/O
/// error as an `Arc<dyn Error>`, and the TLS stream reports a handshake failure as an I/O error
/// wrapping the rustls error (tests/integration/redis_tls.rs checks that this still finds it).
#[cfg(feature = "tls")]
fn tls_error(e: &redis::RedisError) -> Option<&rustls::Error> {
    let inner = std::error::Error::source(e)?;
    let io = inner.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()?.downcast_ref::<std::io::Error>()?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// What `Explained` says a `rediss://` URL trusted.
fn trusted(settings: &Settings) -> &'static str {
    match settings.ca {
        Some(_) => "a CA in REDIS_CA_FILE",
        None => "a CA among the built-in roots; a private CA needs REDIS_CA_FILE",
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// Counts for the shutdown log line, the metrics lines and tests: how well batching works.
#[derive(Debug, Default)]
pub struct Stats {
    pub checks: AtomicU64,
    pub round_trips: AtomicU64,
    pub fallbacks: AtomicU64,
    /// Metrics (issue 11, `RedisUp`): the flag the workers read, true while checks go to Redis.
    pub up: Arc<AtomicBool>,
}

/// Connects (with `connect_retries` attempts and backoff), loads the script, and starts the limiter
/// thread. Returns one `Remote` per worker waker, in order.
pub fn start(
    settings: &Settings,
    memory: Arc<MemoryStore>,
    wakers: Vec<Arc<mio::Waker>>,
) -> Result<(Vec<Remote>, Arc<Stats>), StartError> {
    let Settings { url, connect_retries: retries, timeout, .. } = settings;
    let (retries, timeout) = (*retries, *timeout);
    let fail = |attempts, cause| StartError { url: url.redacted(), attempts, cause, trusted: trusted(settings) };
    let client = settings::client(settings).map_err(|e| fail(0, e))?;
    let mut backoff = FIRST_REDIS_BACKOFF;
    let mut attempt = 0;
    let (conn, sha) = loop {
        attempt += 1;
        match connect(&client, timeout) {
            Ok(ok) => break ok,
            // Wrong password, unknown user, a database out of range: retrying can't help.
            Err(e) if !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped()) => {
                return Err(fail(attempt, e));
            }
            Err(e) if attempt >= retries => return Err(fail(attempt, e)),
            Err(e) => {
                let e = Explained { error: &e, trusted: trusted(settings) };
                log::warn!("Redis at {} not ready (attempt {attempt} of {retries}): {e}", url.redacted());
                thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_REDIS_BACKOFF);
            }
        }
    };
    let up = Arc::new(AtomicBool::new(true));
    let stats = Arc::new(Stats { up: Arc::clone(&up), ..Stats::default() });
    let (jobs_tx, jobs_rx) = mpsc::channel();
    let mut remotes = Vec::new();
    let mut outlets = Vec::new();
    for (worker, waker) in wakers.into_iter().enumerate() {
        let (answers_tx, answers_rx) = mpsc::channel();
        outlets.push(Outlet { answers: answers_tx, waker });
        remotes.push(Remote {
            worker,
            batch: Vec::new(),
            jobs: jobs_tx.clone(),
            answers: answers_rx,
            up: Arc::clone(&up),
            next_seq: 0,
            waiting: HashMap::new(),
            deadlines: VecDeque::new(),
            timeout,
            memory: Arc::clone(&memory),
            fallbacks: 0,
        });
    }
    let thread = LimiterThread {
        client,
        url: url.redacted(),
        conn: Some(conn),
        sha,
        timeout,
        memory,
        up,
        stats: Arc::clone(&stats),
        jobs: jobs_rx,
        outlets,
    };
    thread::Builder::new()
        .name("redis-limiter".into())
        .spawn(move || thread.run())
        .map_err(|e| fail(attempt, redis::RedisError::from(e)))?;
    Ok((remotes, stats))
}

/// Opens a connection (TLS handshake, AUTH and SELECT happen here), with `timeout` on every
/// operation, and loads the scripts. Over TLS the timeouts reach the socket all the same: the
/// crate's TLS stream owns the `TcpStream` and sets them on it.
fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<(redis::Connection, Scripts)> {
    let mut conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let sha = Scripts::load(&mut conn)?;
    Ok((conn, sha))
}

/// The SHA1s Redis knows the scripts by, for EVALSHA: both are loaded, and each check uses its
/// counters' strategy's.
struct Scripts {
    fixed_window: String,
    token_bucket: String,
}

impl Scripts {
    fn load(conn: &mut redis::Connection) -> redis::RedisResult<Scripts> {
        let mut load = |script| redis::cmd("SCRIPT").arg("LOAD").arg(script).query::<String>(conn);
        Ok(Scripts { fixed_window: load(FIXED_WINDOW)?, token_bucket: load(TOKEN_BUCKET)? })
    }

    fn sha(&self, strategy: Strategy) -> &str {
        match strategy {
            Strategy::FixedWindow => &self.fixed_window,
            Strategy::TokenBucket => &self.token_bucket,
        }
    }
}

/// A reply that is not what the script returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub String);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected reply from the limiter script: {}", self.0)
    }
}

/// Checks one script reply for a request with `counters`, and gives each counter's state: for the
/// fixed window `count ttl_ms` per counter (count ≥ 1), for the token bucket `allowed now` then
/// each counter's `d`. Decimal numbers separated by single spaces, nothing else.
pub fn parse_reply(reply: &Value, counters: Counters) -> Result<[CounterState; MAX_COUNTERS], BadReply> {
    let bad = |what: &dyn fmt::Debug| BadReply(format!("{what:?}").chars().take(80).collect());
    let Value::BulkString(text) = reply else { return Err(bad(reply)) };
    let bad_text = || bad(&String::from_utf8_lossy(text));
    let mut numbers = text.split(|&b| b == b' ').filter(|_| !text.is_empty()).map(parse_number);
    let mut next = || numbers.next().flatten().ok_or_else(bad_text);
    let mut out = [CounterState::default(); MAX_COUNTERS];
    match counters.strategy {
        Strategy::FixedWindow => {
            for (state, counter) in out.iter_mut().zip(counters.iter()) {
                let (count, ttl_ms) = (next()?, next()?);
                if count == 0 {
                    return Err(bad_text());
                }
                *state = counter.fixed_window(count, ttl_ms.saturating_mul(1000));
            }
        }
        Strategy::TokenBucket => {
            let allowed = match next()? {
                0 => false,
                1 => true,
                _ => return Err(bad_text()),
            };
            let _now = next()?;
            for (state, counter) in out.iter_mut().zip(counters.iter()) {
                let d = next()?;
                *state = counter.token_bucket(d, !allowed && !counter.has_token(d));
            }
        }
    }
    match numbers.next() {
        None => Ok(out),
        Some(_) => Err(bad_text()),
    }
}

/// 1 to 19 ASCII digits, no leading zero: how Lua writes the numbers it can hold exactly.
fn parse_number(s: &[u8]) -> Option<u64> {
    if s.len() > 19 || (s.len() > 1 && s[0] == b'0') {
        return None;
    }
    decimal::parse(s)
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// A message of answers to one worker. Metrics (issue 11): `true` when they were decided from
/// memory (Redis down or failing), so that the worker counts those it uses as fallbacks.
pub type Answers = (bool, Vec<(u64, Decision)>);

/// Where a worker's answers go.
struct Outlet {
    answers: Sender<Answers>,
    waker: Arc<mio::Waker>,
}

struct LimiterThread {
    client: redis::Client,
    url: String,
    conn: Option<redis::Connection>,
    sha: Scripts,
    timeout: Duration,
    memory: Arc<MemoryStore>,
    up: Arc<AtomicBool>,
    stats: Arc<Stats>,
    jobs: Receiver<Vec<Job>>,
    outlets: Vec<Outlet>,
}

impl LimiterThread {
    fn run(mut self) {
        let mut backoff = FIRST_REDIS_BACKOFF;
        let mut next_attempt = Instant::now();
        loop {
            if self.conn.is_none() {
                // Down: answer stragglers from memory until it is time to try again.
                let wait = next_attempt.saturating_duration_since(Instant::now());
                match self.jobs.recv_timeout(wait) {
                    Ok(first) => {
                        let batch = self.gather(first);
                        self.answer_from_memory(&batch);
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                match connect(&self.client, self.timeout) {
                    Ok((conn, sha)) => {
                        self.conn = Some(conn);
                        self.sha = sha;
                        backoff = FIRST_REDIS_BACKOFF;
                        self.up.store(true, Ordering::SeqCst);
                        log::info!("Redis at {} is back: rate limits come from Redis again", self.url);
                    }
                    Err(e) => {
                        log::debug!("Redis at {} still down: {e}", self.url);
                        next_attempt = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_REDIS_BACKOFF);
                    }
                }
                continue;
            }
            let Ok(first) = self.jobs.recv() else { return };
            let batch = self.gather(first);
            let started = Instant::now();
            match self.round_trip(&batch) {
                Ok(states) if started.elapsed() <= self.timeout => self.answer(&batch, states),
                Ok(_) => self.go_down(&batch, &format!("a round trip took longer than {:?}", self.timeout)),
                Err(e) => self.go_down(&batch, &e),
            }
        }
    }

    /// The first message plus everything else already waiting, up to `MAX_REDIS_BATCH` checks.
    fn gather(&self, mut batch: Vec<Job>) -> Vec<Job> {
        while batch.len() < MAX_REDIS_BATCH {
            match self.jobs.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        batch
    }

    /// One pipeline of EVALSHA calls for the batch; on NOSCRIPT (Redis restarted or its scripts
    /// flushed), loads the script and tries once more.
    fn round_trip(&mut self, batch: &[Job]) -> Result<Vec<[CounterState; MAX_COUNTERS]>, String> {
        let conn = self.conn.as_mut().ok_or("not connected")?;
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            let mut key = String::with_capacity(64);
            for job in batch {
                let counters = job.counters;
                let cmd = pipe.cmd("EVALSHA").arg(self.sha.sha(counters.strategy)).arg(counters.len());
                key.clear();
                push_key_prefix(&mut key, job.key);
                let prefix = key.len();
                for counter in counters.iter() {
                    key.truncate(prefix);
                    key.push_str(&counter.name);
                    cmd.arg(key.as_str());
                }
                for counter in counters.iter() {
                    match counters.strategy {
                        Strategy::FixedWindow => cmd.arg(counter.period_us / 1000),
                        Strategy::TokenBucket => cmd.arg(counter.interval_us).arg(counter.period_us),
                    };
                }
            }
            let replies =
                conn.req_packed_commands(&pipe.get_packed_pipeline(), 0, batch.len()).map_err(|e| e.to_string())?;
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            if attempt == 0 && replies.iter().any(is_noscript) {
                self.sha = Scripts::load(conn).map_err(|e| e.to_string())?;
                continue;
            }
            return replies
                .iter()
                .zip(batch)
                .map(|(reply, job)| parse_reply(reply, job.counters).map_err(|e| e.to_string()))
                .collect();
        }
        Err("NOSCRIPT again right after SCRIPT LOAD".into())
    }

    /// Decides each check from Redis's answer, and remembers refusals, so that the refused
    /// client's next requests need not come here (SPEC §3).
    fn answer(&self, batch: &[Job], states: Vec<[CounterState; MAX_COUNTERS]>) {
        self.stats.checks.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        let answers = batch.iter().zip(states).map(|(job, states)| {
            let states = &states[..job.counters.len()];
            let decision = Decision::from_states(job.counters, states);
            if matches!(decision, Decision::Limited { refused: Some(_), .. }) {
                self.memory.remember(job.key, job.counters, states, now);
            }
            (job, decision)
        });
        self.deliver(answers, false);
    }

    fn answer_from_memory(&self, batch: &[Job]) {
        self.stats.fallbacks.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        self.deliver(batch.iter().map(|job| (job, self.memory.decide(job.key, job.counters, now))), true);
    }

    fn go_down(&mut self, batch: &[Job], why: &dyn fmt::Display) {
        // The connection may hold a late reply now: never reuse it.
        self.conn = None;
        if self.up.swap(false, Ordering::SeqCst) {
            log::warn!("Redis at {} failed ({why}): rate limits come from memory until it is back", self.url);
        }
        self.answer_from_memory(batch);
    }

    /// Sends each worker its answers in one message and wakes it once.
    fn deliver<'a>(&self, answers: impl Iterator<Item = (&'a Job, Decision)>, from_memory: bool) {
        let mut per_worker: Vec<Vec<(u64, Decision)>> = vec![Vec::new(); self.outlets.len()];
        for (job, decision) in answers {
            if let Some(list) = per_worker.get_mut(job.worker) {
                list.push((job.seq, decision));
            }
        }
        for (outlet, list) in self.outlets.iter().zip(per_worker) {
            // A worker that has exited (shutdown) no longer listens: nothing to do.
            if !list.is_empty() && outlet.answers.send((from_memory, list)).is_ok() {
                let _ = outlet.waker.wake();
            }
        }
    }
}

/// A check waiting for its answer: whose it is, and what memory needs to decide it instead.
#[derive(Debug)]
struct Waiting {
    waiter: u64,
    key: ClientKey,
    counters: Counters,
}

/// One worker's side of the Redis store.
#[derive(Debug)]
pub struct Remote {
    worker: usize,
    /// Checks of this loop turn, sent together by `flush`.
    batch: Vec<Job>,
    jobs: Sender<Vec<Job>>,
    answers: Receiver<Answers>,
    up: Arc<AtomicBool>,
    /// Numbers this worker's checks: an answer names its check, so one that comes after its check
    /// stopped waiting (decided from memory) can't be taken for a later check of the same waiter.
    next_seq: u64,
    /// Checks sent and not yet answered, and when each stops waiting (oldest first: every check
    /// waits the same `timeout`, so the deadlines are in order).
    waiting: HashMap<u64, Waiting>,
    deadlines: VecDeque<(Instant, u64)>,
    timeout: Duration,
    memory: Arc<MemoryStore>,
    /// Metrics (issue 11): answers taken that memory decided (see `take_fallbacks`).
    fallbacks: u64,
}

impl Remote {
    /// Whether checks should go to Redis now (false while it is down).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Queues a check for `waiter`; it is sent at the end of the loop turn (`flush`).
    pub fn submit(&mut self, waiter: u64, key: ClientKey, counters: Counters, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.batch.push(Job { worker: self.worker, seq, key, counters });
        self.waiting.insert(seq, Waiting { waiter, key, counters });
        self.deadlines.push_back((now + self.timeout, seq));
    }

    /// Sends this turn's checks to the limiter thread, in one message.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if let Err(mpsc::SendError(batch)) = self.jobs.send(batch) {
            // The limiter thread is gone (it only ends when the process does): let the deadlines
            // answer these from memory.
            log::error!("Redis limiter thread is gone; {} checks will be decided from memory", batch.len());
        }
    }

    /// Answers that arrived, and memory decisions for checks whose wait ran out, by waiter.
    pub fn take_answers(&mut self, now: Instant) -> Vec<(u64, Decision)> {
        let mut out = Vec::new();
        while let Ok((from_memory, list)) = self.answers.try_recv() {
            for (seq, decision) in list {
                // Not waiting any more: already decided from memory after its deadline.
                if let Some(w) = self.waiting.remove(&seq) {
                    self.fallbacks += u64::from(from_memory);
                    out.push((w.waiter, decision));
                }
            }
        }
        while let Some(&(deadline, seq)) = self.deadlines.front() {
            if self.waiting.contains_key(&seq) && deadline > now {
                break;
            }
            self.deadlines.pop_front();
            // Answered already, or out of time: then memory decides.
            if let Some(w) = self.waiting.remove(&seq) {
                log::debug!("no Redis answer within {:?}: deciding from memory", self.timeout);
                self.fallbacks += 1;
                out.push((w.waiter, self.memory.decide(w.key, w.counters, now)));
            }
        }
        out
    }

    /// Metrics (issue 11): answers taken since the last call that memory decided (the limiter
    /// thread's, or this worker's at a deadline). Each check counts once, however it was decided.
    pub fn take_fallbacks(&mut self) -> u64 {
        std::mem::take(&mut self.fallbacks)
    }

    /// When the oldest waiting check runs out of time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(d, _)| d)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A `Remote` with no limiter thread behind it, for tests of the waiting side: returns it with
    /// the sender its answers come through.
    pub fn detached(timeout: Duration, memory: Arc<MemoryStore>) -> (Remote, Sender<Answers>) {
        // No thread receives the jobs: `flush` finds the channel closed and leaves them to deadlines.
        let (jobs, _) = mpsc::channel();
        let (answers_tx, answers) = mpsc::channel();
        let remote = Remote {
            worker: 0,
            batch: Vec::new(),
            jobs,
            answers,
            up: Arc::new(AtomicBool::new(true)),
            next_seq: 0,
            waiting: HashMap::new(),
            deadlines: VecDeque::new(),
            timeout,
            memory,
            fallbacks: 0,
        };
        (remote, answers_tx)
    }
    use crate::limit::tests::counters;
    use crate::route::Page;

    fn store() -> Arc<MemoryStore> {
        Arc::new(MemoryStore::new(100, 4))
    }

    #[test]
    fn ipv4_keys_are_written_like_display_writes_them() {
        let c = counters(Strategy::FixedWindow, "100/minute", "1/second", None);
        let global = c.iter().next().unwrap();
        for a in [0u32, 1, 9, 10, 99, 100, 255, 256, 0x0A00_0001, 0xC0A8_6401, 0xFFFF_FFFF, 0x6464_6464, 0x0909_0909] {
            let k = ClientKey::V4(a);
            assert_eq!(key_name(k, global), format!("zayzoon:{{{k}}}:global:100/60s"), "{a:#x}");
        }
    }

    #[test]
    fn key_names() {
        let c = counters(Strategy::FixedWindow, "100/minute", "10 per 2 minutes", Some(Page::Health));
        let health = c.iter().nth(1).unwrap();
        let k = ClientKey::of("192.0.2.1".parse().unwrap());
        assert_eq!(key_name(k, health), "zayzoon:{192.0.2.1}:health:10/120s");
        let k = ClientKey::of("2001:db8:1:2::5".parse().unwrap());
        assert_eq!(key_name(k, health), "zayzoon:{2001:db8:1:2::/64}:health:10/120s");
        let c = counters(Strategy::TokenBucket, "100/minute", "1/second", None);
        assert_eq!(key_name(k, c.iter().next().unwrap()), "zayzoon:{2001:db8:1:2::/64}:global:100/60s:tb");
    }

    #[test]
    fn fixed_window_replies() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let two = counters(Strategy::FixedWindow, "5/minute", "1/minute", Some(Page::Status));
        let (g, s) = (two.iter().next().unwrap(), two.iter().nth(1).unwrap());
        let ok = text("3 59000 1 60000");
        let states = parse_reply(&ok, two).unwrap();
        assert_eq!(states[..2], [g.fixed_window(3, 59_000_000), s.fixed_window(1, 60_000_000)]);
        let one = counters(Strategy::FixedWindow, "5/minute", "1/minute", None);
        assert_eq!(parse_reply(&text("1 0"), one).unwrap()[0], g.fixed_window(1, 0));
        let max = "9999999999999999999 9999999999999999999";
        assert_eq!(parse_reply(&text(max), one).unwrap()[0].remaining, 0);
        for bad in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![Value::Int(1), Value::Int(5)]),
            Value::SimpleString("1 5".into()),
            text("1"),
            text("0 5"),
            text("1 -1"),
            text("1  5"),
            text(" 1 5"),
            text("1 5 "),
            text("1 5 1 5"),
            text("1 5.0"),
            text("1 1e5"),
            text("+1 5"),
            text("10000000000000000000 5"),
            text("01 5"),
            text("1 05"),
            text(""),
        ] {
            assert!(parse_reply(&bad, one).is_err(), "{bad:?}");
        }
        let three = counters(Strategy::FixedWindow, "5/minute;6/hour", "1/minute", Some(Page::Status));
        assert!(parse_reply(&ok, three).is_err(), "fewer numbers than counters");
    }

    #[test]
    fn token_bucket_replies() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let c = counters(Strategy::TokenBucket, "5/minute", "1/minute", Some(Page::Status));
        let (g, s) = (c.iter().next().unwrap(), c.iter().nth(1).unwrap());
        let states = parse_reply(&text("1 1795765457042123 12000000 60000000"), c).unwrap();
        assert_eq!(states[..2], [g.token_bucket(12_000_000, false), s.token_bucket(60_000_000, false)]);
        // Refused: only the counter without a token is over.
        let states = parse_reply(&text("0 1795765457042123 12000000 60000000"), c).unwrap();
        assert_eq!(states[..2], [g.token_bucket(12_000_000, false), s.token_bucket(60_000_000, true)]);
        for bad in ["", "1", "1 5", "1 5 0", "2 5 0 0", "1 5 0 0 0", "01 5 0 0", "1 5 0 -1", "1 5 0  0"] {
            assert!(parse_reply(&text(bad), c).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn waiting_checks_fall_back_to_memory_at_their_deadline() {
        let (mut remote, _answers) = detached(Duration::from_millis(100), store());
        let ip = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        remote.submit(39, ClientKey::of(ip), status_counters(), t0);
        remote.flush();
        assert_eq!(remote.next_deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(remote.take_answers(t0 + Duration::from_millis(99)).is_empty());
        let answers = remote.take_answers(t0 + Duration::from_millis(100));
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0, 39);
        assert!(matches!(answers[0].1, Decision::Limited { refused: None, remaining: 0, .. }));
        assert_eq!(remote.next_deadline(), None);
    }

    fn status_counters() -> Counters {
        counters(Strategy::FixedWindow, "5/minute", "1/minute", Some(Page::Status))
    }

    /// An answer that comes after its check was decided from memory must not be taken for the
    /// answer to the same waiter's next check.
    #[test]
    fn a_late_answer_does_not_answer_a_later_check() {
        let (mut remote, answers) = detached(Duration::from_millis(100), store());
        let ip = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        remote.submit(7, ClientKey::of(ip), status_counters(), t0);
        let late = remote.take_answers(t0 + Duration::from_millis(100));
        assert_eq!(late.len(), 1, "decided from memory");
        remote.submit(7, ClientKey::of(ip), status_counters(), t0 + Duration::from_millis(100));
        let by = status_counters().iter().nth(1).unwrap();
        let refused = Decision::Limited {
            limit: 1,
            remaining: 0,
            reset_secs: 9,
            refused: Some(crate::limit::Refusal { by, retry_after_secs: 9 }),
        };
        answers.send((false, vec![(0, refused)])).unwrap(); // the first check's answer, late
        assert!(remote.take_answers(t0 + Duration::from_millis(150)).is_empty());
        let ok = Decision::Limited { limit: 1, remaining: 0, reset_secs: 60, refused: None };
        answers.send((false, vec![(1, ok)])).unwrap();
        assert_eq!(remote.take_answers(t0 + Duration::from_millis(150)), [(7, ok)]);
        assert_eq!(remote.take_fallbacks(), 1, "the first check, decided from memory at its deadline");
    }

    /// Metrics (issue 11): every check decided from memory counts once as a fallback, whether the
    /// worker decided it at its deadline or took the limiter thread's memory answer; a memory
    /// answer that comes too late to be used (the check was decided already) is not counted again.
    #[test]
    fn fallbacks_count_each_check_decided_from_memory_once() {
        let (mut remote, answers) = detached(Duration::from_millis(100), store());
        let ip = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for waiter in 0..3 {
            remote.submit(waiter, ClientKey::of(ip), status_counters(), t0);
        }
        let d = Decision::Limited { limit: 1, remaining: 0, reset_secs: 60, refused: None };
        answers.send((false, vec![(0, d)])).unwrap(); // from Redis
        answers.send((true, vec![(1, d)])).unwrap(); // from memory
        assert_eq!(remote.take_answers(t0).len(), 2);
        assert_eq!(remote.take_answers(t0 + Duration::from_millis(100)).len(), 1, "seq 2 at its deadline");
        answers.send((true, vec![(2, d)])).unwrap(); // seq 2's late memory answer
        assert!(remote.take_answers(t0 + Duration::from_millis(150)).is_empty());
        assert_eq!(remote.take_fallbacks(), 2);
        assert_eq!(remote.take_fallbacks(), 0, "taken");
    }
}
