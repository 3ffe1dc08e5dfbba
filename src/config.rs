//! Configuration from the environment (SPEC §1): every variable's name, default and meaning in one
//! table (`VARS`, which `--help` prints and through which every read goes), and the reading of
//! each into the settings of the module that uses it.
//!
//! Owns: reading and validating each variable, with errors that name the variable, the value and
//! what is accepted. Sits above what it parses (`http::valid_host`, `limit::Rate`, `limit::Cidr`,
//! `remote::RedisUrl`) and builds the settings those modules define; it owns no limit of its own
//! (fixed limits are in `limits`). An empty variable is treated as unset, so `REDIS_URL=` in a
//! compose file or a CloudFormation parameter left blank means "the default", not a config error.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::limit::remote::{self, CaCerts, RedisUrl, Secret, UrlError};
use crate::limit::{self, Cidr, Rate, Strategy};
use crate::{conn, decimal, http, logger, metrics};

/// One environment variable the server reads.
#[derive(Debug)]
pub struct Var {
    pub name: &'static str,
    /// The value used when the variable is unset or empty, as text that the variable's own parser
    /// reads; `None` when unset means something of its own (said in `shown_default`).
    pub default: Option<&'static str>,
    /// What `--help` shows as the default when `default` is `None`.
    pub shown_default: &'static str,
    pub meaning: &'static str,
    /// A credential: its value is never shown, not even in its own error (`***` instead).
    pub secret: bool,
}

const fn var(name: &'static str, default: &'static str, meaning: &'static str) -> Var {
    Var { name, default: Some(default), shown_default: default, meaning, secret: false }
}

const fn unset(name: &'static str, shown_default: &'static str, meaning: &'static str) -> Var {
    Var { name, default: None, shown_default, meaning, secret: false }
}

const fn secret(name: &'static str, meaning: &'static str) -> Var {
    Var { name, default: None, shown_default: "unset", meaning, secret: true }
}

/// Every variable the server reads, in `--help`'s order. A read of a name not listed here panics
/// (`Env::get`), and the unit tests read every variable, so none can be added without its line.
pub const VARS: &[Var] = &[
    var("PORT", "8443", "TCP port; 0 picks a free one (the startup line names the address bound)"),
    var("BIND_ADDR", "0.0.0.0", "address to bind (:: for dual stack)"),
    unset(
        "REDIS_URL",
        "unset",
        "redis://[user:pass@]host[:port][/db] selects the Redis store (rediss:// for TLS); unset: in-memory",
    ),
    secret("REDIS_USERNAME", "Redis ACL user, in place of the URL's (never shown)"),
    secret("REDIS_PASSWORD", "Redis password or AUTH token, in place of the URL's (never shown)"),
    unset("REDIS_CA_FILE", "built-in roots", "PEM file of the CAs that rediss:// trusts instead of the built-in roots"),
    var("REDIS_CONNECT_RETRIES", "5", "connection attempts at startup before exiting 1"),
    var("REDIS_TIMEOUT_MS", "100", "longest a request waits for a Redis decision"),
    var("RATE_LIMIT_DEFAULT", "100/minute", "per-client limits on all requests: N/unit or N per M units, ; between"),
    var("RATE_LIMIT_ENDPOINT", "10/minute", "extra per-client limits on /status and on /health, each its own counters"),
    var("RATE_LIMIT_STRATEGY", "fixed-window", "fixed-window (Flask-Limiter's default) or token-bucket (GCRA)"),
    var("RATE_LIMIT_ENABLED", "true", "false turns limiting off (and its headers)"),
    unset("RATE_LIMIT_EXEMPT", "empty", "comma-separated CIDRs never limited, e.g. 10.0.0.0/16,127.0.0.1"),
    var("TRUSTED_PROXY_HOPS", "1", "proxies in front trusted for X-Forwarded-For/-Proto (0: none)"),
    unset("PUBLIC_HOST", "unset", "host for HTTPS redirects; unset: the request's Host"),
    unset("WORKERS", "CPUs available", "event-loop threads (the CPUs available respect a cgroup quota)"),
    var("MAX_CONNECTIONS", "10000", "open client connections, all workers together"),
    var("KEEPALIVE_TIMEOUT_S", "75", "idle time between requests (keep it above the ALB's 60 s)"),
    var("HEADER_TIMEOUT_S", "10", "time to receive a whole request from its first byte"),
    var("SHUTDOWN_GRACE_S", "20", "drain time after SIGTERM/SIGINT"),
    var("LOG_LEVEL", "info", "error, warn, info, debug or trace"),
    var("ACCESS_LOG", "true", "one line per request"),
    var("LOG_FORMAT", "text", "text (LEVEL [target] message) or json (one JSON object per line)"),
    var("METRICS", "off", "emf: CloudWatch Embedded Metric Format lines on standard output; off: none"),
    var("METRICS_INTERVAL_S", "60", "seconds between metric lines, 1 to 3600"),
    var("METRICS_NAMESPACE", "zayzoon", "CloudWatch namespace of the metrics (1 to 255 of A-Za-z0-9.-_/#:)"),
    var("METRICS_SERVICE", "zayzoon", "value of the metrics' one dimension, Service (1 to 255 printable ASCII)"),
];

