//! Per-session deadlines: handshake, read, write and idle timeouts, keepalive, drain.

use super::*;

impl Overlay {
    pub(super) fn session_timers(&mut self, now: Time, id: ConnId) {
        let t = self.cfg.timeouts.clone();
        let (hs_timeout, keepalive) = (
            self.cfg.overlay.handshake_timeout,
            self.cfg.overlay.keepalive,
        );
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.in_flight() == 0 {
            s.last_write = now;
        }
        match s.phase {
            Phase::Closing => {
                // A closing session whose writer is stuck is aborted rather than waited on.
                if s.in_flight() > 0 && now.saturating_since(s.last_write) >= t.write {
                    self.events.push_back(Event::Abort { conn: id });
                }
                return;
            }
            Phase::AwaitHello | Phase::AwaitAnswer { .. } => {
                if now.saturating_since(s.opened) >= hs_timeout {
                    self.metrics.handshake_failure(HandshakeFailure::Timeout);
                    self.events.push_back(Event::HandshakeFailed {
                        conn: id,
                        corr_id: 0,
                        reason: Some(HandshakeFailure::Timeout),
                        reject: Some(RejectReason::Timeout),
                        code: 408,
                        detail: "handshake not finished within overlay.handshake_timeout".into(),
                    });
                    self.refuse_conn(now, id, RejectReason::Timeout, "handshake timeout");
                }
                return;
            }
            Phase::Established => {}
        }
        // The last refusals of a burst are told once their window has passed.
        self.flush_notices(now, id);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.in_flight() > 0 && now.saturating_since(s.last_write) >= t.write {
            let (c, g) = s.egress.clear();
            self.egress_drop(DropReason::Timeout, (c + g) as u64);
            self.events.push_back(Event::Abort { conn: id });
            return self.close(now, id, CloseReason::WriteTimeout, true);
        }
        if s.partial_since
            .is_some_and(|p| now.saturating_since(p) >= t.read)
        {
            return self.refuse_conn(
                now,
                id,
                RejectReason::Timeout,
                "frame not finished within timeouts.read",
            );
        }
        if s.reasm.partial_streams() > 0 && now.saturating_since(s.stream_progress) >= t.read {
            let n = self.clear_partials(id);
            self.metrics
                .queue_drop(Queue::GossipIngress, DropReason::Timeout, n);
            self.rx_dropped(RxDrop::Timeout, n);
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let quiet = now.saturating_since(s.last_rx);
        if quiet >= t.idle {
            return self.close(now, id, CloseReason::IdleTimeout, false);
        }
        if quiet >= keepalive && s.ping.is_none() {
            let nonce = self.rng.next_u64();
            s.ping = Some((nonce, now));
            let ping = Frame::new(
                AppProto::CTRL,
                Flags::EVENT,
                0,
                Ctrl::Ping(nonce).to_payload(),
            );
            self.send_ctrl(id, &ping);
        }
        let idle = |s: &Session| s.egress.is_empty() && s.in_flight() == 0;
        if self.draining && self.sessions.get(&id).is_some_and(idle) {
            self.close(now, id, CloseReason::Drained, false);
        }
    }

    /// Refuses a connection with no frame to blame: answers `503`/`408`-style where the
    /// peer can hear it, counts the reason and closes.
    pub(super) fn refuse_conn(&mut self, now: Time, id: ConnId, reason: RejectReason, why: &str) {
        self.stats.refused[reason.index()] += 1;
        self.metrics.reject(reason);
        self.events.push_back(Event::Rejected {
            conn: id,
            reason,
            corr_id: 0,
            app_proto: 0,
            frames: 0,
            detail: why.to_string(),
        });
        if reason == RejectReason::Busy {
            let resp = error_resp(
                AppProto::HELLO,
                0,
                503,
                "busy",
                Some(self.cfg.readiness.retry_after),
            );
            self.send_ctrl(id, &resp);
        }
        self.close(now, id, CloseReason::Rejected(reason), true);
    }
}
