//! The command line (SPEC §1): subcommands, configuration errors (exit 2), startup failures
//! (exit 1), and the `healthcheck` subcommand against a live server.

use std::process::{Command, Output};

use crate::support::{BIN, Server};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Every invocation here ends by itself; a hang would be caught by the harness's own timeout.
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_and_version() {
    let o = run(&["--help"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("zayzoon healthcheck [URL]"));
    // Every variable the code reads (config::VARS, which config's unit tests check against what
    // `Config::from_lookup` asks for) is a line of --help, with its default, and a row of the
    // README's table: the scratch image has no README, and the README must not drift from it.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme.split("| variable | default | meaning |").nth(1).unwrap().split("\n\n").next().unwrap();
    let mut rows: Vec<&str> = table.lines().filter_map(|l| l.strip_prefix("| `")?.split('`').next()).collect();
    rows.sort();
    let mut names: Vec<&str> = zayzoon::config::VARS.iter().map(|v| v.name).collect();
    names.sort();
    assert_eq!(rows, names, "README's table of variables");
    for v in zayzoon::config::VARS {
        let line = help.lines().find(|l| l.trim_start().starts_with(&format!("{} ", v.name)));
        assert!(line.is_some_and(|l| l.contains(v.shown_default)), "{} in --help:\n{help}", v.name);
    }
    let o = run(&["--version"], &[]);
    assert_eq!(o.status.code(), Some(0));
    // Whether the build has TLS (SPEC §1): `rediss://` depends on it.
    let tls = if cfg!(feature = "tls") { "tls" } else { "no tls" };
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("zayzoon {} ({tls})", env!("CARGO_PKG_VERSION")));
}

#[test]
fn unknown_arguments_print_usage_and_exit_2() {
    for args in [&["frobnicate"][..], &["serve", "now"], &["--port", "80"], &["healthcheck", "a", "b"]] {
        let o = run(args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("usage: zayzoon"), "{args:?}");
    }
}

#[test]
fn bad_configuration_exits_2_naming_variable_value_and_accepted() {
    for (var, value, accepted) in [
        ("PORT", "http", "a TCP port"),
        ("BIND_ADDR", "localhost", "IPv4 or IPv6 address"),
        ("REDIS_URL", "http://cache:6379", "redis://"),
        ("REDIS_CONNECT_RETRIES", "0", "1 to 1000"),
        ("REDIS_TIMEOUT_MS", "fast", "milliseconds"),
        ("RATE_LIMIT_DEFAULT", "100/fortnight", "N/unit"),
        ("RATE_LIMIT_ENDPOINT", "0/minute", "N/unit"),
        ("RATE_LIMIT_DEFAULT", "100/minute;2000/fortnight", "limits separated by ; or ,"),
        ("RATE_LIMIT_STRATEGY", "moving-window", "fixed-window or token-bucket"),
        ("RATE_LIMIT_ENABLED", "sometimes", "true or false"),
        ("RATE_LIMIT_EXEMPT", "10.0.0.1/8", "CIDR"),
        ("TRUSTED_PROXY_HOPS", "-1", "0 to 32"),
        ("PUBLIC_HOST", "evil.com/x", "host name"),
        ("WORKERS", "0", "1 to 1024"),
        ("MAX_CONNECTIONS", "lots", "1 to 1000000"),
        ("KEEPALIVE_TIMEOUT_S", "0", "seconds"),
        ("HEADER_TIMEOUT_S", "1.5", "seconds"),
        ("SHUTDOWN_GRACE_S", "forever", "seconds"),
        ("LOG_LEVEL", "loud", "error, warn, info"),
        ("ACCESS_LOG", "maybe", "true or false"),
    ] {
        let o = run(&["serve"], &[(var, value)]);
        assert_eq!(o.status.code(), Some(2), "{var}={value}");
        let err = stderr(&o);
        assert!(err.contains(&format!("{var}=\"{value}\"")), "{var}: {err}");
        assert!(err.contains(accepted), "{var}: {err}");
    }
}

#[test]
fn port_in_use_exits_1() {
    let server = Server::start(&[]);
    let port = server.addr.port().to_string();
    let o = run(&[], &[("PORT", &port), ("BIND_ADDR", "127.0.0.1")]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("cannot listen on 127.0.0.1:"), "{out}");
}

#[test]
fn healthcheck_passes_against_a_healthy_server() {
    let server = Server::start(&[]);
    let port = server.addr.port().to_string();
    // The default URL follows $PORT.
    let o = run(&["healthcheck"], &[("PORT", &port)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["healthcheck", &format!("http://127.0.0.1:{port}/health")], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn healthcheck_fails_on_a_non_200() {
    let server = Server::start(&[]);
    let o = run(&["healthcheck", &format!("http://{}/nope", server.addr)], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    // A port that was free a moment ago: bind, read the port, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = run(&["healthcheck", &format!("http://127.0.0.1:{port}/health")], &[]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn healthcheck_gives_up_after_two_seconds() {
    // A listener that accepts (via the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let start = std::time::Instant::now();
    let o = run(&["healthcheck", &format!("http://{}/health", silent.local_addr().unwrap())], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no response within 2 s"), "{}", stderr(&o));
    let took = start.elapsed();
    assert!(took >= std::time::Duration::from_millis(1900) && took < std::time::Duration::from_secs(4), "{took:?}");
}

#[test]
fn startup_line_shows_the_effective_configuration() {
    let server = Server::start(&[("RATE_LIMIT_EXEMPT", "10.0.0.0/16"), ("LOG_LEVEL", "warn")]);
    let line = server.log_lines("listening on").remove(0);
    for part in [
        "workers=2",
        "store=memory",
        "rate_limit_default=\"100 per 1 minute\"",
        "rate_limit_exempt=\"10.0.0.0/16\"",
        "log_level=warn",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
}