/// The server's effective configuration: the settings of each module that needs some.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub session: conn::Settings,
    pub policy: limit::Settings,
    pub redis: Option<remote::Settings>,
    pub log: logger::Settings,
    /// `None` with `METRICS=off`.
    pub metrics: Option<metrics::Settings>,
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

    /// Reads the configuration through `lookup`, so that tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let env = Env(&lookup);
        let seconds = |name, min, max, expected| Ok(Duration::from_secs(env.number(name, min, max, expected)?));
        let port = env.number("PORT", 0, u16::MAX.into(), "a TCP port, 0 to 65535")? as u16;
        let bind_addr: IpAddr =
            env.parse("BIND_ADDR", |v| v.parse().ok(), "an IPv4 or IPv6 address such as 0.0.0.0 or ::")?;
        let redis = redis_settings(&env)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        Ok(Config {
            listen: SocketAddr::new(bind_addr, port),
            redis,
            policy: limit::Settings {
                default: env.parse("RATE_LIMIT_DEFAULT", Rate::parse_list, RATE_SYNTAX)?,
                endpoint: env.parse("RATE_LIMIT_ENDPOINT", Rate::parse_list, RATE_SYNTAX)?,
                strategy: env.parse("RATE_LIMIT_STRATEGY", Strategy::parse, "fixed-window or token-bucket")?,
                enabled: env.boolean("RATE_LIMIT_ENABLED")?,
                exempt: env.read("RATE_LIMIT_EXEMPT", parse_cidr_list, CIDR_SYNTAX)?.unwrap_or_default(),
            },
            session: conn::Settings {
                trusted_proxy_hops: env.number("TRUSTED_PROXY_HOPS", 0, 32, "a number of proxies, 0 to 32")? as usize,
                public_host: env.read(
                    "PUBLIC_HOST",
                    |v| http::valid_host(v.as_bytes()).then(|| v.to_owned()),
                    "a host name or address, optionally with :port, such as example.com",
                )?,
                header_timeout: seconds("HEADER_TIMEOUT_S", 1, 3_600, "seconds, 1 to 3600")?,
                keepalive_timeout: seconds("KEEPALIVE_TIMEOUT_S", 1, 86_400, "seconds, 1 to 86400")?,
            },
            workers: env.read("WORKERS", |v| number(v, 1, 1024), "a number of threads, 1 to 1024")?.unwrap_or(cpus)
                as usize,
            max_connections: env.number("MAX_CONNECTIONS", 1, 1_000_000, "a number, 1 to 1000000")? as usize,
            shutdown_grace: seconds("SHUTDOWN_GRACE_S", 0, 3_600, "seconds, 0 to 3600")?,
            log: logger::Settings {
                level: env.parse("LOG_LEVEL", parse_level, "one of error, warn, info, debug, trace")?,
                access_log: env.boolean("ACCESS_LOG")?,
                format: env.parse("LOG_FORMAT", parse_log_format, "text or json")?,
            },
            metrics: read_metrics(&env)?,
        })
    }

    /// One line for the startup log: every effective setting, the Redis password redacted.
    pub fn summary(&self) -> String {
        let p = &self.policy;
        let exempt: Vec<String> = p.exempt.iter().map(ToString::to_string).collect();
        format!(
            "workers={} max_connections={} store={} \
             rate_limit_enabled={} rate_limit_strategy={} rate_limit_default=\"{}\" rate_limit_endpoint=\"{}\" \
             rate_limit_exempt=\"{}\" \
             trusted_proxy_hops={} public_host={} keepalive_timeout_s={} header_timeout_s={} \
             shutdown_grace_s={} log_level={} access_log={} log_format={} metrics={}",
            self.workers,
            self.max_connections,
            self.redis.as_ref().map_or_else(|| "memory".to_owned(), remote::Settings::describe),
            p.enabled,
            p.strategy.name(),
            Rate::list(&p.default),
            Rate::list(&p.endpoint),
            exempt.join(","),
            self.session.trusted_proxy_hops,
            self.session.public_host.as_deref().unwrap_or("-"),
            self.session.keepalive_timeout.as_secs(),
            self.session.header_timeout.as_secs(),
            self.shutdown_grace.as_secs(),
            self.log.level.as_str().to_ascii_lowercase(),
            self.log.access_log,
            if self.log.format == logger::Format::Json { "json" } else { "text" },
            self.metrics.as_ref().map_or_else(
                || "off".to_owned(),
                |m| format!(
                    "emf metrics_interval_s={} metrics_namespace={} metrics_service={:?}",
                    m.interval.as_secs(),
                    m.namespace,
                    m.service
                )
            ),
        )
    }
}

