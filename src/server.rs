//! Workers, their poll loops, accepting, deadlines, signals and shutdown.
//!
//! Owns: binding the port, one `mio::Poll` per worker thread (each with a clone of the listening
//! socket and its own connections), the connection cap shared by all workers, backing off when
//! `accept` fails, the drain on SIGTERM/SIGINT (SPEC §4), and the metrics timer (SPEC §6: the
//! workers' counts merged into one tally, one EMF line per interval and one at exit). Does not
//! own: what happens on a connection (`conn`), or what is counted and how a line looks (`metrics`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::iterator::Signals;

use crate::clock;
use crate::config::Config;
use crate::conn::{Conn, Ctx, Drive, Session};
use crate::limit::remote;
use crate::limit::{Limiter, MemoryStore, Policy};
use crate::limits::{ACCEPT_BACKOFF, MAX_LIMITER_ENTRIES, READ_CHUNK, SPARE_BUFFERS, SWEEP_INTERVAL};
use crate::logger::{self, LIFECYCLE};
use crate::metrics::{self, Counts};
use crate::response::Renderer;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

/// Why the server could not start (exit code 1).
#[derive(Debug)]
pub enum StartError {
    Bind(SocketAddr, io::Error),
    Setup(io::Error),
    Redis(remote::StartError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Setup(e) => write!(f, "cannot set up the event loop: {e}"),
            StartError::Redis(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind(_, e) | StartError::Setup(e) => Some(e),
            StartError::Redis(e) => Some(e),
        }
    }
}

/// State all workers share.
struct Shared {
    /// Set by the signal thread; workers stop accepting and close connections as they go idle.
    draining: AtomicBool,
    /// Open client connections, all workers together.
    connections: AtomicUsize,
    max_connections: usize,
    shutdown_grace: Duration,
    /// The workers' counts since the last metrics line (`METRICS=emf`): each worker adds its own
    /// in every few hundred milliseconds (`Worker::publish_metrics`), never per request.
    tally: Mutex<Counts>,
}

