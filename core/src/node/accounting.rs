//! The balance of counts: every outcome counted in `Stats` and in its metric at once.

use super::*;
use crate::observe::WriteOutcome;

impl Overlay {
    /// Frames on their way out that will not be sent: metric and `Stats` together.
    pub(super) fn egress_drop(&mut self, reason: DropReason, frames: u64) {
        if frames == 0 {
            return;
        }
        self.stats.egress_dropped[reason.index()] += frames;
        self.metrics.queue_drop(Queue::Egress, reason, frames);
    }

    /// A write reached the shedding decision: the readiness window and the busy SLO's
    /// counter see the same writes.
    pub(super) fn record_write(&mut self, now: Time, busy: bool) {
        self.shed_window.record(now, busy);
        self.stats.writes_busy += busy as u64;
        let o = if busy {
            WriteOutcome::Busy
        } else {
            WriteOutcome::Accepted
        };
        self.metrics.writes[o.index()].increment(1);
    }

    pub(super) fn outcome(&mut self, o: Outcome, frames: u64) {
        if frames == 0 {
            return;
        }
        self.stats.outcomes[o.index()] += frames;
        self.metrics.outcome(o, frames);
    }

    pub(super) fn rx_dropped(&mut self, r: RxDrop, frames: u64) {
        if frames == 0 {
            return;
        }
        self.stats.dropped[r.index()] += frames;
        self.metrics.rx_dropped[r.index()].increment(frames);
        self.outcome(Outcome::Dropped, frames);
    }

    pub(super) fn count_rejected(&mut self, r: RejectReason, frames: u64) {
        self.stats.rejected[r.index()] += frames;
        self.metrics.rejected[r.index()].increment(frames);
        self.outcome(Outcome::Rejected, frames);
    }

    pub(super) fn debug_check_balance(&self) {
        #[cfg(debug_assertions)]
        {
            let b = self.balance();
            debug_assert!(b.holds(), "balance of counts broken: {b}");
            let partial: usize = self
                .sessions
                .values()
                .map(|s| s.reasm.buffered_bytes())
                .sum();
            debug_assert_eq!(partial, self.partial_bytes, "running partial total drifted");
            let frames: u64 = self
                .sessions
                .values()
                .map(|s| s.reasm.partial_frames())
                .sum();
            debug_assert_eq!(
                frames, self.partial_frames,
                "running partial frames drifted"
            );
            let queued = self.sessions.iter().filter(|(_, s)| !s.egress.is_empty());
            debug_assert!(
                queued.clone().all(|(id, _)| self.queued.contains(id)),
                "a session with frames queued is missing from the gauges' set"
            );
        }
    }
}
