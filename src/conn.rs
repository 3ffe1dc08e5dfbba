//! One connection: a `Session` (the protocol state machine: bytes in, bytes out, no socket) and a
//! `Conn` (the socket around it: reading, writing, readiness).
//!
//! Owns: the order of requests and responses (pipelining answers in order), bodies read and
//! discarded, per-connection deadlines, backpressure (no reading while `MAX_PENDING_OUTPUT` bytes
//! wait to be written), and closing (lingering after errors). Does not own: parsing (`http`),
//! the answer (`app`), or the poll loop (`server`).
//!
//! The shape is darkhttpd's: one `State` enum whose variants carry what that state needs, and one
//! handler per state (`on_idle`, `on_head`, `on_body`) that says what happens next (`Step`).

use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Shutdown};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;

use crate::app::{self, Request};
use crate::http::{self, ChunkedDecoder, Framing, HttpError, Parse, Version};
use crate::limit::{Check, Decision, Limiter};
use crate::limits::{LINGER, MAX_PENDING_OUTPUT, TURN_BUDGET};
use crate::logger::{self, Access};
use crate::metrics::Counts;
use crate::proxy;
use crate::response::{Connection, Renderer, Response};

/// The settings a session needs, fixed at startup.
#[derive(Clone, Debug)]
pub struct Settings {
    pub trusted_proxy_hops: usize,
    pub public_host: Option<String>,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
}

/// What a session may use while handling an event: owned by its worker, which sets the clock
/// reading once per loop turn.
pub struct Ctx {
    pub now: Instant,
    pub wall_ms: i64,
    pub settings: Arc<Settings>,
    pub limiter: Limiter,
    pub renderer: Renderer,
    /// Shutting down: every response says `Connection: close`.
    pub draining: bool,
    /// This worker's own counts for the metrics lines (`METRICS=emf`; `None` when off), bumped as
    /// each response is queued and handed to the server's tally a few times a second.
    pub metrics: Option<Counts>,
}

/// Where a connection is in its request/response cycle. `Session::deadline` is when each state
/// times out.
#[derive(Debug)]
enum State {
    /// Between requests: nothing of the next one received yet. Deadline: the header timeout for a
    /// new connection, the keep-alive timeout after a response (closed silently when it passes).
    Idle,
    /// Part of a request head received. Deadline: the header timeout from its first byte (408).
    Head,
    /// Reading and discarding a request body; the request is answered when it ends. Deadline: as
    /// for `Head`.
    Body { req: Request, left: BodyLeft },
    /// Waiting for a remote limiter's decision (it answers within `REDIS_TIMEOUT_MS`; past the
    /// header timeout it is broken: 500). `linger`: close this way after the answer.
    Deciding { req: Request, linger: bool },
    /// A final response is queued: once it is written, close (lingering first if `linger`).
    /// Deadline: the keep-alive timeout, for the client to read it.
    Closing { linger: bool },
    /// Response written, our side shut: discarding input until the client closes or `LINGER` ends.
    Lingering,
    /// Done; the socket can be dropped.
    Closed,
}

#[derive(Debug)]
enum BodyLeft {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// What a state's handler did with the input it was shown.
enum Step {
    /// Used this many bytes (maybe none, after a change of state): go on with the rest.
    Used(usize),
    /// Can't use the rest yet (a partial head, a pending decision, a full output buffer): keep it.
    Wait,
    /// Nothing after this will be answered: drop the rest.
    Discard,
}

/// How a queued response leaves the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    KeepOpen,
    Close,
    /// Close, but first read and discard for a while: the client may still be sending bytes we
    /// did not read (a body we refused), and closing on them would reset the connection before
    /// it reads our response.
    Linger,
}

/// What to do with the socket once the queued output is written.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterFlush {
    KeepOpen,
    ShutdownWrite,
    Close,
}

/// The protocol side of one connection.
pub struct Session {
    peer: IpAddr,
    /// Names this connection to the limiter (see `Limiter::check`); chosen by the worker.
    waiter: u64,
    state: State,
    /// Input not yet processed: a partial head, or requests held back by backpressure or a pending
    /// decision. Empty (and unallocated) most of the time.
    input: Vec<u8>,
    /// Responses not yet written, from `written` on.
    output: Vec<u8>,
    written: usize,
    /// When the current state times out.
    deadline: Instant,
    /// When the current request's first byte arrived, for the access log.
    started: Instant,
    /// The client closed its sending side: answer what it completed, then close.
    peer_closed: bool,
    /// The last request's buffers, for the next one (see `app::Request`).
    spare_text: String,
    spare_logged: Vec<u8>,
}