/// Runs the server until a signal ends it. Returns once every worker has finished draining.
pub fn run(config: Config) -> Result<(), StartError> {
    let mut polls = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        let poll = Poll::new().map_err(StartError::Setup)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(StartError::Setup)?);
        polls.push((poll, waker));
    }
    let wakers: Vec<Arc<Waker>> = polls.iter().map(|(_, w)| Arc::clone(w)).collect();
    let policy = Policy::leak(config.policy.clone());
    let memory = Arc::new(MemoryStore::new(MAX_LIMITER_ENTRIES, policy.slots()));
    // Redis first: a server that can't reach its store should not take connections it can't serve.
    let (mut remotes, redis_stats) = match &config.redis {
        Some(settings) => {
            let (remotes, stats) =
                remote::start(settings, Arc::clone(&memory), wakers.clone()).map_err(StartError::Redis)?;
            (remotes.into_iter().map(Some).collect(), Some(stats))
        }
        None => (Vec::new(), None),
    };
    remotes.resize_with(config.workers, || None);

    let listener = TcpListener::bind(config.listen).map_err(|e| StartError::Bind(config.listen, e))?;
    let local = listener.local_addr().map_err(StartError::Setup)?;
    let listener = std::net::TcpListener::from(listener); // for `try_clone`, one clone per worker
    let shared = Arc::new(Shared {
        draining: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        max_connections: config.max_connections,
        shutdown_grace: config.shutdown_grace,
        tally: Mutex::new(Counts::default()),
    });
    let make_ctx = |remote| Ctx {
        now: Instant::now(),
        wall_ms: clock::unix_millis_now(),
        settings: Arc::new(config.session.clone()),
        limiter: Limiter::new(policy, Arc::clone(&memory), remote),
        renderer: Renderer::new(clock::unix_millis_now()),
        draining: false,
        metrics: config.metrics.is_some().then(Counts::default),
    };
    let mut workers = Vec::with_capacity(config.workers);
    for (id, ((poll, _), remote)) in polls.into_iter().zip(remotes).enumerate() {
        workers.push(Worker::new(id, poll, &listener, Arc::clone(&shared), make_ctx(remote))?);
    }
    drop(listener); // Each worker holds a clone.

    // Signal handlers go in before the "listening" line, so that a supervisor that signals as soon
    // as it sees that line gets a drain, not the default action (or, as PID 1, nothing at all).
    let signals =
        Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]).map_err(StartError::Setup)?;
    let reporter = config.metrics.clone().map(|m| Reporter::start(m, Arc::clone(&shared), redis_stats.clone()));
    let reporter = reporter.transpose().map_err(StartError::Setup)?;
    log::info!(target: LIFECYCLE, "zayzoon {} listening on {local}; {}", env!("CARGO_PKG_VERSION"), config.summary());
    let handles = workers
        .into_iter()
        .map(|w| thread::Builder::new().name(format!("worker-{}", w.id)).spawn(move || w.run()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(StartError::Setup)?;
    spawn_signal_thread(signals, shared, wakers).map_err(StartError::Setup)?;

    join_workers(handles);
    if let Some(reporter) = reporter {
        reporter.finish(); // after the workers: their last counts are in the tally
    }
    if let Some(stats) = redis_stats {
        log::info!(
            target: LIFECYCLE,
            "redis: {} checks in {} round trips; {} decided from memory",
            stats.checks.load(Ordering::Relaxed),
            stats.round_trips.load(Ordering::Relaxed),
            stats.fallbacks.load(Ordering::Relaxed)
        );
    }
    log::info!(target: LIFECYCLE, "drained; exiting");
    Ok(())
}

/// The first signal starts the drain in every worker; a second one exits at once.
fn spawn_signal_thread(mut signals: Signals, shared: Arc<Shared>, wakers: Vec<Arc<Waker>>) -> io::Result<()> {
    let drain = move || {
        let mut received = 0;
        for signal in signals.forever() {
            received += 1;
            if received > 1 {
                log::warn!(target: LIFECYCLE, "second signal {signal}: exiting now");
                std::process::exit(1);
            }
            // Start the drain before saying so: nothing may stand between a signal and it.
            shared.draining.store(true, Ordering::SeqCst);
            for waker in &wakers {
                if let Err(e) = waker.wake() {
                    log::error!("cannot wake a worker: {e}");
                }
            }
            let grace = shared.shutdown_grace.as_secs();
            log::info!(target: LIFECYCLE, "signal {signal}: draining (at most {grace} s)");
        }
    };
    thread::Builder::new().name("signals".into()).spawn(drain).map(drop)
}

fn join_workers(handles: Vec<JoinHandle<()>>) {
    for handle in handles {
        if handle.join().is_err() {
            // A worker panicked (a bug). Exit non-zero so that the orchestrator replaces us.
            log::error!("a worker thread panicked; exiting");
            std::process::exit(1);
        }
    }
}

/// The metrics timer's thread: one EMF line per interval, and a last one at exit (SPEC §6).
struct Reporter {
    thread: JoinHandle<()>,
    /// Set by `finish`: the thread writes the last line and ends.
    stop: Arc<AtomicBool>,
}

impl Reporter {
    fn start(
        settings: metrics::Settings,
        shared: Arc<Shared>,
        redis: Option<Arc<remote::Stats>>,
    ) -> io::Result<Reporter> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        // Parking rather than a channel: an mpsc channel of a new type costs the static binary
        // ~20 KiB of monomorphized code, for a wake-up once per interval.
        let run = move || {
            let interval = settings.interval;
            let mut line = Line { settings, shared, redis, redis_before: (0, 0) };
            // Never more than one line per interval: the next is due an interval after this one.
            let mut due = Instant::now() + interval;
            loop {
                if stopping.load(Ordering::SeqCst) {
                    return line.write();
                }
                let now = Instant::now();
                if now >= due {
                    line.write();
                    due = Instant::now() + interval;
                } else {
                    thread::park_timeout(due - now); // may return early: the loop looks again
                }
            }
        };
        let thread = thread::Builder::new().name("metrics".into()).spawn(run)?;
        Ok(Reporter { thread, stop })
    }

    /// Writes the last line (the counts since the previous one, so that a task scaled in loses
    /// none) and waits for it.
    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.thread().unpark();
        if self.thread.join().is_err() {
            log::error!("the metrics thread panicked; the last metrics line is lost");
        }
    }
}

/// What the metrics thread needs for a line.
struct Line {
    settings: metrics::Settings,
    shared: Arc<Shared>,
    redis: Option<Arc<remote::Stats>>,
    /// The Redis store's running totals (checks, round trips) at the previous line.
    redis_before: (u64, u64),
}

