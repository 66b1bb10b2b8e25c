//! The node's side of keeping configured peers dialed (see `crate::dialer`): the dial set
//! is fed by the runtime, the dials come out of `poll_dial`, and their outcomes and the end
//! of every dialed session come back in.

use super::*;
use crate::dialer::Dial;

impl Overlay {
    /// The addresses configured peer `peer` is reached at. Called for every configured peer
    /// at start, and again whenever its addresses change (a reload, a name resolved anew).
    /// A new peer is dialed at once; nothing is dialed while draining.
    pub fn set_peer_addrs(&mut self, now: Time, peer: &str, addrs: Vec<String>) {
        if self.draining {
            return;
        }
        self.dialer.set_peer_addrs(now, peer, addrs);
        self.dialer.fire(now);
    }

    /// Keeps only the configured peers `keep` accepts (a reload removed the others): they
    /// are not redialed, and their open sessions stay until they end.
    pub fn retain_peers(&mut self, keep: impl FnMut(&str) -> bool) {
        self.dialer.retain_peers(keep);
    }

    /// The configured peers, in order.
    pub fn dial_peers(&self) -> impl Iterator<Item = &str> {
        self.dialer.peers()
    }

    /// The next connection to open, in the order the dials fell due.
    pub fn poll_dial(&mut self) -> Option<Dial> {
        if self.draining {
            return None;
        }
        self.dialer.poll()
    }

    /// The dial to `peer` connected: a session starts as `handle_connected`'s. `None` when
    /// no dial to it is out (removed from the set, or the node is draining): the runtime
    /// drops the connection.
    pub fn handle_dialed(&mut self, now: Time, peer: &str) -> Option<ConnId> {
        if self.draining || !self.dialer.is_dialing(peer) {
            return None;
        }
        let conn = self.handle_connected(now);
        self.dialer.connected(peer, conn);
        Some(conn)
    }

    /// The dial to `peer` failed (refused, unreachable, timed out): counted in
    /// `overlay_dial_failures_total` and retried after the backoff. Returns the failures in
    /// a row since the peer's last session, or `None` when no dial to it was out.
    pub fn handle_dial_failed(&mut self, now: Time, peer: &str) -> Option<u32> {
        let failures = self.dialer.failed(now, peer)?;
        self.metrics.dial_failures.increment(1);
        Some(failures)
    }

    /// Dials whose delay has passed (from `handle_timeout`).
    pub(super) fn fire_dials(&mut self, now: Time) {
        if !self.draining {
            self.dialer.fire(now);
        }
    }
}
