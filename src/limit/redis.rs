//! The Redis store: one limiter thread owns a blocking `redis::Connection`; workers hand it their
//! checks once per loop turn, and it sends everything waiting as one pipeline of `EVALSHA` calls
//! (one round trip per batch: the busier the server, the bigger each batch).
//!
//! Owns: the Lua script, key names, batching, reply checking, fallback to the in-memory store and
//! reconnecting. Every byte of RESP stays inside the `redis` crate, and every blocking call stays
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

use super::{CheckId, ClientKey, CounterId, CounterState, Counters, Decision, MemoryStore};
use crate::config::RedisUrl;

/// INCR each counter; give it its window (PEXPIRE, milliseconds) when it was just created, or when
/// it somehow has no expiry (so every key always expires); return each count and its PTTL.
/// Milliseconds rather than EXPIRE's seconds so that the window ends exactly when the memory
/// store's would. The numbers come back as one string, `"count ttl count ttl"`, rather than an
/// array of integers: one RESP value to parse instead of five, which made decoding replies the
/// limiter thread's largest cost (callgrind: ~6,800 instructions per check, now ~1,700).
pub const SCRIPT: &str = "\
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

/// Longest wait between reconnection attempts while Redis is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First wait between attempts; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Most checks sent in one pipeline; more wait for the next round trip.
const MAX_BATCH: usize = 1024;