impl Line {
    /// One EMF line: the tally since the previous line (taken, so it starts again from zero), the
    /// connections open now, the Redis store's figures since the previous line. Written whatever
    /// the log level, in one `write` (`logger::write_line`).
    fn write(&mut self) {
        let counts = std::mem::take(&mut *self.shared.tally.lock().unwrap_or_else(PoisonError::into_inner));
        let redis = self.redis.as_deref().map(|stats| {
            let now = (stats.checks.load(Ordering::Relaxed), stats.round_trips.load(Ordering::Relaxed));
            let (checks, round_trips) =
                (now.0.saturating_sub(self.redis_before.0), now.1.saturating_sub(self.redis_before.1));
            self.redis_before = now;
            metrics::Redis { checks, round_trips, up: stats.up.load(Ordering::Relaxed) }
        });
        let connections = self.shared.connections.load(Ordering::Relaxed) as u64;
        let gauges = metrics::Gauges { connections, redis };
        let now = clock::unix_millis_now();
        logger::write_line(&|out| metrics::emf_line(&self.settings, now, &counts, &gauges, out));
    }
}

/// Connections by slot (the slot is the mio token), each with the name it has outside its worker:
/// the limiter's `waiter`, which this slab makes and checks. A waiter holds the slot in its low 32
/// bits and a serial number in the high ones, so that an answer that comes after its connection
/// closed can't reach the next connection in the same slot.
struct Slab<T> {
    entries: Vec<Option<(u64, T)>>,
    free: Vec<usize>,
    len: usize,
    serial: u64,
}

impl<T> Slab<T> {
    fn new() -> Slab<T> {
        Slab { entries: Vec::new(), free: Vec::new(), len: 0, serial: 0 }
    }

    /// Inserts what `make` makes of the new entry's waiter; returns its slot.
    fn insert_with(&mut self, make: impl FnOnce(u64) -> T) -> usize {
        let slot = self.free.pop().unwrap_or(self.entries.len());
        if slot == self.entries.len() {
            self.entries.push(None);
        }
        self.serial += 1;
        let waiter = (self.serial << 32) | slot as u64;
        self.entries[slot] = Some((waiter, make(waiter)));
        self.len += 1;
        slot
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.entries.get_mut(slot)?.as_mut().map(|(_, t)| t)
    }

    /// The slot of the entry `waiter` names, if it is still there.
    fn find(&self, waiter: u64) -> Option<usize> {
        let slot = (waiter & u64::from(u32::MAX)) as usize;
        matches!(self.entries.get(slot), Some(Some((w, _))) if *w == waiter).then_some(slot)
    }

    fn remove(&mut self, slot: usize) -> Option<T> {
        let (_, t) = self.entries.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(t)
    }
}

struct Worker {
    id: usize,
    poll: Poll,
    /// `None` once draining: closing every clone closes the socket, so new connections are refused.
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    /// Connections that used their turn's budget and still have work.
    busy: Vec<usize>,
    shared: Arc<Shared>,
    /// What connections use while they run: this turn's clock, the limiter, the renderer.
    ctx: Ctx,
    /// The read buffer, shared by this worker's connections (they keep only leftovers).
    scratch: Vec<u8>,
    /// Empty output buffers, lent to connections while they have something to write.
    spare_buffers: Vec<Vec<u8>>,
    accept_paused_until: Option<Instant>,
    accept_failures: u64,
    next_sweep: Instant,
    drain_deadline: Option<Instant>,
}

