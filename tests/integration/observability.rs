//! Metrics and structured logs (SPEC §6, issue 11) against the real binary: the EMF lines'
//! shape, counts that add up to what was sent (the line at exit included), the latency percentiles
//! against the access log's own durations, the Redis store's metrics, JSON log lines that survive
//! hostile bytes, and bad values that stop the server.

use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::json::{self, Json};
use crate::support::redis::RedisServer;
use crate::support::{BIN, PATIENCE, Server, read_response};

// ---------------------------------------------------------------------------------------------
// The test's JSON reader is the oracle for "valid JSON": it must refuse what it should.

#[test]
fn the_tests_json_parser_is_strict() {
    for good in [
        r#"{}"#,
        r#" {"a":[1,-0,0.5,2e10,-3E-2,true,false,null,"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude80"]} "#,
        r#"[]"#,
        r#""x""#,
    ] {
        json::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in [
        "",
        "{",
        r#"{"a":1,}"#,
        r#"{"a":1}{"a":1}"#,
        r#"{"a":1,"a":2}"#,
        r#"{'a':1}"#,
        "{\"a\":\"x\ny\"}",
        "\"\u{1}\"",
        r#""\x41""#,
        r#""\u00G1""#,
        r#""\ud83d""#,
        r#""\ude80""#,
        "01",
        "1.",
        ".5",
        "+1",
        "1e",
        "NaN",
        "[1,]",
        "tru",
        r#"{"a" 1}"#,
    ] {
        assert!(json::parse(bad).is_err(), "accepted {bad:?}");
    }
    let v = json::parse(r#"{"n":12,"s":"a\u00ffb","o":{"k":[1]}}"#).unwrap();
    assert_eq!(v.get("n").and_then(Json::as_u64), Some(12));
    assert_eq!(json::latin1_bytes(v.get("s").and_then(Json::as_str).unwrap()), Some(b"a\xffb".to_vec()));
    assert_eq!(json::parse("-1").unwrap().as_u64(), None);
    assert_eq!(json::parse("1.0").unwrap().as_u64(), None);
}

// ---------------------------------------------------------------------------------------------
// EMF lines.

/// The metrics of SPEC §6's table, with their units, in its order.
const COUNTS: &[&str] = &["Requests", "Status2xx", "Status3xx", "Status4xx", "Status5xx", "RateLimited"];
const LATENCY: &[&str] = &["LatencyP50", "LatencyP99", "LatencyMax"];
const REDIS: &[&str] = &["RedisChecks", "RedisRoundTrips", "RedisFallbacks", "RedisUp"];

fn unit_of(name: &str) -> &'static str {
    match name {
        _ if LATENCY.contains(&name) => "Microseconds",
        "RedisUp" => "None",
        _ => "Count",
    }
}

/// Parses one EMF line and checks it against the EMF specification and SPEC §6: one object and
/// nothing else; `_aws.Timestamp` in milliseconds (within a minute of now); one directive with the
/// configured namespace and `[["Service"]]`; every metric it names present at the root as a
/// non-negative integer with SPEC §6's unit; the dimension present with the configured value;
/// nothing else at the root. Returns the values by name.
fn check_emf(line: &str, namespace: &str, service: &str, redis: bool) -> Vec<(String, u64)> {
    assert!(line.bytes().all(|b| (b' '..=b'~').contains(&b)), "printable ASCII only: {line:?}");
    let v = json::parse(line).unwrap_or_else(|e| panic!("{e}"));
    let aws = v.get("_aws").expect("_aws");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let ts = aws.get("Timestamp").and_then(Json::as_u64).expect("Timestamp: an integer");
    assert!(ts.abs_diff(now_ms) < 60_000, "Timestamp {ts} is not milliseconds of now ({now_ms})");
    assert_eq!(aws.as_object().unwrap().len(), 2, "{line}");
    let directives = aws.get("CloudWatchMetrics").and_then(Json::as_array).expect("CloudWatchMetrics");
    assert_eq!(directives.len(), 1, "{line}");
    let d = &directives[0];
    assert_eq!(d.as_object().unwrap().len(), 3, "{line}");
    assert_eq!(d.get("Namespace").and_then(Json::as_str), Some(namespace));
    assert_eq!(d.get("Dimensions"), Some(&json::parse(r#"[["Service"]]"#).unwrap()));
    assert_eq!(v.get("Service").and_then(Json::as_str), Some(service));
    let mut values = Vec::new();
    for m in d.get("Metrics").and_then(Json::as_array).expect("Metrics") {
        assert_eq!(m.as_object().unwrap().len(), 2, "{m:?}");
        let name = m.get("Name").and_then(Json::as_str).expect("Name");
        assert_eq!(m.get("Unit").and_then(Json::as_str), Some(unit_of(name)), "{name}");
        let value = v.get(name).and_then(Json::as_u64).unwrap_or_else(|| panic!("{name} is not a number in {line}"));
        values.push((name.to_owned(), value));
    }
    // Exactly SPEC §6's metrics: latency only when something was answered, Redis only with Redis.
    let requests = values[0].1;
    let mut expected: Vec<&str> = COUNTS.to_vec();
    if requests > 0 {
        expected.extend(LATENCY);
    }
    expected.push("Connections");
    if redis {
        expected.extend(REDIS);
    }
    let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, expected, "{line}");
    assert_eq!(v.as_object().unwrap().len(), 2 + values.len(), "nothing else at the root: {line}");
    values
}

fn value(values: &[(String, u64)], name: &str) -> u64 {
    values.iter().find(|(n, _)| n == name).map_or_else(|| panic!("no {name}"), |(_, v)| *v)
}

/// Sums every metric of the Count unit over `lines`.
fn sums(lines: &[Vec<(String, u64)>]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for line in lines {
        for (name, v) in line.iter().filter(|(n, _)| unit_of(n) == "Count" && n != "Connections") {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += v,
                None => out.push((name.clone(), *v)),
            }
        }
    }
    out
}

/// SIGTERM; waits for the last line and a clean exit. Returns every line the server wrote.
fn stop(server: &mut Server) -> Vec<String> {
    server.signal("TERM");
    assert!(server.wait_for_line("drained; exiting").is_some(), "{}", server.log_text());
    assert_eq!(server.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    server.log_lines("")
}

/// The EMF lines among `lines`, each checked.
fn emf(lines: &[String], namespace: &str, service: &str, redis: bool) -> Vec<Vec<(String, u64)>> {
    lines.iter().filter(|l| l.starts_with("{\"_aws\"")).map(|l| check_emf(l, namespace, service, redis)).collect()
}

/// Waits for an EMF line that `pred` accepts; returns it.
fn wait_for_emf(server: &Server, mut pred: impl FnMut(&[(String, u64)]) -> bool, redis: bool) -> Vec<(String, u64)> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server.wait_for_line_within("{\"_aws\"", left).expect("an EMF line");
        let values = check_emf(&line, "zayzoon", "zayzoon", redis);
        if pred(&values) {
            return values;
        }
    }
}

fn send(server: &Server, raw: &[u8]) -> u16 {
    let mut s = server.connect();
    s.write_all(raw).unwrap();
    read_response(&mut s, false).expect("a response").status
}

#[test]
fn emf_lines_have_the_spec_shape_and_add_up_to_the_requests_sent() {
    // Written whatever LOG_LEVEL and ACCESS_LOG say.
    let service = r#"web "dev" \ 1"#;
    let env = [
        ("METRICS", "emf"),
        ("METRICS_INTERVAL_S", "1"),
        ("METRICS_NAMESPACE", "Team/zayzoon"),
        ("METRICS_SERVICE", service),
        ("LOG_LEVEL", "error"),
        ("ACCESS_LOG", "false"),
        ("RATE_LIMIT_ENDPOINT", "3/minute"),
    ];
    let mut server = Server::start(&env);
    let started = Instant::now();
    // Three /status answered, two refused (the second from the refusal cache, SPEC §3: RateLimited
    // counts it too); 404s, redirects, a 405, parser errors (400, 505, 431).
    let mut sent = [0u64; 4];
    let mut count = |status: u16| sent[usize::from(status / 100 - 2)] += 1;
    for expected in [200, 200, 200, 429] {
        assert_eq!(server.get("/status").status, expected);
        count(expected);
    }
    // Some requests in a later interval than others.
    std::thread::sleep(Duration::from_millis(1_300));
    assert_eq!(server.get("/status").status, 429);
    count(429);
    for _ in 0..3 {
        assert_eq!(server.get("/nope").status, 404);
        count(404);
    }
    for _ in 0..2 {
        assert_eq!(server.get_with("/x", &["X-Forwarded-Proto: http"]).status, 301);
        count(301);
    }
    for (raw, status) in [
        (&b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"[..], 405),
        (b"BLAH\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (&crate::support::requests::head_of_size(8 * 1024 + 1), 431),
    ] {
        assert_eq!(send(&server, raw), status);
        count(status);
    }
    let lines = stop(&mut server);
    let elapsed = started.elapsed();
    let metrics = emf(&lines, "Team/zayzoon", service, false);
    let total: u64 = sent.iter().sum();
    assert_eq!(
        sums(&metrics),
        [
            ("Requests".to_owned(), total),
            ("Status2xx".to_owned(), sent[0]),
            ("Status3xx".to_owned(), sent[1]),
            ("Status4xx".to_owned(), sent[2]),
            ("Status5xx".to_owned(), sent[3]),
            ("RateLimited".to_owned(), 2),
        ]
    );
    // One line per interval (the timer starts just before `started`: at most ⌊elapsed⌋ + 1 of
    // them), and one at exit: after the drain started, before the last line.
    assert!(metrics.len() >= 2 && metrics.len() as u64 <= elapsed.as_secs() + 2, "{} lines", metrics.len());
    let exit = lines.iter().position(|l| l.contains("drained; exiting")).unwrap();
    let drain = lines.iter().position(|l| l.contains("draining")).unwrap();
    assert!(lines[drain..exit].iter().any(|l| l.starts_with("{\"_aws\"")), "an EMF line at exit");
    let stamps: Vec<u64> = lines
        .iter()
        .filter(|l| l.starts_with("{\"_aws\""))
        .map(|l| json::parse(l).unwrap().get("_aws").unwrap().get("Timestamp").unwrap().as_u64().unwrap())
        .collect();
    // Never two interval lines within an interval (the wall clock may be slewed by a few ms a second).
    for pair in stamps[..stamps.len() - 1].windows(2) {
        assert!(pair[1] - pair[0] >= 990, "interval lines {} ms apart", pair[1] - pair[0]);
    }
}

#[test]
fn the_line_at_exit_has_what_no_interval_line_did_and_percentiles_match_the_access_log() {
    // One line in an hour: the one at exit is the only one, so it must hold every request.
    let env =
        [("METRICS", "emf"), ("METRICS_INTERVAL_S", "3600"), ("LOG_FORMAT", "json"), ("RATE_LIMIT_ENABLED", "false")];
    let mut server = Server::start(&env);
    let mut s = server.connect();
    let n = 150;
    for i in 0..n {
        // Some slower requests: a body that arrives in two pieces.
        if i % 10 == 0 {
            s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab").unwrap();
            std::thread::sleep(Duration::from_millis(3));
            s.write_all(b"cd").unwrap();
        } else {
            s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        }
        assert_eq!(read_response(&mut s, false).unwrap().status, 404);
    }
    let lines = stop(&mut server);
    let metrics = emf(&lines, "zayzoon", "zayzoon", false);
    assert_eq!(metrics.len(), 1, "only the line at exit");
    let m = &metrics[0];
    assert_eq!((value(m, "Requests"), value(m, "Status4xx")), (n, n));
    // The access log's durations are what the histogram counted: compare exactly-computed
    // percentiles (nearest rank) with the reported ones. SPEC §6: within 10%.
    let mut durations: Vec<u64> = lines
        .iter()
        .filter(|l| l.contains("\"target\":\"access\""))
        .map(|l| json::parse(l).unwrap().get("duration_us").and_then(Json::as_u64).unwrap())
        .collect();
    durations.sort_unstable();
    assert_eq!(durations.len() as u64, n);
    let exact = |percent: u64| durations[((n * percent).div_ceil(100) - 1) as usize];
    for (name, want) in [("LatencyP50", exact(50)), ("LatencyP99", exact(99))] {
        let got = value(m, name);
        assert!(got.abs_diff(want) * 10 <= want, "{name} {got} µs, exact {want} µs ({durations:?})");
    }
    assert_eq!(value(m, "LatencyMax"), *durations.last().unwrap());
    assert!(value(m, "LatencyP50") <= value(m, "LatencyP99") && value(m, "LatencyP99") <= value(m, "LatencyMax"));
}

#[test]
fn connections_are_those_open_at_the_end_of_the_interval() {
    let server = Server::start(&[("METRICS", "emf"), ("METRICS_INTERVAL_S", "1")]);
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = server.connect();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, false).unwrap().status, 200);
        open.push(s);
    }
    wait_for_emf(&server, |m| value(m, "Connections") == 3, false);
    drop(open);
    wait_for_emf(&server, |m| value(m, "Connections") == 0, false);
}

