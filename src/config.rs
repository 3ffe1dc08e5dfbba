//! Configuration from the environment (SPEC §1), and every fixed limit of the server.
//!
//! Owns: reading and validating each variable, with errors that name the variable, the value
//! and what is accepted. Does not own: what the values mean at run time (see `server`, `limit`).
//! An empty variable is treated as unset, so `REDIS_URL=` in a compose file or a CloudFormation
//! parameter left blank means "the default", not a config error.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::limit::{Cidr, Rate};

/// Longest request head (request line, headers and the blank line), in bytes. SPEC §2: 431 past it.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields in one request head. SPEC §2: 431 past it.
pub const MAX_HEADERS: usize = 64;
/// Longest request body we read and discard, in bytes: the `Content-Length`, or for chunked bodies
/// every byte of the chunked coding (sizes, extensions, data, trailers). SPEC §2: 413 past it.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;
/// Response bytes queued for one connection before we stop reading its requests (backpressure for
/// clients that pipeline without reading). One response is at most ~2 KiB, so this is ~30 of them.
pub const MAX_PENDING_OUTPUT: usize = 64 * 1024;
/// Bytes read from a socket at once (one buffer per worker, not per connection: idle connections
/// hold no buffer at all).
pub const READ_CHUNK: usize = 16 * 1024;
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
/// How often a limiter shard drops its expired entries (also done whenever a shard is full).
pub const LIMITER_PURGE_INTERVAL: Duration = Duration::from_secs(10);
/// The `healthcheck` subcommand's whole budget: connect, send, read the status line. SPEC §1.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The server's effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub port: u16,
    pub bind_addr: IpAddr,
    pub redis_url: Option<RedisUrl>,
    pub redis_connect_retries: u32,
    pub redis_timeout: Duration,
    pub rate_limit_default: Rate,
    pub rate_limit_endpoint: Rate,
    pub rate_limit_enabled: bool,
    pub rate_limit_exempt: Vec<Cidr>,
    pub trusted_proxy_hops: usize,
    pub public_host: Option<String>,
    pub workers: usize,
    pub max_connections: usize,
    pub keepalive_timeout: Duration,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
    pub log_level: log::LevelFilter,
    pub access_log: bool,
}