impl Session {
    pub fn new(peer: IpAddr, waiter: u64, ctx: &Ctx) -> Session {
        Session {
            peer: peer.to_canonical(),
            waiter,
            state: State::Idle,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            deadline: ctx.now + ctx.settings.header_timeout,
            started: ctx.now,
            peer_closed: false,
            spare_text: String::new(),
            spare_logged: Vec::new(),
        }
    }

    /// Takes bytes from the client and handles every complete request in them.
    pub fn receive(&mut self, data: &[u8], ctx: &mut Ctx) {
        if !matches!(self.state, State::Lingering | State::Closing { .. } | State::Closed) {
            self.feed(data, ctx);
        } // else discarded: nothing more will be answered on this connection.
    }

    /// Goes on with input held back earlier, now that output has drained or a decision came.
    pub fn resume(&mut self, ctx: &mut Ctx) {
        self.feed(&[], ctx);
    }

    /// The client sent EOF: answer what is complete, then close.
    pub fn on_eof(&mut self) {
        self.peer_closed = true;
        if matches!(self.state, State::Lingering) {
            self.state = State::Closed;
        }
        self.settle();
    }

    /// The limiter's answer for the request this session waits on.
    pub fn on_decision(&mut self, decision: Decision, ctx: &mut Ctx) {
        if !matches!(self.state, State::Deciding { .. }) {
            return;
        }
        if let State::Deciding { req, linger } = std::mem::replace(&mut self.state, State::Idle) {
            self.answer(req, decision, linger, ctx);
        }
        self.resume(ctx);
    }

