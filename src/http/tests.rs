//! One named test per case: the input, the expected outcome, the assertions.

use super::*;

#[path = "../../tests/support/requests.rs"]
mod requests;
use requests::{chunked_of_wire_size, head_of_size, with_fields};

/// Parses `input` and hands the outcome to `check`.
fn parse(input: &[u8], check: impl FnOnce(Result<Parse<Head<'_, '_>>, HttpError>)) {
    let mut headers = empty_headers();
    check(parse_head(input, &mut headers));
}

fn complete(input: &[u8], check: impl FnOnce(&Head<'_, '_>)) {
    parse(input, |r| match r {
        Ok(Parse::Complete(head)) => check(&head),
        other => panic!("expected a complete head, got {other:?}"),
    });
}

fn error(input: &[u8]) -> HttpError {
    let mut out = None;
    parse(input, |r| match r {
        Err(e) => out = Some(e),
        other => panic!("expected an error for {:?}, got {other:?}", String::from_utf8_lossy(input)),
    });
    out.unwrap()
}

fn status(input: &[u8]) -> u16 {
    error(input).status()
}

macro_rules! rejects {
    ($($name:ident: $input:expr => $status:expr;)*) => {$(
        #[test]
        fn $name() {
            assert_eq!(status($input), $status, "{:?}", String::from_utf8_lossy($input));
        }
    )*};
}

#[test]
fn simple_get() {
    let input = b"GET /status?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
    complete(input, |h| {
        assert_eq!(h.method, "GET");
        assert_eq!(h.target.raw, "/status?x=1");
        assert_eq!((h.target.path(), h.target.query()), ("/status", Some("x=1")));
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.host, Some("example.com"));
        assert_eq!(h.len, input.len());
        assert!(h.keep_alive);
        assert_eq!(h.framing, Framing::None);
        assert!(!h.expect_continue);
        assert_eq!(h.headers.len(), 1);
    });
}

#[test]
fn pipelined_bytes_after_the_head_are_not_consumed() {
    let input = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    complete(input, |h| assert_eq!(h.len, input.len() / 2));
}

#[test]
fn partial_head_needs_more() {
    for cut in 1..b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".len() {
        parse(&b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..cut], |r| assert!(matches!(r, Ok(Parse::Partial)), "cut {cut}"));
    }
}

#[test]
fn leading_empty_lines_are_skipped() {
    // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
    complete(b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", |h| assert_eq!(h.target.raw, "/"));
}

#[test]
fn http10_without_host_closes_by_default() {
    complete(b"GET / HTTP/1.0\r\n\r\n", |h| {
        assert_eq!(h.version, Version::Http10);
        assert_eq!(h.host, None);
        assert!(!h.keep_alive);
    });
}

#[test]
fn http10_keep_alive_on_request() {
    complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", |h| assert!(h.keep_alive));
}

#[test]
fn http11_connection_close() {
    complete(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n", |h| assert!(!h.keep_alive));
    complete(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x\r\nConnection: close\r\n\r\n", |h| assert!(!h.keep_alive));
}

#[test]
fn absolute_form_target() {
    complete(b"GET http://example.com/health?a HTTP/1.1\r\nHost: example.com\r\n\r\n", |h| {
        let t = h.target;
        assert_eq!((t.authority, t.path(), t.query()), (Some("example.com"), "/health", Some("a")));
    });
}

#[test]
fn asterisk_form_for_options() {
    complete(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", |h| assert_eq!(h.target.raw, "*"));
}

#[test]
fn content_length_body() {
    complete(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", |h| {
        assert_eq!(h.framing, Framing::Length(5))
    });
}

#[test]
fn content_length_zero_is_no_body() {
    complete(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", |h| assert_eq!(h.framing, Framing::None));
}

#[test]
fn content_length_identical_repeats_are_accepted() {
    complete(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n", |h| {
        assert_eq!(h.framing, Framing::Length(5))
    });
}

#[test]
fn content_length_at_the_body_limit() {
    complete(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65536\r\n\r\n", |h| {
        assert_eq!(h.framing, Framing::Length(65536))
    });
}

#[test]
fn chunked_body() {
    complete(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n", |h| {
        assert_eq!(h.framing, Framing::Chunked)
    });
}

#[test]
fn expect_continue() {
    complete(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n", |h| {
        assert!(h.expect_continue)
    });
}

