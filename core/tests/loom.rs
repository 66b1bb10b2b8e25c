//! loom models of the shared primitives. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p overlay-core --test loom --release`
//! (small models, few threads, bounded preemptions, as in tokio's own loom tests).

#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;
use overlay_core::sync::{PermitPool, QueueAccount, Snapshot};

#[test]
fn permits_never_exceed_capacity_and_none_leak() {
    loom::model(|| {
        let pool = PermitPool::new(2);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || {
                    if let Some(p) = PermitPool::try_acquire(&pool, 1) {
                        assert!(pool.in_use() <= pool.capacity());
                        drop(p);
                    }
                })
            })
            .collect();
        let held = PermitPool::try_acquire(&pool, 1);
        assert!(pool.in_use() <= 2);
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.in_use(), 0, "every permit came back");
    });
}

#[test]
fn a_multi_permit_acquire_is_all_or_nothing() {
    loom::model(|| {
        let pool = PermitPool::new(3);
        // Counted apart from the pool, so a pool that loses an update of its own count
        // cannot hide two holders of 2 of 3 permits at once.
        let holding = Arc::new(AtomicUsize::new(0));
        let take = |pool: &Arc<PermitPool>, holding: &AtomicUsize| {
            let p = PermitPool::try_acquire(pool, 2)?;
            assert_eq!(p.count(), 2, "all of the permits asked for, never part");
            let held = holding.fetch_add(2, SeqCst) + 2;
            assert!(held <= 3, "{held} permits held at once out of 3");
            holding.fetch_sub(2, SeqCst);
            drop(p);
            Some(())
        };
        let t = {
            let (pool, holding) = (pool.clone(), holding.clone());
            thread::spawn(move || take(&pool, &holding).is_some())
        };
        let mine = take(&pool, &holding).is_some();
        let theirs = t.join().unwrap();
        assert!(mine || theirs, "the first acquire of a free pool succeeds");
        assert_eq!(pool.in_use(), 0);
    });
}

#[test]
fn readers_never_see_a_torn_snapshot() {
    loom::model(|| {
        let snap = Arc::new(Snapshot::new((0u64, 0u64)));
        let writer = {
            let snap = snap.clone();
            thread::spawn(move || {
                for v in 1..=2 {
                    snap.store((v, v * 10));
                }
            })
        };
        let reader = {
            let snap = snap.clone();
            thread::spawn(move || {
                let mut last = 0;
                for _ in 0..2 {
                    let s = snap.load();
                    assert_eq!(s.1, s.0 * 10, "a value is seen whole");
                    assert!(s.0 >= last, "versions never go back");
                    last = s.0;
                }
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(*snap.load(), (2, 20));
        assert_eq!(snap.version(), 2);
    });
}

#[test]
fn queue_depth_and_drops_balance() {
    loom::model(|| {
        let q = Arc::new(QueueAccount::new(1));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || q.offer())
            })
            .collect();
        let consumer = {
            let q = q.clone();
            thread::spawn(move || {
                // Take one item if one was admitted by now.
                if q.admitted() > q.taken() && q.depth() > 0 {
                    q.take();
                }
            })
        };
        let admitted: u64 = producers
            .into_iter()
            .map(|t| t.join().unwrap() as u64)
            .sum();
        consumer.join().unwrap();
        assert_eq!(q.admitted(), admitted);
        assert_eq!(q.admitted() + q.dropped(), 2, "every offer has one outcome");
        assert_eq!(q.admitted(), q.taken() + q.depth() as u64);
        assert!(q.depth() <= 1);
    });
}
