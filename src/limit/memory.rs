//! The in-memory store: every client's counters, shared by all workers (so limits are per process,
//! not per thread), in a few mutex-guarded shards; and the refusal cache, which sits in front of
//! both stores and lives in the same records, so that a request takes one lock either way.
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

use super::{ClientKey, CounterState, Counters, Decision, MAX_COUNTERS, Refusal, Strategy, secs};
use crate::limits::LIMITER_PURGE_INTERVAL;

/// Enough shards that workers rarely wait on each other, few enough to scan cheaply.
const SHARDS: usize = 16;

pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    /// Picks a key's shard, mixed with a random per-process seed: clients choose their keys
    /// (addresses), and must not be able to aim every key at one shard. A seeded bit mixer rather
    /// than a second SipHash (the map's own hasher stays SipHash, where collisions would cost
    /// more than a shard's share of the lock): this runs for every request.
    shard_seed: u64,
    /// Times are kept as microseconds since this instant.
    epoch: Instant,
    shard_capacity: usize,
    /// Counters per client (`Policy::slots`).
    slots: usize,
}

#[derive(Default)]
struct Shard {
    /// Per client, one `Slot` per counter, by `Counter::slot`.
    map: HashMap<ClientKey, Box<[Slot]>>,
    next_purge_us: u64,
    /// New clients since the last purge.
    added_since_purge: usize,
    /// Purges so far (for tests: they are what a flood of new clients could make expensive).
    purges: u64,
}

/// One counter of one client. All times are microseconds since the store's epoch.
#[derive(Default, Clone, Copy, Debug)]
struct Slot {
    /// Fixed window: requests in the window.
    count: u64,
    /// Fixed window: when the window ends. Token bucket: the TAT. 0 (the epoch): never used, which
    /// reads as ended (or full).
    at: u64,
    /// A refusal remembered: until when, and when the counter resets (for `RateLimit-Reset`).
    refused_until: u64,
    refused_reset: u64,
}

impl Slot {
    fn expired(&self, now: u64) -> bool {
        self.at <= now && self.refused_until <= now
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("clients", &self.clients()).finish()
    }
}

