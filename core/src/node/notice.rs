//! Telling writers about refusals that had no answer of their own: a message refused without
//! ACK_REQ, or with ACK_REQ while the session's control queue had no room for the answer.
//! The count waits in the session's ledger and goes out as one notice per reason per
//! `overlay.peer.notice_interval`, from the refusal itself or from the next tick.

use super::*;
use crate::notice::NOTICE_CORR_ID;

impl Overlay {
    /// Whether `conn`'s control queue can take one more answer.
    pub(super) fn ctrl_room(&self, conn: ConnId) -> bool {
        self.sessions
            .get(&conn)
            .is_some_and(|s| s.egress.ctrl_frames() < self.cfg.overlay.peer.egress_queue_frames)
    }

    /// A refusal the writer will hear about in a notice rather than in an answer.
    pub(super) fn note_refusal(
        &mut self,
        now: Time,
        conn: ConnId,
        reason: RejectReason,
        retry: u64,
    ) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.notices.add(reason, retry);
        }
        self.flush_notices(now, conn);
        // What could not go now goes when its window has passed.
        self.arm(conn);
    }

    /// Sends what the session's ledger has due, while its control queue has room; what
    /// finds no room stays counted for the next tick.
    pub(super) fn flush_notices(&mut self, now: Time, conn: ConnId) {
        let interval = self.cfg.overlay.peer.notice_interval;
        while self.ctrl_room(conn) {
            let Some(s) = self.sessions.get_mut(&conn) else {
                return;
            };
            if s.phase != Phase::Established {
                return;
            }
            let Some((reason, notice)) = s.notices.take_due(now, interval) else {
                return;
            };
            let f = Frame::resp(
                AppProto::GOSSIP,
                NOTICE_CORR_ID,
                reason.status(),
                notice.to_json().into(),
            );
            self.send_ctrl(conn, &f);
            self.metrics.refusal_notices[reason.index()].increment(1);
        }
    }
}
