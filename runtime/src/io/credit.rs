//! Read credit: how many chunks one connection may have waiting for the driver
//! (`overlay.peer.read_credit_chunks`). The count lives in core's loom-checked `PermitPool`
//! (never over capacity, nothing leaks on any path); a `Notify` wakes the reader when the
//! driver gives a credit back.

use std::sync::Arc;

use overlay_core::sync::{Permit, PermitPool};
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub(crate) struct CreditPool {
    pool: Arc<PermitPool>,
    freed: Arc<Notify>,
}

/// One chunk's credit; returned to the pool, and the reader woken, when dropped.
#[derive(Debug)]
pub(crate) struct Credit {
    permit: Option<Permit>,
    freed: Arc<Notify>,
}

impl CreditPool {
    pub(crate) fn new(chunks: usize) -> CreditPool {
        CreditPool {
            pool: PermitPool::new(chunks),
            freed: Arc::new(Notify::new()),
        }
    }

    /// Waits for a credit.
    pub(crate) async fn acquire(&self) -> Credit {
        loop {
            // Registered before the check, so a credit freed in between still wakes us.
            let freed = self.freed.notified();
            if let Some(permit) = PermitPool::try_acquire(&self.pool, 1) {
                return Credit {
                    permit: Some(permit),
                    freed: self.freed.clone(),
                };
            }
            freed.await;
        }
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.pool.available()
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        // The permit goes back before the wake-up, so the woken reader finds it.
        self.permit.take();
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_reader_waits_for_a_freed_credit() {
        let pool = CreditPool::new(1);
        let first = pool.acquire().await;
        assert_eq!(pool.available(), 0);
        let p = pool.clone();
        let waiter = tokio::spawn(async move { p.acquire().await });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), async {
                while !waiter.is_finished() {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .is_err(),
            "no credit while the only one is held"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the credit came back")
            .unwrap();
        drop(second);
        assert_eq!(pool.available(), 1, "no credit leaks");
    }
}
