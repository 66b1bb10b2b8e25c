//! The balance of counts. Every count the balance needs is kept twice, as a `Stats` field
//! (plain numbers, for the balance law, tests, simulators and the shutdown report) and as
//! an exported series. Both are bumped here, in one match arm of [`Counts::count`], and
//! `Counts` holds both in fields private to this module, so the two cannot drift apart.

use super::*;
use crate::observe::{Counted, WriteOutcome};

/// What is being counted. Every kind names its `Stats` field and its series.
#[derive(Clone, Copy, Debug)]
pub(super) enum Count {
    /// A frame read, whole or in error: `Stats::rx_frames`, `frames_total{dir="rx"}`.
    Received(FrameClass),
    /// A frame resolved as delivered, relayed or a duplicate: `Stats::outcomes`,
    /// `rx_outcomes_total`. Dropped and rejected frames come through their own kinds, so
    /// the outcome always equals its breakdown by reason.
    Resolved(Outcome),
    /// `Stats::dropped`, `rx_dropped_total`, and the `dropped` outcome.
    Dropped(RxDrop),
    /// A stalled partial stream's frames: `queue_dropped_total{queue="gossip_ingress"}`,
    /// and dropped with `timeout` (its `Stats` side).
    Expired,
    /// `Stats::rejected`, `rejected_total`, and the `rejected` outcome.
    Rejected(RejectReason),
    /// A connection or local write refused with no frame to blame: `Stats::refused`, and
    /// `rejected_total`, which it shares with rejected frames.
    Refused(RejectReason),
    /// `Stats::egress_dropped`, `queue_dropped_total{queue="egress"}`.
    EgressDropped(DropReason),
    /// A write at the shedding decision: `Stats::writes_busy` or `writes_accepted`,
    /// `writes_total`.
    Write(WriteOutcome),
    /// `Stats::published` (no series: `publish` callers see each result).
    Published,
    /// `Stats::accepted_messages` (no series: the outcomes count frames, not messages).
    Accepted,
}

/// `Stats` and the series that mirror it, written only through [`Counts::count`].
pub(super) struct Counts {
    stats: Stats,
    series: Counted,
}

impl Counts {
    pub(super) fn new(metrics: &Metrics) -> Counts {
        Counts {
            stats: Stats::default(),
            series: metrics.counted.clone(),
        }
    }

    pub(super) fn stats(&self) -> &Stats {
        &self.stats
    }

    fn count(&mut self, kind: Count, n: u64) {
        if n == 0 {
            return;
        }
        let (s, h) = (&mut self.stats, &self.series);
        match kind {
            Count::Received(class) => {
                s.rx_frames += n;
                h.rx_frames[class.index()].increment(n);
            }
            Count::Resolved(o) => {
                s.outcomes[o.index()] += n;
                h.outcomes[o.index()].increment(n);
            }
            Count::Dropped(r) => {
                s.dropped[r.index()] += n;
                h.rx_dropped[r.index()].increment(n);
                self.count(Count::Resolved(Outcome::Dropped), n);
            }
            Count::Expired => {
                h.queue_dropped[Queue::GossipIngress.index()][DropReason::Timeout.index()]
                    .increment(n);
                self.count(Count::Dropped(RxDrop::Timeout), n);
            }
            Count::Rejected(r) => {
                s.rejected[r.index()] += n;
                h.rejected[r.index()].increment(n);
                self.count(Count::Resolved(Outcome::Rejected), n);
            }
            Count::Refused(r) => {
                s.refused[r.index()] += n;
                h.rejected[r.index()].increment(n);
            }
            Count::EgressDropped(r) => {
                s.egress_dropped[r.index()] += n;
                h.queue_dropped[Queue::Egress.index()][r.index()].increment(n);
            }
            Count::Write(o) => {
                match o {
                    WriteOutcome::Busy => s.writes_busy += n,
                    WriteOutcome::Accepted => s.writes_accepted += n,
                }
                h.writes[o.index()].increment(n);
            }
            Count::Published => s.published += n,
            Count::Accepted => s.accepted_messages += n,
        }
    }
}

impl Overlay {
    pub(super) fn count(&mut self, kind: Count, n: u64) {
        self.counts.count(kind, n);
    }

    /// Frames on their way out that will not be sent.
    pub(super) fn egress_drop(&mut self, reason: DropReason, frames: u64) {
        self.count(Count::EgressDropped(reason), frames);
    }

    /// A write reached the shedding decision: the readiness window and the busy SLO's
    /// counter see the same writes.
    pub(super) fn record_write(&mut self, now: Time, busy: bool) {
        self.shed_window.record(now, busy);
        let o = if busy {
            WriteOutcome::Busy
        } else {
            WriteOutcome::Accepted
        };
        self.count(Count::Write(o), 1);
    }

    pub(super) fn outcome(&mut self, o: Outcome, frames: u64) {
        // Dropped and rejected frames are counted by reason, which counts their outcome.
        debug_assert!(
            !matches!(o, Outcome::Dropped | Outcome::Rejected),
            "{o:?} is counted through rx_dropped or count_rejected"
        );
        self.count(Count::Resolved(o), frames);
    }

    pub(super) fn rx_dropped(&mut self, r: RxDrop, frames: u64) {
        self.count(Count::Dropped(r), frames);
    }

    pub(super) fn count_rejected(&mut self, r: RejectReason, frames: u64) {
        self.count(Count::Rejected(r), frames);
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
