//! Frames in: dispatch by session phase and app_proto, CTRL, and rejects.

use super::*;
use crate::oap::FrameErrorKind;

impl Overlay {
    pub(super) fn on_frame(&mut self, now: Time, conn: ConnId, frame: Frame) {
        let class = frame_class(frame.app_proto);
        self.count(Count::Received(class), 1);
        let m = &self.metrics;
        m.bytes[Dir::Rx.index()].increment(frame.wire_len as u64);
        m.frame_size[Dir::Rx.index()].record(frame.wire_len as f64);
        if class == FrameClass::Gossip {
            m.chunk_size[Dir::Rx.index()].record(frame.payload.len() as f64);
        }
        let Some(phase) = self.sessions.get(&conn).map(|s| s.phase) else {
            return;
        };
        match phase {
            Phase::AwaitHello => self.on_hello(now, conn, frame),
            Phase::AwaitAnswer { corr_id } => self.on_answer(now, conn, corr_id, frame),
            Phase::Established => match frame.proto() {
                AppProto::Gossip => self.on_gossip(now, conn, frame),
                AppProto::Ctrl => self.on_ctrl(now, conn, frame),
                AppProto::Hello => self.reject_frame(
                    now,
                    conn,
                    &frame,
                    RejectReason::Proto,
                    1,
                    "HELLO on an established session",
                ),
                AppProto::Other(AppProto::TREE) => self.on_tree(now, conn, frame),
                AppProto::Other(_) => self.on_other(conn, frame),
            },
            Phase::Closing => {}
        }
    }

    pub(super) fn on_frame_error(&mut self, now: Time, conn: ConnId, e: FrameError) {
        // The bad frame counts as received and rejected, so the balance covers it.
        self.count(Count::Received(frame_class(e.app_proto)), 1);
        let phase = self.sessions.get(&conn).map(|s| s.phase);
        if matches!(phase, Some(Phase::AwaitHello | Phase::AwaitAnswer { .. })) {
            self.metrics.handshake_failure(HandshakeFailure::Proto);
            self.events.push_back(Event::HandshakeFailed {
                conn,
                corr_id: e.corr_id,
                reason: Some(HandshakeFailure::Proto),
                reject: Some(e.reason()),
                code: e.status(),
                detail: e.to_string(),
            });
        }
        let blame = Frame {
            app_proto: e.app_proto,
            corr_id: e.corr_id,
            ..Frame::default()
        };
        self.reject_frame(now, conn, &blame, e.reason(), 1, &e.kind.to_string());
    }

    /// Charges the frame left incomplete in `conn`'s receive buffer, at its declared length
    /// (what the decoder reserves for it), to `overlay.gossip.max_partial_bytes_total`
    /// together with the partial streams. Without it each session could hold a frame of up
    /// to `max_frame_bytes` that no bound counted: 900 clients each sending all but the last
    /// byte of a 1 MiB frame held 0.8 GiB. A frame the budget has no room for is refused
    /// `oversize` on the session that begins it, like a stream passing the total.
    pub(super) fn hold_incomplete(&mut self, now: Time, conn: ConnId, buf: &mut BytesMut) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if s.phase == Phase::Closing {
            return;
        }
        let held = match buf.get(..4) {
            // The decoder has checked the prefix against max_frame already.
            Some(p) => u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
            None => buf.len(),
        };
        let before = std::mem::replace(&mut s.incomplete, held);
        self.incomplete_bytes = self.incomplete_bytes - before + held;
        let total = self.cfg.overlay.gossip.max_partial_bytes_total;
        if held <= before || self.partial_bytes + self.incomplete_bytes <= total {
            return;
        }
        let room = total.saturating_sub(self.partial_bytes + self.incomplete_bytes - held);
        let field = |r: std::ops::Range<usize>| {
            buf.get(r)
                .map(|b| b.iter().fold(0u64, |a, x| a << 8 | *x as u64))
        };
        let e = FrameError {
            kind: FrameErrorKind::OverBudget {
                len: held as u32,
                room,
            },
            app_proto: field(10..12).unwrap_or(0) as u16,
            corr_id: field(30..38).unwrap_or(0),
        };
        // Closing the session releases its charge (`clear_partials`).
        self.on_frame_error(now, conn, e);
        buf.clear();
    }

    pub(super) fn on_ctrl(&mut self, now: Time, conn: ConnId, frame: Frame) {
        let op = (frame.flags.kind() == Some(FrameKind::Event))
            .then(|| Ctrl::parse(&frame.payload))
            .flatten();
        let Some(op) = op else {
            return self.reject_frame(
                now,
                conn,
                &frame,
                RejectReason::Proto,
                1,
                "CTRL frame is not a known EVENT op",
            );
        };
        match op {
            Ctrl::Ping(nonce) => {
                self.send_ctrl(conn, &Ctrl::Pong(nonce).to_frame(frame.corr_id));
            }
            Ctrl::Pong(nonce) => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    if s.ping == Some(nonce) {
                        s.ping = None;
                    }
                }
            }
            Ctrl::Goaway => {
                self.peers.retain(|p| *p != conn);
                self.events.push_back(Event::PeerDraining { conn });
            }
        }
        self.outcome(Outcome::Delivered, 1);
    }

    pub(super) fn on_other(&mut self, conn: ConnId, frame: Frame) {
        // No application protocol is served here: a request hears 404, the rest is let go.
        if frame.flags.kind() == Some(FrameKind::Req) {
            let resp = error_resp(frame.app_proto, frame.corr_id, 404, "unroutable", None);
            self.send_ctrl(conn, &resp);
        }
        self.rx_dropped(RxDrop::Unroutable, 1);
    }

    /// Rejects `frames` frames with `reason`, answers the peer and closes the session.
    pub(super) fn reject_frame(
        &mut self,
        now: Time,
        conn: ConnId,
        frame: &Frame,
        reason: RejectReason,
        frames: u64,
        why: &str,
    ) {
        self.count_rejected(reason, frames);
        self.events.push_back(Event::Rejected {
            conn,
            reason,
            corr_id: frame.corr_id,
            app_proto: frame.app_proto,
            frames,
            detail: why.to_string(),
        });
        let resp = error_resp(
            frame.app_proto,
            frame.corr_id,
            reason.status(),
            reason.as_str(),
            None,
        );
        self.send_ctrl(conn, &resp);
        self.close(now, conn, CloseReason::Rejected(reason), true);
    }
}
