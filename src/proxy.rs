//! Who the client is and which scheme it used, from the TCP peer and the `X-Forwarded-*` fields
//! that trusted proxies add (Werkzeug ProxyFix semantics, SPEC §2).
//!
//! Owns: reading `X-Forwarded-For` and `X-Forwarded-Proto` from the right, trusting only as many
//! entries as there are trusted proxies. Each proxy appends the address it received the request
//! from, so the N-th entry from the right was written by our own N-th proxy and can't be forged;
//! everything left of it could have been sent by the client. Pure: no sockets.

use std::net::IpAddr;

/// The scheme the client used, as the nearest trusted proxy reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// What the proxies told us about the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// The client address that limits key on and the access log shows, IPv4-mapped IPv6 made IPv4.
    pub client: IpAddr,
    /// `None` when no trusted proxy said (then there is no HTTPS redirect).
    pub scheme: Option<Scheme>,
}

/// With `hops` trusted proxies, the client is the `hops`-th `X-Forwarded-For` entry from the right
/// (all such fields joined in order) and the scheme the rightmost `X-Forwarded-Proto` entry. Fewer
/// entries than `hops`, or an entry that isn't an IP address, leaves the client as the peer; an
/// entry other than `http` or `https` gives no scheme. `hops == 0` trusts no field.
pub fn resolve(peer: IpAddr, hops: usize, headers: &[httparse::Header<'_>]) -> Forwarded {
    let peer = peer.to_canonical();
    if hops == 0 {
        return Forwarded { client: peer, scheme: None };
    }
    let client = entries_from_right(headers, "x-forwarded-for")
        .nth(hops - 1)
        .and_then(|entry| std::str::from_utf8(entry).ok()?.parse::<IpAddr>().ok())
        .map_or(peer, |ip| ip.to_canonical());
    let scheme = entries_from_right(headers, "x-forwarded-proto").next().and_then(|entry| {
        if entry.eq_ignore_ascii_case(b"http") {
            Some(Scheme::Http)
        } else if entry.eq_ignore_ascii_case(b"https") {
            Some(Scheme::Https)
        } else {
            None
        }
    });
    Forwarded { client, scheme }
}

/// The comma-separated entries of every field called `name`, last field's last entry first,
/// trimmed. Empty entries count as entries (ProxyFix keeps them): `a,,b` is three.
fn entries_from_right<'a>(headers: &'a [httparse::Header<'a>], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .rev()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.rsplit(|&b| b == b','))
        .map(|e| e.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "10.0.0.5";

    fn run(hops: usize, fields: &[(&str, &str)]) -> Forwarded {
        let headers: Vec<httparse::Header<'_>> =
            fields.iter().map(|(n, v)| httparse::Header { name: n, value: v.as_bytes() }).collect();
        resolve(PEER.parse().unwrap(), hops, &headers)
    }

    fn client(hops: usize, fields: &[(&str, &str)]) -> String {
        run(hops, fields).client.to_string()
    }

    #[test]
    fn one_hop_takes_the_rightmost_entry() {
        assert_eq!(client(1, &[("X-Forwarded-For", "1.1.1.1, 203.0.113.9")]), "203.0.113.9");
    }

    #[test]
    fn two_hops_take_the_second_from_the_right() {
        assert_eq!(client(2, &[("X-Forwarded-For", "1.1.1.1, 203.0.113.9, 10.0.0.2")]), "203.0.113.9");
    }

    #[test]
    fn fields_are_joined_in_order() {
        let f = [("X-Forwarded-For", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3")];
        assert_eq!(client(1, &f), "3.3.3.3");
        assert_eq!(client(2, &f), "2.2.2.2");
        assert_eq!(client(3, &f), "1.1.1.1");
    }

    #[test]
    fn fewer_entries_than_hops_is_the_peer() {
        assert_eq!(client(2, &[("X-Forwarded-For", "203.0.113.9")]), PEER);
        assert_eq!(client(1, &[]), PEER);
    }

    #[test]
    fn garbage_is_the_peer() {
        assert_eq!(client(1, &[("X-Forwarded-For", "1.1.1.1, not-an-ip")]), PEER);
        assert_eq!(client(1, &[("X-Forwarded-For", "1.1.1.1,")]), PEER, "empty entry");
        assert_eq!(client(1, &[("X-Forwarded-For", "203.0.113.9:443")]), PEER, "ports are not addresses");
        assert_eq!(client(1, &[("X-Forwarded-For", "\u{ff}")]), PEER);
    }

    #[test]
    fn left_of_the_trusted_entry_is_ignored() {
        // A client can send any X-Forwarded-For; the ALB appends the real address.
        assert_eq!(client(1, &[("X-Forwarded-For", "garbage, 127.0.0.1, 203.0.113.9")]), "203.0.113.9");
    }

    #[test]
    fn zero_hops_ignores_everything() {
        let f = run(0, &[("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "http")]);
        assert_eq!(f, Forwarded { client: PEER.parse().unwrap(), scheme: None });
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        assert_eq!(client(1, &[("X-Forwarded-For", "2001:db8::1")]), "2001:db8::1");
        assert_eq!(client(1, &[("X-Forwarded-For", "::ffff:203.0.113.9")]), "203.0.113.9");
        let f = resolve("::ffff:10.0.0.5".parse().unwrap(), 1, &[]);
        assert_eq!(f.client.to_string(), "10.0.0.5", "a mapped peer is IPv4 too");
    }

    #[test]
    fn scheme_is_the_rightmost_proto() {
        assert_eq!(run(1, &[("X-Forwarded-Proto", "https, http")]).scheme, Some(Scheme::Http));
        assert_eq!(
            run(1, &[("X-Forwarded-Proto", "http"), ("X-Forwarded-Proto", "HTTPS")]).scheme,
            Some(Scheme::Https)
        );
        assert_eq!(run(1, &[("X-Forwarded-Proto", "ftp")]).scheme, None);
        assert_eq!(run(1, &[("X-Forwarded-Proto", "http,")]).scheme, None);
        assert_eq!(run(1, &[]).scheme, None);
    }
}
