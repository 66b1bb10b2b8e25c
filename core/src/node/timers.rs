//! Deadlines: per session (handshake, read, write and idle timeouts, keepalive, notices),
//! per configured peer (the next dial) and the drain's.
//!
//! A timer table in the manner of quinn-proto's: each session is filed under its earliest
//! deadline, computed from its state, in a min-heap. A deadline that moves later (a frame
//! arrived, so idle is further away) is left filed where it was: when it fires the session
//! is checked, nothing is due, and it is filed again under its real deadline. Only a
//! deadline that moves earlier (a frame begun, frames handed to the writer, a new session)
//! files the session again at once. An idle node wakes for nothing but real deadlines.

use std::cmp::Reverse;

use super::*;

impl Overlay {
    /// The earliest moment something is due on this session, from its state alone.
    pub(super) fn deadline_of(&self, s: &Session) -> Option<Time> {
        let t = &self.cfg.timeouts;
        let write = (s.in_flight() > 0).then(|| s.last_write + t.write);
        match s.phase {
            Phase::Closing => write,
            Phase::AwaitHello | Phase::AwaitAnswer { .. } => {
                Some(s.opened + self.cfg.overlay.handshake_timeout)
            }
            Phase::Established => {
                let mut d = s.last_rx + t.idle;
                if s.ping.is_none() {
                    d = d.min(s.last_rx + self.cfg.overlay.keepalive);
                }
                let others = [
                    write,
                    s.partial_since.map(|p| p + t.read),
                    s.reasm.oldest_progress().map(|p| p + t.read),
                    s.notices.deadline(self.cfg.overlay.peer.notice_interval),
                    s.cap.as_ref().and_then(|c| c.expires_at),
                ];
                Some(others.into_iter().flatten().fold(d, Time::min))
            }
        }
    }

    /// Files `id` under its deadline if that is earlier than where it is filed.
    pub(super) fn arm(&mut self, id: ConnId) {
        self.arm_after(id, None);
    }

    /// Files `id` under its deadline, but not before `not_before`: a deadline that has just
    /// fired and is still due (an abort the runtime has not carried out yet, a notice with
    /// no room in the control queue) is looked at again a tick later, not in a loop.
    fn arm_after(&mut self, id: ConnId, not_before: Option<Time>) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let Some(mut d) = self.deadline_of(s) else {
            return;
        };
        if let Some(nb) = not_before {
            d = d.max(nb);
        }
        if s.armed.is_some_and(|a| a <= d) {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.armed = Some(d);
        }
        self.timers.push(Reverse((d, id)));
        // Entries left behind by re-filing are skipped when popped; keep them bounded.
        if self.timers.len() > 2 * self.sessions.len() + 64 {
            self.timers = self
                .sessions
                .iter()
                .filter_map(|(id, s)| s.armed.map(|a| Reverse((a, *id))))
                .collect();
        }
    }

    /// Runs every session deadline due at `now`.
    pub(super) fn fire_timers(&mut self, now: Time) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let due = self.sessions.get_mut(&id).is_some_and(|s| {
                let filed = s.armed == Some(at);
                if filed {
                    s.armed = None;
                }
                filed
            });
            if due {
                self.session_timers(now, id);
                self.arm_after(id, Some(now + TICK));
            }
        }
    }

    /// The earliest deadline: a session's filed here, a dial whose backoff ends, the
    /// drain's. The last two are few (one per configured peer, one per node), so they are
    /// looked up rather than filed.
    pub(super) fn next_timer(&self) -> Option<Time> {
        let session = self.timers.peek().map(|Reverse((at, _))| *at);
        let dial = (!self.draining).then(|| self.dialer.next_due()).flatten();
        [session, dial, self.drain_deadline(), self.rescue_due()]
            .into_iter()
            .flatten()
            .min()
    }

    pub(super) fn session_timers(&mut self, now: Time, id: ConnId) {
        let t = self.cfg.timeouts.clone();
        let (hs_timeout, keepalive) = (
            self.cfg.overlay.handshake_timeout,
            self.cfg.overlay.keepalive,
        );
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
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
        if self.end_if_expired(now, id) {
            return;
        }
        // The last refusals of a burst are told once their window has passed.
        self.flush_notices(now, id);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.in_flight() > 0 && now.saturating_since(s.last_write) >= t.write {
            let (c, g) = s.egress.clear();
            self.queued.remove(&id);
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
        if s.reasm
            .oldest_progress()
            .is_some_and(|p| now.saturating_since(p) >= t.read)
        {
            // Per stream: only the streams that stalled go.
            let cutoff = Time::from_duration(
                now.since_epoch().saturating_sub(t.read) + Duration::from_nanos(1),
            );
            let (before, before_frames) = (s.reasm.buffered_bytes(), s.reasm.partial_frames());
            let n = s.reasm.expire(cutoff);
            self.partial_bytes -= before - s.reasm.buffered_bytes();
            self.partial_frames -= before_frames - s.reasm.partial_frames();
            self.count(Count::Expired, n);
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
            s.ping = Some(nonce);
            self.send_ctrl(id, &Ctrl::Ping(nonce).to_frame(0));
        }
    }

    /// While draining, sessions close as their queues empty (a scan, but only then).
    pub(super) fn close_drained(&mut self, now: Time) {
        let idle = |s: &Session| s.egress.is_empty() && s.in_flight() == 0;
        let ids: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.phase == Phase::Established && idle(s))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.close(now, id, CloseReason::Drained, false);
        }
    }

    /// Refuses a connection with no frame to blame: answers `503`/`408`-style where the
    /// peer can hear it, counts the reason and closes.
    pub(super) fn refuse_conn(&mut self, now: Time, id: ConnId, reason: RejectReason, why: &str) {
        self.count(Count::Refused(reason), 1);
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
