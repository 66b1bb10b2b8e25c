//! Authorising writes: every message a client session writes is decided from the
//! capability it was admitted with (topic, action, expiry), not from the token again.

use super::*;
use crate::cap::Action;

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
}
