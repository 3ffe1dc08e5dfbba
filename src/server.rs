//! Workers, their poll loops, accepting, deadlines, signals and shutdown.
//!
//! Owns: binding the port, one `mio::Poll` per worker thread (each with a clone of the listening
//! socket and its own connections), the connection cap shared by all workers, backing off when
//! `accept` fails, and the drain on SIGTERM/SIGINT (SPEC §4). Does not own: what happens on a
//! connection (`conn`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::clock;
use crate::config::{ACCEPT_BACKOFF, Config, READ_CHUNK, SWEEP_INTERVAL};
use crate::conn::{Conn, Ctx, Drive, Session, Settings};
use crate::limit::{self, Limiter, MemoryStore, Policy, Ticket};
use crate::logger::LIFECYCLE;
use crate::response::Renderer;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

/// Why the server could not start (exit code 1).
#[derive(Debug)]
pub enum StartError {
    Bind(SocketAddr, io::Error),
    Setup(io::Error),
    Redis(limit::redis::StartError),
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
}

/// Runs the server until a signal ends it. Returns once every worker has finished draining.
pub fn run(config: Config) -> Result<(), StartError> {
    let mut polls = Vec::with_capacity(config.workers);
    let mut wakers = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        let poll = Poll::new().map_err(StartError::Setup)?;
        wakers.push(Arc::new(Waker::new(poll.registry(), WAKER).map_err(StartError::Setup)?));
        polls.push(poll);
    }
    let memory = Arc::new(MemoryStore::default());
    // Redis first: a server that can't reach its store should not take connections it can't serve.
    let (remotes, redis_stats) = match &config.redis_url {
        Some(url) => {
            let (remotes, stats) = limit::redis::start(
                url,
                config.redis_connect_retries,
                config.redis_timeout,
                Arc::clone(&memory),
                wakers.clone(),
            )
            .map_err(StartError::Redis)?;
            (remotes.into_iter().map(Some).collect(), Some(stats))
        }
        None => ((0..config.workers).map(|_| None).collect::<Vec<_>>(), None),
    };

    let addr = SocketAddr::new(config.bind_addr, config.port);
    let listener = TcpListener::bind(addr).map_err(|e| StartError::Bind(addr, e))?;
    let local = listener.local_addr().map_err(StartError::Setup)?;
    let listener = std::net::TcpListener::from(listener);

    let shared = Arc::new(Shared {
        draining: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        max_connections: config.max_connections,
        shutdown_grace: config.shutdown_grace,
    });
    let settings = Arc::new(Settings {
        trusted_proxy_hops: config.trusted_proxy_hops,
        public_host: config.public_host.clone(),
        header_timeout: config.header_timeout,
        keepalive_timeout: config.keepalive_timeout,
        access_log: config.access_log,
    });
    let policy = Arc::new(Policy {
        enabled: config.rate_limit_enabled,
        default: config.rate_limit_default,
        endpoint: config.rate_limit_endpoint,
        exempt: config.rate_limit_exempt.clone(),
    });
    let mut workers = Vec::with_capacity(config.workers);
    for (id, (poll, remote)) in polls.into_iter().zip(remotes).enumerate() {
        let mut listener = TcpListener::from_std(listener.try_clone().map_err(StartError::Setup)?);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE).map_err(StartError::Setup)?;
        let now = Instant::now();
        workers.push(Worker {
            id,
            poll,
            listener: Some(listener),
            conns: Slab::default(),
            busy: Vec::new(),
            shared: Arc::clone(&shared),
            settings: Arc::clone(&settings),
            limiter: Limiter::new(Arc::clone(&policy), Arc::clone(&memory), remote),
            renderer: Renderer::new(clock::unix_millis_now()),
            scratch: vec![0; READ_CHUNK],
            spare_buffers: Vec::new(),
            next_serial: 0,
            accept_paused_until: None,
            accept_failures: 0,
            next_sweep: now + SWEEP_INTERVAL,
            drain_deadline: None,
        });
    }
    drop(listener);

    // Signal handlers go in before the "listening" line, so that a supervisor that signals as soon
    // as it sees that line gets a drain, not the default action (or, as PID 1, nothing at all).
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .map_err(StartError::Setup)?;
    log::info!(target: LIFECYCLE, "zayzoon {} listening on {local}; {}", env!("CARGO_PKG_VERSION"), config.summary());

    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| {
            thread::Builder::new().name(format!("worker-{}", w.id)).spawn(move || w.run()).map_err(StartError::Setup)
        })
        .collect::<Result<_, _>>()?;

    let signal_shared = Arc::clone(&shared);
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received == 1 {
                    // Start the drain before saying so: nothing may stand between a signal and it.
                    signal_shared.draining.store(true, Ordering::SeqCst);
                    for waker in &wakers {
                        if let Err(e) = waker.wake() {
                            log::error!("cannot wake a worker: {e}");
                        }
                    }
                    log::info!(target: LIFECYCLE, "signal {signal}: draining (at most {} s)", signal_shared.shutdown_grace.as_secs());
                } else {
                    log::warn!(target: LIFECYCLE, "second signal {signal}: exiting now");
                    std::process::exit(1);
                }
            }
        })
        .map_err(StartError::Setup)?;

    for handle in handles {
        if handle.join().is_err() {
            // A worker panicked (a bug). Exit non-zero so that the orchestrator replaces us.
            log::error!("a worker thread panicked; exiting");
            std::process::exit(1);
        }
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

/// Connections by slot; the slot is the mio token.
#[derive(Default)]
struct Slab {
    entries: Vec<Option<Conn>>,
    free: Vec<usize>,
    len: usize,
}

impl Slab {
    fn vacant_slot(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    fn insert(&mut self, conn: Conn) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(slot) => {
                self.entries[slot] = Some(conn);
                slot
            }
            None => {
                self.entries.push(Some(conn));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, slot: usize) -> Option<Conn> {
        let conn = self.entries.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(conn)
    }
}

struct Worker {
    id: usize,
    poll: Poll,
    /// `None` once draining: closing every clone closes the socket, so new connections are refused.
    listener: Option<TcpListener>,
    conns: Slab,
    /// Connections that used their turn's budget and still have work.
    busy: Vec<usize>,
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    limiter: Limiter,
    renderer: Renderer,
    /// The read buffer, shared by this worker's connections (they keep only leftovers).
    scratch: Vec<u8>,
    /// Empty output buffers, lent to connections while they have something to write.
    spare_buffers: Vec<Vec<u8>>,
    /// Numbers connections, so that a limiter answer can't reach a later one in the same slot.
    next_serial: u64,
    accept_paused_until: Option<Instant>,
    accept_failures: u64,
    next_sweep: Instant,
    drain_deadline: Option<Instant>,
}

/// Output buffers kept per worker for reuse; more are freed.
const SPARE_BUFFERS: usize = 64;

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("worker {}: poll failed: {e}", self.id);
                    thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
            // One clock read per turn (darkhttpd's cached `now`): every deadline and every
            // response of this turn uses it, and the Date header changes only once a second.
            let now = Instant::now();
            let wall_ms = clock::unix_millis_now();
            self.renderer.refresh(wall_ms);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now, wall_ms),
                    // Woken for a limiter answer or a signal: both are looked at below, every turn.
                    WAKER => {}
                    Token(slot) => {
                        let readable = event.is_readable();
                        let read_closed = event.is_read_closed() || event.is_error();
                        let writable = event.is_writable() || event.is_write_closed();
                        if let Some(Some(conn)) = self.conns.entries.get_mut(slot) {
                            conn.set_ready(readable, writable, read_closed);
                            self.drive(slot, now, wall_ms);
                        }
                    }
                }
            }
            for slot in std::mem::take(&mut self.busy) {
                self.drive(slot, now, wall_ms);
            }
            self.take_answers(now, wall_ms);
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.accept(now, wall_ms);
            }
            if self.shared.draining.load(Ordering::Relaxed) && self.drain_deadline.is_none() {
                self.start_draining(now);
            }
            if now >= self.next_sweep || self.drain_deadline.is_some() {
                self.sweep(now, wall_ms);
            }
            // Everything this turn asked the Redis store goes out in one message.
            self.limiter.flush();
            if let Some(deadline) = self.drain_deadline
                && (self.conns.len == 0 || now >= deadline)
            {
                if self.conns.len > 0 {
                    log::warn!("worker {}: grace period over, closing {} connections", self.id, self.conns.len);
                }
                self.shared.connections.fetch_sub(self.conns.len, Ordering::Relaxed);
                return;
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        if !self.busy.is_empty() {
            return Duration::ZERO;
        }
        let mut wake = self.next_sweep;
        if let Some(t) = self.accept_paused_until {
            wake = wake.min(t);
        }
        if let Some(t) = self.limiter.next_deadline() {
            wake = wake.min(t);
        }
        wake.saturating_duration_since(now)
    }

    fn ctx(&mut self, now: Instant, wall_ms: i64) -> (Ctx<'_>, &mut Slab, &mut Vec<u8>, &mut Vec<Vec<u8>>) {
        (
            Ctx {
                now,
                wall_ms,
                settings: &self.settings,
                limiter: &mut self.limiter,
                renderer: &self.renderer,
                draining: self.drain_deadline.is_some(),
            },
            &mut self.conns,
            &mut self.scratch,
            &mut self.spare_buffers,
        )
    }

    /// Lets connection `slot` move bytes, and drops it if it closed.
    fn drive(&mut self, slot: usize, now: Instant, wall_ms: i64) {
        self.drive_after(slot, now, wall_ms, |_, _| {});
    }

    /// Runs `first` on connection `slot` (a deadline check, a limiter answer), then lets it move
    /// bytes, and drops it if it closed. A panic in there is a bug, and it costs only this
    /// connection: the client gets a 500 if nothing else was queued for it, then the close; every
    /// other connection goes on.
    fn drive_after(&mut self, slot: usize, now: Instant, wall_ms: i64, first: impl FnOnce(&mut Conn, &mut Ctx<'_>)) {
        let (mut ctx, conns, scratch, spares) = self.ctx(now, wall_ms);
        let Some(Some(conn)) = conns.entries.get_mut(slot) else { return };
        if let Some(buf) = spares.pop()
            && let Some(unused) = conn.session.give_output_buffer(buf)
        {
            spares.push(unused);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            first(conn, &mut ctx);
            conn.drive(scratch, &mut ctx)
        }))
        .unwrap_or_else(|_| {
            log::error!("internal error on a connection (a bug; see the panic message above); closing it");
            conn.abort_with_500(ctx.renderer);
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
        let Some(Some(conn)) = self.conns.entries.get_mut(slot) else { return Ok(()) };
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
    fn accept(&mut self, now: Instant, wall_ms: i64) {
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
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
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
            self.add(stream, peer, now, wall_ms);
        }
    }

    /// Takes a new connection, and serves it right away: see `Conn::registered`.
    fn add(&mut self, stream: mio::net::TcpStream, peer: SocketAddr, now: Instant, wall_ms: i64) {
        self.next_serial += 1;
        let ticket = Ticket { slot: self.conns.vacant_slot(), serial: self.next_serial };
        let (ctx, conns, _, _) = self.ctx(now, wall_ms);
        let session = Session::new(peer.ip(), ticket, &ctx);
        let slot = conns.insert(Conn::new(stream, session));
        debug_assert_eq!(slot, ticket.slot);
        self.drive(slot, now, wall_ms);
    }

    /// Hands remote limiter decisions to the connections waiting for them.
    fn take_answers(&mut self, now: Instant, wall_ms: i64) {
        for (id, decision) in self.limiter.take_answers(now) {
            self.drive_after(id.conn.slot, now, wall_ms, |conn, ctx| conn.session.on_decision(id, decision, ctx));
        }
    }

    fn start_draining(&mut self, now: Instant) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.drain_deadline = Some(now + self.shared.shutdown_grace);
    }

    /// Fires deadlines; while draining, also closes connections that have gone idle.
    fn sweep(&mut self, now: Instant, wall_ms: i64) {
        self.next_sweep = now + SWEEP_INTERVAL;
        let draining = self.drain_deadline.is_some();
        for slot in 0..self.conns.entries.len() {
            let Some(Some(conn)) = self.conns.entries.get(slot) else { continue };
            if draining && conn.session.is_idle() {
                // A request may have crossed the signal and wait unread in the socket: look once
                // (it gets its answer, with `Connection: close`) before closing an idle connection.
                self.drive_after(slot, now, wall_ms, |conn, _| conn.set_ready(true, false, false));
                if let Some(Some(conn)) = self.conns.entries.get(slot)
                    && conn.session.is_idle()
                {
                    self.close(slot);
                }
                continue;
            }
            self.drive_after(slot, now, wall_ms, |conn, ctx| conn.session.on_tick(ctx));
        }
    }
}
