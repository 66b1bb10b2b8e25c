//! The message store: each recent message's payload held once, bounded by bytes and age.
//! Egress queues share its buffers (one copy per node, whatever the fanout); it answers
//! GRAFTs (pulls) and the reconciliation that repairs partitions.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::oap::{bucket_of, fingerprint, GossipHeader, MsgId, DIGEST_BUCKETS, DIGEST_SETTLE_MS};
use crate::seen::KeyedHasher;
use crate::time::Time;

/// Bookkeeping charged per stored message on top of its data and topic.
pub const ENTRY_OVERHEAD: usize = 96;

#[derive(Clone, Debug)]
pub struct Stored {
    pub header: GossipHeader,
    pub tenant_id: u128,
    pub data: Bytes,
    pub at: Time,
}

/// Why the store let a message go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    Bytes,
    Age,
}

#[derive(Debug)]
pub struct Store {
    /// Each id's entry number in `order` (`popped + k`). The entries themselves live in
    /// `order`, which only ever loses its front: a map of whole entries, at hashbrown's
    /// load factor, was the largest part of a node's memory in the many-node simulator.
    map: HashMap<MsgId, u64, KeyedHasher>,
    /// The messages, oldest first: arrivals come in time order, so the part of the store a
    /// digest covers is one run of this queue.
    order: VecDeque<(MsgId, Stored)>,
    /// The topic of the last message kept: the next one with the same topic shares it
    /// instead of allocating a copy of its own (nearly every message of a mesh has one of
    /// a few topics).
    last_topic: Bytes,
    /// How many entries have left the front of `order` ever: `order[k]` is entry
    /// `popped + k`.
    popped: u64,
    /// The periodic digest, kept up to date as its edges move instead of summed again.
    window: Window,
    /// Arrivals came in time order so far (a caller passing an earlier time than the last
    /// turns the window off, and digests are summed over the store).
    in_order: bool,
    bytes: usize,
    max_bytes: usize,
    max_age: Duration,
}

/// The periodic digest (settle [`DIGEST_SETTLE_MS`]) over entries `lo..hi` of the store,
/// as of `at`. Its edges only move forward as time does, and an entry leaving it is XORed
/// out: a digest costs the entries that moved, not the whole store, which every link of
/// every node otherwise sums every `reconcile_interval`.
#[derive(Debug)]
struct Window {
    lo: u64,
    hi: u64,
    at: Time,
    buckets: Vec<(u64, u32)>,
}

impl Window {
    fn empty(from: u64) -> Window {
        Window {
            lo: from,
            hi: from,
            at: Time::ZERO,
            buckets: vec![(0, 0); DIGEST_BUCKETS],
        }
    }

    fn toggle(&mut self, id: &MsgId, add: bool) {
        let b = &mut self.buckets[bucket_of(id)];
        b.0 ^= fingerprint(id);
        if add {
            b.1 += 1;
        } else {
            b.1 -= 1;
        }
    }
}

fn cost(s: &Stored) -> usize {
    s.data.len() + s.header.topic.len() + ENTRY_OVERHEAD
}

fn periodic_settle() -> Duration {
    Duration::from_millis(DIGEST_SETTLE_MS as u64)
}

impl Store {
    pub fn new(max_bytes: usize, max_age: Duration, hasher: KeyedHasher) -> Store {
        Store {
            map: HashMap::with_hasher(hasher),
            order: VecDeque::new(),
            last_topic: Bytes::new(),
            popped: 0,
            window: Window::empty(0),
            in_order: true,
            bytes: 0,
            max_bytes,
            max_age,
        }
    }

