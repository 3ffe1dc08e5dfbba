//! The server's own metrics (SPEC §6, `METRICS=emf`): what a worker counts as it queues responses,
//! the latency histogram, and the CloudWatch Embedded Metric Format line written at each interval.
//!
//! Owns: `Counts` (a worker's own: plain fields that only its worker touches, bumped with no lock,
//! atomic or allocation), the histogram and its error bound, the EMF line, and what
//! `METRICS_NAMESPACE` and `METRICS_SERVICE` accept. Does not own: the timer, the tally the workers
//! merge their counts into, or the figures read at the line's time (open connections, the Redis
//! store's) — `server` has those.
//!
//! EMF: one JSON object per line on standard output; CloudWatch Logs turns each into metric data
//! points, so the server needs no agent, no API call and no credentials
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>).

use std::fmt::Write as _;
use std::time::Duration;

use crate::logger::{self, Style};

/// What `METRICS=emf` is told at startup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    pub namespace: String,
    pub service: String,
}

/// Longest namespace and service name: CloudWatch's limit for a namespace (SPEC §1 applies it to both).
const MAX_NAME: usize = 255;

/// `METRICS_NAMESPACE`: 1 to 255 of `A-Za-z0-9.-_/#:` (CloudWatch's namespace characters).
pub fn parse_namespace(v: &str) -> Option<String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b".-_/#:".contains(&b);
    (!v.is_empty() && v.len() <= MAX_NAME && v.bytes().all(ok)).then(|| v.to_owned())
}

/// `METRICS_SERVICE`: 1 to 255 printable ASCII characters (spaces included; escaped in the line).
pub fn parse_service(v: &str) -> Option<String> {
    let ok = |b: u8| b == b' ' || b.is_ascii_graphic();
    (!v.is_empty() && v.len() <= MAX_NAME && v.bytes().all(ok)).then(|| v.to_owned())
}

// The latency histogram, in microseconds. Values below `EXACT` have a bucket each; above, every
// power of two [2^e, 2^(e+1)) is cut into `SUB` equal buckets of width 2^e / SUB. A bucket's width
// is then at most 1/SUB = 6.25% of its smallest value, and a quantile reported as the middle of
// its bucket is off by at most half a width: 1/32 (3.1%) of the true value, inside SPEC §6's 10%.
// Reporting the middle never exceeds the exact maximum: it is clamped to it (`quantile`).

/// Values with a bucket of their own: 0 to 31 µs.
const EXACT: u64 = 32;
/// Buckets per power of two above `EXACT` (a power of two itself: `SUB_BITS` bits of mantissa).
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// 2^36 µs is 19 hours, far past any request (the header timeout is at most an hour): larger values
/// share the last bucket; `LatencyMax` is exact whatever the value.
const TOP_EXP: u32 = 36;
const FIRST_EXP: u32 = EXACT.trailing_zeros();
const BUCKETS: usize = (EXACT + (TOP_EXP - FIRST_EXP) as u64 * SUB) as usize;

/// The bucket of `us`.
fn bucket(us: u64) -> usize {
    if us < EXACT {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // us is in [2^exp, 2^(exp+1))
    if exp >= TOP_EXP {
        return BUCKETS - 1;
    }
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1); // the SUB_BITS bits after the leading one
    (EXACT + u64::from(exp - FIRST_EXP) * SUB + sub) as usize
}

/// The smallest value in bucket `i` and the bucket's width.
fn bucket_bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < EXACT {
        return (i, 1);
    }
    let (octave, sub) = ((i - EXACT) / SUB, (i - EXACT) % SUB);
    let width = 1 << (u64::from(FIRST_EXP) + octave - u64::from(SUB_BITS));
    ((SUB + sub) * width, width)
}

/// One worker's counts since it last handed them to the server's tally, or the tally itself: the
/// sum of the workers' counts since the last metrics line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Responses queued, parser errors included.
    pub requests: u64,
    /// Responses by class: 2xx, 3xx, 4xx, 5xx.
    pub classes: [u64; 4],
    /// 429s.
    pub rate_limited: u64,
    /// Checks the worker decided from memory while the Redis store was configured (`Limiter`).
    pub redis_fallbacks: u64,
    latency: [u64; BUCKETS],
    latency_max: u64,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            requests: 0,
            classes: [0; 4],
            rate_limited: 0,
            redis_fallbacks: 0,
            latency: [0; BUCKETS],
            latency_max: 0,
        }
    }
}

