//! One connection: a `Session` (the protocol state machine: bytes in, bytes out, no socket) and a
//! `Conn` (the socket around it: reading, writing, readiness).
//!
//! Owns: the order of requests and responses (pipelining answers in order), bodies read and
//! discarded, per-connection deadlines, backpressure (no reading while `MAX_PENDING_OUTPUT` bytes
//! wait to be written), and closing (lingering after errors). Does not own: parsing (`http`),
//! the answer (`app`), or the poll loop (`server`).

use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Shutdown};
use std::time::{Duration, Instant};

use mio::Interest;

use crate::app::{self, Request};
use crate::clock::UtcTime;
use crate::config::{LINGER, MAX_PENDING_OUTPUT};
use crate::http::{self, ChunkedDecoder, Framing, HttpError, Parse, Version};
use crate::limit::{Check, CheckId, Decision, Limiter, Ticket};
use crate::proxy;
use crate::response::{Connection, Renderer, Response};

/// The settings a session needs, fixed at startup.
#[derive(Clone, Debug)]
pub struct Settings {
    pub trusted_proxy_hops: usize,
    pub public_host: Option<String>,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub access_log: bool,
}

/// What a session may use while handling an event: the worker's clock reading for this loop turn,
/// its limiter handle and its response cache.
pub struct Ctx<'a> {
    pub now: Instant,
    pub wall_ms: i64,
    pub settings: &'a Settings,
    pub limiter: &'a mut Limiter,
    pub renderer: &'a Renderer,
    /// Shutting down: every response says `Connection: close`.
    pub draining: bool,
}

/// Where a connection is in its request/response cycle.
#[derive(Debug)]
enum State {
    /// Between requests: nothing of the next one received yet. Deadline: the header timeout for a
    /// new connection, the keep-alive timeout after a response.
    Idle,
    /// Part of a request head received. Deadline: header timeout from its first byte.
    Head,
    /// Reading and discarding a request body; the request is answered when it ends.
    Body { req: Request, left: BodyLeft },
    /// Waiting for a remote limiter's decision (it answers within `REDIS_TIMEOUT_MS`).
    Deciding { req: Request },
    /// A final response is queued: once it is written, close (lingering first if `linger`).
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
    ticket: Ticket,
    /// Requests dispatched on this connection so far; numbers each limiter check.
    requests: u64,
    state: State,
    /// Input not yet processed: a partial head, or requests held back by backpressure or a pending
    /// decision. Empty (and unallocated) most of the time.
    input: Vec<u8>,
    /// Responses not yet written, from `written` on.
    output: Vec<u8>,
    written: usize,
    /// When the current state times out.
    deadline: Instant,
    /// Set while output is pending: when a client that is not reading gets closed.
    write_deadline: Option<Instant>,
    /// When the current request's first byte arrived, for the access log.
    started: Instant,
    /// Processing stopped with input left over (backpressure or a pending decision).
    stalled: bool,
    /// The client closed its sending side.
    peer_closed: bool,
    /// The current request's body will not be read (Expect: 100-continue answered at once).
    skip_body: bool,
    /// The last request's text buffer, for the next one (see `app::Request`).
    spare_text: String,
}

impl Session {
    pub fn new(peer: IpAddr, ticket: Ticket, ctx: &Ctx<'_>) -> Session {
        Session {
            peer: peer.to_canonical(),
            ticket,
            requests: 0,
            state: State::Idle,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            deadline: ctx.now + ctx.settings.header_timeout,
            write_deadline: None,
            started: ctx.now,
            stalled: false,
            peer_closed: false,
            skip_body: false,
            spare_text: String::new(),
        }
    }