    pub fn set_bounds(&mut self, max_bytes: usize, max_age: Duration) {
        self.max_bytes = max_bytes;
        self.max_age = max_age;
        // The old edge depends on the age bound: summed again from the front.
        self.window = Window::empty(self.popped);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn get(&self, id: &MsgId) -> Option<&Stored> {
        let n = *self.map.get(id)?;
        self.order.get((n - self.popped) as usize).map(|(_, s)| s)
    }

    /// Keeps a message (its topic owned, its data shared); evicts the oldest to stay within
    /// the byte bound. Returns how many were evicted for bytes. A message larger than the
    /// whole bound is not kept.
    pub fn insert(&mut self, id: MsgId, s: Stored) -> usize {
        let c = cost(&s);
        if c > self.max_bytes || self.map.contains_key(&id) {
            return 0;
        }
        let mut evicted = 0;
        while self.bytes + c > self.max_bytes {
            if self.pop_oldest().is_none() {
                break;
            }
            evicted += 1;
        }
        if self.order.back().is_some_and(|(_, t)| s.at < t.at) {
            self.in_order = false;
        }
        // Owned, not a slice of the frame it came in (which would pin the read buffer).
        if s.header.topic != self.last_topic {
            self.last_topic = Bytes::copy_from_slice(&s.header.topic);
        }
        let s = Stored {
            header: GossipHeader {
                topic: self.last_topic.clone(),
                ..s.header
            },
            ..s
        };
        self.bytes += c;
        self.map.insert(id, self.popped + self.order.len() as u64);
        self.order.push_back((id, s));
        evicted
    }

    fn pop_oldest(&mut self) -> Option<MsgId> {
        let (id, s) = self.order.pop_front()?;
        let seq = self.popped;
        self.popped += 1;
        let w = &mut self.window;
        if (w.lo..w.hi).contains(&seq) {
            w.toggle(&id, false);
        }
        w.lo = w.lo.max(self.popped);
        w.hi = w.hi.max(self.popped);
        self.map.remove(&id);
        self.bytes -= cost(&s);
        Some(id)
    }

    /// Whether keeping `bytes` more would let go of a message younger than `floor`: one
    /// that peers it was announced to may still pull.
    pub fn would_evict_younger(&self, now: Time, bytes: usize, floor: Duration) -> bool {
        if self.bytes + bytes + ENTRY_OVERHEAD <= self.max_bytes {
            return false;
        }
        self.order
            .front()
            .is_some_and(|(_, s)| now.saturating_since(s.at) < floor)
    }

    /// Lets go of messages older than the age bound; returns how many.
    pub fn expire(&mut self, now: Time) -> usize {
        let mut n = 0;
        while let Some((_, s)) = self.order.front() {
            if now.saturating_since(s.at) < self.max_age {
                break;
            }
            self.pop_oldest();
            n += 1;
        }
        n
    }

    /// The youngest age the old edge of a digest excludes: it moves too (eviction by age),
    /// by the same margin.
    fn old_edge(&self, settle: Duration) -> Duration {
        self.max_age
            .saturating_sub(settle.max(Duration::from_secs(2)))
    }

    /// Ids whose local age is within `[settle, max_age - settle]`: the part of the store two
    /// nodes compare (the edges move while messages are in flight).
    fn settled(&self, now: Time, settle: Duration) -> impl Iterator<Item = &MsgId> + '_ {
        let max = self.old_edge(settle);
        self.order.iter().filter_map(move |(id, s)| {
            let age = now.saturating_since(s.at);
            (age >= settle && age < max).then_some(id)
        })
    }

    /// A DIGEST of the settled ids: per bucket, the XOR of fingerprints and the count.
    pub fn digest(&mut self, now: Time, settle: Duration) -> Vec<(u64, u32)> {
        if settle == periodic_settle() && self.in_order && now >= self.window.at {
            self.slide(now);
            return self.window.buckets.clone();
        }
        let mut d = vec![(0u64, 0u32); DIGEST_BUCKETS];
        for id in self.settled(now, settle) {
            let b = &mut d[bucket_of(id)];
            b.0 ^= fingerprint(id);
            b.1 += 1;
        }
        d
    }

    /// Moves the periodic window's edges to `now`: entries that have settled come in,
    /// entries past the old edge go.
    fn slide(&mut self, now: Time) {
        let (settle, max) = (periodic_settle(), self.old_edge(periodic_settle()));
        let end = self.popped + self.order.len() as u64;
        let w = &mut self.window;
        while w.hi < end {
            let (id, ref s) = self.order[(w.hi - self.popped) as usize];
            if now.saturating_since(s.at) < settle {
                break;
            }
            w.toggle(&id, true);
            w.hi += 1;
        }
        while w.lo < w.hi {
            let (id, ref s) = self.order[(w.lo - self.popped) as usize];
            if now.saturating_since(s.at) < max {
                break;
            }
            w.toggle(&id, false);
            w.lo += 1;
        }
        w.at = now;
    }