impl Counts {
    /// A response was queued, `us` microseconds after its request's first byte: the whole cost of
    /// metrics on the request path (a few additions in the worker's own memory).
    pub fn record(&mut self, status: u16, us: u64) {
        self.count(status);
        self.latency[bucket(us)] += 1;
        self.latency_max = self.latency_max.max(us);
    }

    /// A response with no latency to show (the 500 sent after a bug's panic, which has no access
    /// record either).
    pub fn count(&mut self, status: u16) {
        self.requests += 1;
        if let Some(class) = self.classes.get_mut(usize::from(status / 100).wrapping_sub(2)) {
            *class += 1;
        }
        self.rate_limited += u64::from(status == 429);
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        for (a, b) in self.classes.iter_mut().zip(other.classes) {
            *a += b;
        }
        self.rate_limited += other.rate_limited;
        self.redis_fallbacks += other.redis_fallbacks;
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a += b;
        }
        self.latency_max = self.latency_max.max(other.latency_max);
    }

    /// Nothing counted.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.redis_fallbacks == 0
    }

    /// The latency below which `percent`% of the recorded ones lie (nearest rank: the
    /// ⌈percent·n/100⌉-th smallest), as its bucket's middle but never above the maximum: within
    /// 1/32 of the exact value (see `SUB`). `None` when nothing was recorded.
    pub fn latency_percentile(&self, percent: u64) -> Option<u64> {
        let n: u64 = self.latency.iter().sum();
        let rank = (n * percent).div_ceil(100).max(1);
        let mut seen = 0;
        for (i, &count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_bounds(i);
                return Some((low + width / 2).min(self.latency_max));
            }
        }
        None
    }

    /// The largest latency recorded, exactly.
    pub fn latency_max(&self) -> Option<u64> {
        self.latency.iter().any(|&c| c > 0).then_some(self.latency_max)
    }
}

/// What a metrics line shows besides the counts, read when it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gauges {
    /// Open client connections, all workers together.
    pub connections: u64,
    /// With the Redis store only.
    pub redis: Option<Redis>,
}

/// The Redis store's figures for one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redis {
    /// Checks Redis answered (its counters moved), and the round trips that carried them.
    pub checks: u64,
    pub round_trips: u64,
    /// Whether checks go to Redis now (false while they fall back to memory).
    pub up: bool,
}

const COUNT: &str = "Count";
const MICROSECONDS: &str = "Microseconds";
const NONE: &str = "None";

/// The metrics of one line, in SPEC §6's order: name, unit, value. The latency metrics are left
/// out of a line whose interval answered no request (there is no latency to report, and a 0 would
/// drag CloudWatch's statistics down), and the Redis ones without the Redis store.
fn metrics(counts: &Counts, gauges: &Gauges) -> Vec<(&'static str, &'static str, u64)> {
    let [s2, s3, s4, s5] = counts.classes;
    let mut out = vec![
        ("Requests", COUNT, counts.requests),
        ("Status2xx", COUNT, s2),
        ("Status3xx", COUNT, s3),
        ("Status4xx", COUNT, s4),
        ("Status5xx", COUNT, s5),
        ("RateLimited", COUNT, counts.rate_limited),
    ];
    if let (Some(p50), Some(p99), Some(max)) =
        (counts.latency_percentile(50), counts.latency_percentile(99), counts.latency_max())
    {
        out.extend([
            ("LatencyP50", MICROSECONDS, p50),
            ("LatencyP99", MICROSECONDS, p99),
            ("LatencyMax", MICROSECONDS, max),
        ]);
    }
    out.push(("Connections", COUNT, gauges.connections));
    if let Some(redis) = gauges.redis {
        out.extend([
            ("RedisChecks", COUNT, redis.checks),
            ("RedisRoundTrips", COUNT, redis.round_trips),
            ("RedisFallbacks", COUNT, counts.redis_fallbacks),
            ("RedisUp", NONE, u64::from(redis.up)),
        ]);
    }
    out
}

