//! File descriptor headroom: open descriptors against the soft `RLIMIT_NOFILE`, less
//! `readiness.fd_reserve` (kept for the admin plane and outgoing dials).
//!
//! Counting means opening `/proc/self/fd`, which itself needs a descriptor: at the limit
//! the count cannot be taken, and that is reported as no headroom, never as fine. Between
//! samples the acceptor adds every connection it takes to the last count (closes are not
//! seen until the next sample), so a burst of connections cannot overrun the reserve
//! within one sampling period.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// Why a count could not be taken.
#[derive(Debug)]
pub enum Unknown {
    /// The descriptor table is full (EMFILE/ENFILE): no headroom, certainly.
    Exhausted,
    /// No `/proc/self/fd` or no limit to compare with.
    Unavailable(std::io::Error),
}

/// Open descriptors and the soft limit, or why they could not be read.
pub fn sample() -> Result<(u64, u64), Unknown> {
    let open = match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d.count() as u64,
        Err(e) if matches!(e.raw_os_error(), Some(EMFILE) | Some(ENFILE)) => {
            return Err(Unknown::Exhausted)
        }
        Err(e) => return Err(Unknown::Unavailable(e)),
    };
    let (soft, _hard) =
        rlimit::getrlimit(rlimit::Resource::NOFILE).map_err(Unknown::Unavailable)?;
    Ok((open, soft))
}

const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// The headroom shared by the sampler (which counts) and the acceptor (which asks before
/// every accept and adds what it takes).
#[derive(Debug)]
pub struct FdBudget {
    reserve: u64,
    open: AtomicU64,
    soft: AtomicU64,
    /// Connections accepted since the last sample.
    since: AtomicU64,
    known: AtomicBool,
    sampled: Notify,
}

impl FdBudget {
    pub fn new(reserve: u64) -> FdBudget {
        let b = FdBudget {
            reserve,
            open: AtomicU64::new(0),
            soft: AtomicU64::new(0),
            since: AtomicU64::new(0),
            known: AtomicBool::new(false),
            sampled: Notify::new(),
        };
        let _ = b.sample();
        b
    }

    /// Takes a fresh count; `Err` says why there is none (then there is no headroom).
    pub fn sample(&self) -> Result<bool, Unknown> {
        self.record(sample())
    }

    fn record(&self, r: Result<(u64, u64), Unknown>) -> Result<bool, Unknown> {
        match &r {
            Ok((open, soft)) => {
                self.open.store(*open, Ordering::Relaxed);
                self.soft.store(*soft, Ordering::Relaxed);
                self.since.store(0, Ordering::Relaxed);
                self.known.store(true, Ordering::Release);
            }
            Err(_) => self.known.store(false, Ordering::Release),
        }
        self.sampled.notify_waiters();
        r.map(|_| self.headroom())
    }

    /// More than `reserve` descriptors free, by the last count plus what was accepted since.
    pub fn headroom(&self) -> bool {
        if !self.known.load(Ordering::Acquire) {
            return false;
        }
        let used = self.open.load(Ordering::Relaxed) + self.since.load(Ordering::Relaxed);
        used.saturating_add(self.reserve) < self.soft.load(Ordering::Relaxed)
    }

    /// The acceptor took one descriptor.
    pub fn took_one(&self) {
        self.since.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves once a sample finds headroom.
    pub async fn wait_headroom(&self) {
        loop {
            let next = self.sampled.notified();
            tokio::pin!(next);
            // Registered before the check, so a sample taken in between is not missed.
            next.as_mut().enable();
            if self.headroom() {
                return;
            }
            next.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_depends_on_the_reserve() {
        assert!(FdBudget::new(0).headroom());
        assert!(!FdBudget::new(u64::MAX / 2).headroom());
    }

    #[test]
    fn accepted_descriptors_count_until_the_next_sample() {
        // 100 open of 200, reserve 97: room for two more.
        let b = FdBudget::new(97);
        b.record(Ok((100, 200))).unwrap();
        b.took_one();
        b.took_one();
        assert!(b.headroom());
        b.took_one();
        assert!(
            !b.headroom(),
            "the third accepted descriptor reaches the reserve"
        );
        // A new count replaces the estimate (closes are seen again).
        assert!(b.record(Ok((100, 200))).unwrap());
        assert!(b.headroom());
    }

    #[test]
    fn a_count_that_cannot_be_taken_is_no_headroom() {
        let b = FdBudget::new(0);
        b.record(Ok((10, 200))).unwrap();
        assert!(b.record(Err(Unknown::Exhausted)).is_err());
        assert!(!b.headroom(), "unknown is not fine");
    }
}