#[test]
fn head_at_the_size_limit() {
    complete(&head_of_size(MAX_HEAD_BYTES), |h| assert_eq!(h.len, MAX_HEAD_BYTES));
}

#[test]
fn head_one_past_the_size_limit() {
    assert_eq!(error(&head_of_size(MAX_HEAD_BYTES + 1)), HttpError::HeadTooLarge("head longer than 8 KiB"));
}

#[test]
fn long_partial_head_is_refused_without_waiting_for_more() {
    let mut input = b"GET /".to_vec();
    input.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
    assert_eq!(status(&input), 431);
}

#[test]
fn header_count_at_the_limit() {
    complete(&with_fields(MAX_HEADERS), |h| assert_eq!(h.headers.len(), MAX_HEADERS));
}

#[test]
fn header_count_one_past_the_limit() {
    assert_eq!(status(&with_fields(MAX_HEADERS + 1)), 431);
}

#[test]
fn huge_content_length_is_too_large_not_malformed() {
    assert_eq!(
        error(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
        HttpError::BodyTooLarge
    );
}

#[test]
fn version_errors_name_the_cause() {
    assert_eq!(error(b"GET / HTTP/2.0\r\n\r\n"), HttpError::Version);
    assert_eq!(error(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n"), HttpError::Version);
    assert_eq!(error(b"GET / HTTP/0.9\r\n\r\n"), HttpError::Version);
    assert_eq!(error(b"GET / HTTP/1.1x\r\n\r\n").status(), 400);
    assert_eq!(error(b"GET / HTTPS/1.1\r\n\r\n").status(), 400);
    assert_eq!(error(b"GET / FOO\r\n\r\n").status(), 400);
}

/// Found by fuzzing (fuzz/checks.rs `http_head`): the status of a bad version depended on how the
/// request line was split across reads, `GET / HTTP/2` alone being 400 and the whole line 505.
#[test]
fn a_version_cut_short_waits_for_the_end_of_the_line() {
    for prefix in [&b"GET / HTTP/2"[..], b"GET / HTTP/2.", b"GET / HTTP/2.0", b"GET / HTTP/1.2", b"PRI * HTTP/2.0"] {
        parse(prefix, |r| assert!(matches!(r, Ok(Parse::Partial)), "{:?}: {r:?}", String::from_utf8_lossy(prefix)));
    }
    assert_eq!(error(b"GET / HTTP/2.0\r"), HttpError::Version, "a CR ends the line");
    assert_eq!(error(b"GET / HTTP/1.2x").status(), 400, "past the length of a version");
    assert_eq!(error(b"GET / HTTP/1.2x\r\n\r\n").status(), 400, "the same, whole");
    assert_eq!(error(b"GET / HTTP/x").status(), 400, "can't become a version");
    assert_eq!(error(b"GET / HTTP/1.1 x").status(), 400, "a fourth word");
}

rejects! {
    missing_host_in_http11: b"GET / HTTP/1.1\r\n\r\n" => 400;
    two_hosts: b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n" => 400;
    two_hosts_in_http10: b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n" => 400;
    empty_host: b"GET / HTTP/1.1\r\nHost: \r\n\r\n" => 400;
    host_with_path: b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n" => 400;
    host_with_userinfo: b"GET / HTTP/1.1\r\nHost: user@evil.com\r\n\r\n" => 400;
    host_with_bad_port: b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n" => 400;
    host_with_space: b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" => 400;
    host_not_utf8: b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n" => 400;
    bare_lf_line_endings: b"GET / HTTP/1.1\nHost: h\n\n" => 400;
    bare_lf_inside_head: b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n" => 400;
    bare_cr: b"GET / HTTP/1.1\rHost: h\r\n\r\n" => 400;
    obs_fold: b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n" => 400;
    space_before_colon: b"GET / HTTP/1.1\r\nHost : h\r\n\r\n" => 400;
    nul_in_value: b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n" => 400;
    double_space_in_request_line: b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n" => 400;
    no_target: b"GET HTTP/1.1\r\nHost: h\r\n\r\n" => 400;
    relative_target: b"GET status HTTP/1.1\r\nHost: h\r\n\r\n" => 400;
    authority_form: b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" => 400;
    asterisk_with_get: b"GET * HTTP/1.1\r\nHost: h\r\n\r\n" => 400;
    absolute_form_bad_authority: b"GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n" => 400;
    target_not_utf8: b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n" => 400;
    tls_client_hello: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" => 400;
    content_length_not_a_number: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n" => 400;
    content_length_negative: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n" => 400;
    content_length_plus: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n" => 400;
    content_length_inner_space: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n" => 400;
    content_length_empty: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n" => 400;
    content_length_hex: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\n" => 400;
    content_length_differing_list: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n" => 400;
    content_length_differing_fields: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n" => 400;
    content_length_past_the_body_limit: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65537\r\n\r\n" => 413;
    transfer_encoding_and_content_length: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
    transfer_encoding_in_http10: b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
    transfer_encoding_chunked_twice: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" => 400;
    transfer_encoding_chunked_in_two_fields: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
    transfer_encoding_empty: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n" => 400;
    transfer_encoding_not_a_token: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chu\"nked\r\n\r\n" => 400;
    transfer_encoding_chunked_with_parameter: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;q=1\r\n\r\n" => 400;
    transfer_encoding_gzip: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n" => 501;
    transfer_encoding_gzip_then_chunked: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" => 501;
    transfer_encoding_identity: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n" => 501;
    // Issue 14: RFC 9112 §6.3 item 4, chunked not the final coding is 400 (it was 501).
    transfer_encoding_chunked_then_gzip: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" => 400;
    transfer_encoding_chunked_then_identity: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n" => 400;
    transfer_encoding_chunked_in_an_earlier_field: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n" => 400;
    // Issue 14: a Content-Length list with an empty member is invalid, not the other members' value.
    content_length_trailing_comma: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1,\r\n\r\nx" => 400;
    content_length_leading_comma: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: ,1\r\n\r\nx" => 400;
    content_length_empty_member: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1,,1\r\n\r\nx" => 400;
    content_length_blank_member: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, ,1\r\n\r\nx" => 400;
    content_length_only_a_comma: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: ,\r\n\r\n" => 400;
    content_length_empty_member_in_a_second_field: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1,\r\n\r\nx" => 400;
}

#[test]
fn a_final_chunked_after_an_unknown_coding_is_still_501() {
    assert_eq!(
        error(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        HttpError::UnknownCoding
    );
    assert_eq!(
        error(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
        HttpError::BadRequest("chunked not the final coding")
    );
}

/// Issue 14: hosts that real deployments send (Docker Compose service and container names, an
/// empty port) are served like any other, on every path.
#[test]
fn hosts_real_deployments_send() {
    for host in ["my_app:8443", "zayzoon_web_1", "example.com:", "svc~1.internal", "[::1]:", "_sip._tcp.example"] {
        let input = format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n");
        complete(input.as_bytes(), |h| assert_eq!(h.host, Some(host)));
        let input = format!("GET http://{host}/health HTTP/1.1\r\nHost: {host}\r\n\r\n");
        complete(input.as_bytes(), |h| assert_eq!((h.host, h.target.path()), (Some(host), "/health")));
    }
}

#[test]
fn hosts() {
    let long_label = "a".repeat(64);
    let long_name = ["a"; 128].join(".");
    for ok in [
        "example.com",
        "example.com.",
        "EXAMPLE.com:8443",
        "a",
        "127.0.0.1",
        "127.0.0.1:1",
        "[::1]",
        "[::1]:65535",
        "[2001:db8::1]",
        "xn--bcher-kva.example",
        "a-b.c-d",
        // Issue 14: RFC 3986 reg-names of unreserved characters, and an empty port.
        "my_app:8443",
        "zayzoon_web_1",
        "exam_ple.com",
        "svc~1.internal",
        "_sip._tcp.example",
        "example.com:",
        "[::1]:",
        "a:0",
        // No DNS structure is asked of a reg-name (SPEC §2): these are RFC 3986 reg-names too.
        "example..com",
        "-example-.com",
        ".",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        assert!(valid_host(ok.as_bytes()), "{ok:?}");
    }
    for bad in [
        "",
        ":",
        ":80",
        "example.com::",
        "example.com:0x50",
        "example.com:65536",
        "example.com:123456",
        "example.com:+80",
        "example.com: 80",
        "exa mple.com",
        "example.com/",
        "example.com?",
        "example.com#",
        "example.com\\",
        "user@example.com",
        "ex%41mple.com",
        // Sub-delims and the rest of ASCII's punctuation.
        "a!b",
        "a$b",
        "a&b",
        "a'b",
        "a(b)",
        "a*b",
        "a+b",
        "a,b",
        "a;b",
        "a=b",
        "a\"b",
        "a<b>",
        "a^b",
        "a`b",
        "a{b}",
        "a|b",
        "a\x7fb",
        "caf\u{e9}",
        "[::1",
        "[::1]x",
        "[::1]::",
        "[1.2.3.4]",
        "[fe80::1%eth0]",
        "::1",
        "example.com:80:80",
    ] {
        assert!(!valid_host(bad.as_bytes()), "{bad:?}");
    }
}

/// The plain definition of an unbracketed host that `valid_host` must agree with (SPEC §2), written
/// another way: at most one `:`; before it, one or more unreserved characters; after it, up to 5
/// digits naming at most 65535.
fn reference_host(host: &[u8]) -> bool {
    let unreserved = |b: &u8| b.is_ascii_alphanumeric() || b"-._~".contains(b);
    let mut parts = host.split(|&b| b == b':');
    let name = parts.next().unwrap_or(b"");
    let port = parts.next();
    parts.next().is_none()
        && !name.is_empty()
        && name.iter().all(unreserved)
        && port.is_none_or(|p| {
            p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && (p.is_empty() || std::str::from_utf8(p).unwrap().parse::<u32>().unwrap() <= 65535)
        })
}

#[test]
fn valid_host_agrees_with_its_definition_on_every_short_string() {
    const ALPHABET: &[u8] = b"a_~.-:9%@";
    let mut count = 0;
    for len in 0..=6u32 {
        for mut n in 0..ALPHABET.len().pow(len) {
            let host: Vec<u8> = (0..len)
                .map(|_| {
                    let b = ALPHABET[n % ALPHABET.len()];
                    n /= ALPHABET.len();
                    b
                })
                .collect();
            assert_eq!(valid_host(&host), reference_host(&host), "{:?}", String::from_utf8_lossy(&host));
            count += 1;
        }
    }
    assert!(count > 500_000);
    for port in ["h:65535", "h:65536", "h:00080", "h:000080", "h:99999"] {
        assert_eq!(valid_host(port.as_bytes()), reference_host(port.as_bytes()), "{port}");
    }
}

#[test]
fn host_ports_are_dropped_for_redirects() {
    assert_eq!(host_without_port("example.com:8080"), "example.com");
    assert_eq!(host_without_port("example.com"), "example.com");
    assert_eq!(host_without_port("[::1]:80"), "[::1]");
    assert_eq!(host_without_port("[::1]"), "[::1]");
    // Issue 14: an empty port leaves no trailing ':' for a Location to carry.
    assert_eq!(host_without_port("example.com:"), "example.com");
    assert_eq!(host_without_port("[::1]:"), "[::1]");
    assert_eq!(host_without_port("my_app:8443"), "my_app");
}

/// The target, split: (authority, path, query).
fn split<'a>(method: &str, target: &'a str) -> (Option<&'a str>, String, Option<String>) {
    let t = Target::parse(method, target).unwrap_or_else(|e| panic!("{target}: {e}"));
    (t.authority, t.path().to_owned(), t.query().map(str::to_owned))
}

#[test]
fn targets() {
    let q = |s: &str| Some(s.to_owned());
    assert_eq!(split("GET", "/status"), (None, "/status".into(), None));
    assert_eq!(split("GET", "/status?"), (None, "/status".into(), q("")));
    assert_eq!(split("GET", "/st%61tus?a=b?c"), (None, "/st%61tus".into(), q("a=b?c")));
    assert_eq!(split("GET", "HTTP://h:1"), (Some("h:1"), "/".into(), None));
    assert_eq!(split("GET", "https://h?q"), (Some("h"), "/".into(), q("q")));
    assert_eq!(split("OPTIONS", "*"), (None, "*".into(), None));
    for bad in ["*", "status", "example.com:443", "http://user@h/", "http://", "ftp://h/"] {
        assert!(Target::parse("GET", bad).is_err(), "{bad}");
    }
}

#[test]
fn an_absolute_form_authority_is_the_host() {
    complete(b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n", |h| {
        assert_eq!(h.host, Some("a.example"));
    });
}

/// Feeds `input` to a fresh decoder in pieces of `step` bytes.
fn decode(input: &[u8], step: usize) -> Result<Fed, HttpError> {
    let mut d = ChunkedDecoder::default();
    let mut used = 0;
    for piece in input.chunks(step) {
        let fed = d.feed(piece)?;
        used += fed.consumed;
        if fed.done {
            return Ok(Fed { consumed: used, done: true });
        }
        assert_eq!(fed.consumed, piece.len(), "all of a piece is body until done");
    }
    Ok(Fed { consumed: used, done: false })
}

#[test]
fn chunked_at_every_split() {
    let body = b"5\r\nhello\r\n3;name=\"v\"\r\nabc\r\n0\r\nTrailer: x\r\n\r\n";
    let mut input = body.to_vec();
    input.extend(b"GET / HTTP/1.1\r\n");
    for step in 1..=input.len() {
        assert_eq!(decode(&input, step), Ok(Fed { consumed: body.len(), done: true }), "step {step}");
    }
}

#[test]
fn chunked_incomplete() {
    assert_eq!(decode(b"5\r\nhel", 100), Ok(Fed { consumed: 6, done: false }));
    assert_eq!(decode(b"0\r\n\r", 100), Ok(Fed { consumed: 4, done: false }));
}

#[test]
fn chunked_uppercase_hex_and_leading_zeros() {
    let input = b"000A\r\n0123456789\r\n0\r\n\r\n";
    assert_eq!(decode(input, 100), Ok(Fed { consumed: input.len(), done: true }));
}

#[test]
fn chunked_at_the_body_limit() {
    let input = chunked_of_wire_size(MAX_BODY_BYTES as usize);
    assert_eq!(decode(&input, 1000), Ok(Fed { consumed: input.len(), done: true }));
}

#[test]
fn chunked_one_past_the_body_limit() {
    let input = chunked_of_wire_size(MAX_BODY_BYTES as usize + 1);
    assert_eq!(decode(&input, 1000), Err(HttpError::BodyTooLarge));
}

#[test]
fn chunk_size_past_the_limit_is_refused_at_once() {
    assert_eq!(decode(b"10001\r\n", 100), Err(HttpError::BodyTooLarge));
    assert_eq!(decode(b"ffffffffffffffffffffffff", 100), Err(HttpError::BodyTooLarge));
}

#[test]
fn chunked_errors() {
    for bad in [
        &b"\r\n"[..],
        b"g\r\n",
        b";ext\r\n",
        b"-5\r\n",
        b"5\nhello\r\n",
        b"5\r\nhelloXX",
        b"5\r\nhello\n0\r\n\r\n",
        b"5;a\nb\r\n",
        b"5;a\x00\r\n",
        b"5\r\nhello\r\n0\r\nX: y\n\r\n",
        b"5\r\nhello\r\n0\r\n\x01\r\n",
        b"5\r\nhello\r\n0\r\n\r\r",
        b"5 x\x7f\r\n",
    ] {
        let err = decode(bad, 100).expect_err(&String::from_utf8_lossy(bad));
        assert_eq!(err.status(), 400, "{:?}", String::from_utf8_lossy(bad));
    }
}

/// Decodes `input` at every split and checks each gives the same result; returns it.
fn decode_at_every_split(input: &[u8]) -> Result<Fed, HttpError> {
    let whole = decode(input, input.len().max(1));
    for step in 1..input.len() {
        assert_eq!(decode(input, step), whole, "step {step} of {:?}", String::from_utf8_lossy(input));
    }
    whole
}

/// A body whose first chunk line is `line` with `N` replaced by `size`.
fn body_with_line(line: &[u8], size: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for &b in line {
        if b == b'N' { body.extend_from_slice(size) } else { body.push(b) }
    }
    body.extend_from_slice(if size == b"0" { &b"\r\n\r\n"[..] } else { b"\r\nhello\r\n0\r\n\r\n" });
    body
}

/// Issue 14: a chunk line is RFC 9112 §7.1's grammar exactly, for data chunks and the last chunk
/// alike: whitespace only as BWS before `;` and around `=`, names tokens, values tokens or quoted
/// strings. `5 6` was read as 5 (a front end may read 0x56), `0 1` as the last chunk.
#[test]
fn chunk_lines_follow_the_grammar_exactly() {
    for ok in [
        &b"N"[..],
        b"00N",
        b"N;a",
        b"N;a=b",
        b"N ;a=b",
        b"N\t \t;a=b",
        b"N; a",
        b"N;a =b",
        b"N;a= b",
        b"N ; a = b ; c",
        b"N;a;b=c;d=\"e\"",
        b"N;a=\"x y\\\"z\\\\\"",
        b"N;a=\"\"",
        b"N;a=\"\t\xff\"",
        b"N;a=\"b\" ;c",
        b"N;!#$%&'*+-.^_`|~=!#$%&'*+-.^_`|~",
    ] {
        for size in [&b"5"[..], b"0"] {
            let body = body_with_line(ok, size);
            let len = body.len();
            assert_eq!(
                decode_at_every_split(&body),
                Ok(Fed { consumed: len, done: true }),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    for bad in [
        &b"N 6"[..],
        b"N 1",
        b"N ",
        b"N\t",
        b"N xyz",
        b"N;a b",
        b"N;",
        b"N; ",
        b"N;a ",
        b"N;a=",
        b"N;a= ",
        b"N;a=b ",
        b"N;=b",
        b"N;a==b",
        b"N;a=b=c",
        b"N;a=b c",
        b"N;;a",
        b"N ;",
        b"N;a,b",
        b"N,a",
        b"N;a=\"b",
        b"N;a=\"b\"c",
        b"N;a=\"b\" ",
        b"N;a=\"\x7f\"",
        b"N;a=\"\\\x01\"",
        b"N;a\x80",
        b"N;a=b\x80",
        b"N;a=\"b\"\"c\"",
    ] {
        for size in [&b"5"[..], b"0"] {
            let body = body_with_line(bad, size);
            let err = decode_at_every_split(&body).expect_err(&String::from_utf8_lossy(&body));
            assert_eq!(
                err,
                HttpError::BadRequest(match bad.get(1) {
                    Some(b' ' | b'\t' | b';') => "malformed chunk extension",
                    _ => "invalid chunk size",
                }),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

/// Issue 14: a trailer line is a header field, checked as httparse checks the head's (a token, `:`
/// right after it, then HTAB, SP, VCHAR or obs-text); before, only its first byte was.
#[test]
fn trailer_lines_are_header_fields() {
    for ok in [
        &b"X: 1"[..],
        b"X:1",
        b"X:",
        b"X: \t",
        b"X: a b\tc ",
        b"X: caf\xc3\xa9",
        b"!#$%&'*+-.^_`|~: v",
        b"X: 1\r\nY: 2",
    ] {
        let mut body = b"0\r\n".to_vec();
        body.extend_from_slice(ok);
        body.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            decode_at_every_split(&body),
            Ok(Fed { consumed: body.len(), done: true }),
            "{:?}",
            String::from_utf8_lossy(ok)
        );
    }
    for bad in [
        &b"bogus"[..],
        b"X : 1",
        b"X(y): 1",
        b"HTTP/1.1 200 OK",
        b"GET /admin HTTP/1.1",
        b": 1",
        b" X: 1",
        b"\tX: 1",
        b"X\x80: 1",
        b"X: a\x00b",
        b"X: a\x7f",
        b"X: 1\r\nY",
        b"X: 1\r\n Y: 2",
    ] {
        let mut body = b"0\r\n".to_vec();
        body.extend_from_slice(bad);
        body.extend_from_slice(b"\r\n\r\n");
        let err = decode_at_every_split(&body).expect_err(&String::from_utf8_lossy(bad));
        assert_eq!(err.status(), 400, "{:?}", String::from_utf8_lossy(bad));
    }
}