/// The `REDIS_*` variables: the Redis store's settings, or `None` for the in-memory store. Every
/// variable is read whether or not Redis is used, so that a bad value is an error either way; and
/// one that would have no effect is an error too (a password with no `REDIS_URL` to send it to,
/// a CA file for a URL without TLS, a user without a password), rather than silently ignored.
fn redis_settings(env: &Env<'_>) -> Result<Option<remote::Settings>, ConfigError> {
    let url = env.explained("REDIS_URL", |v| {
        RedisUrl::parse(v).map_err(|e| match e {
            UrlError::Invalid => REDIS_URL_SYNTAX.to_owned(),
            UrlError::NoTls => format!("a redis:// URL, since {}", remote::NO_TLS),
        })
    })?;
    let username = env.read("REDIS_USERNAME", |v| Some(Secret::new(v)), "")?;
    let password = env.read("REDIS_PASSWORD", |v| Some(Secret::new(v)), "")?;
    let ca = env.explained("REDIS_CA_FILE", CaCerts::read_file)?;
    let connect_retries = env.number("REDIS_CONNECT_RETRIES", 1, 1000, "a number of attempts, 1 to 1000")? as u32;
    let timeout = Duration::from_millis(env.number("REDIS_TIMEOUT_MS", 1, 60_000, "milliseconds, 1 to 60000")?);
    let unused =
        |name| Env::error(name, &env.raw(name), "no value while REDIS_URL is unset (it is for the Redis store)");
    let Some(url) = url else {
        for (name, set) in [("REDIS_USERNAME", username.is_some()), ("REDIS_PASSWORD", password.is_some())] {
            if set {
                return Err(unused(name));
            }
        }
        return match ca {
            Some(_) => Err(unused("REDIS_CA_FILE")),
            None => Ok(None),
        };
    };
    if ca.is_some() && !url.is_tls() {
        let expected = "no value while REDIS_URL is redis:// (a CA file is for rediss://, which checks certificates)";
        return Err(Env::error("REDIS_CA_FILE", &env.raw("REDIS_CA_FILE"), expected));
    }
    // The redis crate sends no AUTH without a password, so a user alone would be silently unused.
    let (_, password_in_url) = url.userinfo();
    if username.is_some() && password.is_none() && !password_in_url {
        let expected = "a user only with a password (REDIS_PASSWORD, or one in REDIS_URL)";
        return Err(Env::error("REDIS_USERNAME", &env.raw("REDIS_USERNAME"), expected));
    }
    Ok(Some(remote::Settings { url, username, password, ca, connect_retries, timeout }))
}

/// `VARS` as `--help` prints it: one line per variable, its default, and its meaning.
pub fn help_table() -> String {
    let width = VARS.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let default_width = VARS.iter().map(|v| v.shown_default.len()).max().unwrap_or(0);
    let mut out = String::new();
    for v in VARS {
        out.push_str(&format!("  {:width$}  {:default_width$}  {}\n", v.name, v.shown_default, v.meaning));
    }
    out
}

const RATE_SYNTAX: &str = "limits separated by ; or , each N/unit, N per unit, N/M units or N per M units \
     (unit second, minute, hour or day), N from 1 to 1000000000, a period of at most 365 days, at most 8 limits";
