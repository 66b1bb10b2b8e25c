//! The balance of counts: every frame received ends in exactly one outcome.

#[allow(unused_imports)] // named in docs
use crate::observe::DropReason;
use crate::observe::{Outcome, RxDrop};
use crate::reason::RejectReason;

/// Plain counters kept beside the exported metrics, so tests and simulators can check the
/// balance law without scraping: `rx_frames = delivered + relayed + duplicate + dropped +
/// rejected + pending`, reason by reason. The node writes each field together with its
/// series, in one place (`core/src/node/accounting.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_frames: u64,
    /// Indexed by [`Outcome`].
    pub outcomes: [u64; 5],
    /// Indexed by [`RxDrop`].
    pub dropped: [u64; 5],
    /// Frames rejected, indexed by [`RejectReason`].
    pub rejected: [u64; RejectReason::ALL.len()],
    /// Connections and local writes refused without a frame to blame (handshake timeouts,
    /// slow frames, `max_conns`, busy local publishes), indexed by [`RejectReason`].
    pub refused: [u64; RejectReason::ALL.len()],
    /// Frames on their way out that were not sent, indexed by [`DropReason`]
    /// (`overlay_queue_dropped_total{queue="egress"}`).
    pub egress_dropped: [u64; 3],
    /// Messages this node originated through `publish`.
    pub published: u64,
    /// New messages accepted (first sight of their `msg_id`), from sessions or `publish`.
    pub accepted_messages: u64,
    /// Writes (messages with ACK_REQ, local publishes) refused `503 busy` by the shedding
    /// decision: not connections refused at `max_conns`, which share the reason
    /// (`overlay_writes_total{outcome="busy"}`).
    pub writes_busy: u64,
    /// Writes the shedding decision let through (`overlay_writes_total{outcome="accepted"}`).
    pub writes_accepted: u64,
}

impl Stats {
    pub fn outcome(&self, o: Outcome) -> u64 {
        self.outcomes[o.index()]
    }
    pub fn dropped(&self, r: RxDrop) -> u64 {
        self.dropped[r.index()]
    }
    pub fn rejected(&self, r: RejectReason) -> u64 {
        self.rejected[r.index()]
    }
    pub fn resolved(&self) -> u64 {
        self.outcomes.iter().sum()
    }
}

/// A snapshot of the balance, with frames still held in partial streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    pub stats: Stats,
    pub pending: u64,
}

impl Balance {
    /// Whether every frame received is accounted for, and each outcome agrees with its
    /// breakdown by reason.
    pub fn holds(&self) -> bool {
        let s = &self.stats;
        s.rx_frames == s.resolved() + self.pending
            && s.outcome(Outcome::Dropped) == s.dropped.iter().sum::<u64>()
            && s.outcome(Outcome::Rejected) == s.rejected.iter().sum::<u64>()
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "rx={} delivered={} relayed={} duplicate={} dropped={:?} rejected={:?} pending={}",
            s.rx_frames,
            s.outcome(Outcome::Delivered),
            s.outcome(Outcome::Relayed),
            s.outcome(Outcome::Duplicate),
            s.dropped,
            s.rejected,
            self.pending
        )
    }
}