/// A `REDIS_URL` that passed our checks (scheme `redis://`). The `redis` crate parses the rest.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for logs and error messages.
    pub fn redacted(&self) -> String {
        redact_userinfo(&self.0)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:pass@rest` → `scheme://user:***@rest` (and a lone `token@` → `***@`). Text that
/// isn't such a URL is shown as `***` whole if it contains an `@` at all: better unhelpful than a
/// leaked password.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') { "***".into() } else { url.to_owned() };
    };
    // The userinfo ends at the last '@' (a password may itself contain '/', '?' or '@').
    match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".into(),
            };
            format!("{scheme}://{shown}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// A variable that could not be used: which one, what it held, and what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value is quoted with Rust's escaping so that control characters can't forge output.
        write!(f, "invalid {}={:?}: expected {}", self.var, self.value, self.expected)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the configuration through `get`, so that tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &'static str| Var { name, value: get(name).filter(|v| !v.trim().is_empty()) };
        let default_workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Config {
            port: var("PORT").number(8443, 0, u16::MAX.into(), "a TCP port, 0 to 65535")? as u16,
            bind_addr: var("BIND_ADDR").parse_with(
                IpAddr::from([0, 0, 0, 0]),
                |v| v.parse().ok(),
                "an IPv4 or IPv6 address such as 0.0.0.0 or ::",
            )?,
            redis_url: var("REDIS_URL").parse_with(
                None,
                parse_redis_url,
                "a URL redis://[user:pass@]host[:port][/db], with any #, /, ? or @ in the password percent-encoded",
            )?,
            redis_connect_retries: var("REDIS_CONNECT_RETRIES").number(5, 1, 1000, "a number of attempts, 1 to 1000")?
                as u32,
            redis_timeout: Duration::from_millis(var("REDIS_TIMEOUT_MS").number(
                100,
                1,
                60_000,
                "milliseconds, 1 to 60000",
            )?),
            rate_limit_default: var("RATE_LIMIT_DEFAULT").parse_with(
                Rate::per_minute(100),
                Rate::parse,
                RATE_SYNTAX,
            )?,
            rate_limit_endpoint: var("RATE_LIMIT_ENDPOINT").parse_with(
                Rate::per_minute(10),
                Rate::parse,
                RATE_SYNTAX,
            )?,
            rate_limit_enabled: var("RATE_LIMIT_ENABLED").boolean(true)?,
            rate_limit_exempt: var("RATE_LIMIT_EXEMPT").parse_with(
                Vec::new(),
                parse_cidr_list,
                "comma-separated CIDRs such as 10.0.0.0/16,::1 (no host bits set)",
            )?,
            trusted_proxy_hops: var("TRUSTED_PROXY_HOPS").number(1, 0, 32, "a number of proxies, 0 to 32")? as usize,
            public_host: var("PUBLIC_HOST").parse_with(
                None,
                |v| crate::http::valid_host(v.as_bytes()).then(|| Some(v.to_owned())),
                "a host name or address, optionally with :port, such as example.com",
            )?,
            workers: var("WORKERS").number(default_workers as u64, 1, 1024, "a number of threads, 1 to 1024")? as usize,
            max_connections: var("MAX_CONNECTIONS").number(10_000, 1, 1_000_000, "a number, 1 to 1000000")? as usize,
            keepalive_timeout: seconds(var("KEEPALIVE_TIMEOUT_S").number(75, 1, 86_400, "seconds, 1 to 86400")?),
            header_timeout: seconds(var("HEADER_TIMEOUT_S").number(10, 1, 3_600, "seconds, 1 to 3600")?),
            shutdown_grace: seconds(var("SHUTDOWN_GRACE_S").number(20, 0, 3_600, "seconds, 0 to 3600")?),
            log_level: var("LOG_LEVEL").parse_with(
                log::LevelFilter::Info,
                parse_level,
                "one of error, warn, info, debug, trace",
            )?,
            access_log: var("ACCESS_LOG").boolean(true)?,
        })
    }

    /// One line for the startup log: every effective setting, the Redis password redacted.
    pub fn summary(&self) -> String {
        let exempt: Vec<String> = self.rate_limit_exempt.iter().map(ToString::to_string).collect();
        format!(
            "workers={} max_connections={} store={} redis_connect_retries={} redis_timeout_ms={} \
             rate_limit_enabled={} rate_limit_default=\"{}\" rate_limit_endpoint=\"{}\" rate_limit_exempt=\"{}\" \
             trusted_proxy_hops={} public_host={} keepalive_timeout_s={} header_timeout_s={} \
             shutdown_grace_s={} log_level={} access_log={}",
            self.workers,
            self.max_connections,
            self.redis_url.as_ref().map_or_else(|| "memory".to_owned(), RedisUrl::redacted),
            self.redis_connect_retries,
            self.redis_timeout.as_millis(),
            self.rate_limit_enabled,
            self.rate_limit_default,
            self.rate_limit_endpoint,
            exempt.join(","),
            self.trusted_proxy_hops,
            self.public_host.as_deref().unwrap_or("-"),
            self.keepalive_timeout.as_secs(),
            self.header_timeout.as_secs(),
            self.shutdown_grace.as_secs(),
            self.log_level.as_str().to_ascii_lowercase(),
            self.access_log,
        )
    }
}

const RATE_SYNTAX: &str = "N/second, N/minute, N/hour or N/day (also \"N per minute\"), N from 1 to 1000000000";

fn seconds(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// One variable being read: its name and, when set and not blank, its value.
struct Var {
    name: &'static str,
    value: Option<String>,
}

impl Var {
    fn error(&self, expected: &str) -> ConfigError {
        let value = self.value.clone().unwrap_or_default();
        // A REDIS_URL may hold a password: never echo it, not even in an error.
        let value = if self.name == "REDIS_URL" { redact_userinfo(&value) } else { value };
        ConfigError { var: self.name, value, expected: expected.to_owned() }
    }

    fn parse_with<T>(self, default: T, parse: impl Fn(&str) -> Option<T>, expected: &str) -> Result<T, ConfigError> {
        match &self.value {
            None => Ok(default),
            Some(v) => parse(v.trim()).ok_or_else(|| self.error(expected)),
        }
    }

    fn number(self, default: u64, min: u64, max: u64, expected: &str) -> Result<u64, ConfigError> {
        let in_range = |v: &str| {
            // Digits only: u64::from_str would also take a leading '+'.
            let n: u64 = if v.bytes().all(|b| b.is_ascii_digit()) { v.parse().ok()? } else { return None };
            (min..=max).contains(&n).then_some(n)
        };
        self.parse_with(default, in_range, expected)
    }

    fn boolean(self, default: bool) -> Result<bool, ConfigError> {
        let parse = |v: &str| match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        };
        self.parse_with(default, parse, "true or false (also 1/0, yes/no, on/off)")
    }
}

fn parse_level(v: &str) -> Option<log::LevelFilter> {
    use log::LevelFilter::*;
    Some(match v.to_ascii_lowercase().as_str() {
        "error" => Error,
        "warn" => Warn,
        "info" => Info,
        "debug" => Debug,
        "trace" => Trace,
        _ => return None,
    })
}