const CIDR_SYNTAX: &str = "comma-separated CIDRs such as 10.0.0.0/16,::1 (no host bits set)";
const REDIS_URL_SYNTAX: &str = if remote::TLS {
    "a URL redis://[user:pass@]host[:port][/db] or rediss://..., with any #, /, ? or @ in the password percent-encoded"
} else {
    "a URL redis://[user:pass@]host[:port][/db], with any #, /, ? or @ in the password percent-encoded"
};

/// The environment, read through `VARS`.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// The variable's value, `None` when unset or blank.
    fn get(&self, name: &'static str) -> (&'static Var, Option<String>) {
        let var = VARS.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("{name} is missing from config::VARS"));
        (var, (self.0)(name).filter(|v| !v.trim().is_empty()))
    }

    fn error(name: &'static str, value: &str, expected: &str) -> ConfigError {
        // A REDIS_URL may hold a password: never echo it, not even in an error; nor a credential.
        let secret = VARS.iter().any(|v| v.name == name && v.secret);
        let value = match name {
            _ if secret => "***".to_owned(),
            "REDIS_URL" => remote::redact_userinfo(value),
            _ => value.to_owned(),
        };
        ConfigError { var: name, value, expected: expected.to_owned() }
    }

    /// The variable's value as set (blank when unset), for errors about it.
    fn raw(&self, name: &'static str) -> String {
        self.get(name).1.unwrap_or_default()
    }

    /// Like `read`, with a parser whose error says what was wrong (completing "expected ...").
    fn explained<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let (var, value) = self.get(name);
        match value.as_deref().or(var.default) {
            Some(v) => parse(v.trim()).map(Some).map_err(|expected| Env::error(name, v, &expected)),
            None => Ok(None),
        }
    }

    /// The value, or the table's default when unset; `None` only when unset and the table has
    /// no default.
    fn read<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>, ConfigError> {
        let (var, value) = self.get(name);
        match value.as_deref().or(var.default) {
            Some(v) => parse(v.trim()).map(Some).ok_or_else(|| Env::error(name, v, expected)),
            None => Ok(None),
        }
    }

    /// The value, or the table's default (which this variable must have).
    fn parse<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &str,
    ) -> Result<T, ConfigError> {
        Ok(self.read(name, parse, expected)?.unwrap_or_else(|| panic!("{name} has no default in config::VARS")))
    }

    fn number(&self, name: &'static str, min: u64, max: u64, expected: &str) -> Result<u64, ConfigError> {
        self.parse(name, |v| number(v, min, max), expected)
    }

    fn boolean(&self, name: &'static str) -> Result<bool, ConfigError> {
        let parse = |v: &str| match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        };
        self.parse(name, parse, "true or false (also 1/0, yes/no, on/off)")
    }
}

fn number(v: &str, min: u64, max: u64) -> Option<u64> {
    decimal::parse(v.as_bytes()).filter(|n| (min..=max).contains(n))
}

fn parse_log_format(v: &str) -> Option<logger::Format> {
    match v.to_ascii_lowercase().as_str() {
        "text" => Some(logger::Format::Text),
        "json" => Some(logger::Format::Json),
        _ => None,
    }
}

