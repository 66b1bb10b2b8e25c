//! The HELLO exchange, from either side.

use super::*;
use crate::cap::Capability;
use crate::oap::FEATURE_TREE;
use crate::observe::AuthFailure;

impl Overlay {
    pub(super) fn on_hello(&mut self, now: Time, conn: ConnId, frame: Frame) {
        let corr = frame.corr_id;
        self.events.push_back(Event::HandshakeStarted {
            conn,
            corr_id: corr,
            inbound: true,
        });
        let (hello, cap) = match self.judge_hello(now, conn, &frame) {
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
            s.chunk = chunk;
            s.cap = cap;
        }
        self.outcome(Outcome::Delivered, 1);
        self.establish(now, conn, corr, hello.role, hello.node);
        // A token that expires before any deadline filed so far moves the session's.
        self.arm(conn);
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
    ) -> Result<(Hello, Option<Capability>), HelloRefusal> {
        let refuse = |reason, label, why: &'static str| HelloRefusal {
            reason,
            label,
            why,
            retry_after: None,
            error: None,
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
        // A connection admitted before its TLS handshake paid there (`handle_incoming`).
        let prepaid = self
            .sessions
            .get(&conn)
            .is_some_and(|s| s.link.prepaid.is_some());
        if !prepaid && !self.handshakes.try_take(now) {
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
        if let Some(dialed) = self.own_hello(&hello, frame.corr_id) {
            self.dialed_itself(now, dialed);
            return Err(refuse(
                RejectReason::Proto,
                proto,
                "the HELLO is this node's own: a configured peer address reaches this node",
            ));
        }
        let cap = match self.cfg.auth.required {
            true => Some(self.admit_token(now, &frame.cap, &hello)?),
            false => None,
        };
        if !self.identity_matches(conn, &hello.node) {
            return Err(refuse(
                RejectReason::Unauth,
                Some(HandshakeFailure::Mtls),
                "node id in HELLO is not named by the client certificate",
            ));
        }
        Ok((hello, cap))
    }

    /// The capability a HELLO's token gives its session, or the 401 that refuses it. Not a
    /// protocol failure: the handshake-failure label set has no auth reasons, and counting
    /// one as `proto` would make the log and the metrics disagree. It is counted in
    /// `auth_failures_total{reason}` and `rejected_total{reason="unauth"}`, and the answer's
    /// `error` is the auth reason, so a client can tell an expired token from a bad one.
    fn admit_token(
        &self,
        now: Time,
        token: &[u8],
        hello: &Hello,
    ) -> Result<Capability, HelloRefusal> {
        let verdict = if token.is_empty() {
            Err((AuthFailure::Unauth, "no capability token"))
        } else if token.len() > self.cfg.auth.max_token_bytes {
            // Refused before parsing: what a verifier spends is bounded by this size.
            Err((AuthFailure::Unauth, "token over auth.max_token_bytes"))
        } else if let Some(v) = &self.verifier {
            v.verify(token).map_err(|f| (f, f.detail())).and_then(|v| {
                let tenant = &self.cfg.auth.tenant;
                Capability::admit(v, now, hello.role, tenant, &hello.topics).map_err(|f| {
                    (
                        f,
                        "token does not cover this role, tenant or subscribed topics",
                    )
                })
            })
        } else {
            Err((AuthFailure::Unauth, "no verification key is loaded"))
        };
        verdict.map_err(|(f, why)| {
            self.metrics.auth_failures[f.index()].increment(1);
            HelloRefusal {
                reason: RejectReason::Unauth,
                label: None,
                why,
                retry_after: None,
                error: Some(f.as_str()),
            }
        })
    }

    /// The session this node dialed whose HELLO `hello` is: a dialed session still waiting
    /// for the answer to the same 64-bit random `corr_id`. Matched by the exchange, not by
    /// the node id, which two nodes left at the default (`node-` + listen address) share
    /// across hosts.
    fn own_hello(&self, hello: &Hello, corr_id: u64) -> Option<ConnId> {
        if hello.role != Role::Peer || hello.node != self.node_id {
            return None;
        }
        self.dialer.dialed().find(|c| {
            self.sessions
                .get(c)
                .is_some_and(|s| s.phase == Phase::AwaitAnswer { corr_id })
        })
    }

    /// Ends the dialed half of a connection to this node itself and parks its address, so
    /// the node neither counts itself as a peer nor redials itself every backoff.
    fn dialed_itself(&mut self, now: Time, conn: ConnId) {
        if let Some(d) = self.dialer.itself(conn) {
            let corr_id = match self.sessions.get(&conn).map(|s| &s.phase) {
                Some(Phase::AwaitAnswer { corr_id }) => *corr_id,
                _ => 0,
            };
            self.events.push_back(Event::HandshakeFailed {
                conn,
                corr_id,
                reason: None,
                reject: None,
                code: RejectReason::Proto.status(),
                detail: format!(
                    "{} (peer {}) reaches this node itself: not dialed again while it is \
                     among the peer's addresses",
                    d.addr, d.peer
                ),
            });
        }
        self.close(now, conn, CloseReason::HandshakeFailed, false);
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
            error,
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
            error.unwrap_or(reason.as_str()),
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
            s.chunk = chunk;
        }
        let tree = ok.features.iter().any(|f| f == FEATURE_TREE);
        self.establish(now, conn, corr_id, Role::Peer, ok.node);
        if tree {
            self.join_tree(now, conn);
        }
    }

    pub(super) fn chunk_for(&self, max_frame: u32, theirs: Option<usize>) -> usize {
        let fit = (max_frame as usize).saturating_sub(GOSSIP_FRAME_OVERHEAD);
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
        // Admitted: from the next frame on, the session may send frames of any size.
        s.decoder.set_limits(decoder_limits(&self.cfg));
        s.role = Some(role);
        s.node = node.clone();
        s.last_rx = now;
        let inbound = s.inbound;
        let cap_id = s.cap.as_ref().map(|c| c.class.clone());
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
            cap_id,
        });
        if self.draining {
            self.send_ctrl(conn, &Ctrl::goaway());
        }
    }
}
