//! The message store: each recent message's payload held once, bounded by bytes and age.
//! Egress queues share its buffers (one copy per node, whatever the fanout); it answers
//! GRAFTs (pulls) and the reconciliation that repairs partitions.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::oap::{bucket_of, fingerprint, GossipHeader, MsgId, DIGEST_BUCKETS};
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
    map: HashMap<MsgId, Stored, KeyedHasher>,
    order: VecDeque<MsgId>,
    bytes: usize,
    max_bytes: usize,
    max_age: Duration,
}

fn cost(s: &Stored) -> usize {
    s.data.len() + s.header.topic.len() + ENTRY_OVERHEAD
}

impl Store {
    pub fn new(max_bytes: usize, max_age: Duration, hasher: KeyedHasher) -> Store {
        Store {
            map: HashMap::with_hasher(hasher),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_age,
        }
    }

    pub fn set_bounds(&mut self, max_bytes: usize, max_age: Duration) {
        self.max_bytes = max_bytes;
        self.max_age = max_age;
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
        self.map.get(id)
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
        let s = Stored {
            header: s.header.to_owned_topic(),
            ..s
        };
        self.bytes += c;
        self.map.insert(id, s);
        self.order.push_back(id);
        evicted
    }

    fn pop_oldest(&mut self) -> Option<MsgId> {
        let id = self.order.pop_front()?;
        if let Some(s) = self.map.remove(&id) {
            self.bytes -= cost(&s);
        }
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
            .and_then(|id| self.map.get(id))
            .is_some_and(|s| now.saturating_since(s.at) < floor)
    }

    /// Lets go of messages older than the age bound; returns how many.
    pub fn expire(&mut self, now: Time) -> usize {
        let mut n = 0;
        while let Some(id) = self.order.front() {
            let old = self
                .map
                .get(id)
                .map_or(true, |s| now.saturating_since(s.at) >= self.max_age);
            if !old {
                break;
            }
            self.pop_oldest();
            n += 1;
        }
        n
    }

    /// Ids whose local age is within `[settle, max_age - settle]`: the part of the store two
    /// nodes compare (the edges move while messages are in flight).
    fn settled(&self, now: Time, settle: Duration) -> impl Iterator<Item = &MsgId> + '_ {
        // The old edge moves too (eviction by age), by the same margin.
        let max = self
            .max_age
            .saturating_sub(settle.max(Duration::from_secs(2)));
        self.order.iter().filter(move |id| {
            self.map.get(*id).is_some_and(|s| {
                let age = now.saturating_since(s.at);
                age >= settle && age < max
            })
        })
    }

    /// A DIGEST of the settled ids: per bucket, the XOR of fingerprints and the count.
    pub fn digest(&self, now: Time, settle: Duration) -> Vec<(u64, u32)> {
        let mut d = vec![(0u64, 0u32); DIGEST_BUCKETS];
        for id in self.settled(now, settle) {
            let b = &mut d[bucket_of(id)];
            b.0 ^= fingerprint(id);
            b.1 += 1;
        }
        d
    }

    /// The settled ids in the buckets where `theirs` differs from ours, at most `max`.
    pub fn differing(
        &self,
        now: Time,
        settle: Duration,
        theirs: &[(u64, u32)],
        max: usize,
    ) -> Vec<MsgId> {
        let ours = self.digest(now, settle);
        let differs: Vec<bool> = (0..DIGEST_BUCKETS)
            .map(|b| theirs.get(b) != ours.get(b))
            .collect();
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
}