    /// Takes bytes from the client and handles every complete request in them.
    pub fn receive(&mut self, data: &[u8], ctx: &mut Ctx<'_>) {
        if matches!(self.state, State::Lingering | State::Closing { .. } | State::Closed) {
            return; // Discarded: nothing more will be answered on this connection.
        }
        if self.input.is_empty() {
            // The usual case: process straight from the caller's buffer, keep only the leftover.
            let used = self.process(data, ctx);
            self.input.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.input);
            buf.extend_from_slice(data);
            let used = self.process(&buf, ctx);
            buf.drain(..used);
            self.input = buf;
        }
        self.settle();
    }

    /// Goes on with input held back earlier, if what held it back is gone.
    pub fn resume(&mut self, ctx: &mut Ctx<'_>) {
        if !self.stalled
            || self.pending_output().len() >= MAX_PENDING_OUTPUT
            || matches!(self.state, State::Deciding { .. })
        {
            return;
        }
        self.stalled = false;
        let mut buf = std::mem::take(&mut self.input);
        let used = self.process(&buf, ctx);
        buf.drain(..used);
        if buf.is_empty() {
            buf = Vec::new(); // Give back the memory: idle connections hold no buffers.
        }
        self.input = buf;
        self.settle();
    }

    /// The client sent EOF: answer what is complete, then close.
    pub fn on_eof(&mut self) {
        self.peer_closed = true;
        if matches!(self.state, State::Lingering) {
            self.state = State::Closed;
        }
        self.settle();
    }

    /// A remote limiter's answer for check `id`; stale answers (for an earlier request, or a
    /// closed connection whose slot was reused) are ignored.
    pub fn on_decision(&mut self, id: CheckId, decision: Decision, ctx: &mut Ctx<'_>) {
        if id != self.check_id() || !matches!(self.state, State::Deciding { .. }) {
            return;
        }
        if let State::Deciding { req } = std::mem::replace(&mut self.state, State::Idle) {
            self.answer(req, decision, ctx);
        }
        self.resume(ctx);
    }

    /// Checks deadlines. Idle connections close silently; a late request gets 408.
    pub fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        if self.write_deadline.is_some_and(|d| ctx.now >= d) {
            log::debug!("closing connection from {}: client not reading its responses", self.peer);
            self.state = State::Closed;
            return;
        }
        if ctx.now < self.deadline {
            return;
        }
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Head => self.fail(HttpError::Timeout, None, ctx),
            State::Body { req, .. } => self.fail(HttpError::Timeout, Some(&req), ctx),
            State::Deciding { req } => {
                // The limiter promised an answer long before this: it is broken, not slow.
                log::error!("no limiter decision for a request from {}", req.forwarded.client);
                self.queue(Some(&req), Response::error(500), true, ctx);
            }
            // Idle, or a close/linger that ran out of time.
            _ => {}
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
            State::Idle | State::Head | State::Body { .. } => {
                !self.peer_closed && !self.stalled && self.pending_output().len() < MAX_PENDING_OUTPUT
            }
            State::Deciding { .. } | State::Closing { .. } | State::Closed => false,
        }
    }

    pub fn pending_output(&self) -> &[u8] {
        &self.output[self.written..]
    }

    /// Records that `n` bytes of the pending output were written.
    pub fn wrote(&mut self, n: usize, ctx: &Ctx<'_>) {
        self.written += n;
        if self.written >= self.output.len() {
            self.output.clear();
            self.written = 0;
            self.write_deadline = None;
        } else {
            self.write_deadline = Some(ctx.now + ctx.settings.keepalive_timeout);
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
    pub fn after_flush(&mut self, ctx: &Ctx<'_>) -> AfterFlush {
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

    /// Handles requests from the start of `buf`; returns how many bytes were used.
    fn process(&mut self, buf: &[u8], ctx: &mut Ctx<'_>) -> usize {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            if rest.is_empty() {
                return pos;
            }
            if self.pending_output().len() >= MAX_PENDING_OUTPUT || matches!(self.state, State::Deciding { .. }) {
                self.stalled = true;
                return pos;
            }
            match &mut self.state {
                State::Idle | State::Head => {
                    if matches!(self.state, State::Idle) {
                        self.state = State::Head;
                        self.deadline = ctx.now + ctx.settings.header_timeout;
                        self.started = ctx.now;
                    }
                    match self.read_head(rest, ctx) {
                        Some(used) => pos += used,
                        None if matches!(self.state, State::Closing { .. }) => return buf.len(),
                        None => return pos,
                    }
                }
                State::Body { left: BodyLeft::Length(left), .. } => {
                    let take = (*left).min(rest.len() as u64);
                    *left -= take;
                    pos += take as usize;
                    if *left == 0 {
                        self.body_done(ctx);
                    }
                }
                State::Body { left: BodyLeft::Chunked(decoder), .. } => match decoder.feed(rest) {
                    Ok(fed) => {
                        pos += fed.consumed;
                        if fed.done {
                            self.body_done(ctx);
                        }
                    }
                    Err(e) => {
                        if let State::Body { req, .. } = std::mem::replace(&mut self.state, State::Closed) {
                            self.fail(e, Some(&req), ctx);
                        }
                        return buf.len();
                    }
                },
                State::Deciding { .. } => return pos,
                // Closing: nothing after the last response is answered.
                State::Closing { .. } | State::Lingering | State::Closed => return buf.len(),
            }
        }
    }

    /// Parses a head at the start of `buf`. Returns the bytes used, or `None` when it needs more
    /// (or failed, in which case the connection is closing).
    fn read_head(&mut self, buf: &[u8], ctx: &mut Ctx<'_>) -> Option<usize> {
        let mut headers = http::empty_headers();
        let head = match http::parse_head(buf, &mut headers) {
            Ok(Parse::Complete(head)) => head,
            Ok(Parse::Partial) => return None,
            Err(e) => {
                self.fail(e, None, ctx);
                return None;
            }
        };
        let forwarded = proxy::resolve(self.peer, ctx.settings.trusted_proxy_hops, head.headers);
        let text = std::mem::take(&mut self.spare_text);
        let mut req = Request::new(text, head.method, head.target, head.host, head.version, head.keep_alive, forwarded);
        let used = head.len;
        match head.framing {
            Framing::None => self.dispatch(req, ctx),
            _ if head.expect_continue => {
                // The client waits for "100 Continue" before sending a body that no route takes:
                // answer now instead, and close, since the body's bytes may or may not follow.
                req.keep_alive = false;
                self.skip_body = true;
                self.dispatch(req, ctx);
            }
            Framing::Length(n) => self.state = State::Body { req, left: BodyLeft::Length(n) },
            Framing::Chunked => self.state = State::Body { req, left: BodyLeft::Chunked(ChunkedDecoder::default()) },
        }
        Some(used)
    }

    fn body_done(&mut self, ctx: &mut Ctx<'_>) {
        if let State::Body { req, .. } = std::mem::replace(&mut self.state, State::Idle) {
            self.dispatch(req, ctx);
        }
    }

    fn check_id(&self) -> CheckId {
        CheckId { conn: self.ticket, request: self.requests }
    }

    /// Asks the limiter about `req`, and answers it now or once the decision arrives.
    fn dispatch(&mut self, req: Request, ctx: &mut Ctx<'_>) {
        self.requests += 1;
        match ctx.limiter.check(req.forwarded.client, req.path(), self.check_id(), ctx.now) {
            Check::Ready(decision) => self.answer(req, decision, ctx),
            Check::Pending => {
                self.state = State::Deciding { req };
                self.deadline = ctx.now + ctx.settings.header_timeout;
            }
        }
    }

    fn answer(&mut self, req: Request, decision: Decision, ctx: &mut Ctx<'_>) {
        let resp = app::respond(&req, decision, ctx.settings.public_host.as_deref());
        // A 400 from `app` (nowhere to redirect to) is about a malformed request too.
        let close = !req.keep_alive || ctx.draining || self.peer_closed || resp.status == 400;
        self.queue(Some(&req), resp, close, ctx);
        self.spare_text = req.into_text();
    }

    /// Answers an unusable request (or a timed-out one) with its error and closes.
    fn fail(&mut self, e: HttpError, req: Option<&Request>, ctx: &mut Ctx<'_>) {
        log::debug!("{}: {e}", req.map_or(self.peer, |r| r.forwarded.client));
        self.skip_body = true; // Whatever the client sends next is unread: linger before closing.
        self.queue(req, Response::error(e.status()), true, ctx);
    }

    /// Writes the response to `req` (`None`: to input that never became a request) into the
    /// output, logs it, and moves to the next state.
    fn queue(&mut self, req: Option<&Request>, mut resp: Response, close: bool, ctx: &mut Ctx<'_>) {
        resp.connection = match req {
            _ if close => Connection::Close,
            // HTTP/1.0 closes by default, so keeping the connection must be said.
            Some(r) if r.version == Version::Http10 => Connection::KeepAlive,
            _ => Connection::Default,
        };
        let bytes = ctx.renderer.write(&resp, &mut self.output);
        if ctx.settings.access_log {
            let (method, path, client) = match req {
                Some(r) => (r.method(), r.path(), r.forwarded.client),
                None => ("-", "-", self.peer),
            };
            access_log(client, method, path, resp.status, bytes, self.started, ctx);
        }
        if close {
            self.state = State::Closing { linger: self.skip_body };
            // Now a send timeout: the client has this long to read what is queued.
            self.deadline = ctx.now + ctx.settings.keepalive_timeout;
        } else {
            self.state = State::Idle;
            self.deadline = ctx.now + ctx.settings.keepalive_timeout;
        }
    }

    /// After input was handled: a client that closed its side gets no more requests answered
    /// than those it completed.
    fn settle(&mut self) {
        if self.peer_closed && !self.stalled && matches!(self.state, State::Idle | State::Head | State::Body { .. }) {
            self.input = Vec::new();
            self.state = State::Closing { linger: false };
        }
    }
}