    /// Checks the deadline. Idle connections close silently; a late request gets 408.
    pub fn on_tick(&mut self, ctx: &mut Ctx) {
        if ctx.now < self.deadline {
            return;
        }
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Head => self.fail(HttpError::Timeout, None, ctx),
            State::Body { req, .. } => self.fail(HttpError::Timeout, Some(&req), ctx),
            State::Deciding { req, .. } => {
                // The limiter promised an answer long before this: it is broken, not slow.
                log::error!("no limiter decision for a request from {}", req.forwarded.client);
                self.queue(Some(&req), Response::error(500), End::Close, ctx);
            }
            // Idle (or a client that stopped reading what we queued), or a close or a linger
            // that ran out of time.
            State::Idle | State::Closing { .. } | State::Lingering | State::Closed => {
                if !self.pending_output().is_empty() {
                    log::debug!("closing connection from {}: client not reading its responses", self.peer);
                }
            }
        }
    }

    /// No request in progress and nothing to write: safe to close when shutting down.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle) && self.pending_output().is_empty() && self.input.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the connection wants more input now.
    pub fn wants_read(&self) -> bool {
        match self.state {
            State::Lingering => true,
            State::Idle | State::Head | State::Body { .. } => !self.peer_closed && !self.output_full(),
            State::Deciding { .. } | State::Closing { .. } | State::Closed => false,
        }
    }

    pub fn pending_output(&self) -> &[u8] {
        &self.output[self.written..]
    }

    fn output_full(&self) -> bool {
        self.pending_output().len() >= MAX_PENDING_OUTPUT
    }

    /// Records that `n` bytes of the pending output were written.
    pub fn wrote(&mut self, n: usize) {
        self.written += n;
        if self.written >= self.output.len() {
            self.output.clear();
            self.written = 0;
        }
    }

    /// Lends the output buffer out (empty), so that a worker can reuse its memory elsewhere.
    pub fn take_output_buffer(&mut self) -> Option<Vec<u8>> {
        (self.pending_output().is_empty() && self.output.capacity() > 0).then(|| std::mem::take(&mut self.output))
    }

    /// Gives the session an empty buffer to write into, if it has none.
    pub fn give_output_buffer(&mut self, buf: Vec<u8>) -> Option<Vec<u8>> {
        if self.output.capacity() == 0 && buf.is_empty() {
            self.output = buf;
            None
        } else {
            Some(buf)
        }
    }

    /// Called once everything queued is written.
    pub fn after_flush(&mut self, ctx: &Ctx) -> AfterFlush {
        if !self.pending_output().is_empty() {
            return AfterFlush::KeepOpen;
        }
        match self.state {
            State::Closing { linger: true } => {
                self.state = State::Lingering;
                self.deadline = ctx.now + LINGER;
                AfterFlush::ShutdownWrite
            }
            State::Closing { linger: false } | State::Closed => {
                self.state = State::Closed;
                AfterFlush::Close
            }
            _ => AfterFlush::KeepOpen,
        }
    }

    /// The one path for input: `data` after whatever was held back, processed as far as it goes;
    /// the rest is kept for later.
    fn feed(&mut self, data: &[u8], ctx: &mut Ctx) {
        if self.input.is_empty() {
            // The usual case: process straight from the caller's buffer, keep only the leftover.
            let used = self.process(data, ctx);
            self.input.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.input);
            buf.extend_from_slice(data);
            let used = self.process(&buf, ctx);
            buf.drain(..used);
            if buf.is_empty() {
                buf = Vec::new(); // Give back the memory: idle connections hold no buffers.
            }
            self.input = buf;
        }
        self.settle();
    }

    /// Handles requests from the start of `buf`; returns how many bytes were used.
    fn process(&mut self, buf: &[u8], ctx: &mut Ctx) -> usize {
        let mut pos = 0;
        while pos < buf.len() {
            let rest = &buf[pos..];
            let step = match &self.state {
                _ if self.output_full() => Step::Wait,
                State::Idle => self.on_idle(ctx),
                State::Head => self.on_head(rest, ctx),
                State::Body { .. } => self.on_body(rest, ctx),
                State::Deciding { .. } => Step::Wait,
                // Nothing after the last response is answered.
                State::Closing { .. } | State::Lingering | State::Closed => Step::Discard,
            };
            match step {
                Step::Used(n) => pos += n,
                Step::Wait => return pos,
                Step::Discard => return buf.len(),
            }
        }
        pos
    }

    /// A request's first byte: its clocks start.
    fn on_idle(&mut self, ctx: &Ctx) -> Step {
        self.state = State::Head;
        self.deadline = ctx.now + ctx.settings.header_timeout;
        self.started = ctx.now;
        Step::Used(0)
    }

    /// Parses a head at the start of `buf`, and dispatches the request or starts on its body.
    fn on_head(&mut self, buf: &[u8], ctx: &mut Ctx) -> Step {
        let mut headers = http::empty_headers();
        let head = match http::parse_head(buf, &mut headers) {
            Ok(Parse::Complete(head)) => head,
            Ok(Parse::Partial) => return Step::Wait,
            Err(e) => {
                self.fail(e, None, ctx);
                return Step::Discard;
            }
        };
        let forwarded = proxy::resolve(self.peer, ctx.settings.trusted_proxy_hops, head.headers);
        let mut req = Request::new(std::mem::take(&mut self.spare_text), &head, forwarded);
        if logger::access_enabled() {
            req.keep_logged_fields(std::mem::take(&mut self.spare_logged), &head);
        }
        match head.framing {
            Framing::None => self.dispatch(req, false, ctx),
            _ if head.expect_continue => {
                // The client waits for "100 Continue" before sending a body that no route takes:
                // answer now instead, and close, since the body's bytes may or may not follow.
                req.keep_alive = false;
                self.dispatch(req, true, ctx);
            }
            Framing::Length(n) => self.state = State::Body { req, left: BodyLeft::Length(n) },
            Framing::Chunked => self.state = State::Body { req, left: BodyLeft::Chunked(ChunkedDecoder::default()) },
        }
        Step::Used(head.len)
    }

    /// Reads and discards body bytes at the start of `buf`; dispatches the request at the end.
    fn on_body(&mut self, buf: &[u8], ctx: &mut Ctx) -> Step {
        let State::Body { left, .. } = &mut self.state else { return Step::Wait };
        let (used, done) = match left {
            BodyLeft::Length(left) => {
                let take = (*left).min(buf.len() as u64);
                *left -= take;
                (take as usize, *left == 0)
            }
            BodyLeft::Chunked(decoder) => match decoder.feed(buf) {
                Ok(fed) => (fed.consumed, fed.done),
                Err(e) => {
                    if let State::Body { req, .. } = std::mem::replace(&mut self.state, State::Closed) {
                        self.fail(e, Some(&req), ctx);
                    }
                    return Step::Discard;
                }
            },
        };
        if done && let State::Body { req, .. } = std::mem::replace(&mut self.state, State::Idle) {
            self.dispatch(req, false, ctx);
        }
        Step::Used(used)
    }

    /// Asks the limiter about `req`, and answers it now or once the decision arrives.
    fn dispatch(&mut self, req: Request, linger: bool, ctx: &mut Ctx) {
        match ctx.limiter.check(req.forwarded.client, req.page, self.waiter, ctx.now) {
            Check::Ready(decision) => self.answer(req, decision, linger, ctx),
            Check::Pending => {
                self.state = State::Deciding { req, linger };
                self.deadline = ctx.now + ctx.settings.header_timeout;
            }
        }
    }

    fn answer(&mut self, req: Request, decision: Decision, linger: bool, ctx: &mut Ctx) {
        let resp = app::respond(&req, decision, ctx.settings.public_host.as_deref());
        // A 400 from `app` (nowhere to redirect to) is about a malformed request too.
        let close = !req.keep_alive || ctx.draining || self.peer_closed || resp.status == 400;
        let end = match (close, linger) {
            (false, _) => End::KeepOpen,
            (true, false) => End::Close,
            (true, true) => End::Linger,
        };
        self.queue(Some(&req), resp, end, ctx);
        (self.spare_text, self.spare_logged) = req.into_buffers();
    }

    /// Answers an unusable request (or a timed-out one) with its error, and closes lingering:
    /// whatever the client sends next is unread.
    fn fail(&mut self, e: HttpError, req: Option<&Request>, ctx: &mut Ctx) {
        log::debug!("{}: {e}", req.map_or(self.peer, |r| r.forwarded.client));
        self.queue(req, Response::error(e.status()), End::Linger, ctx);
    }

    /// Writes the response to `req` (`None`: to input that never became a request) into the
    /// output, logs it, and moves to the next state.
    fn queue(&mut self, req: Option<&Request>, mut resp: Response, end: End, ctx: &mut Ctx) {
        resp.connection = match req {
            _ if end != End::KeepOpen => Connection::Close,
            // HTTP/1.0 closes by default, so keeping the connection must be said.
            Some(r) if r.version == Version::Http10 => Connection::KeepAlive,
            _ => Connection::Default,
        };
        let bytes = ctx.renderer.write(&resp, &mut self.output);
        let (method, path, client) = match req {
            Some(r) => (r.method(), r.path(), r.forwarded.client),
            None => ("-", "-", self.peer),
        };
        let status = resp.status;
        // The clock is read only for someone who shows the duration.
        let access_on = logger::access_enabled();
        let duration_us = if access_on || ctx.metrics.is_some() {
            Instant::now().saturating_duration_since(self.started).as_micros() as u64
        } else {
            0
        };
        if let Some(counts) = &mut ctx.metrics {
            counts.record(status, duration_us);
        }
        let (user_agent, trace_id) = req.map_or((None, None), |r| (r.user_agent(), r.trace_id()));
        if access_on {
            logger::access(&Access {
                unix_ms: ctx.wall_ms,
                client,
                method,
                path,
                status,
                bytes,
                duration_us,
                user_agent,
                trace_id,
            });
        }
        self.state = match end {
            End::KeepOpen => State::Idle,
            End::Close => State::Closing { linger: false },
            End::Linger => State::Closing { linger: true },
        };
        // Idle: the keep-alive timeout. Closing: the client has this long to read what is queued.
        self.deadline = ctx.now + ctx.settings.keepalive_timeout;
    }

    /// After input was handled: a client that closed its side gets no more requests answered
    /// than those it completed. (Input held back by a full output buffer may still hold some.)
    fn settle(&mut self) {
        if self.peer_closed
            && !self.output_full()
            && matches!(self.state, State::Idle | State::Head | State::Body { .. })
        {
            self.input = Vec::new();
            self.state = State::Closing { linger: false };
        }
    }
}

