//! The in-memory store: fixed-window counters per client, shared by all workers (so limits are
//! per process, not per thread), in a few mutex-guarded shards.
//!
//! Bounded: each shard drops expired entries every `LIMITER_PURGE_INTERVAL` and when it is full
//! (at most once per `capacity / 8` newcomers, so that a shard full of live clients is not scanned
//! for every one); a shard still full after that evicts an arbitrary entry. A flood of distinct clients thus
//! costs at most `MAX_LIMITER_ENTRIES` entries, and its worst effect is giving some clients a fresh
//! window early (failing open for them), never refusing a client it has not counted.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::{ClientKey, CounterId, CounterState, Counters, Decision, Rate};
use crate::limits::{LIMITER_PURGE_INTERVAL, MAX_LIMITER_ENTRIES};

/// Enough shards that workers rarely wait on each other, few enough to scan cheaply.
const SHARDS: usize = 16;

pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    /// Picks a key's shard, mixed with a random per-process seed: clients choose their keys
    /// (addresses), and must not be able to aim every key at one shard. A seeded bit mixer rather
    /// than a second SipHash (the map's own hasher stays SipHash, where collisions would cost
    /// more than a shard's share of the lock): this runs for every request.
    shard_seed: u64,
    /// Times are kept as milliseconds since this instant.
    epoch: Instant,
    shard_capacity: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<ClientKey, Entry>,
    next_purge_ms: u64,
    /// New clients since the last purge.
    added_since_purge: usize,
    /// Purges so far (for tests: they are what a flood of new clients could make expensive).
    purges: u64,
}

/// One client's windows, indexed by `CounterId`.
#[derive(Default, Clone, Copy)]
struct Entry {
    windows: [Window; CounterId::COUNT],
}

#[derive(Default, Clone, Copy)]
struct Window {
    count: u64,
    /// When the window ends; 0 (the epoch) for a window never used, which reads as ended.
    reset_at_ms: u64,
}

impl Entry {
    fn expired(&self, now_ms: u64) -> bool {
        self.windows.iter().all(|w| w.reset_at_ms <= now_ms)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("clients", &self.clients()).finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_capacity(MAX_LIMITER_ENTRIES)
    }
}

