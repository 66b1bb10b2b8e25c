//! The HELLO exchange, from either side.

use super::*;
use crate::oap::FEATURE_TREE;

impl Overlay {
    pub(super) fn on_hello(&mut self, now: Time, conn: ConnId, frame: Frame) {
        let corr = frame.corr_id;
        self.events.push_back(Event::HandshakeStarted {
            conn,
            corr_id: corr,
            inbound: true,
        });
        let hello = match self.judge_hello(now, conn, &frame) {
            Ok(h) => h,
            Err(refusal) => return self.fail_hello(now, conn, &frame, refusal),
        };
        let ours = self.cfg.overlay.gossip.max_frame_bytes;
        let max_frame = hello.max_frame.min(ours);
        let chunk = self.chunk_for(max_frame, None);
        // The additions both sides speak; the broadcast tree is between peers only.
        let tree = hello.role == Role::Peer && hello.features.iter().any(|f| f == FEATURE_TREE);
        let ok = HelloOk {
            version: VERSION,
            node: self.node_id.clone(),
            max_frame: ours,
            chunk: chunk as u32,
            features: if tree { self.features() } else { Vec::new() },
        };
        let mut resp = Frame::resp(AppProto::HELLO, corr, 200, ok.to_json().into());
        resp.flags = resp.flags | Flags::START;
        self.send_ctrl(conn, &resp);
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.topics = hello
                .topics
                .iter()
                .map(|t| Bytes::copy_from_slice(t.as_bytes()))
                .collect();
            s.max_frame = max_frame;
            s.chunk = chunk;
        }
        self.outcome(Outcome::Delivered, 1);
        self.establish(now, conn, corr, hello.role, hello.node);
        if tree {
            self.join_tree(now, conn);
        }
    }

    /// Every check a HELLO must pass, in the order that refuses floods cheapest first.
    pub(super) fn judge_hello(
        &mut self,
        now: Time,
        conn: ConnId,
        frame: &Frame,
    ) -> Result<Hello, HelloRefusal> {
        let refuse = |reason, label, why: &'static str| HelloRefusal {
            reason,
            label,
            why,
            retry_after: None,
        };
        let proto = Some(HandshakeFailure::Proto);
        let is_hello = frame.app_proto == AppProto::HELLO
            && frame.flags.kind() == Some(FrameKind::Req)
            && frame.flags.contains(Flags::START);
        if !is_hello {
            return Err(refuse(
                RejectReason::Proto,
                proto,
                "first frame is not a HELLO REQ|START",
            ));
        }
        if self.draining {
            return Err(HelloRefusal {
                retry_after: Some(self.cfg.readiness.retry_after),
                ..refuse(RejectReason::NotReady, None, "draining")
            });
        }
        if !self.handshakes.try_take(now) {
            return Err(HelloRefusal {
                retry_after: Some(self.handshakes.retry_after_secs()),
                ..refuse(
                    RejectReason::Ratelimit,
                    Some(HandshakeFailure::Ratelimit),
                    "handshake rate limit",
                )
            });
        }
        let hello: Hello = serde_json::from_slice(&frame.payload).map_err(|_| {
            refuse(
                RejectReason::Proto,
                proto,
                "HELLO payload is not valid JSON",
            )
        })?;
        self.check_hello(&hello)
            .map_err(|why| refuse(RejectReason::Proto, proto, why))?;
        if self.cfg.auth.required && !self.authorized(&frame.cap) {
            self.metrics.auth_failures[crate::observe::AuthFailure::Unauth.index()].increment(1);
            // Not a protocol failure: the handshake-failure label set has no `unauth`, and
            // counting it as `proto` would make the log and the metrics disagree. It is
            // counted in `auth_failures_total` and `rejected_total{reason="unauth"}`.
            return Err(refuse(
                RejectReason::Unauth,
                None,
                "missing or unknown capability",
            ));
        }
        if !self.identity_matches(conn, &hello.node) {
            return Err(refuse(
                RejectReason::Unauth,
                Some(HandshakeFailure::Mtls),
                "node id in HELLO is not named by the client certificate",
            ));
        }
        Ok(hello)
    }

    pub(super) fn check_hello(&self, h: &Hello) -> Result<(), &'static str> {
        if !h.versions.contains(&VERSION) {
            return Err("no common version");
        }
        if h.node.len() > 128 {
            return Err("node id longer than 128 bytes");
        }
        if h.topics.len() > self.cfg.overlay.max_topics {
            return Err("too many topics");
        }
        if h.topics.iter().any(|t| t.is_empty() || t.len() > 255) {
            return Err("topic must be 1..=255 bytes");
        }
        if h.max_frame < 1024 {
            return Err("max_frame below 1024");
        }
        Ok(())
    }

    pub(super) fn authorized(&self, cap: &[u8]) -> bool {
        // Constant time per token, so the comparison does not leak how much matched.
        self.cfg.auth.tokens.iter().fold(false, |ok, t| {
            let t = t.as_bytes();
            let same = t.len() == cap.len()
                && t.iter().zip(cap).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            ok | same
        })
    }

    pub(super) fn fail_hello(
        &mut self,
        now: Time,
        conn: ConnId,
        frame: &Frame,
        refusal: HelloRefusal,
    ) {
        let HelloRefusal {
            reason,
            label,
            why,
            retry_after,
        } = refusal;
        if let Some(l) = label {
            self.metrics.handshake_failure(l);
        }
        self.count_rejected(reason, 1);
        self.events.push_back(Event::HandshakeFailed {
            conn,
            corr_id: frame.corr_id,
            reason: label,
            reject: Some(reason),
            code: reason.status(),
            detail: why.to_string(),
        });
        let mut resp = error_resp(
            AppProto::HELLO,
            frame.corr_id,
            reason.status(),
            reason.as_str(),
            retry_after,
        );
        resp.flags = resp.flags | Flags::START;
        self.send_ctrl(conn, &resp);
        self.close(now, conn, CloseReason::Rejected(reason), true);
    }

    pub(super) fn on_answer(&mut self, now: Time, conn: ConnId, corr_id: u64, frame: Frame) {
        let is_answer = frame.app_proto == AppProto::HELLO
            && frame.flags.kind() == Some(FrameKind::Resp)
            && frame.corr_id == corr_id;
        if !is_answer {
            self.metrics.handshake_failure(HandshakeFailure::Proto);
            self.events.push_back(Event::HandshakeFailed {
                conn,
                corr_id,
                reason: Some(HandshakeFailure::Proto),
                reject: Some(RejectReason::Proto),
                code: 400,
                detail: "expected the HELLO answer".into(),
            });
            return self.reject_frame(
                now,
                conn,
                &frame,
                RejectReason::Proto,
                1,
                "expected the HELLO answer",
            );
        }
        // The answer is consumed whatever it says.
        self.outcome(Outcome::Delivered, 1);
        let ok = (frame.code == 200)
            .then(|| serde_json::from_slice::<HelloOk>(&frame.payload).ok())
            .flatten()
            .filter(|ok| ok.version == VERSION && ok.max_frame >= 1024);
        let Some(ok) = ok else {
            let label = match frame.code {
                429 => HandshakeFailure::Ratelimit,
                _ => HandshakeFailure::Proto,
            };
            self.metrics.handshake_failure(label);
            let detail = String::from_utf8_lossy(&frame.payload[..frame.payload.len().min(256)])
                .into_owned();
            self.events.push_back(Event::HandshakeFailed {
                conn,
                corr_id,
                reason: Some(label),
                reject: None,
                code: frame.code,
                detail,
            });
            return self.close(now, conn, CloseReason::HandshakeFailed, true);
        };
        let max_frame = ok.max_frame.min(self.cfg.overlay.gossip.max_frame_bytes);
        let chunk = self.chunk_for(max_frame, Some(ok.chunk as usize));
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.max_frame = max_frame;
            s.chunk = chunk;
        }
        let tree = ok.features.iter().any(|f| f == FEATURE_TREE);
        self.establish(now, conn, corr_id, Role::Peer, ok.node);
        if tree {
            self.join_tree(now, conn);
        }
    }

    pub(super) fn chunk_for(&self, max_frame: u32, theirs: Option<usize>) -> usize {
        let fit = (max_frame as usize).saturating_sub(HEADER_LEN + 18 + 255);
        let mut c = self.cfg.overlay.gossip.chunk_bytes.min(fit);
        if let Some(t) = theirs.filter(|t| *t >= 512) {
            c = c.min(t);
        }
        c.max(512)
    }

    pub(super) fn establish(
        &mut self,
        now: Time,
        conn: ConnId,
        corr_id: u64,
        role: Role,
        node: String,
    ) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        s.phase = Phase::Established;
        s.role = Some(role);
        s.node = node.clone();
        s.last_rx = now;
        let inbound = s.inbound;
        // From the accept or dial, TLS handshake included: what a peer waits for.
        self.metrics.handshake_latency[s.link.transport().index()]
            .record(now.saturating_since(s.link.opened).as_secs_f64());
        match role {
            Role::Peer => self.peers.push(conn),
            Role::Client => self.clients.push(conn),
        }
        self.metrics.sessions_open.increment(1);
        self.metrics.sessions_active.set(self.established() as f64);
        self.events.push_back(Event::HandshakeOk {
            conn,
            corr_id,
            inbound,
            role,
            node,
        });
        if self.draining {
            let f = Frame::new(AppProto::CTRL, Flags::EVENT, 0, Ctrl::Goaway.to_payload());
            self.send_ctrl(conn, &f);
        }
    }
}