/// A client connection: the socket, its readiness, and its session.
pub struct Conn {
    pub stream: mio::net::TcpStream,
    pub session: Session,
    /// Readiness not yet used up. mio is edge-triggered: after an event, the socket stays ready
    /// until a read or write says `WouldBlock`, and no new event comes meanwhile.
    readable: bool,
    writable: bool,
    /// The last event said the client closed its side: the next read after a short one must
    /// still happen, to see the EOF (data and FIN often come in one event, and no edge follows).
    read_closed: bool,
    /// What the poll watches for this socket; `None` until the worker registers it, after the
    /// connection's first turn.
    pub registered: Option<Interest>,
    /// Writes so far, up to 2. TCP_NODELAY is set before the second (as nginx does): a first write
    /// has nothing unacknowledged before it for Nagle to wait on, and one-request connections skip
    /// the system call.
    writes: u8,
}

/// What `Conn::drive` left behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Drive {
    /// Waiting for readiness or a decision.
    Parked,
    /// Still has work; drive it again in the next turn (it used its budget).
    Busy,
    /// Closed: drop it.
    Closed,
}

impl Conn {
    pub fn new(stream: mio::net::TcpStream, session: Session) -> Conn {
        // Writable until a write says otherwise; readable only once the poll says so. Reading at
        // once found nothing in 98% of new connections here (the request comes a moment after the
        // handshake that `accept` returns on), so it cost a system call per connection.
        Conn { stream, session, readable: false, writable: true, read_closed: false, registered: None, writes: 0 }
    }

