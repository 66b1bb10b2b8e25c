//! The node's side of keeping configured peers dialed (see `crate::dialer`): the dial set
//! is fed by the runtime, the dials come out of `poll_dial`, and their outcomes and the end
//! of every dialed session come back in.

use super::*;
use crate::dialer::Dial;

impl Overlay {
    /// The addresses configured peer `peer` is reached at, each kept dialed. Called for every
    /// configured peer at start, and again whenever its addresses change (a reload, a name
    /// resolved anew). A new address is dialed at once; nothing is dialed while draining.
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

    /// Dial `d` connected over plain TCP: see `handle_dialed_over`.
    pub fn handle_dialed(&mut self, now: Time, d: &Dial) -> Option<ConnId> {
        self.handle_dialed_over(now, d, Link::tcp(now))
    }

    /// Dial `d` connected over `link`: a session starts as `handle_connected_over`'s.
    /// `None` when the dial is no longer wanted (its peer or address removed, or the node
    /// draining): the runtime drops the connection.
    pub fn handle_dialed_over(&mut self, now: Time, d: &Dial, link: Link) -> Option<ConnId> {
        if self.draining || !self.dialer.is_dialing(d) {
            return None;
        }
        let conn = self.handle_connected_over(now, link);
        self.dialer.connected(d, conn);
        Some(conn)
    }

    /// Dial `d` failed (refused, unreachable, timed out, TLS refused): counted in
    /// `overlay_dial_failures_total` and retried after the backoff. Returns the failures in
    /// a row over its address since its last session, or `None` when it was not out.
    pub fn handle_dial_failed(&mut self, now: Time, d: &Dial) -> Option<u32> {
        let failures = self.dialer.failed(now, d)?;
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
