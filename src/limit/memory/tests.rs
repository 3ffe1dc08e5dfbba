//! The memory store: both strategies, the refusal cache, and the bound on clients.

use super::*;
use crate::limit::tests::counters;
use crate::limit::{Rate, Refusal};
use crate::route::Page;
use std::time::Duration;

fn key(n: u32) -> ClientKey {
    ClientKey::V4(n)
}

fn fixed(default: &str) -> Counters {
    counters(Strategy::FixedWindow, default, "1/second", None)
}

fn bucket(default: &str) -> Counters {
    counters(Strategy::TokenBucket, default, "1/second", None)
}

/// A store with room for `capacity` clients of up to 4 counters, and its epoch plus a second.
fn store(capacity: usize) -> (MemoryStore, Instant) {
    let store = MemoryStore::new(capacity, 4);
    let t0 = store.epoch + Duration::from_secs(1);
    (store, t0)
}

/// `(remaining, reset_secs, retry_after_secs)` of a decision; retry 0 when allowed.
fn seen(d: Decision) -> (u64, u64, u64) {
    match d {
        Decision::Limited { remaining, reset_secs, refused, .. } => {
            (remaining, reset_secs, refused.map_or(0, |r| r.retry_after_secs))
        }
        Decision::Unlimited => panic!("unlimited"),
    }
}

fn slot(store: &MemoryStore, key: ClientKey, slot: usize) -> Slot {
    store.shard(key).map[&key][slot]
}

#[test]
fn fixed_window_counts_then_refills_whole() {
    let (store, t0) = store(100);
    let c = fixed("3 per 10 seconds");
    let at = |ms| t0 + Duration::from_millis(ms);
    assert_eq!(seen(store.decide(key(1), c, at(0))), (2, 10, 0));
    assert_eq!((slot(&store, key(1), 0).count, slot(&store, key(1), 0).at), (1, 11_000_000));
    assert_eq!(seen(store.decide(key(1), c, at(4_000))), (1, 6, 0));
    assert_eq!(seen(store.decide(key(1), c, at(9_999))), (0, 1, 0), "at the limit: allowed");
    // The window started at the first hit, and ends exactly 10 s later.
    assert_eq!(seen(store.decide(key(1), c, at(10_000))), (2, 10, 0));
    assert_eq!(seen(store.decide(key(2), c, at(10_000))), (2, 10, 0), "clients are independent");
}

#[test]
fn each_counter_has_its_own_window() {
    let (store, t0) = store(100);
    let g = fixed("100/minute");
    let gs = counters(Strategy::FixedWindow, "100/minute", "10/second", Some(Page::Status));
    store.decide(key(1), g, t0);
    store.decide(key(1), gs, t0 + Duration::from_millis(500));
    let s = |k| slot(&store, key(1), k);
    assert_eq!((s(0).count, s(0).at, s(1).count, s(1).at), (2, 61_000_000, 1, 2_500_000));
    store.decide(key(1), gs, t0 + Duration::from_millis(1_500));
    assert_eq!((s(0).count, s(1).count, s(1).at), (3, 1, 3_500_000), "the page's window ended and restarted");
}

/// Refusals across a window reset: refused (from the refusal cache, counting nothing) until the
/// window ends, then counted afresh.
#[test]
fn fixed_window_refusals_last_until_the_window_ends() {
    let (store, t0) = store(100);
    let c = fixed("2 per 10 seconds");
    let at = |ms| t0 + Duration::from_millis(ms);
    store.decide(key(1), c, at(0));
    store.decide(key(1), c, at(1_000));
    assert_eq!(seen(store.decide(key(1), c, at(2_000))), (0, 8, 8), "refused");
    assert_eq!(slot(&store, key(1), 0).count, 3);
    for ms in [2_001, 5_000, 9_999] {
        assert_eq!(
            seen(store.decide(key(1), c, at(ms))),
            (0, (10_000 - ms).div_ceil(1000), (10_000 - ms).div_ceil(1000))
        );
        assert_eq!(store.refused(key(1), c, at(ms)).map(seen), Some(seen(store.decide(key(1), c, at(ms)))));
    }
    assert_eq!(slot(&store, key(1), 0).count, 3, "refused requests were answered from the cache");
    assert_eq!(store.refused(key(1), c, at(10_000)), None, "over at the reset");
    assert_eq!(seen(store.decide(key(1), c, at(10_000))), (1, 10, 0), "a new window");
}