    /// What the poll should watch: readability always (requests, EOF); writability only once
    /// output has had to wait for room, and from then on. Watching it on every socket would cost
    /// a wakeup for each ACK (nginx doesn't either).
    pub fn interest(&self) -> Interest {
        let waiting = !self.writable && !self.session.pending_output().is_empty();
        if waiting || self.registered.is_some_and(|i| i.is_writable()) {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    /// Records an event's readiness (`read_closed`: the client sent FIN, or the socket failed).
    pub fn set_ready(&mut self, readable: bool, writable: bool, read_closed: bool) {
        self.readable |= readable || read_closed;
        self.writable |= writable;
        self.read_closed |= read_closed;
    }

    /// Moves bytes both ways until the socket would block, the session waits, or the turn's budget
    /// is spent. `scratch` is the worker's read buffer.
    pub fn drive(&mut self, scratch: &mut [u8], ctx: &mut Ctx) -> Drive {
        for _ in 0..TURN_BUDGET {
            if !self.session.pending_output().is_empty() && self.writable {
                if let Err(e) = self.write_some() {
                    log::debug!("write to {} failed: {e}", self.session.peer);
                    return Drive::Closed;
                }
                self.session.resume(ctx);
                continue;
            }
            match self.session.after_flush(ctx) {
                AfterFlush::KeepOpen => {}
                // Errors here only mean the client is already gone; lingering will find out.
                AfterFlush::ShutdownWrite => drop(self.stream.shutdown(Shutdown::Write)),
                AfterFlush::Close => return Drive::Closed,
            }
            if self.readable && self.session.wants_read() {
                match self.stream.read(scratch) {
                    Ok(0) => {
                        self.readable = false;
                        self.session.on_eof();
                    }
                    Ok(n) => {
                        // A short read drained the socket; a new edge comes with new data, but
                        // not with an EOF that was already announced.
                        self.readable = n == scratch.len() || self.read_closed;
                        self.session.receive(&scratch[..n], ctx);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::debug!("read from {} failed: {e}", self.session.peer);
                        return Drive::Closed;
                    }
                }
                continue;
            }
            return if self.session.is_closed() { Drive::Closed } else { Drive::Parked };
        }
        Drive::Busy
    }

    /// After an internal error: one try at sending a 500 (only if nothing else is queued, so it
    /// can't land in the middle of another response); the caller then closes the connection.
    pub fn abort_with_500(&mut self, ctx: &mut Ctx) {
        if self.session.pending_output().is_empty() {
            let mut out = Vec::new();
            ctx.renderer.write(&Response { connection: Connection::Close, ..Response::error(500) }, &mut out);
            if self.stream.write(&out).is_ok_and(|n| n > 0)
                && let Some(counts) = &mut ctx.metrics
            {
                counts.count(500);
            }
        }
    }

    fn write_some(&mut self) -> io::Result<()> {
        if self.writes == 1 {
            // Responses go out in one write each; don't let Nagle hold back the last segment of one.
            let _ = self.stream.set_nodelay(true);
        }
        self.writes = self.writes.saturating_add(1).min(2);
        let pending = self.session.pending_output();
        match self.stream.write(pending) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                self.writable = n == pending.len();
                self.session.wrote(n);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
