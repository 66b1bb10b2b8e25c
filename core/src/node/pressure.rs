//! Pressure that travels back to the writers, hop by hop. A node with a client or a peer
//! over its high watermark pauses its reads from the other peers; their queues toward it
//! fill in turn, and at the node a write enters, writes fail first (503) rather than being
//! accepted into a mesh that cannot carry them.
//!
//! A peer that stays backed up is slow, not busy: past `PEER_PRESSURE_MAX` it is demoted.
//! It stops pausing the node's other reads (one slow peer must not set the pace of the
//! mesh), gets announcements instead of payloads while over its watermark and pulls at its
//! own pace. The demotion is also what ends a cycle of nodes waiting on each other.

use super::*;

/// How long a peer may stay over its watermark and still pause the node's other reads.
pub const PEER_PRESSURE_MAX: Duration = Duration::from_secs(2);

impl Overlay {
    /// At each tick: peers over their watermark for `PEER_PRESSURE_MAX` in a row are demoted.
    /// Scans the peers only while one is pressing.
    pub(super) fn demote_slow_peers(&mut self) {
        if self.peer_pressure == 0 {
            return;
        }
        let limit = (PEER_PRESSURE_MAX.as_millis() / TICK.as_millis()) as u32;
        for p in &self.peers {
            let Some(s) = self.sessions.get_mut(p) else {
                continue;
            };
            if !s.over_watermark || s.demoted {
                continue;
            }
            s.pressured_ticks += 1;
            if s.pressured_ticks >= limit {
                s.demoted = true;
                self.peer_pressure -= 1;
                self.metrics.peer_demotions.increment(1);
            }
        }
    }
}