/// SPEC §3's example: `5/minute` allows five at once (the fifth shows Remaining 0, Reset 60), and
/// refuses the sixth with `Retry-After: 12`; a token comes back every 12 s.
#[test]
fn token_bucket_five_per_minute() {
    let (store, t0) = store(100);
    let c = bucket("5/minute");
    for remaining in (0..5).rev() {
        assert_eq!(seen(store.decide(key(1), c, t0)), (remaining, 12 * (5 - remaining), 0));
    }
    let d = store.decide(key(1), c, t0);
    assert_eq!(seen(d), (0, 60, 12));
    let Decision::Limited { refused: Some(Refusal { by, .. }), limit: 5, .. } = d else { panic!("{d:?}") };
    assert_eq!(by.rate, Rate::per_minute(5));
    assert_eq!(seen(store.decide(key(1), c, t0 + Duration::from_secs(5))), (0, 55, 7), "counting down");
    assert_eq!(seen(store.decide(key(1), c, t0 + Duration::from_secs(12))), (0, 60, 0), "one token back");
    assert_eq!(seen(store.decide(key(1), c, t0 + Duration::from_secs(13))), (0, 59, 11));
}

/// A bucket of one token: one request per period, never two.
#[test]
fn token_bucket_of_one() {
    let (store, t0) = store(100);
    let c = bucket("1 per 2 seconds");
    let at = |ms| t0 + Duration::from_millis(ms);
    assert_eq!(seen(store.decide(key(1), c, at(0))), (0, 2, 0));
    assert_eq!(seen(store.decide(key(1), c, at(1))), (0, 2, 2));
    assert_eq!(seen(store.decide(key(1), c, at(1_999))), (0, 1, 1));
    assert_eq!(seen(store.decide(key(1), c, at(2_000))), (0, 2, 0));
}

/// A refused request takes no token from any counter, not even from those that had one.
#[test]
fn token_bucket_refusals_take_nothing() {
    let (store, t0) = store(100);
    let c = counters(Strategy::TokenBucket, "100/minute", "1/minute", Some(Page::Health));
    store.decide(key(1), c, t0);
    let global = slot(&store, key(1), 0).at;
    assert_eq!(seen(store.decide(key(1), c, t0)).2, 60, "the page's token is gone");
    assert_eq!(slot(&store, key(1), 0).at, global, "the global counter gave nothing");
    let g = counters(Strategy::TokenBucket, "100/minute", "1/minute", None);
    assert_eq!(seen(store.decide(key(1), g, t0)).0, 98, "the global counter still has its tokens");
}

/// The refusal cache: a refused counter refuses that client's requests touching it, counting
/// nothing, until Retry-After; requests not touching it go on as before.
#[test]
fn refusals_are_remembered_per_counter() {
    let (store, t0) = store(100);
    let status = counters(Strategy::FixedWindow, "100/minute", "1/minute", Some(Page::Status));
    let health = counters(Strategy::FixedWindow, "100/minute", "1/minute", Some(Page::Health));
    store.decide(key(1), status, t0);
    assert!(store.refused(key(1), status, t0).is_none(), "allowed: nothing to remember");
    assert_eq!(seen(store.decide(key(1), status, t0)).2, 60);
    assert!(store.refused(key(1), status, t0).is_some());
    assert!(store.refused(key(1), health, t0).is_none(), "another page's counters");
    assert!(store.refused(key(2), status, t0).is_none(), "another client");
    assert_eq!(seen(store.decide(key(1), health, t0)).0, 0, "health counted: its counter has 1 of 1");
    assert_eq!(slot(&store, key(1), 0).count, 3, "global counted status twice and health once");
}

