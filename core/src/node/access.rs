//! Authorising writes: every message a client session writes is decided from the
//! capability it was admitted with (topic, action, expiry), not from the token again.

use super::*;
use crate::cap::Action;
use crate::observe::AuthFailure;

impl Overlay {
    /// Whether `conn` may write `m`; if not, the message is refused `403 forbidden` (in its
    /// answer, or in a refusal notice) and the failure counted by auth reason. Peers relay
    /// what their own clients were authorised to write, so only client writes are checked.
    pub(super) fn write_allowed(&mut self, now: Time, conn: ConnId, m: &Message) -> bool {
        let Some(s) = self.sessions.get(&conn) else {
            return false;
        };
        let Some(cap) = s.cap.as_ref().filter(|_| s.role == Some(Role::Client)) else {
            return true;
        };
        let Err(failure) = cap.authorise(now, Action::Publish, &m.header.topic) else {
            return true;
        };
        self.metrics.auth_failures[failure.index()].increment(1);
        self.refuse_message(now, conn, m, RejectReason::Forbidden, 0, failure.detail());
        false
    }

    /// Ends a session whose capability has expired (its deadline is in the timer table, so
    /// within a `TICK` of the expiry; writes in between are refused by `write_allowed`):
    /// it was admitted for that long, and a subscriber must not go on receiving on a token
    /// that no longer holds. Counted `expired`, refused `unauth`; the client reconnects with
    /// a fresh token.
    pub(super) fn end_if_expired(&mut self, now: Time, id: ConnId) -> bool {
        let expired = self
            .sessions
            .get(&id)
            .and_then(|s| s.cap.as_ref())
            .and_then(|c| c.expires_at)
            .is_some_and(|e| now >= e);
        if expired {
            self.metrics.auth_failures[AuthFailure::Expired.index()].increment(1);
            self.refuse_conn(now, id, RejectReason::Unauth, AuthFailure::Expired.detail());
        }
        expired
    }
}
