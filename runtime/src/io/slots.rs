//! The TLS listener's handshake bound: at most `overlay.max_conns` handshakes at once, each
//! at most `overlay.handshake_timeout`. Both follow a reload (SIGHUP) as the core's own
//! uses of those keys do: more slots are free at once; fewer take effect as handshakes in
//! flight end, their slots taken back as they return rather than cutting them off.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct HandshakeBound {
    slots: Arc<Semaphore>,
    /// The bound in force, and the slots still to be taken back after it was lowered.
    size: Mutex<usize>,
    owed: AtomicUsize,
    timeout_ms: AtomicU64,
}

impl HandshakeBound {
    pub(crate) fn new(max: usize, timeout: Duration) -> HandshakeBound {
        HandshakeBound {
            slots: Arc::new(Semaphore::new(max)),
            size: Mutex::new(max),
            owed: AtomicUsize::new(0),
            timeout_ms: AtomicU64::new(millis(timeout)),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn resize(&self, max: usize, timeout: Duration) {
        self.timeout_ms.store(millis(timeout), Ordering::Relaxed);
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if max > *size {
            let grow = max - *size;
            let paid = self.pay(grow);
            self.slots.add_permits(grow - paid);
        } else if max < *size {
            let shrink = *size - max;
            let forgot = self.slots.forget_permits(shrink);
            self.owed.fetch_add(shrink - forgot, Ordering::Relaxed);
        }
        *size = max;
    }

    /// A free slot now, if any.
    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            let p = self.slots.clone().try_acquire_owned().ok()?;
            if let Some(p) = self.keep(p) {
                return Some(p);
            }
        }
    }

    /// The next slot to come free.
    pub(crate) async fn take(&self) -> OwnedSemaphorePermit {
        loop {
            let p = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the bound never closes its semaphore");
            if let Some(p) = self.keep(p) {
                return p;
            }
        }
    }

    /// A returned slot goes toward what a lowered bound is still owed first.
    fn keep(&self, p: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        if self.pay(1) == 1 {
            p.forget();
            None
        } else {
            Some(p)
        }
    }

    /// Takes up to `n` off what is owed; how many.
    fn pay(&self, n: usize) -> usize {
        let mut paid = 0;
        let _ = self
            .owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owed| {
                paid = owed.min(n);
                Some(owed - paid)
            });
        paid
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.slots.available_permits()
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_bound_takes_slots_back_as_handshakes_end() {
        let b = HandshakeBound::new(3, Duration::from_secs(5));
        let held: Vec<_> = (0..3).map(|_| b.try_take().unwrap()).collect();
        b.resize(1, Duration::from_secs(2));
        assert_eq!(b.timeout(), Duration::from_secs(2));
        drop(held);
        // Two of the three returned slots go to the lowered bound as they are taken.
        let one = b.try_take().unwrap();
        assert!(b.try_take().is_none(), "one handshake at a time now");
        drop(one);
        assert_eq!(b.free(), 1);
        b.resize(4, Duration::from_secs(2));
        let four: Vec<_> = (0..4).map(|_| b.try_take().unwrap()).collect();
        assert!(b.try_take().is_none());
        drop(four);
        assert_eq!(b.free(), 4);
    }

    #[test]
    fn raising_a_bound_before_it_was_paid_cancels_what_is_owed() {
        let b = HandshakeBound::new(2, Duration::from_secs(5));
        let held: Vec<_> = (0..2).map(|_| b.try_take().unwrap()).collect();
        b.resize(0, Duration::from_secs(5));
        b.resize(3, Duration::from_secs(5));
        // Owed 2, then raised by 3: 2 cancelled, 1 new slot free at once.
        assert_eq!(b.free(), 1);
        drop(held);
        assert_eq!(b.free(), 3);
    }
}
