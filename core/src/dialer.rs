//! Keeping configured peers dialed: which peer to dial, at which address and when.
//!
//! The node decides and the runtime executes, as iroh-gossip's `proto` and `net`: the
//! runtime hands in each configured peer's addresses (`Overlay::set_peer_addrs`, a set that
//! may change as names resolve anew), drains `Dial`s from `Overlay::poll_dial`, connects,
//! and reports back (`handle_dialed` or `handle_dial_failed`). A dial that fails, or a
//! session to the peer that ends, is retried after an exponential backoff with jitter from
//! the node's seeded RNG, so peers that lost the same node do not all redial it in the same
//! instant, and a simulated run replays the same dials for the same seed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::session::ConnId;
use crate::time::Time;

/// The fraction (+-) applied to each backoff delay. Not a bound on anything a peer can
/// grow, so not a config key; the delays themselves are (`overlay.dial_backoff_*`).
pub const DIAL_JITTER: f64 = 0.5;

/// "Connect to `addr` now, on behalf of configured peer `peer`." The answer names `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    pub peer: Arc<str>,
    /// Opaque to the node: whatever the runtime's connector takes (`ip:port`, `host:port`,
    /// a simulated node's name).
    pub addr: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Dial once `due` has come (and the peer has an address).
    Waiting { due: Time },
    /// A dial is out; its outcome has not been reported.
    Dialing,
    /// A session to the peer is open.
    Connected(ConnId),
}

#[derive(Debug)]
struct Target {
    addrs: Vec<String>,
    /// Which address the next dial takes: a peer with several tries them in turn.
    next_addr: usize,
    state: State,
    /// Delays taken since the last session that reached its handshake.
    attempt: u32,
    /// Dials failed in a row since then, for the operator's log.
    failures: u32,
}

/// The dial set and its backoff.
#[derive(Debug)]
pub struct Dialer {
    base: Duration,
    max: Duration,
    rng: ChaCha8Rng,
    targets: BTreeMap<Arc<str>, Target>,
    by_conn: BTreeMap<ConnId, Arc<str>>,
    out: VecDeque<Dial>,
    /// The earliest dial due, kept as the set changes: `poll_timeout` asks after every
    /// input, and the set changes rarely.
    due: Option<Time>,
}

impl Dialer {
    pub fn new(base: Duration, max: Duration, rng: ChaCha8Rng) -> Dialer {
        Dialer {
            base,
            max: max.max(base),
            rng,
            targets: BTreeMap::new(),
            by_conn: BTreeMap::new(),
            out: VecDeque::new(),
            due: None,
        }
    }

    /// New backoff bounds (a reload); delays already drawn stand.
    pub fn set_backoff(&mut self, base: Duration, max: Duration) {
        self.base = base;
        self.max = max.max(base);
    }

    /// The addresses `peer` is reached at now. A new peer is due at once; a known one keeps
    /// its state and backoff, and its next dial takes the new addresses. With none, nothing
    /// is dialed until some are given.
    pub fn set_peer_addrs(&mut self, now: Time, peer: &str, addrs: Vec<String>) {
        if let Some(t) = self.targets.get_mut(peer) {
            if t.addrs != addrs {
                t.addrs = addrs;
                t.next_addr = 0;
            }
            return self.refresh_due();
        }
        self.targets.insert(
            Arc::from(peer),
            Target {
                addrs,
                next_addr: 0,
                state: State::Waiting { due: now },
                attempt: 0,
                failures: 0,
            },
        );
        self.refresh_due();
    }

    /// Forgets every peer `keep` refuses: it is not dialed again, and an open session to it
    /// stays until it ends on its own.
    pub fn retain_peers(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.targets.retain(|p, _| keep(p));
        self.by_conn.retain(|_, p| keep(p));
        self.out.retain(|d| keep(&d.peer));
        self.refresh_due();
    }

    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.targets.keys().map(|p| &**p)
    }

    /// Moves every peer whose delay has passed to `Dialing` and queues its dial.
    pub fn fire(&mut self, now: Time) {
        if self.due.map_or(true, |d| d > now) {
            return;
        }
        for (peer, t) in self.targets.iter_mut() {
            let State::Waiting { due } = t.state else {
                continue;
            };
            if due > now || t.addrs.is_empty() {
                continue;
            }
            let addr = t.addrs[t.next_addr % t.addrs.len()].clone();
            t.next_addr = (t.next_addr + 1) % t.addrs.len();
            t.state = State::Dialing;
            self.out.push_back(Dial {
                peer: peer.clone(),
                addr,
            });
        }
        self.refresh_due();
    }

    pub fn poll(&mut self) -> Option<Dial> {
        self.out.pop_front()
    }

    /// The earliest dial that will be due.
    pub fn next_due(&self) -> Option<Time> {
        self.due
    }

    fn refresh_due(&mut self) {
        self.due = self
            .targets
            .values()
            .filter(|t| !t.addrs.is_empty())
            .filter_map(|t| match t.state {
                State::Waiting { due } => Some(due),
                _ => None,
            })
            .min();
    }

    pub fn is_dialing(&self, peer: &str) -> bool {
        self.targets
            .get(peer)
            .is_some_and(|t| t.state == State::Dialing)
    }

    /// The dial to `peer` connected as `conn`. False when no dial to it was out (the peer
    /// was removed meanwhile): the runtime drops the connection.
    pub fn connected(&mut self, peer: &str, conn: ConnId) -> bool {
        let Some((key, t)) = self.targets.get_key_value(peer) else {
            return false;
        };
        if t.state != State::Dialing {
            return false;
        }
        let key = key.clone();
        self.by_conn.insert(conn, key);
        if let Some(t) = self.targets.get_mut(peer) {
            t.state = State::Connected(conn);
        }
        true
    }

    /// The dial to `peer` failed: it is tried again after the next delay. Returns the
    /// failures in a row, or `None` when no dial to it was out.
    pub fn failed(&mut self, now: Time, peer: &str) -> Option<u32> {
        let t = self.targets.get_mut(peer)?;
        if t.state != State::Dialing {
            return None;
        }
        t.failures = t.failures.saturating_add(1);
        let failures = t.failures;
        self.wait(now, peer);
        Some(failures)
    }

    /// The session `conn` ended; if it was to a configured peer, the peer is redialed
    /// after a delay, from the base again when the session had reached its handshake.
    pub fn session_ended(&mut self, now: Time, conn: ConnId, established: bool) {
        let Some(peer) = self.by_conn.remove(&conn) else {
            return;
        };
        let Some(t) = self.targets.get_mut(&peer) else {
            return;
        };
        if t.state != State::Connected(conn) {
            return;
        }
        if established {
            t.attempt = 0;
            t.failures = 0;
        }
        self.wait(now, &peer);
    }

    fn wait(&mut self, now: Time, peer: &str) {
        let Some(t) = self.targets.get_mut(peer) else {
            return;
        };
        let exp = self
            .base
            .saturating_mul(1u32 << t.attempt.min(16))
            .min(self.max);
        t.attempt = t.attempt.saturating_add(1);
        let j: f64 = self.rng.gen_range(-DIAL_JITTER..=DIAL_JITTER);
        t.state = State::Waiting {
            due: now + exp.mul_f64(1.0 + j),
        };
        self.refresh_due();
    }

    /// No more dials (the node is draining): what is queued is dropped and nothing is due.
    pub fn stop(&mut self) {
        self.out.clear();
        self.targets.clear();
        self.by_conn.clear();
        self.due = None;
    }
}