#[test]
fn redis_metrics_count_checks_round_trips_and_fallbacks() {
    let mut redis = RedisServer::start(&[]);
    let url = redis.url();
    // A timeout no round trip takes on a loaded machine: while Redis is up, Redis decides every check.
    let env =
        [("REDIS_URL", url.as_str()), ("REDIS_TIMEOUT_MS", "5000"), ("METRICS", "emf"), ("METRICS_INTERVAL_S", "1")];
    let mut server = Server::start(&env);
    for _ in 0..5 {
        assert_eq!(server.get("/nowhere").status, 404);
    }
    // While up: a line that says so, with the checks so far.
    let mut seen = Vec::new();
    wait_for_emf(
        &server,
        |m| {
            seen.push(value(m, "RedisChecks"));
            value(m, "RedisUp") == 1 && seen.iter().sum::<u64>() == 5
        },
        true,
    );
    redis.kill();
    for _ in 0..4 {
        assert_eq!(server.get("/nowhere").status, 404);
    }
    let lines = stop(&mut server);
    let metrics = emf(&lines, "zayzoon", "zayzoon", true);
    let total = sums(&metrics);
    assert_eq!(value(&total, "Requests"), 9);
    assert_eq!(value(&total, "RedisChecks"), 5, "checks Redis answered");
    assert_eq!(value(&total, "RedisFallbacks"), 4, "each request after the kill, once");
    let trips = value(&total, "RedisRoundTrips");
    assert!((1..=5).contains(&trips), "{trips} round trips");
    assert_eq!(value(metrics.last().unwrap(), "RedisUp"), 0, "down at exit");
    assert_eq!(value(&metrics[0], "RedisUp"), 1);
}

