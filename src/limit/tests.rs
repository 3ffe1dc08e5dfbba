//! Rates, CIDRs, client keys, the policy's counters and how counter states become a decision.

use super::*;

/// The counters of a request for `page` under `default` and `endpoint` limits (`Rate::parse_list`),
/// for the stores' tests too.
pub(crate) fn counters(strategy: Strategy, default: &str, endpoint: &str, page: Option<Page>) -> Counters {
    let settings = Settings {
        enabled: true,
        strategy,
        default: Rate::parse_list(default).unwrap(),
        endpoint: Rate::parse_list(endpoint).unwrap(),
        exempt: vec![],
    };
    Policy::leak(settings).counters("192.0.2.1".parse().unwrap(), page).unwrap()
}

fn rate(limit: u32, multiple: u32, unit: Unit) -> Rate {
    Rate { limit, multiple, unit }
}

#[test]
fn rate_syntax() {
    assert_eq!(Rate::parse("100/minute"), Some(rate(100, 1, Unit::Minute)));
    assert_eq!(Rate::parse("10 per minute"), Some(rate(10, 1, Unit::Minute)));
    assert_eq!(Rate::parse(" 3 PER Hours "), Some(rate(3, 1, Unit::Hour)));
    assert_eq!(Rate::parse("1/second"), Some(rate(1, 1, Unit::Second)));
    assert_eq!(Rate::parse("2 / days"), Some(rate(2, 1, Unit::Day)));
    assert_eq!(Rate::parse("1000000000/day").map(|r| r.limit), Some(1_000_000_000));
    // Flask-Limiter's multiples.
    assert_eq!(Rate::parse("10 per 2 minutes"), Some(rate(10, 2, Unit::Minute)));
    assert_eq!(Rate::parse("10/2 minutes"), Some(rate(10, 2, Unit::Minute)));
    assert_eq!(Rate::parse("10/2minutes"), Some(rate(10, 2, Unit::Minute)));
    assert_eq!(Rate::parse("7 per 1 day"), Some(rate(7, 1, Unit::Day)));
    for bad in [
        "",
        "0/minute",
        "1000000001/day",
        "-1/minute",
        "+1/minute",
        "ten/minute",
        "10/fortnight",
        "10/",
        "/minute",
        "10 minute",
        "10 per",
        "10 per minute extra",
        "10 each minute",
        "10/0 minutes",
        "10/-2 minutes",
        "10/2 / minutes",
        "99999999999999999999/minute",
        "1/99999999999999999999 days",
    ] {
        assert_eq!(Rate::parse(bad), None, "{bad:?}");
    }
}

/// The longest period is `MAX_RATE_PERIOD_SECS` (365 days), however it is written.
#[test]
fn the_largest_multiple() {
    assert_eq!(Rate::parse("1/365 days").map(|r| r.period_secs()), Some(MAX_RATE_PERIOD_SECS));
    assert_eq!(Rate::parse("1/366 days"), None);
    assert_eq!(Rate::parse("1 per 8760 hours").map(|r| r.period_secs()), Some(MAX_RATE_PERIOD_SECS));
    assert_eq!(Rate::parse("1 per 8761 hours"), None);
    assert!(Rate::parse("1/31536000 seconds").is_some());
    assert_eq!(Rate::parse("1/31536001 seconds"), None);
}

#[test]
fn rate_lists() {
    let list = |s: &str| Rate::parse_list(s);
    assert_eq!(list("100/minute;2000/hour"), Some(vec![rate(100, 1, Unit::Minute), rate(2000, 1, Unit::Hour)]));
    assert_eq!(list("100/minute, 2000 per hour"), Some(vec![rate(100, 1, Unit::Minute), rate(2000, 1, Unit::Hour)]));
    assert_eq!(list(" 10 per 2 minutes "), Some(vec![rate(10, 2, Unit::Minute)]));
    // The same limit twice is one counter.
    assert_eq!(list("10/minute;10 per 60 seconds"), Some(vec![rate(10, 1, Unit::Minute)]));
    let eight = (1..=MAX_LIMITS_PER_VAR).map(|i| format!("{i}/second")).collect::<Vec<_>>().join(";");
    assert_eq!(list(&eight).map(|l| l.len()), Some(MAX_LIMITS_PER_VAR));
    assert_eq!(list(&format!("{eight};9/second")), None, "one past the most limits");
    // One bad entry spoils the list.
    for bad in [
        "",
        ";",
        "100/minute;",
        ";100/minute",
        "100/minute;;2000/hour",
        "100/minute;2000/fortnight",
        "100/minute|2000/hour",
    ] {
        assert_eq!(list(bad), None, "{bad:?}");
    }
}

