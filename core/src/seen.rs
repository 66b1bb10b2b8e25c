//! The dedupe cache: message ids seen recently, bounded in count and in age.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::Duration;

use crate::oap::MsgId;
use crate::time::Time;

/// SipHash keyed from the node's seeded RNG: deterministic for a seed, yet a peer cannot
/// pick message ids that collide (they do not know the key).
#[derive(Clone, Copy, Debug)]
pub struct KeyedHasher(u64, u64);

impl KeyedHasher {
    pub fn new(k0: u64, k1: u64) -> KeyedHasher {
        KeyedHasher(k0, k1)
    }
}

impl BuildHasher for KeyedHasher {
    #[allow(deprecated)]
    type Hasher = std::hash::SipHasher;
    #[allow(deprecated)]
    fn build_hasher(&self) -> Self::Hasher {
        std::hash::SipHasher::new_with_keys(self.0, self.1)
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
        self.expire(now);
        while self.at.len() >= self.capacity {
            // Oldest first: the id least likely to come round again.
            match self.order.pop_front() {
                Some((old, t)) => {
                    if self.at.get(&old) == Some(&t) {
                        self.at.remove(&old);
                    }
                }
                None => break,
            }
        }
        self.at.insert(id, now);
        self.order.push_back((id, now));
        true
    }

    pub fn expire(&mut self, now: Time) {
        while let Some(&(id, t)) = self.order.front() {
            if now.saturating_since(t) < self.ttl {
                break;
            }
            self.order.pop_front();
            if self.at.get(&id) == Some(&t) {
                self.at.remove(&id);
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
