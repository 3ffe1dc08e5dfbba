//! A real `redis-server` for tests, on a free port, with no persistence. Stopped on drop. Also
//! over TLS only (Debian's redis-server speaks it), with certificates the `openssl` command line
//! makes for each test (`Certs`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    /// What redis-cli needs besides the port: TLS and a password, for a TLS server.
    cli_args: Vec<String>,
    tls: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free port with `extra` arguments (e.g. `--requirepass x`).
    pub fn start(extra: &[&str]) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let args = extra.iter().map(|s| s.to_string()).collect();
        let mut server = RedisServer { child: None, port, args, cli_args: Vec::new(), tls: false };
        server.restart();
        server
    }

    /// Starts `redis-server` speaking TLS only (`--port 0`: no plain port at all) on a free port,
    /// with `certs`' server certificate, requiring `password`. Clients show no certificate.
    pub fn start_tls(certs: &Certs, password: &str) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (cert, key, ca) = (certs.path("server.pem"), certs.path("server.key"), certs.path("ca.pem"));
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ];
        let cli_args = ["--tls", "--cacert", &ca, "-a", password];
        let mut server = RedisServer {
            child: None,
            port,
            args: args.iter().map(|s| s.to_string()).collect(),
            cli_args: cli_args.iter().map(|s| s.to_string()).collect(),
            tls: true,
        };
        server.restart();
        server
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it (Debian: apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answers_ping(&self) -> bool {
        if self.tls {
            let out = self.cli(&["PING"]);
            return out == "PONG" || out.starts_with("NOAUTH");
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        // "-NOAUTH" counts as up: the server answers, it wants a password.
        line.starts_with("+PONG") || line.starts_with("-NOAUTH")
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://...` for a TLS server (its certificate is for 127.0.0.1).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "rediss" } else { "redis" }, self.port)
    }

    /// Runs a command with redis-cli and returns its raw output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--no-auth-warning"])
            .args(&self.cli_args)
            .args(args)
            .output()
            .expect("redis-cli (Debian: apt-get install redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> =
            self.cli(&["--raw", "KEYS", "*"]).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
        keys.sort();
        keys
    }

    /// Asserts that every key has a time to live.
    pub fn assert_every_key_expires(&self) {
        for key in self.keys() {
            let ttl: i64 = self.cli(&["--raw", "PTTL", &key]).parse().unwrap();
            assert!(ttl > 0, "{key} has PTTL {ttl}");
        }
    }

    /// A field of `INFO` (e.g. `total_reads_processed`), as a number.
    pub fn info_number(&self, field: &str) -> u64 {
        let info = self.cli(&["INFO"]);
        let line = info.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("{field}"));
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    }

    /// `calls=` of one command in `INFO commandstats` (0 if never called).
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]);
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .map_or(0, |v| v.parse().unwrap())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A certificate authority of its own and a server certificate it signed, made with the `openssl`
/// command line in a temporary directory (removed on drop): `ca.pem`, `server.pem`, `server.key`.
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// A new CA with a name of its own, and a server certificate it signed for `names` (an openssl
    /// subjectAltName list, such as `IP:127.0.0.1` or `DNS:cache.example`).
    pub fn new(names: &str) -> Certs {
        Certs::with_ca_name(names, &format!("zayzoon test CA {}", Certs::next()))
    }

    /// Like `new`, with the CA's name (its subject) given: two CAs of one name are two keys that a
    /// client tells apart by the signature alone.
    pub fn with_ca_name(names: &str, ca_name: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("zayzoon-certs-{}-{}", std::process::id(), Certs::next()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certs { dir };
        std::fs::write(certs.dir.join("ext.cnf"), format!("subjectAltName={names}\n")).unwrap();
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2";
        certs.openssl(&format!("req -x509 {ec} -keyout ca.key -out ca.pem"), &["-subj", &format!("/CN={ca_name}")]);
        certs.openssl(&format!("req {ec} -keyout server.key -out server.csr"), &["-subj", "/CN=zayzoon test Redis"]);
        let sign = "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2";
        certs.openssl(sign, &["-extfile", "ext.cnf"]);
        certs
    }

    fn next() -> usize {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    /// The full path of one of the files.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    /// Runs openssl in the directory: `words` split at spaces, then `more` as they are.
    fn openssl(&self, words: &str, more: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(&self.dir)
            .args(words.split(' '))
            .args(more)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}): install it (Debian: apt-get install openssl)"));
        assert!(out.status.success(), "openssl {words}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
