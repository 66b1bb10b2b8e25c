//! Pressure that travels back to the writers, hop by hop. A node with a client or a peer
//! over its high watermark pauses its reads from the other peers; their queues toward it
//! fill in turn, and at the node a write enters, writes fail first (503) rather than being
//! accepted into a mesh that cannot carry them.
//!
//! A session that stays backed up is slow, not busy: past `PEER_PRESSURE_MAX` it is
//! demoted. It stops pausing the node's reads (one slow peer or subscriber must not set the
//! pace of the node or the mesh): a peer is owed or announced to at its own pace, a
//! subscriber is owed up to its bound and then dropped from, counted. The demotion is also
//! what ends a cycle of nodes waiting on each other.

use super::*;

/// How long a session may stay over its watermark and still pause the node's reads.
pub const PEER_PRESSURE_MAX: Duration = Duration::from_secs(2);

impl Overlay {
    /// At each tick: sessions over their watermark for `PEER_PRESSURE_MAX` in a row are
    /// demoted. Scans the peers (or the clients) only while one of them is pressing.
    pub(super) fn demote_slow_sessions(&mut self) {
        let limit = (PEER_PRESSURE_MAX.as_millis() / TICK.as_millis()) as u32;
        if self.peer_pressure > 0 {
            let peers = std::mem::take(&mut self.peers);
            let n = self.demote(&peers, limit);
            self.peer_pressure -= n;
            self.peers = peers;
        }
        if self.client_pressure > 0 {
            let clients = std::mem::take(&mut self.clients);
            let n = self.demote(&clients, limit);
            self.client_pressure -= n;
            self.clients = clients;
        }
    }

    /// Counts another pressed tick for each of `ids` over its watermark; returns how many
    /// were demoted now.
    fn demote(&mut self, ids: &[ConnId], limit: u32) -> usize {
        let mut demoted = 0;
        for id in ids {
            let Some(s) = self.sessions.get_mut(id) else {
                continue;
            };
            if !s.over_watermark || s.demoted {
                continue;
            }
            s.pressured_ticks += 1;
            if s.pressured_ticks >= limit {
                s.demoted = true;
                demoted += 1;
                self.metrics.peer_demotions.increment(1);
            }
        }
        demoted
    }
}