/// One access-log line: time, client, method, path, status, bytes, duration. Everything from the
/// client is escaped, so no request can forge a log line.
fn access_log(client: IpAddr, method: &str, path: &str, status: u16, bytes: usize, started: Instant, ctx: &Ctx<'_>) {
    let micros = Instant::now().saturating_duration_since(started).as_micros();
    log::info!(
        target: crate::logger::ACCESS,
        "{} {} \"{} {}\" {} {} {}us",
        UtcTime::from_unix_millis(ctx.wall_ms).rfc3339_millis(),
        client,
        Escaped(method),
        Escaped(path),
        status,
        bytes,
        micros
    );
}

/// Displays text with every byte outside printable ASCII, and `"` and `\`, as `\xHH`.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Runs of plain bytes go out whole: a `write!` per byte cost more than the rest of the line.
        let bytes = self.0.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !(b.is_ascii_graphic() && b != b'"' && b != b'\\') {
                f.write_str(plain(&bytes[start..i]))?;
                write!(f, "\\x{b:02x}")?;
                start = i + 1;
            }
        }
        f.write_str(plain(&bytes[start..]))
    }
}

/// A run of plain bytes as text: they are printable ASCII, so always UTF-8.
fn plain(run: &[u8]) -> &str {
    std::str::from_utf8(run).unwrap_or_default()
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
    /// TCP_NODELAY is set, before the second write (as nginx does): a first write has nothing
    /// unacknowledged before it for Nagle to wait on, and one-request connections skip the syscall.
    nodelay: bool,
    wrote: bool,
}