/// The Redis key of one counter. The client key is a hash tag (`{...}`), so a request's keys
/// share a slot if the Redis behind the URL is ever a cluster proxy.
pub fn key_name(client: ClientKey, counter: CounterId) -> String {
    let mut key = String::new();
    push_key_prefix(&mut key, client);
    key.push_str(counter.name());
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

/// One check on its way to Redis.
#[derive(Debug, Clone, Copy)]
struct Job {
    worker: usize,
    id: CheckId,
    key: ClientKey,
    counters: Counters,
}

/// Why the server can't start with Redis (exit code 1).
#[derive(Debug)]
pub struct StartError {
    url: String,
    attempts: u32,
    cause: redis::RedisError,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot use Redis at {} after {} attempt(s): {}", self.url, self.attempts, self.cause)
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// Counts for the shutdown log line and for tests: how well batching works.
#[derive(Debug, Default)]
pub struct Stats {
    pub checks: AtomicU64,
    pub round_trips: AtomicU64,
    pub fallbacks: AtomicU64,
}

/// Connects (with `retries` attempts and backoff), loads the script, and starts the limiter
/// thread. Returns one `Remote` per worker waker, in order.
pub fn start(
    url: &RedisUrl,
    retries: u32,
    timeout: Duration,
    memory: Arc<MemoryStore>,
    wakers: Vec<Arc<mio::Waker>>,
) -> Result<(Vec<Remote>, Arc<Stats>), StartError> {
    let fail = |attempts, cause| StartError { url: url.redacted(), attempts, cause };
    let client = redis::Client::open(url.as_str()).map_err(|e| fail(0, e))?;
    let mut backoff = FIRST_BACKOFF;
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
                log::warn!("Redis at {} not ready (attempt {attempt} of {retries}): {e}", url.redacted());
                thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    let up = Arc::new(AtomicBool::new(true));
    let stats = Arc::new(Stats::default());
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
            waiting: HashMap::new(),
            deadlines: VecDeque::new(),
            timeout,
            memory: Arc::clone(&memory),
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

/// Opens a connection (AUTH and SELECT happen here, from the URL), with `timeout` on every
/// operation, and loads the script.
fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<(redis::Connection, String)> {
    let mut conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let sha = load_script(&mut conn)?;
    Ok((conn, sha))
}

fn load_script(conn: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query(conn)
}

/// A reply that is not what the script returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub String);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected reply from the limiter script: {}", self.0)
    }
}

/// Checks one script reply for a request with `n` counters: a string of `2n` decimal numbers
/// separated by single spaces, pairs of (count ≥ 1, ttl in ms).
pub fn parse_reply(reply: &Value, n: usize) -> Result<[CounterState; 2], BadReply> {
    let bad = |what: &dyn fmt::Debug| BadReply(format!("{what:?}").chars().take(80).collect());
    let Value::BulkString(text) = reply else { return Err(bad(reply)) };
    if n > 2 {
        return Err(BadReply(format!("{n} counters")));
    }
    let mut numbers = text.split(|&b| b == b' ').filter(|_| !text.is_empty()).map(parse_decimal);
    let mut out = [CounterState { count: 0, ttl_ms: 0 }; 2];
    for slot in out.iter_mut().take(n) {
        match (numbers.next(), numbers.next()) {
            (Some(Some(count)), Some(Some(ttl_ms))) if count >= 1 => *slot = CounterState { count, ttl_ms },
            _ => return Err(bad(&String::from_utf8_lossy(text))),
        }
    }
    if numbers.next().is_some() {
        return Err(bad(&String::from_utf8_lossy(text)));
    }
    Ok(out)
}

/// 1 to 19 ASCII digits (no sign, no spaces, no leading zero), as u64: how Lua writes them.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) || (s.len() > 1 && s[0] == b'0') {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// Where a worker's answers go.
struct Outlet {
    answers: Sender<Vec<(CheckId, Decision)>>,
    waker: Arc<mio::Waker>,
}

struct LimiterThread {
    client: redis::Client,
    url: String,
    conn: Option<redis::Connection>,
    sha: String,
    timeout: Duration,
    memory: Arc<MemoryStore>,
    up: Arc<AtomicBool>,
    stats: Arc<Stats>,
    jobs: Receiver<Vec<Job>>,
    outlets: Vec<Outlet>,
}

impl LimiterThread {
    fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
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
                        backoff = FIRST_BACKOFF;
                        self.up.store(true, Ordering::SeqCst);
                        log::info!("Redis at {} is back: rate limits come from Redis again", self.url);
                    }
                    Err(e) => {
                        log::debug!("Redis at {} still down: {e}", self.url);
                        next_attempt = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
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

    /// The first message plus everything else already waiting, up to `MAX_BATCH` checks.
    fn gather(&self, mut batch: Vec<Job>) -> Vec<Job> {
        while batch.len() < MAX_BATCH {
            match self.jobs.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        batch
    }

    /// One pipeline of EVALSHA calls for the batch; on NOSCRIPT (Redis restarted or its scripts
    /// flushed), loads the script and tries once more.
    fn round_trip(&mut self, batch: &[Job]) -> Result<Vec<[CounterState; 2]>, String> {
        let conn = self.conn.as_mut().ok_or("not connected")?;
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            let mut key = String::with_capacity(64);
            for job in batch {
                let counters = job.counters.as_slice();
                let cmd = pipe.cmd("EVALSHA").arg(&self.sha).arg(counters.len());
                key.clear();
                push_key_prefix(&mut key, job.key);
                let prefix = key.len();
                for &(id, _) in counters {
                    key.truncate(prefix);
                    key.push_str(id.name());
                    cmd.arg(key.as_str());
                }
                for &(_, rate) in counters {
                    cmd.arg(u64::from(rate.period_secs) * 1000);
                }
            }
            let replies =
                conn.req_packed_commands(&pipe.get_packed_pipeline(), 0, batch.len()).map_err(|e| e.to_string())?;
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            if attempt == 0 && replies.iter().any(is_noscript) {
                self.sha = load_script(conn).map_err(|e| e.to_string())?;
                continue;
            }
            return replies
                .iter()
                .zip(batch)
                .map(|(reply, job)| parse_reply(reply, job.counters.as_slice().len()).map_err(|e| e.to_string()))
                .collect();
        }
        Err("NOSCRIPT again right after SCRIPT LOAD".into())
    }

    fn answer(&self, batch: &[Job], states: Vec<[CounterState; 2]>) {
        self.stats.checks.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.deliver(batch.iter().zip(states).map(|(job, st)| {
            let counters = job.counters.as_slice();
            (job, Decision::from_states(counters, &st[..counters.len()]))
        }));
    }

    fn answer_from_memory(&self, batch: &[Job]) {
        self.stats.fallbacks.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        self.deliver(batch.iter().map(|job| (job, decide_from_memory(&self.memory, job.key, &job.counters, now))));
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
    fn deliver<'a>(&self, answers: impl Iterator<Item = (&'a Job, Decision)>) {
        let mut per_worker: Vec<Vec<(CheckId, Decision)>> = vec![Vec::new(); self.outlets.len()];
        for (job, decision) in answers {
            if let Some(list) = per_worker.get_mut(job.worker) {
                list.push((job.id, decision));
            }
        }
        for (outlet, list) in self.outlets.iter().zip(per_worker) {
            // A worker that has exited (shutdown) no longer listens: nothing to do.
            if !list.is_empty() && outlet.answers.send(list).is_ok() {
                let _ = outlet.waker.wake();
            }
        }
    }
}

fn decide_from_memory(memory: &MemoryStore, key: ClientKey, counters: &Counters, now: Instant) -> Decision {
    let counters = counters.as_slice();
    let states = memory.hit(key, counters, now);
    Decision::from_states(counters, &states[..counters.len()])
}

/// A check waiting for its answer.
#[derive(Debug)]
struct Waiting {
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
    answers: Receiver<Vec<(CheckId, Decision)>>,
    up: Arc<AtomicBool>,
    /// Checks sent and not yet answered, and when each stops waiting (oldest first: every check
    /// waits the same `timeout`, so the deadlines are in order).
    waiting: HashMap<CheckId, Waiting>,
    deadlines: VecDeque<(Instant, CheckId)>,
    timeout: Duration,
    memory: Arc<MemoryStore>,
}