impl MemoryStore {
    /// A store holding at most `capacity` clients (rounded up to a multiple of the shard count).
    pub fn with_capacity(capacity: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_seed: RandomState::new().hash_one(0u8),
            epoch: Instant::now(),
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// Counts one request from `key` against each of `counters`, returning each counter's state
    /// (in the same order; entries past `counters.len()` are unused).
    pub fn hit(&self, key: ClientKey, counters: &[(CounterId, Rate)], now: Instant) -> [CounterState; 2] {
        // Saturating: `now` may come from another worker's slightly older clock read.
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut shard = self.shard(key);
        shard.make_room(key, now_ms, self.shard_capacity);
        let entry = shard.map.entry(key).or_default();
        let mut out = [CounterState { count: 0, ttl_ms: 0 }; 2];
        for (slot, &(id, rate)) in out.iter_mut().zip(counters) {
            let w = &mut entry.windows[id.index()];
            if w.reset_at_ms <= now_ms {
                *w = Window { count: 0, reset_at_ms: now_ms + u64::from(rate.period_secs) * 1000 };
            }
            w.count = w.count.saturating_add(1);
            *slot = CounterState { count: w.count, ttl_ms: w.reset_at_ms - now_ms };
        }
        out
    }

    /// Counts one request against `counters` and decides: what every store falls back to.
    pub fn decide(&self, key: ClientKey, counters: &Counters, now: Instant) -> Decision {
        let counters = counters.as_slice();
        let states = self.hit(key, counters, now);
        Decision::from_states(counters, &states[..counters.len()])
    }

    /// Clients currently remembered (expired ones included until purged).
    pub fn clients(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    fn shard_index(&self, key: ClientKey) -> usize {
        let bits = match key {
            ClientKey::V4(a) => u64::from(a),
            ClientKey::V6Prefix(p) => p.rotate_left(32) ^ 0x5555_5555, // apart from every IPv4 key
        };
        // splitmix64's finalizer: every input bit moves every output bit.
        let mut x = bits ^ self.shard_seed;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        (x % SHARDS as u64) as usize
    }

    fn shard(&self, key: ClientKey) -> MutexGuard<'_, Shard> {
        let index = self.shard_index(key);
        lock(&self.shards[index])
    }
}

impl Shard {
    /// Purges on schedule, and makes sure a new `key` fits under `capacity`.
    fn make_room(&mut self, key: ClientKey, now_ms: u64, capacity: usize) {
        let new = !self.map.contains_key(&key);
        self.added_since_purge += usize::from(new);
        let full = new && self.map.len() >= capacity;
        // Purging when full is amortized over capacity/8 newcomers: found by the address-flood
        // test (tests/hostile), where a shard full of live clients was scanned whole for each new
        // one, making every new client ~10x as costly as before the cap.
        let purge_when_full = full && self.added_since_purge >= (capacity / 8).max(1);
        if purge_when_full || now_ms >= self.next_purge_ms {
            let before = self.map.len();
            self.map.retain(|_, e| !e.expired(now_ms));
            self.next_purge_ms = now_ms + LIMITER_PURGE_INTERVAL.as_millis() as u64;
            self.added_since_purge = 0;
            self.purges += 1;
            let purged = before - self.map.len();
            if purged > 0 {
                log::debug!("limiter: purged {purged} expired clients, {} remain in this shard", self.map.len());
            }
        }
        if self.map.len() >= capacity && !self.map.contains_key(&key) {
            // Still full of live clients: let one go early rather than grow or refuse the newcomer.
            if let Some(&victim) = self.map.keys().next() {
                self.map.remove(&victim);
                log::debug!("limiter: shard full ({capacity} clients), evicted one");
            }
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of some counters; the map itself
/// is still sound, and limiting must go on.
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const G: CounterId = CounterId::Global;
    const S: CounterId = CounterId::Page(crate::route::Page::Status);

    fn key(n: u32) -> ClientKey {
        ClientKey::V4(n)
    }

    #[test]
    fn counts_within_a_window_then_refills_whole() {
        let store = MemoryStore::with_capacity(100);
        let t0 = store.epoch + Duration::from_secs(1);
        let rate = Rate { limit: 3, period_secs: 10 };
        let c = [(G, rate)];
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(store.hit(key(1), &c, at(0))[0], CounterState { count: 1, ttl_ms: 10_000 });
        assert_eq!(store.hit(key(1), &c, at(4_000))[0], CounterState { count: 2, ttl_ms: 6_000 });
        assert_eq!(store.hit(key(1), &c, at(9_999))[0], CounterState { count: 3, ttl_ms: 1 });
        // The window started at the first hit, and ends exactly 10 s later.
        assert_eq!(store.hit(key(1), &c, at(10_000))[0], CounterState { count: 1, ttl_ms: 10_000 });
        assert_eq!(store.hit(key(2), &c, at(10_000))[0].count, 1, "clients are independent");
    }

    #[test]
    fn each_counter_has_its_own_window() {
        let store = MemoryStore::with_capacity(100);
        let t0 = store.epoch + Duration::from_secs(1);
        let g = (G, Rate { limit: 100, period_secs: 60 });
        let s = (S, Rate { limit: 10, period_secs: 1 });
        store.hit(key(1), &[g], t0);
        let out = store.hit(key(1), &[g, s], t0 + Duration::from_millis(500));
        assert_eq!(out, [CounterState { count: 2, ttl_ms: 59_500 }, CounterState { count: 1, ttl_ms: 1_000 }]);
        let out = store.hit(key(1), &[g, s], t0 + Duration::from_millis(1_500));
        assert_eq!(out, [CounterState { count: 3, ttl_ms: 58_500 }, CounterState { count: 1, ttl_ms: 1_000 }]);
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let capacity = 64;
        let store = MemoryStore::with_capacity(capacity);
        let t0 = store.epoch + Duration::from_secs(1);
        let c = [(G, Rate { limit: 1, period_secs: 3600 })];
        for n in 0..10_000 {
            store.hit(key(n), &c, t0);
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
        let store = MemoryStore::with_capacity(capacity);
        let t0 = store.epoch + Duration::from_secs(1);
        let c = [(G, Rate { limit: 1, period_secs: 3600 })];
        for n in 0..20 * capacity as u32 {
            store.hit(key(n), &c, t0);
        }
        let purges: u64 = store.shards.iter().map(|s| lock(s).purges).sum();
        // One scheduled purge per shard, then one per capacity/8 newcomers to each shard.
        assert!(purges <= SHARDS as u64 * (1 + 20 * 8), "{purges} purges for {} clients", 20 * capacity);
        assert!(store.clients() <= capacity);
    }

    #[test]
    fn a_full_shard_still_purges_expired_clients_before_evicting() {
        let store = MemoryStore::with_capacity(8 * SHARDS);
        let t0 = store.epoch + Duration::from_secs(1);
        let short = [(G, Rate { limit: 1, period_secs: 1 })];
        let long = [(G, Rate { limit: 1, period_secs: 3600 })];
        let stays = key(u32::MAX);
        let shard_of = |k| store.shard_index(k);
        let same: Vec<ClientKey> = (0..).map(key).filter(|&k| shard_of(k) == shard_of(stays)).take(8).collect();
        store.hit(stays, &long, t0);
        for &k in &same[..7] {
            store.hit(k, &short, t0);
        }
        assert_eq!(lock(&store.shards[shard_of(stays)]).map.len(), 8, "full");
        // The short windows have ended, the next scheduled purge is not due: the newcomer's shard
        // makes room by purging, not by evicting the client whose window is still open.
        let later = t0 + Duration::from_secs(2);
        store.hit(same[7], &long, later);
        assert_eq!(store.hit(stays, &long, later)[0].count, 2, "not evicted");
        assert_eq!(lock(&store.shards[shard_of(stays)]).map.len(), 2);
    }

    #[test]
    fn neighbouring_addresses_spread_over_all_shards() {
        let store = MemoryStore::default();
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
        let store = MemoryStore::with_capacity(100_000);
        let t0 = store.epoch + Duration::from_secs(1);
        let c = [(G, Rate { limit: 1, period_secs: 1 })];
        for n in 0..1_000 {
            store.hit(key(n), &c, t0);
        }
        assert_eq!(store.clients(), 1_000);
        let later = t0 + LIMITER_PURGE_INTERVAL + Duration::from_secs(1);
        // Touching each shard once after the purge interval drops every expired client.
        for n in 1_000..2_000 {
            store.hit(key(n), &c, later);
        }
        assert_eq!(store.clients(), 1_000);
    }
}