/// How many reads or writes one connection gets per turn before others get theirs.
const TURN_BUDGET: usize = 16;

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
        Conn {
            stream,
            session,
            readable: false,
            writable: true,
            read_closed: false,
            registered: None,
            nodelay: false,
            wrote: false,
        }
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
    pub fn drive(&mut self, scratch: &mut [u8], ctx: &mut Ctx<'_>) -> Drive {
        for _ in 0..TURN_BUDGET {
            if !self.session.pending_output().is_empty() && self.writable {
                if let Err(e) = self.write_some(ctx) {
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
    pub fn abort_with_500(&mut self, renderer: &Renderer) {
        if self.session.pending_output().is_empty() {
            let mut out = Vec::new();
            renderer.write(&Response { connection: Connection::Close, ..Response::error(500) }, &mut out);
            let _ = self.stream.write(&out);
        }
    }

    fn write_some(&mut self, ctx: &Ctx<'_>) -> io::Result<()> {
        if self.wrote && !self.nodelay {
            // Responses go out in one write each; don't let Nagle hold back the last segment of one.
            let _ = self.stream.set_nodelay(true);
            self.nodelay = true;
        }
        self.wrote = true;
        let pending = self.session.pending_output();
        match self.stream.write(pending) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                self.writable = n == pending.len();
                self.session.wrote(n, ctx);
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