#[test]
fn rate_wording() {
    assert_eq!(Rate::per_minute(10).to_string(), "10 per 1 minute");
    assert_eq!(Rate::parse("5/hour").unwrap().to_string(), "5 per 1 hour");
    assert_eq!(Rate::parse("10 per 2 minutes").unwrap().to_string(), "10 per 2 minute");
    assert_eq!(Rate::list(&Rate::parse_list("1/second;2/day").unwrap()), "1 per 1 second; 2 per 1 day");
}

#[test]
fn strategies() {
    assert_eq!(Strategy::parse("fixed-window"), Some(Strategy::FixedWindow));
    assert_eq!(Strategy::parse("TOKEN-BUCKET"), Some(Strategy::TokenBucket));
    assert_eq!(Strategy::parse("token_bucket"), None);
    assert_eq!(Strategy::TokenBucket.name(), "token-bucket");
}

#[test]
fn cidr_parse_and_contains() {
    let c = Cidr::parse("10.0.0.0/16").unwrap();
    assert!(c.contains("10.0.255.255".parse().unwrap()));
    assert!(!c.contains("10.1.0.0".parse().unwrap()));
    assert!(c.contains("::ffff:10.0.3.4".parse().unwrap()), "IPv4-mapped matches IPv4 ranges");
    assert!(!c.contains("::a00:1".parse().unwrap()), "IPv4-compatible is not IPv4-mapped");
    let all4 = Cidr::parse("0.0.0.0/0").unwrap();
    assert!(all4.contains("203.0.113.1".parse().unwrap()));
    assert!(!all4.contains("2001:db8::1".parse().unwrap()));
    let v6 = Cidr::parse("2001:db8::/32").unwrap();
    assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
    assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    let one = Cidr::parse("::1").unwrap();
    assert_eq!(one.to_string(), "::1/128");
    assert!(one.contains("::1".parse().unwrap()));
    assert!(Cidr::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
    assert_eq!(Cidr::parse("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
    for bad in ["10.0.0.1/16", "10.0.0.0/33", "::1/129", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/+8", "host", ""] {
        assert_eq!(Cidr::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn client_keys() {
    let k = |s: &str| ClientKey::of(s.parse().unwrap());
    assert_eq!(k("192.0.2.1"), ClientKey::V4(0xC000_0201));
    assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.1"));
    assert_eq!(k("2001:db8:1:2:3:4:5:6"), k("2001:db8:1:2:ffff::"));
    assert_ne!(k("2001:db8:1:2::"), k("2001:db8:1:3::"));
    assert_eq!(k("2001:db8:1:2:3:4:5:6").to_string(), "2001:db8:1:2::/64");
    assert_eq!(k("192.0.2.1").to_string(), "192.0.2.1");
}

fn settings(strategy: Strategy) -> Settings {
    Settings {
        enabled: true,
        strategy,
        default: vec![Rate::per_minute(100), rate(1000, 1, Unit::Hour)],
        endpoint: vec![Rate::per_minute(10)],
        exempt: vec![Cidr::parse("10.0.0.0/8").unwrap()],
    }
}

#[test]
fn policy_counters() {
    let p = Policy::leak(settings(Strategy::FixedWindow));
    assert_eq!(p.slots(), 4, "two global, one per page");
    let ip = "192.0.2.1".parse().unwrap();
    let names = |c: Counters| c.iter().map(|c| (c.slot, c.name.as_str())).collect::<Vec<_>>();
    let c = p.counters(ip, Page::of("/status")).unwrap();
    assert_eq!(names(c), [(0, "global:100/60s"), (1, "global:1000/3600s"), (2, "status:10/60s")]);
    assert_eq!(
        names(p.counters(ip, Page::of("/health")).unwrap()),
        [(0, "global:100/60s"), (1, "global:1000/3600s"), (3, "health:10/60s")]
    );
    assert_eq!(p.counters(ip, Page::of("/other")).unwrap().len(), 2);
    assert_eq!(p.counters(ip, Page::of("/status/")).unwrap().len(), 2, "paths compare exactly");
    assert_eq!(p.counters("10.1.2.3".parse().unwrap(), Page::of("/status")), None, "exempt");
    assert_eq!(p.counters("::ffff:10.1.2.3".parse().unwrap(), Page::of("/status")), None, "mapped exempt");
    let off = Policy::leak(Settings { enabled: false, ..settings(Strategy::FixedWindow) });
    assert_eq!(off.counters(ip, Page::of("/status")), None);
    // The token bucket's keys are apart from the fixed window's.
    let tb = Policy::leak(settings(Strategy::TokenBucket));
    assert_eq!(tb.counters(ip, None).unwrap().iter().next().unwrap().name, "global:100/60s:tb");
    assert_eq!(
        c.iter().last().unwrap().refusal,
        r#"{"error":"Too Many Requests","message":"Rate limit exceeded: 10 per 1 minute","status":429}"#
    );
}

#[test]
fn token_bucket_interval() {
    let p = Policy::leak(Settings {
        default: vec![rate(5, 1, Unit::Minute), rate(7, 1, Unit::Minute), rate(1_000_000_000, 1, Unit::Second)],
        ..settings(Strategy::TokenBucket)
    });
    let c: Vec<&Counter> = p.counters("192.0.2.1".parse().unwrap(), None).unwrap().iter().collect();
    assert_eq!((c[0].interval_us, c[0].period_us), (12_000_000, 60_000_000));
    assert_eq!(c[1].interval_us, 8_571_428, "rounded down");
    assert_eq!(c[2].interval_us, 1, "at least 1 µs");
    // A fresh bucket of 5/minute after one request: 4 left, full again in 12 s.
    assert_eq!(
        c[0].token_bucket(12_000_000, false),
        CounterState { remaining: 4, reset_us: 12_000_000, wait_us: 0, over: false }
    );
    // After five: none left, full in 60 s; the sixth waits 12 s for its token.
    assert_eq!(
        c[0].token_bucket(60_000_000, true),
        CounterState { remaining: 0, reset_us: 60_000_000, wait_us: 12_000_000, over: true }
    );
    assert!(c[0].has_token(48_000_000) && !c[0].has_token(48_000_001));
    // At 1 µs resolution a bucket holds at most a million tokens a second...
    assert_eq!(c[2].token_bucket(0, false).remaining, 1_000_000);
    // ...and Remaining never shows more than the limit, whatever the rounding.
    let p = Policy::leak(Settings { default: vec![rate(999_999, 1, Unit::Second)], ..settings(Strategy::TokenBucket) });
    let c = p.counters("192.0.2.1".parse().unwrap(), None).unwrap().iter().next().unwrap();
    assert_eq!((c.interval_us, c.token_bucket(0, false).remaining), (1, 999_999));
}

/// Two counters (global 100/min, status 10/min), in that order.
fn two() -> Counters {
    Policy::leak(Settings { default: vec![Rate::per_minute(100)], ..settings(Strategy::FixedWindow) })
        .counters("192.0.2.1".parse().unwrap(), Some(Page::Status))
        .unwrap()
}

#[test]
fn decision_picks_fewest_remaining_then_later_reset() {
    let c = two();
    let (g, s) = (c.iter().next().unwrap(), c.iter().nth(1).unwrap());
    let fw = |counter: &Counter, count, ttl_ms: u64| counter.fixed_window(count, ttl_ms * 1000);
    let limited = |limit, remaining, reset_secs, refused| Decision::Limited { limit, remaining, reset_secs, refused };
    let d = Decision::from_states(c, &[fw(g, 5, 30_000), fw(s, 3, 59_001)]);
    assert_eq!(d, limited(10, 7, 60, None));
    // At the limit: allowed, nothing remaining.
    let d = Decision::from_states(c, &[fw(g, 50, 1_000), fw(s, 10, 2_000)]);
    assert_eq!(d, limited(10, 0, 2, None));
    // One past it: refused by it, until it refills.
    let d = Decision::from_states(c, &[fw(g, 50, 1_000), fw(s, 11, 2_000)]);
    assert_eq!(d, limited(10, 0, 2, Some(Refusal { by: s, retry_after_secs: 2 })));
    // Both exhausted: the later reset wins the headers, and Retry-After covers both.
    let d = Decision::from_states(c, &[fw(g, 101, 9_000), fw(s, 11, 2_000)]);
    assert_eq!(d, limited(100, 0, 9, Some(Refusal { by: g, retry_after_secs: 9 })));
    // Refused by one counter while another, at its limit, resets later: Retry-After waits for both
    // (one more request would be refused by the other), the message names the one that refused.
    let d = Decision::from_states(c, &[fw(g, 100, 30_000), fw(s, 11, 2_000)]);
    assert_eq!(d, limited(100, 0, 30, Some(Refusal { by: s, retry_after_secs: 30 })));
    // Equal remaining: later reset wins.
    let d = Decision::from_states(c, &[fw(g, 91, 1_000), fw(s, 1, 5_000)]);
    assert_eq!(d, limited(10, 9, 5, None));
}