#[test]
fn another_store_refusals_are_remembered() {
    let (store, t0) = store(100);
    let c = bucket("5/minute");
    let states: Vec<CounterState> = c.iter().map(|c| c.token_bucket(60_000_000, true)).collect();
    store.remember(key(7), c, &states, t0);
    assert_eq!(store.refused(key(7), c, t0 + Duration::from_secs(2)).map(seen), Some((0, 58, 10)));
    assert_eq!(store.refused(key(7), c, t0 + Duration::from_secs(12)), None);
    // Only counters that can't take one more are remembered.
    let allowed: Vec<CounterState> = c.iter().map(|c| c.token_bucket(12_000_000, false)).collect();
    store.remember(key(8), c, &allowed, t0);
    assert_eq!(store.refused(key(8), c, t0), None);
}

/// The refusal cache's bound is the store's: many refused clients never grow it past capacity.
#[test]
fn the_refusal_cache_is_bounded() {
    let capacity = 64;
    let (store, t0) = store(capacity);
    let c = bucket("1/hour");
    let refused: Vec<CounterState> = c.iter().map(|c| c.token_bucket(3_600_000_000, true)).collect();
    for n in 0..10_000 {
        store.remember(key(n), c, &refused, t0);
    }
    assert!(store.clients() <= capacity.div_ceil(SHARDS) * SHARDS, "{}", store.clients());
    assert!(store.refused(key(9_999), c, t0).is_some(), "the newest is there");
}

#[test]
fn capacity_is_a_hard_bound() {
    let capacity = 64;
    let (store, t0) = store(capacity);
    let c = fixed("1/hour");
    for n in 0..10_000 {
        store.decide(key(n), c, t0);
    }
    // Each shard holds at most capacity/SHARDS, rounded up.
    assert!(store.clients() <= capacity.div_ceil(SHARDS) * SHARDS, "{}", store.clients());
    assert!(store.clients() >= SHARDS, "every shard is in use: {}", store.clients());
}

/// Found by the address-flood test (tests/hostile): once full of live clients, a shard was
/// scanned whole for every new client.
#[test]
fn a_full_shard_is_not_scanned_for_every_new_client() {
    let capacity = 64 * SHARDS;
    let (store, t0) = store(capacity);
    let c = fixed("1/hour");
    for n in 0..20 * capacity as u32 {
        store.decide(key(n), c, t0);
    }
    let purges: u64 = store.shards.iter().map(|s| lock(s).purges).sum();
    // One scheduled purge per shard, then one per capacity/8 newcomers to each shard.
    assert!(purges <= SHARDS as u64 * (1 + 20 * 8), "{purges} purges for {} clients", 20 * capacity);
    assert!(store.clients() <= capacity);
}

#[test]
fn a_full_shard_still_purges_expired_clients_before_evicting() {
    let (store, t0) = store(8 * SHARDS);
    let short = fixed("1/second");
    let long = fixed("1/hour");
    let stays = key(u32::MAX);
    let shard_of = |k| store.shard_index(k);
    let same: Vec<ClientKey> = (0..).map(key).filter(|&k| shard_of(k) == shard_of(stays)).take(8).collect();
    store.decide(stays, long, t0);
    for &k in &same[..7] {
        store.decide(k, short, t0);
    }
    assert_eq!(lock(&store.shards[shard_of(stays)]).map.len(), 8, "full");
    // The short windows have ended, the next scheduled purge is not due: the newcomer's shard
    // makes room by purging, not by evicting the client whose window is still open.
    let later = t0 + Duration::from_secs(2);
    store.decide(same[7], long, later);
    assert_eq!(slot(&store, stays, 0).count, 1, "not evicted");
    assert_eq!(lock(&store.shards[shard_of(stays)]).map.len(), 2);
}

