//! What the Redis store is told (`REDIS_URL`, `REDIS_USERNAME`, `REDIS_PASSWORD`, `REDIS_CA_FILE`,
//! SPEC §1 and §7), and the `redis` crate's client made from it.
//!
//! Owns: the URL's checks and its redaction, credentials that cannot reach a log line by accident
//! (`Secret`), the CA file, and the startup line's description of all of these. Does not own:
//! connecting, batching or the scripts (`remote`).

use std::fmt;
use std::time::Duration;

/// Whether this build speaks TLS to Redis (`rediss://`, SPEC §7): the `tls` cargo feature.
pub const TLS: bool = cfg!(feature = "tls");

/// What the Redis store is told at startup (from `REDIS_*`, SPEC §1).
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: RedisUrl,
    /// `REDIS_USERNAME`: when set, the user instead of the URL's.
    pub username: Option<Secret>,
    /// `REDIS_PASSWORD`: when set, the password instead of the URL's.
    pub password: Option<Secret>,
    /// `REDIS_CA_FILE`'s certificates: for `rediss://`, the only CAs trusted (instead of the
    /// built-in roots).
    pub ca: Option<CaCerts>,
    pub connect_retries: u32,
    /// Longest a request waits for a decision; also every Redis operation's timeout.
    pub timeout: Duration,
}

impl Settings {
    /// The store for the startup line: the URL (password redacted), where the user and password
    /// come from (never what they are), and for TLS which CAs are trusted.
    pub fn describe(&self) -> String {
        let from = |var: &Option<Secret>, name, in_url: bool| match (var, in_url) {
            (Some(_), _) => name,
            (None, true) => "REDIS_URL",
            (None, false) => "none",
        };
        let (user_in_url, password_in_url) = self.url.userinfo();
        let mut out = format!(
            "{} redis_username={} redis_password={}",
            self.url.redacted(),
            from(&self.username, "REDIS_USERNAME", user_in_url),
            from(&self.password, "REDIS_PASSWORD", password_in_url),
        );
        if self.url.is_tls() {
            match &self.ca {
                Some(ca) => out.push_str(&format!(" redis_ca={:?}", ca.path)),
                None => out.push_str(" redis_ca=built-in"),
            }
        }
        out.push_str(&format!(
            " redis_connect_retries={} redis_timeout_ms={}",
            self.connect_retries,
            self.timeout.as_millis()
        ));
        out
    }
}

/// A credential from the environment. Its `Debug` shows `***` and it has no `Display`, so it
/// cannot reach a log line, an error or the startup line by accident; only `expose` gives the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: &str) -> Secret {
        Secret(text.to_owned())
    }

    /// The text, for the one place that sends it to Redis (`client`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The CA certificates of `REDIS_CA_FILE` (PEM), checked when the configuration is read so that a
/// bad file is a configuration error (exit 2), not a failed connection.
#[derive(Clone)]
pub struct CaCerts {
    /// Where they came from, for the startup line.
    path: String,
    /// How many certificates the file holds (at least one).
    count: usize,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pem: Vec<u8>,
}

impl CaCerts {
    /// Reads and checks the PEM file at `path`. The error says what was wrong, completing
    /// "expected ...".
    #[cfg(feature = "tls")]
    pub fn read_file(path: &str) -> Result<CaCerts, String> {
        let pem = std::fs::read(path).map_err(|e| format!("a readable PEM file of CA certificates ({e})"))?;
        let count = CaCerts::check_pem(&pem)?;
        Ok(CaCerts { path: path.to_owned(), count, pem })
    }

    /// A build without TLS cannot use a CA file.
    #[cfg(not(feature = "tls"))]
    pub fn read_file(_path: &str) -> Result<CaCerts, String> {
        Err(format!("no value, since {NO_TLS}"))
    }

