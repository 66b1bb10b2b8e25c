//! The few primitives the runtime shares between tasks: a permit pool, a snapshot that is
//! swapped whole, and queue accounting. They sit behind this facade so that `--cfg loom`
//! model-checks exactly the code production runs (`tests/loom.rs`).

#[cfg(loom)]
use loom::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex,
};
#[cfg(not(loom))]
use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex,
};

/// A fixed pool of permits shared across tasks. Acquisition never pushes the count past
/// capacity; a [`Permit`] gives its share back when dropped, so none leak on any path
/// (including a panicking task).
#[derive(Debug)]
pub struct PermitPool {
    capacity: usize,
    in_use: AtomicUsize,
}

impl PermitPool {
    pub fn new(capacity: usize) -> Arc<PermitPool> {
        Arc::new(PermitPool {
            capacity,
            in_use: AtomicUsize::new(0),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    pub fn available(&self) -> usize {
        self.capacity.saturating_sub(self.in_use())
    }

    /// Takes `n` permits from `pool` if that many are free.
    pub fn try_acquire(pool: &Arc<PermitPool>, n: usize) -> Option<Permit> {
        let this = &**pool;
        let mut cur = this.in_use.load(Ordering::Acquire);
        loop {
            let next = cur.checked_add(n).filter(|v| *v <= this.capacity)?;
            match this
                .in_use
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(Permit {
                        pool: Arc::clone(pool),
                        n,
                    })
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Permits held; returned to the pool on drop.
#[derive(Debug)]
pub struct Permit {
    pool: Arc<PermitPool>,
    n: usize,
}

impl Permit {
    pub fn count(&self) -> usize {
        self.n
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// A value published whole by one task and read whole by others (readiness, config).
/// Readers get an `Arc` of one published version: never a mix of two.
#[derive(Debug)]
pub struct Snapshot<T> {
    current: Mutex<Arc<T>>,
    version: AtomicU64,
}

impl<T> Snapshot<T> {
    pub fn new(value: T) -> Snapshot<T> {
        Snapshot {
            current: Mutex::new(Arc::new(value)),
            version: AtomicU64::new(0),
        }
    }

    pub fn load(&self) -> Arc<T> {
        // The lock is held only to clone the Arc: never across an await or user code.
        match self.current.lock() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn store(&self, value: T) {
        let next = Arc::new(value);
        let old = match self.current.lock() {
            Ok(mut g) => std::mem::replace(&mut *g, next),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), next),
        };
        self.version.fetch_add(1, Ordering::Release);
        // The previous version is released outside the lock.
        drop(old);
    }

    /// How many times the value has been replaced.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// Depth and outcome accounting for a bounded queue shared by producers and a consumer:
/// every offer is either admitted or counted dropped, and `admitted = taken + depth`.
#[derive(Debug)]
pub struct QueueAccount {
    capacity: usize,
    depth: AtomicUsize,
    admitted: AtomicU64,
    taken: AtomicU64,
    dropped: AtomicU64,
}

impl QueueAccount {
    pub fn new(capacity: usize) -> QueueAccount {
        QueueAccount {
            capacity,
            depth: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Claims a slot; `false` means the queue is full and the offer is counted dropped.
    pub fn offer(&self) -> bool {
        let mut cur = self.depth.load(Ordering::Acquire);
        loop {
            if cur >= self.capacity {
                self.dropped.fetch_add(1, Ordering::AcqRel);
                return false;
            }
            match self.depth.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.admitted.fetch_add(1, Ordering::AcqRel);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// An admitted item was taken off the queue.
    pub fn take(&self) {
        self.taken.fetch_add(1, Ordering::AcqRel);
        self.depth.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Acquire)
    }
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }
}
