//! Decimal numbers as bytes: the one parser and the one printer that every module shares (lengths,
//! ports, prefixes, Redis replies, configuration; status codes, header values, log fields).

/// ASCII digits only (no sign, no spaces, at least one), saturating at `u64::MAX`: a caller that
/// has a bound checks it, and a huge number still reads as huge rather than as garbage.
pub fn parse(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

/// Appends `n` in decimal, as `write!(out, "{n}")` would, without the formatting machinery (which
/// cost more than the rest of a response: callgrind, issue 6).
pub fn push(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut n = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse() {
        assert_eq!(super::parse(b"0"), Some(0));
        assert_eq!(super::parse(b"0042"), Some(42));
        assert_eq!(super::parse(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(super::parse(b"99999999999999999999999"), Some(u64::MAX), "saturates");
        for bad in [&b""[..], b"+1", b"-1", b" 1", b"1 ", b"1.0", b"1e3", b"x"] {
            assert_eq!(super::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn push() {
        for n in [0, 7, 10, 99, 1_000_000_000, u64::MAX] {
            let mut out = b"x".to_vec();
            super::push(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }
}