impl Worker {
    fn new(
        id: usize,
        poll: Poll,
        listener: &std::net::TcpListener,
        shared: Arc<Shared>,
        ctx: Ctx,
    ) -> Result<Worker, StartError> {
        let mut listener = TcpListener::from_std(listener.try_clone().map_err(StartError::Setup)?);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE).map_err(StartError::Setup)?;
        Ok(Worker {
            id,
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            busy: Vec::new(),
            shared,
            next_sweep: ctx.now + SWEEP_INTERVAL,
            ctx,
            scratch: vec![0; READ_CHUNK],
            spare_buffers: Vec::new(),
            accept_paused_until: None,
            accept_failures: 0,
            drain_deadline: None,
        })
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(self.poll_timeout(Instant::now()))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("worker {}: poll failed: {e}", self.id);
                    thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
            // One clock read per turn (darkhttpd's cached `now`): every deadline and every
            // response of this turn uses it, and the Date header changes only once a second.
            let now = Instant::now();
            self.ctx.now = now;
            self.ctx.wall_ms = clock::unix_millis_now();
            self.ctx.renderer.refresh(self.ctx.wall_ms);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    // Woken for a limiter answer or a signal: both are looked at below, every turn.
                    WAKER => {}
                    Token(slot) => {
                        let read_closed = event.is_read_closed() || event.is_error();
                        let writable = event.is_writable() || event.is_write_closed();
                        if let Some(conn) = self.conns.get_mut(slot) {
                            conn.set_ready(event.is_readable(), writable, read_closed);
                            self.drive(slot);
                        }
                    }
                }
            }
            for slot in std::mem::take(&mut self.busy) {
                self.drive(slot);
            }
            self.take_answers();
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.accept();
            }
            if self.shared.draining.load(Ordering::Relaxed) && self.drain_deadline.is_none() {
                self.start_draining();
            }
            if now >= self.next_sweep || self.drain_deadline.is_some() {
                self.sweep();
                // After the sweep, which may answer requests. While draining this runs every turn,
                // and before `drained`: a worker's last counts are in the tally when it returns.
                self.publish_metrics();
            }
            // Everything this turn asked the Redis store goes out in one message.
            self.ctx.limiter.flush();
            if self.drained() {
                return;
            }
        }
    }

    /// While draining: whether this worker is done (no connections left, or out of time).
    fn drained(&self) -> bool {
        let Some(deadline) = self.drain_deadline else { return false };
        if self.conns.len > 0 && self.ctx.now < deadline {
            return false;
        }
        if self.conns.len > 0 {
            log::warn!("worker {}: grace period over, closing {} connections", self.id, self.conns.len);
        }
        self.shared.connections.fetch_sub(self.conns.len, Ordering::Relaxed);
        true
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        if !self.busy.is_empty() {
            return Duration::ZERO;
        }
        let mut wake = self.next_sweep;
        if let Some(t) = self.accept_paused_until {
            wake = wake.min(t);
        }
        if let Some(t) = self.ctx.limiter.next_deadline() {
            wake = wake.min(t);
        }
        wake.saturating_duration_since(now)
    }

    /// Lets connection `slot` move bytes, and drops it if it closed.
    fn drive(&mut self, slot: usize) {
        self.drive_after(slot, |_, _| {});
    }

    /// Runs `first` on connection `slot` (a deadline check, a limiter answer), then lets it move
    /// bytes, and drops it if it closed. A panic in there is a bug, and it costs only this
    /// connection: the client gets a 500 if nothing else was queued for it, then the close; every
    /// other connection goes on.
    fn drive_after(&mut self, slot: usize, first: impl FnOnce(&mut Conn, &mut Ctx)) {
        let (ctx, scratch, spares) = (&mut self.ctx, &mut self.scratch, &mut self.spare_buffers);
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if let Some(buf) = spares.pop()
            && let Some(unused) = conn.session.give_output_buffer(buf)
        {
            spares.push(unused);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            first(conn, ctx);
            conn.drive(scratch, ctx)
        }))
        .unwrap_or_else(|_| {
            log::error!("internal error on a connection (a bug; see the panic message above); closing it");
            conn.abort_with_500(ctx);
            Drive::Closed
        });
        if let Some(buf) = conn.session.take_output_buffer()
            && spares.len() < SPARE_BUFFERS
        {
            spares.push(buf);
        }
        if outcome != Drive::Closed
            && let Err(e) = self.register(slot)
        {
            log::warn!("cannot register a connection: {e}");
            return self.close(slot);
        }
        match outcome {
            Drive::Parked => {}
            Drive::Busy => self.busy.push(slot),
            Drive::Closed => self.close(slot),
        }
    }

    /// Tells the poll what connection `slot` now waits for, if that changed.
    fn register(&mut self, slot: usize) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(slot) else { return Ok(()) };
        let interest = conn.interest();
        match conn.registered {
            Some(current) if current == interest => return Ok(()),
            Some(_) => self.poll.registry().reregister(&mut conn.stream, Token(slot), interest)?,
            None => self.poll.registry().register(&mut conn.stream, Token(slot), interest)?,
        }
        conn.registered = Some(interest);
        Ok(())
    }

    fn close(&mut self, slot: usize) {
        // Dropping the stream closes the socket, which also removes it from the poll.
        if self.conns.remove(slot).is_some() {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Accepts until the queue is empty. On failure (EMFILE and friends) pauses accepting for
    /// `ACCEPT_BACKOFF` instead of spinning; the listener stays registered, and the pause ends by
    /// timer, so no readiness edge is missed.
    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        while let Some(listener) = &self.listener {
            // A connection joins this worker as soon as it is accepted (`add`): once a signal has
            // asked for the drain, take no more, even before this worker's turn gets to
            // `start_draining`.
            if self.shared.draining.load(Ordering::SeqCst) {
                return;
            }
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => continue,
                Err(e) => {
                    if self.accept_failures == 0 {
                        log::warn!("accept failed: {e}; pausing accepts, serving open connections");
                    }
                    self.accept_failures += 1;
                    self.accept_paused_until = Some(self.ctx.now + ACCEPT_BACKOFF);
                    return;
                }
            };
            if self.accept_failures > 0 {
                log::info!("accepting again after {} failed attempts", self.accept_failures);
                self.accept_failures = 0;
            }
            let open = self.shared.connections.fetch_add(1, Ordering::Relaxed);
            if open >= self.shared.max_connections {
                self.shared.connections.fetch_sub(1, Ordering::Relaxed);
                log::debug!("at MAX_CONNECTIONS ({}): closing new connection from {peer}", self.shared.max_connections);
                continue; // `stream` dropped: closed at once.
            }
            self.add(stream, peer);
        }
    }

    /// Takes a new connection. It is registered with the poll after this first turn, and read once
    /// the poll says it is readable (see `Conn::new`).
    fn add(&mut self, stream: mio::net::TcpStream, peer: SocketAddr) {
        let ctx = &self.ctx;
        let slot = self.conns.insert_with(|waiter| Conn::new(stream, Session::new(peer.ip(), waiter, ctx)));
        self.drive(slot);
    }

    /// Hands limiter decisions to the connections waiting for them; answers for connections that
    /// have closed since are dropped here.
    fn take_answers(&mut self) {
        for (waiter, decision) in self.ctx.limiter.take_answers(self.ctx.now) {
            if let Some(slot) = self.conns.find(waiter) {
                self.drive_after(slot, |conn, ctx| conn.session.on_decision(decision, ctx));
            }
        }
    }

    fn start_draining(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.drain_deadline = Some(self.ctx.now + self.shared.shutdown_grace);
        self.ctx.draining = true;
    }

    /// Adds this worker's counts to the tally for the next metrics line, and starts them again
    /// from zero. After every sweep (`SWEEP_INTERVAL`, and every turn of the drain): a lock a few
    /// times a second, never one per request; a line misses at most the last sweep interval's
    /// counts, which the next line has.
    fn publish_metrics(&mut self) {
        let Some(counts) = &mut self.ctx.metrics else { return };
        counts.redis_fallbacks += self.ctx.limiter.take_fallbacks();
        if !counts.is_empty() {
            self.shared.tally.lock().unwrap_or_else(PoisonError::into_inner).add(counts);
            *counts = Counts::default();
        }
    }

    /// Fires deadlines; while draining, also closes connections that have gone idle.
    fn sweep(&mut self) {
        self.next_sweep = self.ctx.now + SWEEP_INTERVAL;
        let draining = self.drain_deadline.is_some();
        for slot in 0..self.conns.entries.len() {
            let Some(conn) = self.conns.get_mut(slot) else { continue };
            if draining && conn.session.is_idle() {
                // A request may have crossed the signal and wait unread in the socket: look once
                // (it gets its answer, with `Connection: close`) before closing an idle connection.
                self.drive_after(slot, |conn, _| conn.set_ready(true, false, false));
                if self.conns.get_mut(slot).is_some_and(|c| c.session.is_idle()) {
                    self.close(slot);
                }
                continue;
            }
            self.drive_after(slot, |conn, ctx| conn.session.on_tick(ctx));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_for_a_closed_connection_finds_no_one() {
        let mut slab = Slab::new();
        let mut first = 0;
        let slot = slab.insert_with(|w| {
            first = w;
            "first"
        });
        assert_eq!(slab.find(first), Some(slot));
        assert_eq!(slab.remove(slot), Some("first"));
        assert_eq!(slab.find(first), None, "closed");
        let mut second = 0;
        let reused = slab.insert_with(|w| {
            second = w;
            "second"
        });
        assert_eq!(reused, slot, "the slot is reused");
        assert_eq!(slab.find(first), None, "an answer for the first connection does not reach the second");
        assert_eq!(slab.find(second), Some(slot));
        assert_eq!(slab.get_mut(slot), Some(&mut "second"));
        let other = slab.insert_with(|_| "third");
        assert_ne!(other, slot);
        assert_eq!(slab.len, 2);
    }
}