/// Accepts `redis://` URLs only: anything else (notably `rediss://`, which this build cannot
/// speak) is an error rather than a silent fallback to the in-memory store. SPEC §1.
fn parse_redis_url(v: &str) -> Option<Option<RedisUrl>> {
    let rest = v.strip_prefix("redis://")?;
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    // A '#' means nothing to Redis: most likely an unencoded '#' in a password, which a URL parser
    // would take for the start of a fragment, silently dropping the rest. Say so instead.
    if host_port.is_empty() || !v.is_ascii() || v.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'#') {
        return None;
    }
    // The rest (port, database number, percent-encoding) is checked by the crate that will use it.
    redis::IntoConnectionInfo::into_connection_info(v).ok()?;
    Some(Some(RedisUrl(v.to_owned())))
}

/// Parses `RATE_LIMIT_EXEMPT`: spaces and empty entries are ignored.
pub fn parse_cidr_list(v: &str) -> Option<Vec<Cidr>> {
    v.split(',').map(str::trim).filter(|e| !e.is_empty()).map(Cidr::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    fn rejects(var: &str, value: &str) -> ConfigError {
        let err = load(&[(var, value)]).expect_err(value);
        assert_eq!(err.var, var);
        if !value.contains('@') {
            assert_eq!(err.value, value);
        }
        err
    }

    #[test]
    fn defaults() {
        let c = load(&[]).unwrap();
        assert_eq!(c.port, 8443);
        assert_eq!(c.bind_addr.to_string(), "0.0.0.0");
        assert!(c.redis_url.is_none());
        assert_eq!(c.redis_connect_retries, 5);
        assert_eq!(c.redis_timeout, Duration::from_millis(100));
        assert_eq!(c.rate_limit_default, Rate::per_minute(100));
        assert_eq!(c.rate_limit_endpoint, Rate::per_minute(10));
        assert!(c.rate_limit_enabled);
        assert!(c.rate_limit_exempt.is_empty());
        assert_eq!(c.trusted_proxy_hops, 1);
        assert!(c.public_host.is_none());
        assert!(c.workers >= 1);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(20));
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert!(c.access_log);
    }

    #[test]
    fn blank_is_default() {
        let c = load(&[("PORT", ""), ("REDIS_URL", "  "), ("PUBLIC_HOST", "")]).unwrap();
        assert_eq!(c.port, 8443);
        assert!(c.redis_url.is_none());
        assert!(c.public_host.is_none());
    }

    #[test]
    fn port_limits() {
        assert_eq!(load(&[("PORT", "0")]).unwrap().port, 0);
        assert_eq!(load(&[("PORT", "65535")]).unwrap().port, 65535);
        let e = rejects("PORT", "65536");
        assert_eq!(e.to_string(), "invalid PORT=\"65536\": expected a TCP port, 0 to 65535");
        rejects("PORT", "-1");
        rejects("PORT", "+80");
        rejects("PORT", "eighty");
        rejects("PORT", "99999999999999999999999");
    }

    #[test]
    fn numbers_at_and_past_their_limits() {
        for (var, max) in [
            ("REDIS_CONNECT_RETRIES", "1000"),
            ("REDIS_TIMEOUT_MS", "60000"),
            ("TRUSTED_PROXY_HOPS", "32"),
            ("WORKERS", "1024"),
            ("MAX_CONNECTIONS", "1000000"),
            ("KEEPALIVE_TIMEOUT_S", "86400"),
            ("HEADER_TIMEOUT_S", "3600"),
            ("SHUTDOWN_GRACE_S", "3600"),
        ] {
            load(&[(var, max)]).unwrap_or_else(|e| panic!("{e}"));
            let past = (max.parse::<u64>().unwrap() + 1).to_string();
            rejects(var, &past);
        }
        assert_eq!(load(&[("TRUSTED_PROXY_HOPS", "0")]).unwrap().trusted_proxy_hops, 0);
        assert_eq!(load(&[("SHUTDOWN_GRACE_S", "0")]).unwrap().shutdown_grace, Duration::ZERO);
        rejects("WORKERS", "0");
        rejects("MAX_CONNECTIONS", "0");
        rejects("HEADER_TIMEOUT_S", "0");
        rejects("REDIS_CONNECT_RETRIES", "0");
    }

    #[test]
    fn bind_addr() {
        assert_eq!(load(&[("BIND_ADDR", "::")]).unwrap().bind_addr.to_string(), "::");
        assert_eq!(load(&[("BIND_ADDR", "127.0.0.1")]).unwrap().bind_addr.to_string(), "127.0.0.1");
        rejects("BIND_ADDR", "localhost");
        rejects("BIND_ADDR", "1.2.3.4:80");
    }

    #[test]
    fn redis_url() {
        let c = load(&[("REDIS_URL", "redis://user:s3cret@cache:6380/2")]).unwrap();
        let url = c.redis_url.unwrap();
        assert_eq!(url.as_str(), "redis://user:s3cret@cache:6380/2");
        assert_eq!(url.redacted(), "redis://user:***@cache:6380/2");
        assert_eq!(format!("{url:?}"), "redis://user:***@cache:6380/2");
        let c = load(&[("REDIS_URL", "redis://:pw@localhost")]).unwrap();
        assert_eq!(c.redis_url.unwrap().redacted(), "redis://:***@localhost");
        let c = load(&[("REDIS_URL", "redis://token@localhost")]).unwrap();
        assert_eq!(c.redis_url.unwrap().redacted(), "redis://***@localhost");
        let c = load(&[("REDIS_URL", "redis://localhost:6379")]).unwrap();
        assert_eq!(c.redis_url.unwrap().redacted(), "redis://localhost:6379");
        rejects("REDIS_URL", "rediss://cache:6379");
        rejects("REDIS_URL", "http://cache");
        rejects("REDIS_URL", "cache:6379");
        rejects("REDIS_URL", "redis://");
        rejects("REDIS_URL", "redis://user:pw@/0");
        rejects("REDIS_URL", "redis://cache:port/0");
        rejects("REDIS_URL", "redis://cache:6379/db");
        rejects("REDIS_URL", "redis://caché:6379");
        rejects("REDIS_URL", "redis://cache:6379/0#x");
        rejects("REDIS_URL", "redis://@z6#7w9/is://@z6#2");
    }

    #[test]
    fn redis_url_errors_do_not_show_the_password() {
        for (bad, shown) in [
            ("redis://u:pa/ss@cache:6379", "redis://u:***@cache:6379"),
            ("rediss://:hunter2@cache", "rediss://:***@cache"),
            ("redis://u:p@ss@cache:port", "redis://u:***@cache:port"),
            ("cache:6379@secret", "***"),
        ] {
            let err = load(&[("REDIS_URL", bad)]).expect_err(bad);
            assert_eq!(err.value, shown);
            assert!(!err.to_string().contains("pa/ss") && !err.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn rates() {
        let c = load(&[("RATE_LIMIT_DEFAULT", "5 per second"), ("RATE_LIMIT_ENDPOINT", "7/day")]).unwrap();
        assert_eq!(c.rate_limit_default.to_string(), "5 per 1 second");
        assert_eq!(c.rate_limit_endpoint.to_string(), "7 per 1 day");
        rejects("RATE_LIMIT_DEFAULT", "0/minute");
        rejects("RATE_LIMIT_ENDPOINT", "10/fortnight");
    }

    #[test]
    fn booleans() {
        assert!(!load(&[("RATE_LIMIT_ENABLED", "FALSE")]).unwrap().rate_limit_enabled);
        assert!(!load(&[("ACCESS_LOG", "0")]).unwrap().access_log);
        assert!(load(&[("ACCESS_LOG", "yes")]).unwrap().access_log);
        rejects("RATE_LIMIT_ENABLED", "maybe");
        rejects("ACCESS_LOG", "2");
    }

    #[test]
    fn exempt_list() {
        let c = load(&[("RATE_LIMIT_EXEMPT", " 10.0.0.0/16, ,::1,, 192.0.2.7 ")]).unwrap();
        let shown: Vec<String> = c.rate_limit_exempt.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/16", "::1/128", "192.0.2.7/32"]);
        rejects("RATE_LIMIT_EXEMPT", "10.0.0.1/16");
        rejects("RATE_LIMIT_EXEMPT", "10.0.0.0/33");
        rejects("RATE_LIMIT_EXEMPT", "10.0.0.0/16,banana");
    }

    #[test]
    fn public_host() {
        let c = load(&[("PUBLIC_HOST", "example.com")]).unwrap();
        assert_eq!(c.public_host.as_deref(), Some("example.com"));
        rejects("PUBLIC_HOST", "exa mple.com");
        rejects("PUBLIC_HOST", "evil.com/path");
        rejects("PUBLIC_HOST", "user@evil.com");
    }

    #[test]
    fn log_level() {
        assert_eq!(load(&[("LOG_LEVEL", "DEBUG")]).unwrap().log_level, log::LevelFilter::Debug);
        rejects("LOG_LEVEL", "verbose");
    }

    #[test]
    fn summary_redacts_the_password() {
        let c = load(&[("REDIS_URL", "redis://u:hunter2@cache:6379")]).unwrap();
        let s = c.summary();
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("store=redis://u:***@cache:6379"), "{s}");
    }
}
