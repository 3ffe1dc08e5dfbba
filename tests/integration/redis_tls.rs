//! Redis over TLS, and credentials from their own variables (SPEC §1, §7), against a real
//! `redis-server` speaking TLS only, with a CA and certificates made for each test by the `openssl`
//! command line (`support::redis::Certs`). The TLS tests need a build with the `tls` feature
//! (`cargo test --features tls`); the rest run in every build.

use crate::support::redis::RedisServer;
use crate::support::{BIN, Server};

/// Runs the server with `env` (and nothing else from ours) until it exits by itself: its exit
/// code, and everything it printed (stdout then stderr).
fn run_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .env_clear()
        .envs([("PORT", "0"), ("BIND_ADDR", "127.0.0.1")])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[cfg(not(feature = "tls"))]
#[test]
fn rediss_and_a_ca_file_in_a_build_without_tls_are_exit_2() {
    let (code, text) = run_to_exit(&[("REDIS_URL", "rediss://:hunter2@127.0.0.1:6379")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("invalid REDIS_URL=") && text.contains("this build lacks TLS"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let (code, text) = run_to_exit(&[("REDIS_URL", "redis://127.0.0.1:6379"), ("REDIS_CA_FILE", "/etc/hostname")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("invalid REDIS_CA_FILE=") && text.contains("this build lacks TLS"), "{text}");
}

/// REDIS_PASSWORD (and REDIS_USERNAME) over plain `redis://`: taken as they are (no
/// percent-decoding: a secret is injected whole), never shown.
#[test]
fn credentials_from_their_variables_over_plain_redis() {
    let redis =
        RedisServer::start(&["--requirepass", "p@ss#w/rd 1", "--user", "alice", "on", ">al1ce:pw", "~*", "+@all"]);
    let url = redis.url();
    let server = Server::start(&[("REDIS_URL", &url), ("REDIS_PASSWORD", "p@ss#w/rd 1")]);
    assert_eq!(server.get("/status").status, 200);
    let line = server.log_lines("listening on").concat();
    assert!(line.contains(&format!("store={url} redis_username=none redis_password=REDIS_PASSWORD ")), "{line}");
    assert!(!server.log_text().contains("p@ss"), "{}", server.log_text());
    let count = |key: &str| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "--no-auth-warning", "--user", "alice", "--pass", "al1ce:pw"])
            .args(["--raw", "GET", key])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(count("zayzoon:{127.0.0.1}:status:10/60s"), "1");

    // An ACL user from REDIS_USERNAME, the password from REDIS_PASSWORD, in place of the URL's.
    let wrong_url = format!("redis://nobody:nothing@127.0.0.1:{}", redis.port);
    let env = [("REDIS_URL", wrong_url.as_str()), ("REDIS_USERNAME", "alice"), ("REDIS_PASSWORD", "al1ce:pw")];
    let server = Server::start(&env);
    assert_eq!(server.get("/status").status, 200);
    assert_eq!(count("zayzoon:{127.0.0.1}:status:10/60s"), "2");
    let line = server.log_lines("listening on").concat();
    assert!(line.contains("redis_username=REDIS_USERNAME redis_password=REDIS_PASSWORD "), "{line}");
    assert!(!line.contains("alice") && !line.contains("al1ce") && !line.contains("nothing"), "{line}");

    // The wrong user's password: authentication failed, at once, naming neither.
    let env = [("REDIS_URL", url.as_str()), ("REDIS_USERNAME", "alice"), ("REDIS_PASSWORD", "p@ss#w/rd 1")];
    let (code, text) = run_to_exit(&env);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.to_lowercase().contains("authentication failed") && text.contains("after 1 attempt(s)"), "{text}");
    assert!(!text.contains("alice") && !text.contains("p@ss"), "{text}");
}

#[test]
fn credentials_never_reach_help_or_config_errors() {
    let secrets = [("REDIS_USERNAME", "hunter2-user"), ("REDIS_PASSWORD", "hunter2-pw")];
    let out = std::process::Command::new(BIN).arg("--help").env_clear().envs(secrets).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("REDIS_PASSWORD") && help.contains("REDIS_USERNAME") && help.contains("REDIS_CA_FILE"));
    assert!(!help.contains("hunter2"), "{help}");
    // Set without a REDIS_URL: exit 2, naming the variable, not its value.
    let (code, text) = run_to_exit(&secrets);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("invalid REDIS_USERNAME=\"***\"") && !text.contains("hunter2"), "{text}");
}

/// The tests that need TLS in the build.
#[cfg(feature = "tls")]
mod tls {
    use std::io::Write as _;
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use super::run_to_exit;
    use crate::support::redis::{Certs, RedisServer};
    use crate::support::{PATIENCE, Server, read_response};

