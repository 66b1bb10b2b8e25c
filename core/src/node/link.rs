//! The transport under a session, as the runtime reports it: what a TLS handshake
//! negotiated and verified, and the TLS handshakes that failed before any session existed.

use super::*;
use crate::observe::PqOutcome;
use crate::transport::{Admission, Prepaid, TlsRefusal};

impl Overlay {
    /// Files `link` with a new session and counts the key exchange it negotiated. Under
    /// `pq_mode = "hybrid"` a TLS session without the hybrid group is closed (the runtime
    /// offers nothing else, so this guards against a misconfigured provider, not a peer).
    /// Returns whether the session goes on.
    pub(super) fn attach_link(&mut self, now: Time, id: ConnId, link: Link) -> bool {
        let mode = self.cfg.overlay.pq_mode;
        let verdict = link.tls.as_ref().map(|t| match mode {
            PqModeConfig::Hybrid if !t.hybrid => PqOutcome::Fail,
            _ => PqOutcome::Ok,
        });
        if let Some(s) = self.sessions.get_mut(&id) {
            s.link = link;
        }
        let Some(outcome) = verdict else {
            return true;
        };
        self.metrics.pq_negotiations[mode.mode().index()][outcome.index()].increment(1);
        if outcome == PqOutcome::Ok {
            return true;
        }
        self.metrics.handshake_failure(HandshakeFailure::PqNegFail);
        self.events.push_back(Event::HandshakeFailed {
            conn: id,
            corr_id: 0,
            reason: Some(HandshakeFailure::PqNegFail),
            reject: None,
            code: 0,
            detail: "TLS negotiated a classical group under pq_mode hybrid".into(),
        });
        self.close(now, id, CloseReason::HandshakeFailed, true);
        false
    }

    /// A connection just accepted on the TLS listener, before anything is read from it:
    /// charges the handshake rate limit now, so that a flood over the rate costs the node
    /// an accept and a close instead of a TLS handshake each (what quinn-proto's `Incoming`
    /// does for QUIC). A refused one is counted as a handshake attempted and failed
    /// (`ratelimit`) and as `rejected_total{reason="ratelimit"}`, as a HELLO over the rate
    /// is, but it hears no 429: answering would take the TLS handshake this saves. The
    /// plain listener does not ask: it has no crypto to save, and its HELLO is charged.
    pub fn handle_incoming(&mut self, now: Time) -> Admission {
        if self.handshakes.try_take(now) {
            return Admission::Admit(Prepaid::new());
        }
        self.metrics.handshake_attempts.increment(1);
        self.metrics.handshake_failure(HandshakeFailure::Ratelimit);
        // A connection with no frame to blame: `Stats::refused`, outside the frame balance.
        self.count(Count::Refused(RejectReason::Ratelimit), 1);
        Admission::Refuse
    }

    /// A TLS handshake (accepted or dialed) that failed: there is no session, and the
    /// connection is closed without an OAP/1 answer. Counted as a handshake attempted and
    /// failed, by the TLS reason and by the handshake reason (`tls`, `mtls` or
    /// `pq_neg_fail`), so the failure reasons still add up to the failed handshakes.
    pub fn handle_tls_failed(&mut self, _now: Time, refusal: TlsRefusal) -> HandshakeFailure {
        self.metrics.handshake_attempts.increment(1);
        if let Some(tls) = refusal.tls_reason() {
            self.metrics.tls_failures[tls.index()].increment(1);
        }
        if let Some(outcome) = refusal.pq_outcome() {
            let mode = self.cfg.overlay.pq_mode.mode();
            self.metrics.pq_negotiations[mode.index()][outcome.index()].increment(1);
        }
        let label = refusal.handshake_reason();
        self.metrics.handshake_failure(label);
        label
    }

    /// Spec section 7: over mTLS the node id a peer claims in HELLO must be one its
    /// verified certificate names.
    pub(super) fn identity_matches(&self, conn: ConnId, node: &str) -> bool {
        let names = self
            .sessions
            .get(&conn)
            .and_then(|s| s.link.tls.as_ref())
            .and_then(|t| t.peer_names.as_ref());
        names.map_or(true, |names| names.iter().any(|n| n.names_node(node)))
    }
}
