//! Messages owed: a session whose queue has no room is not dropped from, it is owed the
//! message, which is sent from the store (one copy per node) as its queue drains.
//!
//! A subscriber is slower than its peers' bursts for a moment far more often than for good:
//! the read pause that follows (a node with an owing session stops reading from its other
//! peers) takes a few read chunks to hold, and those chunks used to overflow the queue and be
//! lost untold. An eager tree peer over its watermark, or one that pulls what its queue has no
//! room for, is owed the same way: a pull asked again every graft timeout would find the
//! queue full again, until the store let the message go. Owing costs an id per message; the
//! payload is the store's copy.

use super::*;
use crate::observe::StoreEviction;
use crate::session::Owed;
use crate::store::Stored;

impl Overlay {
    /// Owes a message to `c` (its queue has no room, or it is owed earlier messages that
    /// must go first), keeping it in the store. True when it is owed, now or already; false
    /// when it cannot be: the caller does what it did without owing.
    pub(super) fn owe(
        &mut self,
        c: ConnId,
        header: &GossipHeader,
        tenant_id: u128,
        data: &Bytes,
        now: Time,
    ) -> bool {
        let bound = self.cfg.overlay.peer.owed_messages;
        let id = header.msg_id;
        let Some(s) = self.sessions.get(&c) else {
            return false;
        };
        if s.phase == Phase::Closing {
            return false;
        }
        if s.owed_ids.contains(&id) {
            return true;
        }
        if s.owed.len() >= bound {
            return false;
        }
        let Ok(chunks) = oap::Chunks::new(header, data, s.chunk) else {
            return false;
        };
        let frames = chunks.frames() as u32;
        if self.store.get(&id).is_none() {
            let evicted = self.store.insert(
                id,
                Stored {
                    header: header.clone(),
                    tenant_id,
                    data: data.clone(),
                    at: now,
                },
            );
            self.metrics.store_evictions[StoreEviction::Bytes.index()].increment(evicted as u64);
            if self.store.get(&id).is_none() {
                // Larger than the whole store: nowhere to keep it.
                return false;
            }
        }
        let Some(s) = self.sessions.get_mut(&c) else {
            return false;
        };
        s.owed.push_back(Owed { id, frames });
        s.owed_ids.insert(id);
        self.owed_total += 1;
        self.recheck_watermark(c);
        true
    }

    /// Whether `c` is owed anything: then new messages queue behind the debt, in order.
    pub(super) fn owing(&self, c: ConnId) -> bool {
        self.sessions.get(&c).is_some_and(|s| !s.owed.is_empty())
    }

    /// Moves what `c` is owed into its queue while the queue is under its high watermark.
    /// A message the store no longer holds is dropped and counted (`full`: it was owed
    /// because the queue was full).
    pub(super) fn repay(&mut self, c: ConnId) {
        let (lim_f, lim_b) = (
            self.cfg.overlay.peer.egress_queue_frames,
            self.cfg.overlay.peer.egress_queue_bytes,
        );
        let wm = self.cfg.readiness.queue_high_watermark;
        loop {
            let Some(s) = self.sessions.get_mut(&c) else {
                return;
            };
            let Some(&next) = s.owed.front() else {
                break;
            };
            if s.egress.fill(lim_f, lim_b) >= wm {
                break;
            }
            let Some(stored) = self.store.get(&next.id) else {
                s.owed.pop_front();
                s.owed_ids.remove(&next.id);
                self.owed_total -= 1;
                self.egress_drop(DropReason::Full, next.frames as u64);
                continue;
            };
            let (header, tenant, data) =
                (stored.header.clone(), stored.tenant_id, stored.data.clone());
            if !self.fits(c, &header, &data) {
                break;
            }
            if let Some(s) = self.sessions.get_mut(&c) {
                s.owed.pop_front();
                s.owed_ids.remove(&next.id);
                self.owed_total -= 1;
            }
            // Fits under the hard bounds and is not a relay, so it is not refused.
            let _ = self.enqueue_message(c, &header, tenant, &data, false);
        }
        self.recheck_watermark(c);
    }

    /// The debts of a session whose queue is dropped: dropped and counted as its queued
    /// frames are.
    pub(super) fn forgive(&mut self, owed: VecDeque<Owed>) {
        let frames: u64 = owed.iter().map(|o| o.frames as u64).sum();
        self.owed_total -= owed.len();
        if frames > 0 {
            self.egress_drop(DropReason::Shed, frames);
        }
    }
}
