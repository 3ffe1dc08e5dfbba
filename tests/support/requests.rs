//! Requests built to a size: the one home of the builders that the parser's unit tests
//! (`src/http/tests.rs`, by `#[path]`) and the tests against the real binary share. Pure: bytes in,
//! bytes out, nothing of the crate.

#![allow(dead_code)]

/// `GET /health` with a padding field, exactly `size` bytes of head.
pub fn head_of_size(size: usize) -> Vec<u8> {
    let mut head = b"GET /health HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
    head.resize(size - 4, b'p');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), size);
    head
}

/// `GET /health` with exactly `n` header fields, `Host` included.
pub fn with_fields(n: usize) -> Vec<u8> {
    let mut head = b"GET /health HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 1..n {
        head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A chunked body of exactly `total` bytes on the wire: one chunk of data, sized so that its size
/// line, the data, its CRLF and the last chunk make `total`.
pub fn chunked_of_wire_size(total: usize) -> Vec<u8> {
    let data = total - "0000\r\n".len() - 2 - "0\r\n\r\n".len();
    let mut body = format!("{data:04x}\r\n").into_bytes();
    body.resize(body.len() + data, b'd');
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(body.len(), total);
    body
}

/// `head` followed by `body`.
pub fn with_body(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head.as_bytes().to_vec();
    out.extend_from_slice(body);
    out
}
