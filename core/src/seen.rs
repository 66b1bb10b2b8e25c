//! The dedupe cache: message ids seen recently, bounded in count and in age.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::Duration;

use crate::oap::MsgId;
use crate::time::Time;

/// aHash keyed from the node's seeded RNG: deterministic for a seed, fast on the 16-byte
/// ids of the hot path, and a peer cannot pick ids that collide (it does not know the key).
#[derive(Clone, Debug)]
pub struct KeyedHasher(ahash::RandomState);

impl KeyedHasher {
    pub fn new(k0: u64, k1: u64) -> KeyedHasher {
        KeyedHasher(ahash::RandomState::with_seeds(
            k0,
            k1,
            k0.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15,
            k1.rotate_left(32) ^ 0xc2b2_ae3d_27d4_eb4f,
        ))
    }
}

impl BuildHasher for KeyedHasher {
    type Hasher = ahash::AHasher;
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[derive(Debug)]
pub struct SeenCache {
    ttl: Duration,
    capacity: usize,
    at: HashMap<MsgId, Time, KeyedHasher>,
    order: VecDeque<(MsgId, Time)>,
}

impl SeenCache {
    pub fn new(capacity: usize, ttl: Duration, hasher: KeyedHasher) -> SeenCache {
        SeenCache {
            ttl,
            capacity: capacity.max(1),
            at: HashMap::with_hasher(hasher),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    pub fn contains(&self, id: &MsgId, now: Time) -> bool {
        self.at
            .get(id)
            .is_some_and(|t| now.saturating_since(*t) < self.ttl)
    }

    /// Remembers `id`; returns false if it was already there (a duplicate).
    pub fn insert(&mut self, id: MsgId, now: Time) -> bool {
        if self.contains(&id, now) {
            return false;
        }
        self.insert_new(id, now);
        true
    }

    /// Remembers an id the caller has just seen `contains` deny (one lookup saved on the
    /// hot path).
    pub fn insert_new(&mut self, id: MsgId, now: Time) {
        self.expire(now);
        while self.at.len() >= self.capacity {
            // Oldest first: the id least likely to come round again.
            match self.order.pop_front() {
                Some((old, t)) => self.forget(old, t),
                None => break,
            }
        }
        self.at.insert(id, now);
        self.order.push_back((id, now));
    }

    pub fn expire(&mut self, now: Time) {
        while let Some(&(id, t)) = self.order.front() {
            if now.saturating_since(t) < self.ttl {
                break;
            }
            self.order.pop_front();
            self.forget(id, t);
        }
    }

    /// Removes `id` if the map still holds the sighting `t` of it (an expired id seen again
    /// has a newer entry, which stays).
    fn forget(&mut self, id: MsgId, t: Time) {
        if let std::collections::hash_map::Entry::Occupied(e) = self.at.entry(id) {
            if *e.get() == t {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let mut c = SeenCache::new(2, Duration::from_secs(10), KeyedHasher::new(1, 2));
        let t = Time::ZERO;
        assert!(c.insert([1; 16], t));
        assert!(!c.insert([1; 16], t));
        assert!(c.insert([2; 16], t));
        assert!(c.insert([3; 16], t));
        assert_eq!(c.len(), 2);
        assert!(!c.contains(&[1; 16], t), "oldest evicted at capacity");
        let later = t + Duration::from_secs(11);
        assert!(!c.contains(&[3; 16], later));
        c.expire(later);
        assert!(c.is_empty());
        assert!(c.insert([3; 16], later), "an expired id is new again");
    }
}
