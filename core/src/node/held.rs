//! What one session holds against its bounds, as tests, simulators and the runtime's
//! shutdown report read it: facts, not the session itself, so its fields can change
//! without reaching past the node.

use super::*;

/// A session's share of the node's memory and permits at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Held {
    /// Control frames queued, bounded like gossip by `overlay.peer.egress_queue_frames`.
    pub ctrl_frames: usize,
    /// Gossip frames queued (`overlay.peer.egress_queue_frames`).
    pub gossip_frames: usize,
    /// Their bytes (`overlay.peer.egress_queue_bytes`).
    pub gossip_bytes: usize,
    /// The gossip queue's fill, the larger of frames and bytes against their bounds: what
    /// `readiness.queue_high_watermark` is compared with.
    pub fill: f64,
    /// Frames handed to the writer and not yet reported written; each holds a permit.
    pub in_flight: usize,
    /// Partial gossip streams being reassembled (`overlay.gossip.max_partial_streams`).
    pub partial_streams: usize,
    /// Their bytes (`overlay.gossip.max_partial_bytes`).
    pub partial_bytes: usize,
}

impl Overlay {
    /// What `conn` holds, or `None` once it is gone.
    pub fn held(&self, conn: ConnId) -> Option<Held> {
        let s = self.sessions.get(&conn)?;
        let peer = &self.cfg.overlay.peer;
        Some(Held {
            ctrl_frames: s.egress.ctrl_frames(),
            gossip_frames: s.egress.gossip_frames(),
            gossip_bytes: s.egress.gossip_bytes(),
            fill: s
                .egress
                .fill(peer.egress_queue_frames, peer.egress_queue_bytes),
            in_flight: s.in_flight(),
            partial_streams: s.reasm.partial_streams(),
            partial_bytes: s.reasm.buffered_bytes(),
        })
    }

    /// Frames with the writer for `conn`, or `None` once it is gone.
    pub fn in_flight(&self, conn: ConnId) -> Option<usize> {
        self.sessions.get(&conn).map(|s| s.in_flight())
    }

    /// Whether the node still has a session for `conn` (closing or not): the runtime
    /// tells it of a close only then.
    pub fn has_session(&self, conn: ConnId) -> bool {
        self.sessions.contains_key(&conn)
    }

    /// Whether `conn` is gone or closing: nothing more is read from it.
    pub fn is_closed_or_closing(&self, conn: ConnId) -> bool {
        self.sessions
            .get(&conn)
            .map_or(true, |s| s.phase == Phase::Closing)
    }
}