/// `METRICS` and its settings, which are read (and so checked) whether or not it is on.
fn read_metrics(env: &Env<'_>) -> Result<Option<metrics::Settings>, ConfigError> {
    let on = env.parse(
        "METRICS",
        |v| match v.to_ascii_lowercase().as_str() {
            "off" => Some(false),
            "emf" => Some(true),
            _ => None,
        },
        "off or emf",
    )?;
    let settings = metrics::Settings {
        interval: Duration::from_secs(env.number("METRICS_INTERVAL_S", 1, 3_600, "seconds, 1 to 3600")?),
        namespace: env.parse(
            "METRICS_NAMESPACE",
            metrics::parse_namespace,
            "1 to 255 of the characters A-Z a-z 0-9 . - _ / # :",
        )?,
        service: env.parse("METRICS_SERVICE", metrics::parse_service, "1 to 255 printable ASCII characters")?,
    };
    Ok(on.then_some(settings))
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
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert!(c.redis.is_none());
        assert_eq!(c.policy.default, [Rate::per_minute(100)]);
        assert_eq!(c.policy.endpoint, [Rate::per_minute(10)]);
        assert_eq!(c.policy.strategy, Strategy::FixedWindow);
        assert!(c.policy.enabled);
        assert!(c.policy.exempt.is_empty());
        assert_eq!(c.session.trusted_proxy_hops, 1);
        assert!(c.session.public_host.is_none());
        assert!(c.workers >= 1);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.session.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(c.session.header_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(20));
        assert_eq!(c.log.level, log::LevelFilter::Info);
        assert!(c.log.access_log);
        assert_eq!(c.log.format, logger::Format::Text);
        assert!(c.metrics.is_none());
    }

    #[test]
    fn blank_is_default() {
        let c = load(&[("PORT", ""), ("REDIS_URL", "  "), ("PUBLIC_HOST", "")]).unwrap();
        assert_eq!(c.listen.port(), 8443);
        assert!(c.redis.is_none());
        assert!(c.session.public_host.is_none());
    }

    #[test]
    fn port_limits() {
        assert_eq!(load(&[("PORT", "0")]).unwrap().listen.port(), 0);
        assert_eq!(load(&[("PORT", "65535")]).unwrap().listen.port(), 65535);
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
            ("METRICS_INTERVAL_S", "3600"),
        ] {
            load(&[(var, max)]).unwrap_or_else(|e| panic!("{e}"));
            let past = (max.parse::<u64>().unwrap() + 1).to_string();
            rejects(var, &past);
        }
        assert_eq!(load(&[("TRUSTED_PROXY_HOPS", "0")]).unwrap().session.trusted_proxy_hops, 0);
        assert_eq!(load(&[("SHUTDOWN_GRACE_S", "0")]).unwrap().shutdown_grace, Duration::ZERO);
        rejects("WORKERS", "0");
        rejects("MAX_CONNECTIONS", "0");
        rejects("HEADER_TIMEOUT_S", "0");
        rejects("REDIS_CONNECT_RETRIES", "0");
        rejects("METRICS_INTERVAL_S", "0");
    }

    #[test]
    fn bind_addr() {
        assert_eq!(load(&[("BIND_ADDR", "::")]).unwrap().listen.ip().to_string(), "::");
        assert_eq!(load(&[("BIND_ADDR", "127.0.0.1")]).unwrap().listen.ip().to_string(), "127.0.0.1");
        rejects("BIND_ADDR", "localhost");
        rejects("BIND_ADDR", "1.2.3.4:80");
    }

    #[test]
    fn redis_url() {
        let c = load(&[("REDIS_URL", "redis://user:s3cret@cache:6380/2")]).unwrap();
        let url = c.redis.unwrap().url;
        assert_eq!(url.as_str(), "redis://user:s3cret@cache:6380/2");
        assert_eq!(url.redacted(), "redis://user:***@cache:6380/2");
        assert_eq!(format!("{url:?}"), "redis://user:***@cache:6380/2");
        let c = load(&[("REDIS_URL", "redis://:pw@localhost")]).unwrap();
        assert_eq!(c.redis.unwrap().url.redacted(), "redis://:***@localhost");
        let c = load(&[("REDIS_URL", "redis://token@localhost")]).unwrap();
        assert_eq!(c.redis.unwrap().url.redacted(), "redis://***@localhost");
        let c = load(&[("REDIS_URL", "redis://localhost:6379")]).unwrap();
        assert_eq!(c.redis.unwrap().url.redacted(), "redis://localhost:6379");
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
            ("rediss://:hunter2@cache:port", "rediss://:***@cache:port"),
            ("redis://u:p@ss@cache:port", "redis://u:***@cache:port"),
            ("cache:6379@secret", "***"),
        ] {
            let err = load(&[("REDIS_URL", bad)]).expect_err(bad);
            assert_eq!(err.value, shown);
            assert!(!err.to_string().contains("pa/ss") && !err.to_string().contains("hunter2"));
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn rediss_urls_in_a_tls_build() {
        let c = load(&[("REDIS_URL", "rediss://u:s3cret@cache.example.com:6380/2")]).unwrap();
        let redis = c.redis.unwrap();
        assert!(redis.url.is_tls());
        assert_eq!(redis.url.redacted(), "rediss://u:***@cache.example.com:6380/2");
        assert!(load(&[("REDIS_URL", "rediss://10.0.0.7")]).unwrap().redis.unwrap().url.is_tls());
        assert!(!load(&[("REDIS_URL", "redis://cache")]).unwrap().redis.unwrap().url.is_tls());
        // The redis crate would read `#insecure` as "check no certificate": never.
        let e = rejects("REDIS_URL", "rediss://cache#insecure");
        assert!(e.expected.contains("rediss://"), "{e}");
        rejects("REDIS_URL", "rediss://");
        rejects("REDIS_URL", "rediss://cache:port");
        rejects("REDIS_URL", "redisss://cache");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_urls_without_tls_say_the_build_lacks_it() {
        let e = rejects("REDIS_URL", "rediss://cache:6379");
        assert!(e.to_string().contains("this build lacks TLS"), "{e}");
        let e = load(&[("REDIS_URL", "rediss://:hunter2@cache")]).unwrap_err();
        assert!(e.to_string().contains("lacks TLS") && !e.to_string().contains("hunter2"), "{e}");
        let e = rejects("REDIS_URL", "http://cache");
        assert!(!e.to_string().contains("TLS"), "only rediss:// is about TLS: {e}");
    }

    /// Each of REDIS_USERNAME and REDIS_PASSWORD, when set, takes the place of its part of the
    /// URL's userinfo; neither is ever shown (summary, errors, `Debug`).
    #[test]
    fn credentials_take_the_place_of_the_urls() {
        let c = load(&[("REDIS_URL", "redis://alice:urlpw@cache"), ("REDIS_PASSWORD", " envpw\n")]).unwrap();
        let redis = c.redis.as_ref().unwrap();
        assert_eq!(redis.password, Some(Secret::new("envpw")), "trimmed, as every value is");
        assert_eq!(redis.username, None, "the URL's user stays");
        let shown = format!("{} {c:?}", c.summary());
        assert!(shown.contains("redis_username=REDIS_URL redis_password=REDIS_PASSWORD "), "{shown}");
        assert!(!shown.contains("envpw") && !shown.contains("urlpw"), "{shown}");

        let c = load(&[("REDIS_URL", "rediss://cache"), ("REDIS_USERNAME", "bob"), ("REDIS_PASSWORD", "pw")]);
        if cfg!(feature = "tls") {
            let c = c.unwrap();
            let redis = c.redis.as_ref().unwrap();
            assert_eq!((&redis.username, &redis.password), (&Some(Secret::new("bob")), &Some(Secret::new("pw"))));
            let summary = c.summary();
            assert!(summary.contains("store=rediss://cache redis_username=REDIS_USERNAME redis_password=REDIS_PASSWORD redis_ca=built-in "), "{summary}");
        }
        let c = load(&[("REDIS_URL", "redis://cache")]).unwrap();
        assert!(c.summary().contains("store=redis://cache redis_username=none redis_password=none "));
        // A user with the URL's password is fine; a user with no password anywhere is not.
        load(&[("REDIS_URL", "redis://:urlpw@cache"), ("REDIS_USERNAME", "bob")]).unwrap();
        let e = load(&[("REDIS_URL", "redis://cache"), ("REDIS_USERNAME", "bob")]).unwrap_err();
        assert_eq!((e.var, e.value.as_str()), ("REDIS_USERNAME", "***"));
        assert!(e.to_string().contains("only with a password") && !e.to_string().contains("bob"), "{e}");
        // A URL's lone `user@` is a user without a password too (the redis crate reads it so).
        let c = load(&[("REDIS_URL", "redis://alice@cache")]).unwrap();
        assert!(c.summary().contains("redis_username=REDIS_URL redis_password=none"), "{}", c.summary());
    }

    #[test]
    fn credentials_without_a_redis_url_are_an_error() {
        for var in ["REDIS_USERNAME", "REDIS_PASSWORD"] {
            let e = load(&[(var, "hunter2")]).unwrap_err();
            assert_eq!((e.var, e.value.as_str()), (var, "***"));
            assert!(e.to_string().contains("REDIS_URL is unset") && !e.to_string().contains("hunter2"), "{e}");
        }
        assert!(load(&[("REDIS_PASSWORD", "  ")]).unwrap().redis.is_none(), "blank is unset");
    }

    /// A file in the temporary directory, removed on drop.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> TempFile {
            let path = std::env::temp_dir().join(format!("zayzoon-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// REDIS_CA_FILE is read with the configuration: unreadable, or with no certificate, is a
    /// config error (a good file is in tests/integration/redis_tls.rs, which makes one).
    #[test]
    fn ca_file_errors() {
        let url = if cfg!(feature = "tls") { "rediss://cache" } else { "redis://cache" };
        let missing = std::env::temp_dir().join("zayzoon-no-such-ca.pem");
        let e = load(&[("REDIS_URL", url), ("REDIS_CA_FILE", missing.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.var, "REDIS_CA_FILE");
        if !cfg!(feature = "tls") {
            assert!(e.to_string().contains("lacks TLS"), "{e}");
            return;
        }
        assert!(e.to_string().contains("readable") && e.to_string().contains("No such file"), "{e}");
        let dir = std::env::temp_dir();
        let e = load(&[("REDIS_URL", url), ("REDIS_CA_FILE", dir.to_str().unwrap())]).unwrap_err();
        assert!(e.to_string().contains("readable"), "a directory: {e}");
        let no_cert = [
            &b""[..],
            b"not PEM at all",
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB8q6X0s0mWm7p7JmJxgGpK4Q9Vw1b1r5f8z1k3m0a0s\n-----END PRIVATE KEY-----\n",
        ];
        for (i, contents) in no_cert.into_iter().enumerate() {
            let file = TempFile::new(&format!("ca-{i}.pem"), contents);
            let e = load(&[("REDIS_URL", url), ("REDIS_CA_FILE", file.path())]).unwrap_err();
            assert!(e.to_string().contains("no certificate"), "{e}");
        }
        let garbage = TempFile::new("garbage.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let e = load(&[("REDIS_URL", url), ("REDIS_CA_FILE", garbage.path())]).unwrap_err();
        assert!(e.to_string().ends_with("(a certificate in it is not a usable CA certificate: BadEncoding)"), "{e}");
    }

    #[test]
    fn rates() {
        let c = load(&[("RATE_LIMIT_DEFAULT", "5 per second"), ("RATE_LIMIT_ENDPOINT", "7/day")]).unwrap();
        assert_eq!(Rate::list(&c.policy.default), "5 per 1 second");
        assert_eq!(Rate::list(&c.policy.endpoint), "7 per 1 day");
        let c =
            load(&[("RATE_LIMIT_DEFAULT", "100/minute; 2000 per hour"), ("RATE_LIMIT_ENDPOINT", "10 per 2 minutes")])
                .unwrap();
        assert_eq!(Rate::list(&c.policy.default), "100 per 1 minute; 2000 per 1 hour");
        assert_eq!(Rate::list(&c.policy.endpoint), "10 per 2 minute");
        assert!(c.summary().contains("rate_limit_default=\"100 per 1 minute; 2000 per 1 hour\""), "{}", c.summary());
        let e = rejects("RATE_LIMIT_DEFAULT", "100/minute;10/fortnight");
        assert!(e.to_string().contains("N per M units"), "{e}");
        rejects("RATE_LIMIT_ENDPOINT", "10/minute;");
        assert_eq!(load(&[("RATE_LIMIT_STRATEGY", "Token-Bucket")]).unwrap().policy.strategy, Strategy::TokenBucket);
        rejects("RATE_LIMIT_STRATEGY", "moving-window");
        rejects("RATE_LIMIT_DEFAULT", "0/minute");
        rejects("RATE_LIMIT_ENDPOINT", "10/fortnight");
    }

    #[test]
    fn booleans() {
        assert!(!load(&[("RATE_LIMIT_ENABLED", "FALSE")]).unwrap().policy.enabled);
        assert!(!load(&[("ACCESS_LOG", "0")]).unwrap().log.access_log);
        assert!(load(&[("ACCESS_LOG", "yes")]).unwrap().log.access_log);
        rejects("RATE_LIMIT_ENABLED", "maybe");
        rejects("ACCESS_LOG", "2");
    }

    #[test]
    fn exempt_list() {
        let c = load(&[("RATE_LIMIT_EXEMPT", " 10.0.0.0/16, ,::1,, 192.0.2.7 ")]).unwrap();
        let shown: Vec<String> = c.policy.exempt.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/16", "::1/128", "192.0.2.7/32"]);
        rejects("RATE_LIMIT_EXEMPT", "10.0.0.1/16");
        rejects("RATE_LIMIT_EXEMPT", "10.0.0.0/33");
        rejects("RATE_LIMIT_EXEMPT", "10.0.0.0/16,banana");
    }

    #[test]
    fn public_host() {
        let c = load(&[("PUBLIC_HOST", "example.com")]).unwrap();
        assert_eq!(c.session.public_host.as_deref(), Some("example.com"));
        rejects("PUBLIC_HOST", "exa mple.com");
        rejects("PUBLIC_HOST", "evil.com/path");
        rejects("PUBLIC_HOST", "user@evil.com");
    }

    #[test]
    fn log_level() {
        assert_eq!(load(&[("LOG_LEVEL", "DEBUG")]).unwrap().log.level, log::LevelFilter::Debug);
        rejects("LOG_LEVEL", "verbose");
    }

    #[test]
    fn log_format() {
        assert_eq!(load(&[("LOG_FORMAT", "JSON")]).unwrap().log.format, logger::Format::Json);
        assert_eq!(load(&[("LOG_FORMAT", "text")]).unwrap().log.format, logger::Format::Text);
        rejects("LOG_FORMAT", "xml");
    }

    #[test]
    fn metrics_settings() {
        let c = load(&[
            ("METRICS", "emf"),
            ("METRICS_INTERVAL_S", "1"),
            ("METRICS_NAMESPACE", "Team/zayzoon"),
            ("METRICS_SERVICE", "web \"dev\""),
        ])
        .unwrap();
        let m = c.metrics.unwrap();
        assert_eq!(
            (m.interval, m.namespace.as_str(), m.service.as_str()),
            (Duration::from_secs(1), "Team/zayzoon", "web \"dev\"")
        );
        let s = load(&[("METRICS", "EMF")]).unwrap().summary();
        assert!(
            s.ends_with("metrics=emf metrics_interval_s=60 metrics_namespace=zayzoon metrics_service=\"zayzoon\""),
            "{s}"
        );
        assert!(load(&[("METRICS", "off")]).unwrap().summary().ends_with("log_format=text metrics=off"));
        // Read, and so checked, with metrics off too.
        rejects("METRICS", "prometheus");
        rejects("METRICS_NAMESPACE", "my app");
        rejects("METRICS_NAMESPACE", &"n".repeat(256));
        load(&[("METRICS_NAMESPACE", &"n".repeat(255))]).unwrap();
        rejects("METRICS_SERVICE", &"s".repeat(256));
        load(&[("METRICS_SERVICE", &"s".repeat(255))]).unwrap();
        rejects("METRICS_SERVICE", "web\u{1}");
    }

    #[test]
    fn summary_redacts_the_password() {
        let c = load(&[("REDIS_URL", "redis://u:hunter2@cache:6379")]).unwrap();
        let s = c.summary();
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("store=redis://u:***@cache:6379 redis_username=REDIS_URL redis_password=REDIS_URL "), "{s}");
    }

    #[test]
    fn redis_settings() {
        let c = load(&[("REDIS_URL", "redis://cache"), ("REDIS_CONNECT_RETRIES", "7"), ("REDIS_TIMEOUT_MS", "250")])
            .unwrap();
        let redis = c.redis.unwrap();
        assert_eq!((redis.connect_retries, redis.timeout), (7, Duration::from_millis(250)));
        let c = load(&[("REDIS_URL", "redis://cache")]).unwrap();
        let redis = c.redis.unwrap();
        assert_eq!((redis.connect_retries, redis.timeout), (5, Duration::from_millis(100)), "defaults");
        rejects("REDIS_TIMEOUT_MS", "0");
    }

    /// Every variable the code reads is in `VARS` (a read of any other panics), and every line of
    /// `VARS` is read: found by recording what `from_lookup` asks for.
    #[test]
    fn vars_lists_exactly_what_is_read() {
        let asked = std::cell::RefCell::new(Vec::new());
        Config::from_lookup(|name| {
            asked.borrow_mut().push(name.to_owned());
            None
        })
        .unwrap();
        let mut asked = asked.into_inner();
        asked.sort();
        let mut listed: Vec<String> = VARS.iter().map(|v| v.name.to_owned()).collect();
        listed.sort();
        assert_eq!(asked, listed);
        let help = help_table();
        for v in VARS {
            let line = help.lines().find(|l| l.trim_start().starts_with(&format!("{} ", v.name))).unwrap();
            assert!(line.contains(v.shown_default) && line.ends_with(v.meaning), "{line}");
        }
    }

    #[test]
    fn every_default_in_the_table_parses() {
        // `load(&[])` reads every default; a default that failed its own parser would be an error
        // naming its variable.
        load(&[]).unwrap();
        for v in VARS.iter().filter(|v| v.default.is_some()) {
            load(&[(v.name, v.default.unwrap())]).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