// ---------------------------------------------------------------------------------------------
// JSON logs.

/// Checks one JSON log record (SPEC §6): printable ASCII, one object, `time` in RFC 3339 UTC with
/// milliseconds, a level, a target, and `message` or the access fields.
fn check_record(line: &str) -> Json {
    assert!(line.bytes().all(|b| (b' '..=b'~').contains(&b)), "printable ASCII only: {line:?}");
    let v = json::parse(line).unwrap_or_else(|e| panic!("{e}"));
    let time = v.get("time").and_then(Json::as_str).expect("time");
    let shape = time.bytes().map(|b| if b.is_ascii_digit() { b'0' } else { b }).collect::<Vec<u8>>();
    assert_eq!(shape, b"0000-00-00T00:00:00.000Z", "{time}");
    let level = v.get("level").and_then(Json::as_str).expect("level");
    assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level), "{line}");
    let target = v.get("target").and_then(Json::as_str).expect("target");
    let keys: Vec<&str> = v.as_object().unwrap().iter().map(|(k, _)| k.as_str()).collect();
    if target == "access" {
        for (key, number) in [
            ("client", false),
            ("method", false),
            ("path", false),
            ("status", true),
            ("bytes", true),
            ("duration_us", true),
        ] {
            let field = v.get(key).unwrap_or_else(|| panic!("{key} in {line}"));
            assert_eq!(field.as_u64().is_some(), number, "{key} in {line}");
        }
        let optional = keys.len() - 9;
        assert!(optional <= 2 && keys[9..].iter().all(|k| ["user_agent", "trace_id"].contains(k)), "{line}");
    } else {
        assert_eq!(keys, ["time", "level", "target", "message"], "{line}");
    }
    v
}

