//! Session lifecycle: creation and the start of a close.

use super::*;

impl Overlay {
    pub(super) fn new_session(&mut self, now: Time, inbound: bool) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let cfg = &self.cfg;
        let s = Session::new(
            id,
            inbound,
            now,
            Decoder::new(hello_limits(cfg)),
            Reassembler::new(StreamLimits {
                max_body_bytes: cfg.limits.max_body_bytes,
                max_streams: cfg.overlay.gossip.max_partial_streams,
                max_buffered_bytes: cfg.overlay.gossip.max_partial_bytes,
            }),
            TokenBucket::new(cfg.overlay.peer.max_rps, cfg.overlay.peer.max_rps, now),
            cfg.overlay.gossip.chunk_bytes,
        );
        self.sessions.insert(id, s);
        self.arm(id);
        self.conns_changed(now);
        id
    }

    /// Starts closing a session: it leaves the fanout at once, its partial streams are
    /// dropped, and its queue drains (or is dropped, for errors) before the close goes out.
    pub(super) fn close(&mut self, _now: Time, id: ConnId, reason: CloseReason, drop_gossip: bool) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.phase == Phase::Closing {
            return;
        }
        let was_established = s.is_established();
        s.phase = Phase::Closing;
        s.close_reason = Some(reason);
        let mut dropped = 0;
        if drop_gossip {
            dropped = s.egress.gossip_frames();
            while s.egress.pop_gossip().is_some() {}
            if s.egress.is_empty() {
                self.queued.remove(&id);
            }
        }
        let owed = if drop_gossip {
            s.owed_ids.clear();
            std::mem::take(&mut s.owed)
        } else {
            VecDeque::new()
        };
        s.egress.mark_close();
        let partial = self.clear_partials(id);
        self.egress_drop(DropReason::Shed, dropped as u64);
        self.forgive(owed);
        if was_established {
            self.peers.retain(|p| *p != id);
            self.clients.retain(|c| *c != id);
            self.metrics.sessions_active.set(self.established() as f64);
            self.update_tree_gauges();
        }
        self.rx_dropped(RxDrop::Closed, partial);
        self.mark_ctrl_ready(id);
        self.recheck_watermark(id);
        self.arm(id);
    }

    /// Drops a session's partial streams, keeping the node's running total in step;
    /// returns the frames they held.
    pub(super) fn clear_partials(&mut self, id: ConnId) -> u64 {
        let Some(s) = self.sessions.get_mut(&id) else {
            return 0;
        };
        self.partial_bytes -= s.reasm.buffered_bytes();
        self.partial_frames -= s.reasm.partial_frames();
        // A closing session's buffer is discarded with whatever frame it had begun.
        self.incomplete_bytes -= std::mem::take(&mut s.incomplete);
        s.reasm.clear()
    }

    pub(super) fn unlist(&mut self, s: &Session) {
        self.peers.retain(|p| *p != s.id);
        self.clients.retain(|c| *c != s.id);
    }
}