    /// The settled ids in the buckets where `theirs` differs from ours, at most `max`.
    pub fn differing(
        &mut self,
        now: Time,
        settle: Duration,
        theirs: &[(u64, u32)],
        max: usize,
    ) -> Vec<MsgId> {
        let ours = self.digest(now, settle);
        let differs: Vec<bool> = (0..DIGEST_BUCKETS)
            .map(|b| theirs.get(b) != ours.get(b))
            .collect();
        if !differs.contains(&true) {
            return Vec::new();
        }
        self.settled(now, settle)
            .filter(|id| differs[bucket_of(id)])
            .take(max)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(n: usize, at: u64) -> Stored {
        Stored {
            header: GossipHeader::new([0; 16], 3, "t").unwrap(),
            tenant_id: 0,
            data: Bytes::from(vec![0; n]),
            at: Time::from_millis(at),
        }
    }

    fn id(n: u8) -> MsgId {
        [n; 16]
    }

    #[test]
    fn bounded_by_bytes_and_age() {
        let one = 1000 + 1 + ENTRY_OVERHEAD;
        let mut s = Store::new(3 * one, Duration::from_secs(10), KeyedHasher::new(1, 2));
        for n in 0..3 {
            assert_eq!(s.insert(id(n), stored(1000, 0)), 0);
        }
        assert_eq!(s.insert(id(3), stored(1000, 0)), 1, "the oldest made room");
        assert!(s.get(&id(0)).is_none());
        assert_eq!(s.bytes(), 3 * one);
        assert_eq!(
            s.insert(id(9), stored(10_000, 0)),
            0,
            "larger than the bound: not kept"
        );
        assert!(s.get(&id(9)).is_none());
        assert_eq!(s.expire(Time::from_millis(10_000)), 3);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    /// Entries are found through their number in the arrival queue: after evictions from
    /// its front every id still answers with its own message, and an evicted one with none.
    /// Messages of one topic share one copy of it, and none is a slice of its frame.
    #[test]
    fn each_id_finds_its_own_entry_and_topics_are_shared() {
        let one = 10 + 1 + ENTRY_OVERHEAD;
        let mut s = Store::new(5 * one, Duration::from_secs(60), KeyedHasher::new(5, 6));
        let frame = Bytes::from_static(b"xt");
        for n in 0..12u8 {
            let mut m = stored(10, n as u64);
            m.header.topic = frame.slice(1..);
            m.data = Bytes::from(vec![n; 10]);
            s.insert(id(n), m);
        }
        for n in 0..12u8 {
            match s.get(&id(n)) {
                Some(m) => {
                    assert!(n >= 7, "{n} should have been evicted");
                    assert_eq!((m.data[0], m.at), (n, Time::from_millis(n as u64)));
                }
                None => assert!(n < 7, "{n} should still be kept"),
            }
        }
        let (a, b) = (s.get(&id(8)).unwrap(), s.get(&id(9)).unwrap());
        assert_eq!(a.header.topic.as_ptr(), b.header.topic.as_ptr());
        assert_ne!(a.header.topic.as_ptr(), frame[1..].as_ptr());
        let mut other = stored(10, 20);
        other.header.topic = Bytes::from_static(b"u");
        s.insert(id(20), other);
        assert_eq!(&s.get(&id(20)).unwrap().header.topic[..], b"u");
        assert_eq!(&s.get(&id(9)).unwrap().header.topic[..], b"t");
    }

    #[test]
    fn digests_agree_when_sets_agree_and_name_what_differs() {
        let h = KeyedHasher::new(1, 2);
        let (mut a, mut b) = (
            Store::new(1 << 20, Duration::from_secs(60), h.clone()),
            Store::new(1 << 20, Duration::from_secs(60), h),
        );
        for n in 0..50u8 {
            a.insert(id(n), stored(10, 0));
            b.insert(id(n), stored(10, 5));
        }
        let now = Time::from_millis(5_000);
        let settle = Duration::from_secs(1);
        assert_eq!(a.digest(now, settle), b.digest(now, settle));
        assert!(a
            .differing(now, settle, &b.digest(now, settle), 100)
            .is_empty());
        a.insert(id(200), stored(10, 0));
        let diff = a.differing(now, settle, &b.digest(now, settle), 100);
        assert!(diff.contains(&id(200)));
        assert!(diff.len() < 10, "only the differing bucket: {}", diff.len());
    }

    /// The digest kept up to date as its edges move equals the digest summed over the
    /// store, through arrivals, the settle edge, the old edge and evictions for bytes
    /// inside the window.
    #[test]
    fn the_sliding_digest_is_the_summed_digest() {
        let settle = Duration::from_millis(DIGEST_SETTLE_MS as u64);
        let one = 10 + 1 + ENTRY_OVERHEAD;
        let mut s = Store::new(40 * one, Duration::from_secs(10), KeyedHasher::new(3, 4));
        let mut evicted = 0;
        for step in 0..400u64 {
            let now = Time::from_millis(step * 100);
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(step * 0x9e37_79b9).to_be_bytes());
            id[8..].copy_from_slice(&step.to_be_bytes());
            evicted += s.insert(id, stored(10, step * 100));
            s.expire(now);
            let summed = {
                let mut d = vec![(0u64, 0u32); DIGEST_BUCKETS];
                for id in s.settled(now, settle) {
                    d[bucket_of(id)].0 ^= fingerprint(id);
                    d[bucket_of(id)].1 += 1;
                }
                d
            };
            assert_eq!(s.digest(now, settle), summed, "at step {step}");
        }
        assert!(
            evicted > 0,
            "byte evictions inside the window were exercised"
        );
    }
}
