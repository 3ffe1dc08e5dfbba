//! Every fixed limit of the server, named once, with its unit and its reason: a leaf that every
//! other module may read and that reads none of them (the `SERVER_*` block of OpenBSD httpd's
//! `httpd.h`). What users can set lives in `config`; what they cannot, here.

use std::time::Duration;

/// Longest request head (request line, headers and the blank line), in bytes. SPEC §2: 431 past it.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields in one request head. SPEC §2: 431 past it.
pub const MAX_HEADERS: usize = 64;
/// Longest request body we read and discard, in bytes: the `Content-Length`, or for chunked bodies
/// every byte of the chunked coding (sizes, extensions, data, trailers). SPEC §2: 413 past it.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;
/// Response bytes queued for one connection before we stop reading its requests (backpressure for
/// clients that pipeline without reading). One response is at most ~2.5 KiB, so this is ~25 of them.
pub const MAX_PENDING_OUTPUT: usize = 64 * 1024;
/// Bytes read from a socket at once (one buffer per worker, not per connection: idle connections
/// hold no buffer at all).
pub const READ_CHUNK: usize = 16 * 1024;
/// Reads or writes one connection gets per loop turn before the others get theirs.
pub const TURN_BUDGET: usize = 16;
/// Empty output buffers a worker keeps for reuse; more are freed.
pub const SPARE_BUFFERS: usize = 64;
/// After an error response we stop writing and keep reading (and discarding) for at most this
/// long, so that the client receives the response instead of a reset caused by its unread bytes
/// ("lingering close", RFC 9112 §9.6).
pub const LINGER: Duration = Duration::from_secs(2);
/// How often each worker checks its connections' deadlines; timeouts fire up to this late.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How long a worker stops accepting after `accept` fails for lack of resources (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM): existing connections are served meanwhile, and closing them frees descriptors.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most clients the in-memory limiter remembers at once, all shards together. An entry takes about
/// 100 bytes of hash table, and the tables double once as evictions leave deleted slots behind:
/// measured at the cap, the store holds about 18 MiB however many addresses a flood brings.
pub const MAX_LIMITER_ENTRIES: usize = 100_000;
/// Most limits in one `RATE_LIMIT_*` variable (`100/minute;2000/hour` is two). Each is a counter
/// per client, in memory and in Redis, and one request touches at most twice this many.
pub const MAX_LIMITS_PER_VAR: usize = 8;
/// Longest period a limit may have (`N per M units`): a year. Longer windows would hold a
/// client's counters, and their Redis keys, for longer than any deploy lives.
pub const MAX_RATE_PERIOD_SECS: u64 = 365 * 86_400;
/// How often a limiter shard drops its expired entries (also done whenever a shard is full).
pub const LIMITER_PURGE_INTERVAL: Duration = Duration::from_secs(10);
/// Most checks sent to Redis in one pipeline; more wait for the next round trip.
pub const MAX_REDIS_BATCH: usize = 1024;
/// First wait between Redis connection attempts; doubles up to `MAX_REDIS_BACKOFF`.
pub const FIRST_REDIS_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between Redis connection attempts.
pub const MAX_REDIS_BACKOFF: Duration = Duration::from_secs(2);
/// Most bytes of a request's `User-Agent` that its access record keeps (SPEC §6); the rest is cut.
pub const MAX_LOGGED_USER_AGENT: usize = 256;
/// Most bytes of a request's `X-Amzn-Trace-Id` that its access record keeps (SPEC §6).
pub const MAX_LOGGED_TRACE_ID: usize = 128;
/// The `healthcheck` subcommand's whole budget: connect, send, read the status line. SPEC §1.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);