    /// Sends `per_conn` keep-alive requests to `addr` on each of `conns` parallel connections, each
    /// connection its own client 198.51.100.i; every one must be answered (404).
    fn traffic(addr: SocketAddr, conns: usize, per_conn: usize) {
        std::thread::scope(|scope| {
            for i in 0..conns {
                scope.spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(PATIENCE)).unwrap();
                    let req = format!("GET /nowhere HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.{i}\r\n\r\n");
                    for _ in 0..per_conn {
                        s.write_all(req.as_bytes()).unwrap();
                        assert_eq!(read_response(&mut s, false).unwrap().status, 404);
                    }
                });
            }
        });
    }

    /// The server, using the TLS `redis` (whose password is `s3cret-pw`) with the CA of `certs`, and
    /// `extra` variables.
    fn start_tls(redis: &RedisServer, certs: &Certs, extra: &[(&str, &str)]) -> Server {
        let (url, ca) = (redis.url(), certs.path("ca.pem"));
        let env = [("REDIS_URL", url.as_str()), ("REDIS_PASSWORD", "s3cret-pw"), ("REDIS_CA_FILE", ca.as_str())];
        Server::start(&[&env[..], extra].concat())
    }

    #[test]
    fn counts_land_in_redis_over_tls_with_a_password_batched() {
        let certs = Certs::new("IP:127.0.0.1");
        // TLS only: this server has no plain port, so whatever lands in it came over TLS.
        let redis = RedisServer::start_tls(&certs, "s3cret-pw");
        // Exact counts need every check decided by Redis: a timeout that a loaded machine won't hit.
        let extra = [("ACCESS_LOG", "false"), ("RATE_LIMIT_DEFAULT", "1000000/minute"), ("REDIS_TIMEOUT_MS", "5000")];
        let server = start_tls(&redis, &certs, &extra);
        let url = redis.url();
        let line = server.log_lines("listening on").concat();
        assert!(
            line.contains(&format!("store={url} redis_username=none redis_password=REDIS_PASSWORD redis_ca=")),
            "{line}"
        );
        assert!(!server.log_text().contains("s3cret-pw"), "{}", server.log_text());

        let (conns, per_conn) = (16, 25);
        traffic(server.addr, conns, per_conn);
        for i in 0..conns {
            let count = redis.cli(&["--raw", "GET", &format!("zayzoon:{{198.51.100.{i}}}:global:1000000/60s")]);
            assert_eq!(count, per_conn.to_string(), "client {i}");
        }
        redis.assert_every_key_expires();
        // The pipeline batches over TLS as over TCP: fewer round trips than checks.
        server.signal("TERM");
        let stats = server.wait_for_line("redis: ").expect("stats line");
        let requests = conns * per_conn;
        let round_trips: usize = stats.split(" checks in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(stats.contains(&format!("redis: {requests} checks in ")), "{stats}");
        assert!(round_trips < requests, "{stats}");
    }

    /// The read timeout reaches the socket under the TLS stream: a stalled Redis fails the round trip
    /// after `REDIS_TIMEOUT_MS` (an I/O timeout), rather than blocking the limiter thread until Redis
    /// answers again (which would be logged as "a round trip took longer than ...").
    #[test]
    fn timeouts_apply_over_tls() {
        let certs = Certs::new("IP:127.0.0.1");
        let redis = RedisServer::start_tls(&certs, "s3cret-pw");
        let server = start_tls(&redis, &certs, &[("REDIS_TIMEOUT_MS", "50")]);
        assert_eq!(server.get("/health").status, 200);
        assert_eq!(redis.cli(&["CLIENT", "PAUSE", "3000"]), "OK");
        let start = Instant::now();
        let r = server.get("/status");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("RateLimit-Limit"), Some("10"), "decided (from memory), not skipped");
        let warn =
            server.wait_for_line_within("failed", Duration::from_millis(2500)).expect("WARN before the pause ends");
        assert!(start.elapsed() < Duration::from_millis(2500), "{:?}", start.elapsed());
        assert!(!warn.contains("took longer"), "the socket timed out, not the round trip: {warn}");
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let (certs, other) = (Certs::new("IP:127.0.0.1"), Certs::new("IP:127.0.0.1"));
        let redis = RedisServer::start_tls(&certs, "s3cret-pw");
        let (url, ca) = (redis.url(), other.path("ca.pem"));
        let env = [("REDIS_URL", url.as_str()), ("REDIS_PASSWORD", "s3cret-pw"), ("REDIS_CA_FILE", &ca)];
        let (code, text) = run_to_exit(&[&env[..], &[("REDIS_CONNECT_RETRIES", "2")]].concat());
        assert_eq!(code, Some(1), "{text}");
        // A certificate is a failed attempt like any other (SPEC §7): retried, then exit 1.
        assert!(text.contains("after 2 attempt(s): TLS certificate refused"), "{text}");
        assert!(text.contains("UnknownIssuer") && text.contains("not issued by a CA in REDIS_CA_FILE"), "{text}");
        assert!(!text.contains("s3cret-pw") && !text.contains("listening on"), "{text}");
    }

    /// Another CA that has the same name as the one that signed: told apart by the signature.
    #[test]
    fn a_certificate_from_another_ca_of_the_same_name_is_refused() {
        let certs = Certs::with_ca_name("IP:127.0.0.1", "Same CA");
        let impostor = Certs::with_ca_name("IP:127.0.0.1", "Same CA");
        let redis = RedisServer::start_tls(&impostor, "s3cret-pw");
        let (url, ca) = (redis.url(), certs.path("ca.pem"));
        let env = [("REDIS_URL", url.as_str()), ("REDIS_CA_FILE", &ca), ("REDIS_CONNECT_RETRIES", "1")];
        let (code, text) = run_to_exit(&env);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("TLS certificate refused") && text.contains("BadSignature"), "{text}");
        assert!(text.contains("not issued by a CA in REDIS_CA_FILE"), "{text}");
    }

    #[test]
    fn the_built_in_roots_refuse_a_private_ca() {
        let certs = Certs::new("IP:127.0.0.1");
        let redis = RedisServer::start_tls(&certs, "s3cret-pw");
        let url = redis.url();
        let env = [("REDIS_URL", url.as_str()), ("REDIS_PASSWORD", "s3cret-pw"), ("REDIS_CONNECT_RETRIES", "1")];
        let (code, text) = run_to_exit(&env);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("TLS certificate refused") && text.contains("built-in roots"), "{text}");
        assert!(text.contains("a private CA needs REDIS_CA_FILE"), "{text}");
    }

    #[test]
    fn a_host_name_mismatch_is_refused() {
        // Signed by the CA given, but for another name than the URL's host.
        let certs = Certs::new("DNS:cache.example");
        let redis = RedisServer::start_tls(&certs, "s3cret-pw");
        let (url, ca) = (redis.url(), certs.path("ca.pem"));
        let env = [("REDIS_URL", url.as_str()), ("REDIS_CA_FILE", &ca), ("REDIS_CONNECT_RETRIES", "1")];
        let (code, text) = run_to_exit(&env);
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains("TLS certificate refused") && text.contains("not valid for name \"127.0.0.1\""),
            "{text}"
        );
    }

    #[test]
    fn a_wrong_password_over_tls_is_exit_1_at_once_without_the_password() {
        let certs = Certs::new("IP:127.0.0.1");
        let redis = RedisServer::start_tls(&certs, "s3cret-pw");
        let (url, ca) = (redis.url(), certs.path("ca.pem"));
        let env = [("REDIS_URL", url.as_str()), ("REDIS_CA_FILE", &ca), ("REDIS_PASSWORD", "wrong-hunter2")];
        let (code, text) = run_to_exit(&env);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("after 1 attempt(s)"), "retrying can't help: {text}");
        assert!(text.to_lowercase().contains("authentication failed"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn tls_redis_killed_mid_traffic_falls_back_and_comes_back() {
        let certs = Certs::new("IP:127.0.0.1");
        let mut redis = RedisServer::start_tls(&certs, "s3cret-pw");
        let server = start_tls(&redis, &certs, &[("ACCESS_LOG", "false"), ("RATE_LIMIT_DEFAULT", "1000000/minute")]);
        let addr = server.addr;
        let load = std::thread::spawn(move || traffic(addr, 4, 200));
        // Kill it once counts are landing, while the load goes on.
        let deadline = Instant::now() + PATIENCE;
        while redis.keys().is_empty() {
            assert!(Instant::now() < deadline, "no counts reached Redis");
        }
        redis.kill();
        load.join().expect("every request answered while Redis went away");
        server.wait_for_line("come from memory").expect("one WARN when Redis goes");
        assert_eq!(server.get("/health").status, 200, "answered from memory");
        redis.restart();
        server.wait_for_line("come from Redis again").expect("one INFO when Redis is back, over TLS again");
        assert_eq!(server.get_with("/nowhere", &["X-Forwarded-For: 192.0.2.200"]).status, 404);
        assert_eq!(redis.cli(&["--raw", "GET", "zayzoon:{192.0.2.200}:global:1000000/60s"]), "1");
        assert_eq!(server.log_lines("rate limits come from memory").len(), 1, "{}", server.log_text());
    }

    #[test]
    fn ca_file_unreadable_without_a_certificate_or_for_plain_redis_is_exit_2() {
        let certs = Certs::new("IP:127.0.0.1");
        let (ca, key) = (certs.path("ca.pem"), certs.path("server.key"));
        for (url, file, says) in [
            ("rediss://127.0.0.1:1", "/nonexistent/ca.pem", "readable"),
            ("rediss://127.0.0.1:1", key.as_str(), "holds no certificate"),
            ("redis://127.0.0.1:1", ca.as_str(), "REDIS_URL is redis://"),
        ] {
            let (code, text) = run_to_exit(&[("REDIS_URL", url), ("REDIS_CA_FILE", file)]);
            assert_eq!(code, Some(2), "{file}: {text}");
            assert!(text.contains(&format!("invalid REDIS_CA_FILE={file:?}")) && text.contains(says), "{text}");
        }
        let (code, text) = run_to_exit(&[("REDIS_CA_FILE", &ca)]);
        assert_eq!(code, Some(2), "{text}");
        assert!(text.contains("REDIS_URL is unset"), "{text}");
    }
}