    /// The number of certificates in `pem`, each of which must be usable as a trust anchor: what
    /// the redis crate does with them (`Client::build_with_tls`), done here first. Text outside the
    /// `CERTIFICATE` sections (comments, other sections) is skipped, as in the crate.
    #[cfg(feature = "tls")]
    fn check_pem(pem: &[u8]) -> Result<usize, String> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("a PEM file of CA certificates (it is not valid PEM: {e})"))?;
            roots.add(cert).map_err(|e| {
                let why = match e {
                    rustls::Error::InvalidCertificate(why) => format!("{why:?}"),
                    other => other.to_string(),
                };
                format!("a PEM file of CA certificates (a certificate in it is not a usable CA certificate: {why})")
            })?;
        }
        match roots.len() {
            0 => Err("a PEM file of CA certificates (it holds no certificate)".to_owned()),
            n => Ok(n),
        }
    }
}

impl fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({} certificates)", self.path, self.count)
    }
}

/// What a build without the `tls` feature says of `rediss://` and `REDIS_CA_FILE` (completing
/// "expected ...").
pub const NO_TLS: &str =
    "this build lacks TLS (rediss:// and REDIS_CA_FILE need a build with the tls feature; zayzoon --version says)";

/// A `REDIS_URL` that passed our checks (scheme `redis://`, or `rediss://` in a TLS build). The
/// `redis` crate parses the rest.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

/// Why a `REDIS_URL` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlError {
    /// Not a URL we accept (`config` says what is).
    Invalid,
    /// `rediss://` in a build without TLS.
    NoTls,
}

impl RedisUrl {
    /// Accepts `redis://` URLs, and `rediss://` ones in a build with TLS: anything else is an
    /// error rather than a silent fallback to the in-memory store. SPEC §1.
    pub fn parse(v: &str) -> Result<RedisUrl, UrlError> {
        let rest = match (v.strip_prefix("redis://"), v.strip_prefix("rediss://")) {
            (Some(rest), _) => rest,
            (None, Some(_)) if !TLS => return Err(UrlError::NoTls),
            (None, Some(rest)) => rest,
            (None, None) => return Err(UrlError::Invalid),
        };
        let authority = rest.split('/').next().unwrap_or("");
        let host_port = authority.rsplit('@').next().unwrap_or("");
        // A '#' means nothing to Redis: most likely an unencoded '#' in a password, which a URL
        // parser would take for the start of a fragment, silently dropping the rest. Say so instead.
        // (For rediss://, the redis crate would also read `#insecure` as "check no certificate".)
        if host_port.is_empty() || !v.is_ascii() || v.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'#') {
            return Err(UrlError::Invalid);
        }
        // The rest (port, database number, percent-encoding) is checked by the crate that will use it.
        let info = redis::IntoConnectionInfo::into_connection_info(v).map_err(|_| UrlError::Invalid)?;
        // Whatever the URL says, TLS means checking the certificate and its name.
        if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
            return Err(UrlError::Invalid);
        }
        Ok(RedisUrl(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a `rediss://` URL.
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }

    /// Whether the URL names a user, and whether it holds a password (as the redis crate reads it:
    /// `user:pass@`, `:pass@`, and a lone `user@`, which is a user without a password).
    pub fn userinfo(&self) -> (bool, bool) {
        match redis::IntoConnectionInfo::into_connection_info(self.as_str()) {
            Ok(info) => (info.redis_settings().username().is_some(), info.redis_settings().password().is_some()),
            Err(_) => (false, false),
        }
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

/// The redis crate's client for `settings`: the URL, with `REDIS_USERNAME`/`REDIS_PASSWORD` in
/// place of its user and password, and for `rediss://` the CAs of `REDIS_CA_FILE` in place of the
/// built-in roots (the crate's `root_cert` replaces them: src/tls.rs, `create_rustls_config`).
pub(super) fn client(settings: &Settings) -> redis::RedisResult<redis::Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())?;
    let mut auth = info.redis_settings().clone();
    if let Some(user) = &settings.username {
        auth = auth.set_username(user.expose());
    }
    if let Some(password) = &settings.password {
        auth = auth.set_password(password.expose());
    }
    let info = info.set_redis_settings(auth);
    match &settings.ca {
        #[cfg(feature = "tls")]
        Some(ca) => {
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(ca.pem.clone()) };
            redis::Client::build_with_tls(info, certificates)
        }
        _ => redis::Client::open(info),
    }
}