impl Remote {
    /// Whether checks should go to Redis now (false while it is down).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Queues a check; it is sent at the end of the loop turn (`flush`).
    pub fn submit(&mut self, id: CheckId, key: ClientKey, counters: Counters, now: Instant) {
        self.batch.push(Job { worker: self.worker, id, key, counters });
        self.waiting.insert(id, Waiting { key, counters });
        self.deadlines.push_back((now + self.timeout, id));
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

    /// Answers that arrived, and memory decisions for checks whose wait ran out.
    pub fn take_answers(&mut self, now: Instant) -> Vec<(CheckId, Decision)> {
        let mut out = Vec::new();
        while let Ok(list) = self.answers.try_recv() {
            for (id, decision) in list {
                // Not waiting any more: already decided from memory after its deadline.
                if self.waiting.remove(&id).is_some() {
                    out.push((id, decision));
                }
            }
        }
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if self.waiting.contains_key(&id) && deadline > now {
                break;
            }
            self.deadlines.pop_front();
            // Answered already, or out of time: then memory decides.
            if let Some(w) = self.waiting.remove(&id) {
                log::debug!("no Redis answer within {:?}: deciding from memory", self.timeout);
                out.push((id, decide_from_memory(&self.memory, w.key, &w.counters, now)));
            }
        }
        out
    }

    /// When the oldest waiting check runs out of time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(d, _)| d)
    }
}

/// A `Remote` with no limiter thread behind it, for tests of the waiting side: returns it with
/// the sender its answers come through.
#[cfg(test)]
pub(crate) fn detached(timeout: Duration, memory: Arc<MemoryStore>) -> (Remote, Sender<Vec<(CheckId, Decision)>>) {
    // No thread receives the jobs: `flush` finds the channel closed and leaves them to deadlines.
    let (jobs, _) = mpsc::channel();
    let (answers_tx, answers) = mpsc::channel();
    let remote = Remote {
        worker: 0,
        batch: Vec::new(),
        jobs,
        answers,
        up: Arc::new(AtomicBool::new(true)),
        waiting: HashMap::new(),
        deadlines: VecDeque::new(),
        timeout,
        memory,
    };
    (remote, answers_tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::Rate;

    #[test]
    fn ipv4_keys_are_written_like_display_writes_them() {
        for a in [0u32, 1, 9, 10, 99, 100, 255, 256, 0x0A00_0001, 0xC0A8_6401, 0xFFFF_FFFF, 0x6464_6464, 0x0909_0909] {
            let k = ClientKey::V4(a);
            assert_eq!(key_name(k, CounterId::Global), format!("zayzoon:{{{k}}}:global"), "{a:#x}");
        }
    }

    #[test]
    fn key_names() {
        let k = ClientKey::of("192.0.2.1".parse().unwrap());
        assert_eq!(key_name(k, CounterId::Global), "zayzoon:{192.0.2.1}:global");
        let k = ClientKey::of("2001:db8:1:2::5".parse().unwrap());
        assert_eq!(key_name(k, CounterId::Health), "zayzoon:{2001:db8:1:2::/64}:health");
    }

    #[test]
    fn replies() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let ok = text("3 59000 1 60000");
        assert_eq!(
            parse_reply(&ok, 2),
            Ok([CounterState { count: 3, ttl_ms: 59_000 }, CounterState { count: 1, ttl_ms: 60_000 }])
        );
        assert_eq!(parse_reply(&text("1 0"), 1).unwrap()[0], CounterState { count: 1, ttl_ms: 0 });
        assert_eq!(parse_reply(&text(""), 0), Ok([CounterState { count: 0, ttl_ms: 0 }; 2]));
        let max = "9999999999999999999 9999999999999999999";
        assert_eq!(parse_reply(&text(max), 1).unwrap()[0].count, 9_999_999_999_999_999_999);
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
            assert!(parse_reply(&bad, 1).is_err(), "{bad:?}");
        }
        assert!(parse_reply(&ok, 3).is_err(), "more counters than a request has");
    }

    #[test]
    fn waiting_checks_fall_back_to_memory_at_their_deadline() {
        let (mut remote, _answers) = detached(Duration::from_millis(100), Arc::new(MemoryStore::default()));
        let policy = crate::limit::Policy {
            enabled: true,
            default: Rate::per_minute(5),
            endpoint: Rate::per_minute(1),
            exempt: vec![],
        };
        let ip = "192.0.2.1".parse().unwrap();
        let counters = policy.counters(ip, "/status").unwrap();
        let t0 = Instant::now();
        let id = CheckId { conn: crate::limit::Ticket { slot: 3, serial: 9 }, request: 2 };
        remote.submit(id, ClientKey::of(ip), counters, t0);
        remote.flush();
        assert_eq!(remote.next_deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(remote.take_answers(t0 + Duration::from_millis(99)).is_empty());
        let answers = remote.take_answers(t0 + Duration::from_millis(100));
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0, id);
        assert!(answers[0].1.allowed());
        assert_eq!(remote.next_deadline(), None);
    }
}