/// The EMF line (newline included) for `counts` and `gauges` at `unix_ms`, exactly SPEC §6's shape:
/// `{"_aws":{"Timestamp":…,"CloudWatchMetrics":[{"Namespace":…,"Dimensions":[["Service"]],
/// "Metrics":[{"Name":…,"Unit":…},…]}]},"Service":…,"Requests":…,…}`. Once per interval: the
/// `Vec` and `write!`s are of no account.
pub fn emf_line(settings: &Settings, unix_ms: i64, counts: &Counts, gauges: &Gauges, out: &mut String) {
    let metrics = metrics(counts, gauges);
    // Braces by `push_str`, not `{{` in a format string: what opens here visibly closes below.
    out.push_str("{\"_aws\":{\"Timestamp\":");
    let _ = write!(out, "{unix_ms}");
    out.push_str(",\"CloudWatchMetrics\":[{\"Namespace\":\"");
    let _ = logger::escape(out, settings.namespace.as_bytes(), Style::Json);
    out.push_str("\",\"Dimensions\":[[\"Service\"]],\"Metrics\":[");
    for (i, (name, unit, _)) in metrics.iter().enumerate() {
        out.push_str(if i == 0 { "" } else { "," });
        out.push('{');
        let _ = write!(out, "\"Name\":\"{name}\",\"Unit\":\"{unit}\"");
        out.push('}');
    }
    out.push_str("]}]},\"Service\":\"");
    let _ = logger::escape(out, settings.service.as_bytes(), Style::Json);
    out.push('"');
    for (name, _, value) in &metrics {
        let _ = write!(out, ",\"{name}\":{value}");
    }
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings { interval: Duration::from_secs(60), namespace: "zayzoon".into(), service: "web \"a\"\\b".into() }
    }

    #[test]
    fn buckets_cover_every_value_in_order_and_narrowly() {
        assert_eq!(BUCKETS, 528);
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (low, width) = bucket_bounds(i);
            assert_eq!(low, expected_low, "bucket {i} starts where the one before ended");
            assert!(width == 1 || width * SUB <= low, "bucket {i}: width {width} is over 1/16 of {low}");
            for v in [low, low + width / 2, low + width - 1] {
                assert_eq!(bucket(v), i, "{v}");
            }
            expected_low = low + width;
        }
        assert_eq!(expected_low, 1 << TOP_EXP);
        assert_eq!(bucket(1 << TOP_EXP), BUCKETS - 1, "larger values share the last bucket");
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    /// The exact nearest-rank percentile of `values`.
    fn exact(values: &[u64], percent: u64) -> u64 {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let rank = (sorted.len() as u64 * percent).div_ceil(100).max(1);
        sorted[rank as usize - 1]
    }

    #[test]
    fn percentiles_are_within_a_thirty_second_of_the_exact_ones() {
        // Spreads from a few µs to minutes, uniform and skewed, some with a far outlier.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in [1, 2, 3, 10, 99, 100, 101, 1000, 12_345] {
            for shape in 0..4 {
                let values: Vec<u64> = (0..n)
                    .map(|i| match shape {
                        0 => next() % 200,
                        1 => 1 << (next() % 30),
                        2 => next() % 100_000_000,
                        _ if i == 0 => 3_000_000_000,
                        _ => 40 + next() % 2_000,
                    })
                    .collect();
                let mut counts = Counts::default();
                for &v in &values {
                    counts.record(200, v);
                }
                for percent in [50, 99, 100] {
                    let (want, got) = (exact(&values, percent), counts.latency_percentile(percent).unwrap());
                    let error = want.abs_diff(got) as f64 / want.max(1) as f64;
                    assert!(error <= 1.0 / 32.0, "n {n} shape {shape} p{percent}: {got} for {want}");
                }
                assert_eq!(counts.latency_max(), values.iter().max().copied());
            }
        }
        assert_eq!(Counts::default().latency_percentile(50), None);
        assert_eq!(Counts::default().latency_max(), None);
    }

    #[test]
    fn counts_by_class_and_merged() {
        let mut a = Counts::default();
        for status in [200, 200, 301, 308, 404, 429, 429, 400, 500, 505] {
            a.record(status, 10);
        }
        a.count(500);
        assert_eq!((a.requests, a.classes, a.rate_limited), (11, [2, 2, 4, 3], 2));
        let mut b = Counts { redis_fallbacks: 4, ..Counts::default() };
        b.record(200, 1_000);
        b.add(&a);
        assert_eq!((b.requests, b.classes, b.rate_limited, b.redis_fallbacks), (12, [3, 2, 4, 3], 2, 4));
        assert_eq!(b.latency_max(), Some(1_000));
        assert_eq!(b.latency_percentile(50), Some(10));
        assert!(Counts::default().is_empty() && !b.is_empty());
        assert!(!Counts { redis_fallbacks: 1, ..Counts::default() }.is_empty());
    }

    #[test]
    fn emf_line_has_spec_shape() {
        let mut counts = Counts::default();
        counts.record(200, 40);
        counts.record(429, 8);
        let gauges = Gauges { connections: 3, redis: None };
        let mut out = String::new();
        emf_line(&settings(), 1_795_765_457_042, &counts, &gauges, &mut out);
        assert_eq!(
            out,
            "{\"_aws\":{\"Timestamp\":1795765457042,\"CloudWatchMetrics\":[{\"Namespace\":\"zayzoon\",\
             \"Dimensions\":[[\"Service\"]],\"Metrics\":[{\"Name\":\"Requests\",\"Unit\":\"Count\"},\
             {\"Name\":\"Status2xx\",\"Unit\":\"Count\"},{\"Name\":\"Status3xx\",\"Unit\":\"Count\"},\
             {\"Name\":\"Status4xx\",\"Unit\":\"Count\"},{\"Name\":\"Status5xx\",\"Unit\":\"Count\"},\
             {\"Name\":\"RateLimited\",\"Unit\":\"Count\"},{\"Name\":\"LatencyP50\",\"Unit\":\"Microseconds\"},\
             {\"Name\":\"LatencyP99\",\"Unit\":\"Microseconds\"},{\"Name\":\"LatencyMax\",\"Unit\":\"Microseconds\"},\
             {\"Name\":\"Connections\",\"Unit\":\"Count\"}]}]},\"Service\":\"web \\\"a\\\"\\\\b\",\
             \"Requests\":2,\"Status2xx\":1,\"Status3xx\":0,\"Status4xx\":1,\"Status5xx\":0,\"RateLimited\":1,\
             \"LatencyP50\":8,\"LatencyP99\":40,\"LatencyMax\":40,\"Connections\":3}\n"
        );
    }

    #[test]
    fn emf_line_without_requests_has_no_latency_and_with_redis_has_its_metrics() {
        let counts = Counts { redis_fallbacks: 7, ..Counts::default() };
        let redis = Redis { checks: 5, round_trips: 2, up: false };
        let mut out = String::new();
        emf_line(&settings(), 0, &counts, &Gauges { connections: 0, redis: Some(redis) }, &mut out);
        assert!(!out.contains("Latency"), "{out}");
        assert!(out.contains("{\"Name\":\"RedisUp\",\"Unit\":\"None\"}]}]}"), "{out}");
        assert!(
            out.ends_with(
                "\"Requests\":0,\"Status2xx\":0,\"Status3xx\":0,\"Status4xx\":0,\"Status5xx\":0,\"RateLimited\":0,\
                 \"Connections\":0,\"RedisChecks\":5,\"RedisRoundTrips\":2,\"RedisFallbacks\":7,\"RedisUp\":0}\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn names_at_and_past_their_limits() {
        let long = "a".repeat(255);
        assert_eq!(parse_namespace(&long).as_deref(), Some(long.as_str()));
        assert_eq!(parse_namespace(&format!("{long}a")), None);
        assert_eq!(parse_namespace("My/App.v2-x_y#1:z").as_deref(), Some("My/App.v2-x_y#1:z"));
        for bad in ["", "a b", "a\"b", "é", "a\tb", "a,b"] {
            assert_eq!(parse_namespace(bad), None, "{bad:?}");
        }
        assert_eq!(parse_service(&long).as_deref(), Some(long.as_str()));
        assert_eq!(parse_service(&format!("{long}a")), None);
        assert_eq!(parse_service("web \"1\" \\ ~").as_deref(), Some("web \"1\" \\ ~"));
        for bad in ["", "a\tb", "a\nb", "a\u{7f}", "caf\u{e9}"] {
            assert_eq!(parse_service(bad), None, "{bad:?}");
        }
    }
}