/// The bytes a string field of a record stands for (`\u00XX` is the byte XX).
fn field(v: &Json, key: &str) -> Option<Vec<u8>> {
    v.get(key).map(|f| json::latin1_bytes(f.as_str().expect("a string")).expect("U+0000 to U+00FF only"))
}

#[test]
fn json_logs_survive_hostile_bytes() {
    let env = [("LOG_FORMAT", "json"), ("LOG_LEVEL", "debug"), ("METRICS", "emf"), ("METRICS_INTERVAL_S", "1")];
    let mut server = Server::start(&env);
    let agent: &[u8] = b"a\tb \"c\\d\xff\xfe\xc3\xa9 {\"status\":1,\"x\":\"\"}";
    let trace: &[u8] = b"Root=1-5759e988-bd862e3fe1be46a994272793;\"x\\\x80";
    let mut raw =
        b"GET /caf\xc3\xa9\"x\\y?q=\"1\" HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\nUser-Agent: ".to_vec();
    raw.extend_from_slice(agent);
    raw.extend_from_slice(b"\r\nX-Amzn-Trace-Id: ");
    raw.extend_from_slice(trace);
    raw.extend_from_slice(b"\r\n\r\n");
    assert_eq!(send(&server, &raw), 404);
    // What never becomes a request: control bytes, non-UTF-8 in the target, DEL in a header.
    for bad in [
        &b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\x1b[31m\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\x7f\r\n\r\n",
        b"G\"T / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(send(&server, bad), 400, "{bad:?}");
    }
    // At the limits of what a record keeps, and one past.
    for (agent_len, trace_len) in [(256, 128), (257, 129), (1000, 1000)] {
        let raw = format!(
            "GET /limits HTTP/1.1\r\nHost: a\r\nUser-Agent: {}\r\nX-Amzn-Trace-Id: {}\r\n\r\n",
            "u".repeat(agent_len),
            "t".repeat(trace_len)
        );
        assert_eq!(send(&server, raw.as_bytes()), 404);
    }
    let lines = stop(&mut server);
    assert!(!emf(&lines, "zayzoon", "zayzoon", false).is_empty());
    let mut access = Vec::new();
    for line in lines.iter().filter(|l| !l.starts_with("{\"_aws\"")) {
        let v = check_record(line);
        if v.get("target").and_then(Json::as_str) == Some("access") {
            access.push(v);
        }
    }
    assert_eq!(access.len(), 9, "{}", server.log_text());
    let first = &access[0];
    assert_eq!(field(first, "client").unwrap(), b"203.0.113.7");
    assert_eq!(field(first, "method").unwrap(), b"GET");
    assert_eq!(field(first, "path").unwrap(), b"/caf\xc3\xa9\"x\\y");
    assert_eq!(field(first, "user_agent").unwrap(), agent);
    assert_eq!(field(first, "trace_id").unwrap(), trace);
    assert_eq!(first.get("status").and_then(Json::as_u64), Some(404));
    for bad in &access[1..6] {
        assert_eq!((field(bad, "method").unwrap(), field(bad, "path").unwrap()), (b"-".to_vec(), b"-".to_vec()));
        assert_eq!(bad.get("status").and_then(Json::as_u64), Some(400));
        assert_eq!((bad.get("user_agent"), bad.get("trace_id")), (None, None));
    }
    for (record, kept) in access[6..].iter().zip([(256, 128), (256, 128), (256, 128)]) {
        let (agent, trace) = (field(record, "user_agent").unwrap(), field(record, "trace_id").unwrap());
        assert_eq!((agent.len(), trace.len()), kept);
        assert!(agent.iter().all(|&b| b == b'u') && trace.iter().all(|&b| b == b't'));
    }
    // The other records are JSON too, the startup line among them.
    assert!(lines.iter().any(|l| l.contains("\"target\":\"lifecycle\"") && l.contains("listening on")));
}

#[test]
fn text_access_lines_end_with_the_user_agent() {
    let server = Server::start(&[]);
    assert_eq!(server.get_with("/health", &["User-Agent: curl/8.5 \"x\""]).status, 200);
    let line = server.wait_for_line("[access]").expect("access line");
    assert!(line.ends_with(" \"curl/8.5\\x20\\x22x\\x22\""), "{line}");
    assert_eq!(server.get("/health").status, 200);
    let line = server.wait_for_line("[access]").expect("access line");
    assert!(line.ends_with("us \"-\""), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn bad_metrics_and_log_settings_exit_2_naming_the_variable() {
    let long = "s".repeat(256);
    for (var, value, accepted) in [
        ("METRICS", "prometheus", "off or emf"),
        ("METRICS_INTERVAL_S", "0", "1 to 3600"),
        ("METRICS_INTERVAL_S", "3601", "1 to 3600"),
        ("METRICS_NAMESPACE", "my app", "A-Z a-z 0-9"),
        ("METRICS_SERVICE", long.as_str(), "1 to 255 printable ASCII"),
        ("METRICS_SERVICE", "web\u{1}", "1 to 255 printable ASCII"),
        ("LOG_FORMAT", "xml", "text or json"),
    ] {
        let o = Command::new(BIN).env_clear().arg("serve").env(var, value).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{var}={value:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("invalid {var}={value:?}: expected")), "{var}: {err}");
        assert!(err.contains(accepted), "{var}: {err}");
    }
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for var in ["LOG_FORMAT", "METRICS", "METRICS_INTERVAL_S", "METRICS_NAMESPACE", "METRICS_SERVICE"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(&format!("{var} "))), "{var} in --help");
    }
}