#[test]
fn neighbouring_addresses_spread_over_all_shards() {
    let (store, _) = store(100_000);
    for keys in [
        (0..16_000u32).map(|n| ClientKey::V4(0xC000_0200 + n)).collect::<Vec<_>>(),
        (0..16_000u64).map(|n| ClientKey::V6Prefix(0x2001_0db8_0000_0000 + n)).collect(),
        (0..16_000u32).map(|n| ClientKey::V4(n << 16)).collect(),
    ] {
        let mut per_shard = [0usize; SHARDS];
        for k in keys {
            per_shard[store.shard_index(k)] += 1;
        }
        assert!(per_shard.iter().all(|&n| (800..=1200).contains(&n)), "{per_shard:?}");
    }
}

#[test]
fn expired_clients_are_purged() {
    let (store, t0) = store(100_000);
    let c = fixed("1/second");
    for n in 0..1_000 {
        store.decide(key(n), c, t0);
    }
    assert_eq!(store.clients(), 1_000);
    let later = t0 + LIMITER_PURGE_INTERVAL + Duration::from_secs(1);
    // Touching each shard once after the purge interval drops every expired client.
    for n in 1_000..2_000 {
        store.decide(key(n), c, later);
    }
    assert_eq!(store.clients(), 1_000);
}

// ---------------------------------------------------------------------------------------------
// The token bucket against a plain reference model.

/// SPEC §3's bucket, written plainly: a level (microseconds of tokens, `T` per token, at most
/// `P`) that refills continuously; a request takes `T` from every bucket, only if each has it.
struct Bucket {
    level: u64,
    last: u64,
    interval: u64,
    period: u64,
    limit: u64,
}

impl Bucket {
    fn refill(&mut self, now: u64) {
        self.level = (self.level + (now - self.last)).min(self.period);
        self.last = now;
    }

    fn state(&self, over: bool) -> CounterState {
        CounterState {
            remaining: (self.level / self.interval).min(self.limit),
            reset_us: self.period - self.level,
            wait_us: self.interval.saturating_sub(self.level),
            over,
        }
    }
}

/// A small deterministic generator (splitmix64), so a failure names its seed and replays.
fn next(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// For random limits (one to three counters, some with periods that N doesn't divide) and random
/// arrival times (bursts, gaps, long pauses), the memory store's decisions, refusal cache
/// included, equal the reference model's: 2,000 sequences of 200 requests.
#[test]
fn token_bucket_equals_the_reference_model() {
    const LIMITS: [&str; 8] = [
        "1/second",
        "3/second",
        "5/minute",
        "7/minute",
        "2 per 3 seconds",
        "10/hour",
        "100/minute",
        "13 per 5 seconds",
    ];
    let mut decisions = 0;
    for seed in 0..2_000u64 {
        let mut x = seed;
        let n = 1 + (next(&mut x) % 3) as usize;
        let list: Vec<&str> = (0..n).map(|_| LIMITS[(next(&mut x) % 8) as usize]).collect();
        let c = bucket(&list.join(";"));
        let (store, t0) = store(16);
        let mut model: Vec<Bucket> = c
            .iter()
            .map(|c| Bucket {
                level: c.period_us,
                last: 0,
                interval: c.interval_us,
                period: c.period_us,
                limit: c.rate.limit.into(),
            })
            .collect();
        let mut now = 0u64;
        for _ in 0..200 {
            now += match next(&mut x) % 10 {
                0..=4 => 0,
                5..=7 => next(&mut x) % 500_000,
                8 => next(&mut x) % 5_000_000,
                _ => next(&mut x) % 120_000_000,
            };
            model.iter_mut().for_each(|b| b.refill(now));
            let allowed = model.iter().all(|b| b.level >= b.interval);
            if allowed {
                model.iter_mut().for_each(|b| b.level -= b.interval);
            }
            let states: Vec<CounterState> = model.iter().map(|b| b.state(!allowed && b.level < b.interval)).collect();
            let want = Decision::from_states(c, &states);
            let got = store.decide(key(1), c, t0 + Duration::from_micros(now));
            assert_eq!(got, want, "seed {seed}, limits {list:?}, at {now} µs");
            decisions += 1;
        }
    }
    eprintln!("token bucket vs reference model: {decisions} decisions agreed");
}