impl MemoryStore {
    /// A store holding at most `capacity` clients (rounded up to a multiple of the shard count),
    /// each with `slots` counters.
    pub fn new(capacity: usize, slots: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_seed: RandomState::new().hash_one(0u8),
            epoch: Instant::now(),
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            slots,
        }
    }

    /// Counts one request from `key` against `counters` and decides: a remembered refusal, or the
    /// strategy's answer (remembered if it is a refusal). What every store falls back to.
    pub fn decide(&self, key: ClientKey, counters: Counters, now: Instant) -> Decision {
        let now = self.micros(now);
        let mut shard = self.shard(key);
        let entry = shard.record(key, now, self.shard_capacity, self.slots);
        if let Some(refused) = remembered(entry, counters, now) {
            return refused;
        }
        let mut states = [CounterState::default(); MAX_COUNTERS];
        match counters.strategy {
            Strategy::FixedWindow => fixed_window(entry, counters, now, &mut states),
            Strategy::TokenBucket => token_bucket(entry, counters, now, &mut states),
        }
        let states = &states[..counters.len()];
        let decision = Decision::from_states(counters, states);
        if matches!(decision, Decision::Limited { refused: Some(_), .. }) {
            remember(entry, counters, states, now);
        }
        decision
    }

    /// A remembered refusal of one of `counters` for `key`, if one still holds: the answer the
    /// store would give, counting nothing.
    pub fn refused(&self, key: ClientKey, counters: Counters, now: Instant) -> Option<Decision> {
        let now = self.micros(now);
        remembered(self.shard(key).map.get(&key)?, counters, now)
    }

    /// Remembers the refusal that `states` (another store's answer for `key`) amount to.
    pub fn remember(&self, key: ClientKey, counters: Counters, states: &[CounterState], now: Instant) {
        let now = self.micros(now);
        let mut shard = self.shard(key);
        let entry = shard.record(key, now, self.shard_capacity, self.slots);
        remember(entry, counters, states, now);
    }

    /// Clients currently remembered (expired ones included until purged).
    pub fn clients(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Saturating: `now` may come from another worker's slightly older clock read.
    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
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

/// Fixed windows: each counter's window starts at its first hit and refills whole when it ends;
/// every counter counts the request, allowed or not.
fn fixed_window(entry: &mut [Slot], counters: Counters, now: u64, out: &mut [CounterState]) {
    for (state, counter) in out.iter_mut().zip(counters.iter()) {
        let slot = &mut entry[counter.slot];
        if slot.at <= now {
            (slot.count, slot.at) = (0, now + counter.period_us);
        }
        slot.count = slot.count.saturating_add(1);
        *state = counter.fixed_window(slot.count, slot.at - now);
    }
}

/// GCRA: the request takes a token from every counter if each has one, else nothing.
fn token_bucket(entry: &mut [Slot], counters: Counters, now: u64, out: &mut [CounterState]) {
    let ahead = |slot: &Slot| slot.at.saturating_sub(now);
    let allowed = counters.iter().all(|c| c.has_token(ahead(&entry[c.slot])));
    for (state, counter) in out.iter_mut().zip(counters.iter()) {
        let slot = &mut entry[counter.slot];
        let d = ahead(slot);
        *state = if allowed {
            slot.at = now + d + counter.interval_us;
            counter.token_bucket(d + counter.interval_us, false)
        } else {
            counter.token_bucket(d, !counter.has_token(d))
        };
    }
}

/// Remembers, for each counter that can't take one more request, until when that holds.
fn remember(entry: &mut [Slot], counters: Counters, states: &[CounterState], now: u64) {
    for (counter, state) in counters.iter().zip(states).filter(|(_, s)| s.wait_us > 0) {
        let slot = &mut entry[counter.slot];
        slot.refused_until = now + state.wait_us;
        slot.refused_reset = now + state.reset_us;
    }
}

/// The refusal remembered for any of `counters`, as the store would have answered it: the counter
/// that waits longest refused; the headers are those of the one that resets last, counting down.
fn remembered(entry: &[Slot], counters: Counters, now: u64) -> Option<Decision> {
    // The same choices as `Decision::from_states` (the first of equals wins), over the counters
    // whose refusal holds: those are the ones with nothing remaining.
    let (mut by, mut until) = (None, now);
    let (mut limit, mut reset_secs) = (0, 0);
    for counter in counters.iter() {
        let slot = &entry[counter.slot];
        if slot.refused_until <= now {
            continue;
        }
        if slot.refused_until > until {
            (by, until) = (Some(counter), slot.refused_until);
        }
        if secs(slot.refused_reset.saturating_sub(now)) > reset_secs {
            (limit, reset_secs) = (counter.rate.limit, secs(slot.refused_reset.saturating_sub(now)));
        }
    }
    let refused = Some(Refusal { by: by?, retry_after_secs: secs(until - now) });
    Some(Decision::Limited { limit, remaining: 0, reset_secs, refused })
}

impl Shard {
    /// The record of `key`, made if new: one hash for a known client. Purges on schedule, and a
    /// newcomer to a full shard first makes room.
    fn record(&mut self, key: ClientKey, now: u64, capacity: usize, slots: usize) -> &mut [Slot] {
        if now >= self.next_purge_us {
            self.purge(now);
        }
        if self.map.len() >= capacity && !self.map.contains_key(&key) {
            self.make_room(now, capacity);
        }
        let mut new = false;
        let record = self.map.entry(key).or_insert_with(|| {
            new = true;
            vec![Slot::default(); slots].into_boxed_slice()
        });
        self.added_since_purge += usize::from(new);
        record
    }

    /// Room for one more in a full shard. Purging when full is amortized over capacity/8
    /// newcomers: found by the address-flood test (tests/hostile), where a shard full of live
    /// clients was scanned whole for each new one, making every new client ~10x as costly as
    /// before the cap.
    fn make_room(&mut self, now: u64, capacity: usize) {
        if self.added_since_purge >= (capacity / 8).max(1) {
            self.purge(now);
        }
        if self.map.len() >= capacity {
            // Still full of live clients: let one go early rather than grow or refuse the newcomer.
            if let Some(&victim) = self.map.keys().next() {
                self.map.remove(&victim);
                log::debug!("limiter: shard full ({capacity} clients), evicted one");
            }
        }
    }

    fn purge(&mut self, now: u64) {
        let before = self.map.len();
        self.map.retain(|_, slots| !slots.iter().all(|s| s.expired(now)));
        self.next_purge_us = now + LIMITER_PURGE_INTERVAL.as_micros() as u64;
        self.added_since_purge = 0;
        self.purges += 1;
        let purged = before - self.map.len();
        if purged > 0 {
            log::debug!("limiter: purged {purged} expired clients, {} remain in this shard", self.map.len());
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of some counters; the map itself
/// is still sound, and limiting must go on.
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
