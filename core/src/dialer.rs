//! Keeping configured peers dialed: which peer to dial, at which address and when.
//!
//! The node decides and the runtime executes, as iroh-gossip's `proto` and `net`: the
//! runtime hands in each configured peer's addresses (`Overlay::set_peer_addrs`, a set that
//! may change as names resolve anew), drains `Dial`s from `Overlay::poll_dial`, connects,
//! and reports back (`handle_dialed` or `handle_dial_failed`). Every address of a peer is
//! kept dialed (a name stands for all its answer). A dial that fails, or a session over the
//! address that ends, is retried after an exponential backoff with jitter from
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
    /// Dial once `due` has come.
    Waiting { due: Time },
    /// A dial is out; its outcome has not been reported.
    Dialing,
    /// A session over this address is open.
    Connected(ConnId),
    /// The address reaches this node itself (its own HELLO came back): never dialed again
    /// while it stays among the peer's addresses. A name that answers every member of a
    /// group (a headless Service) answers its asker too.
    Itself,
}

/// One address of a configured peer. Each has its own backoff: a name answering several
/// addresses keeps a session with every one, and a dead one does not slow the others.
#[derive(Debug)]
struct Slot {
    state: State,
    /// Delays taken since the last session that reached its handshake.
    attempt: u32,
    /// Dials failed in a row since then, for the operator's log.
    failures: u32,
    /// Still among the peer's addresses. A connected address that left them is kept
    /// unwanted until its session ends, so that coming back meanwhile (rotating DNS
    /// answers) finds the session instead of dialing a second one; it is never redialed.
    wanted: bool,
}

impl Slot {
    fn new(now: Time) -> Slot {
        Slot {
            state: State::Waiting { due: now },
            attempt: 0,
            failures: 0,
            wanted: true,
        }
    }
}

/// The dial set and its backoff.
#[derive(Debug)]
pub struct Dialer {
    base: Duration,
    max: Duration,
    rng: ChaCha8Rng,
    targets: BTreeMap<Arc<str>, BTreeMap<String, Slot>>,
    by_conn: BTreeMap<ConnId, (Arc<str>, String)>,
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

    /// The addresses `peer` is reached at now. A new address is due at once; one it had
    /// keeps its state and backoff; one that left is not dialed again (its open session
    /// stays until it ends). With none, nothing is dialed until some are given.
    pub fn set_peer_addrs(&mut self, now: Time, peer: &str, addrs: Vec<String>) {
        let slots = match self.targets.get_mut(peer) {
            Some(slots) => slots,
            None => self.targets.entry(Arc::from(peer)).or_default(),
        };
        slots.retain(|addr, slot| {
            slot.wanted = addrs.contains(addr);
            slot.wanted || matches!(slot.state, State::Connected(_))
        });
        for addr in addrs {
            slots.entry(addr).or_insert_with(|| Slot::new(now)).wanted = true;
        }
        let slots = &self.targets[peer];
        self.out
            .retain(|d| *d.peer != *peer || slots.get(&d.addr).is_some_and(|s| s.wanted));
        self.refresh_due();
    }

    /// Forgets every peer `keep` refuses: it is not dialed again, and an open session to it
    /// stays until it ends on its own.
    pub fn retain_peers(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.targets.retain(|p, _| keep(p));
        self.by_conn.retain(|_, (p, _)| keep(p));
        self.out.retain(|d| keep(&d.peer));
        self.refresh_due();
    }

    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.targets.keys().map(|p| &**p)
    }

    /// Moves every address whose delay has passed to `Dialing` and queues its dial.
    pub fn fire(&mut self, now: Time) {
        if self.due.map_or(true, |d| d > now) {
            return;
        }
        for (peer, slots) in self.targets.iter_mut() {
            for (addr, slot) in slots.iter_mut() {
                match slot.state {
                    State::Waiting { due } if slot.wanted && due <= now => {}
                    _ => continue,
                }
                slot.state = State::Dialing;
                self.out.push_back(Dial {
                    peer: peer.clone(),
                    addr: addr.clone(),
                });
            }
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
            .flat_map(|slots| slots.values())
            .filter(|s| s.wanted)
            .filter_map(|s| match s.state {
                State::Waiting { due } => Some(due),
                _ => None,
            })
            .min();
    }

    fn slot(&mut self, d: &Dial) -> Option<&mut Slot> {
        self.targets.get_mut(&d.peer)?.get_mut(&d.addr)
    }

    pub fn is_dialing(&self, d: &Dial) -> bool {
        self.targets
            .get(&d.peer)
            .and_then(|slots| slots.get(&d.addr))
            .is_some_and(|s| s.wanted && s.state == State::Dialing)
    }

    /// Dial `d` connected as `conn`. False when it was not out (the peer or the address was
    /// removed meanwhile): the runtime drops the connection.
    pub fn connected(&mut self, d: &Dial, conn: ConnId) -> bool {
        if !self.is_dialing(d) {
            return false;
        }
        if let Some(slot) = self.slot(d) {
            slot.state = State::Connected(conn);
        }
        self.by_conn.insert(conn, (d.peer.clone(), d.addr.clone()));
        true
    }

    /// The connections dialed for configured peers whose session is open (or opening).
    pub fn dialed(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.by_conn.keys().copied()
    }

    /// The session `conn` was dialed to this node itself: its address is parked (see
    /// `State::Itself`). Returns the dial, or `None` when `conn` was not dialed by the set.
    pub fn itself(&mut self, conn: ConnId) -> Option<Dial> {
        let (peer, addr) = self.by_conn.get(&conn)?.clone();
        let d = Dial { peer, addr };
        let slot = self.slot(&d)?;
        if slot.state != State::Connected(conn) {
            return None;
        }
        slot.state = State::Itself;
        Some(d)
    }

    /// Dial `d` failed: it is tried again after the next delay. Returns the failures in a
    /// row, or `None` when it was not out.
    pub fn failed(&mut self, now: Time, d: &Dial) -> Option<u32> {
        if !self.is_dialing(d) {
            return None;
        }
        let slot = self.slot(d)?;
        slot.failures = slot.failures.saturating_add(1);
        let failures = slot.failures;
        self.wait(now, d);
        Some(failures)
    }

    /// The session `conn` ended; if it was dialed for a configured peer, the address is
    /// redialed after a delay, from the base again when the session had reached its
    /// handshake, unless it has left the peer's addresses.
    pub fn session_ended(&mut self, now: Time, conn: ConnId, established: bool) {
        let Some((peer, addr)) = self.by_conn.remove(&conn) else {
            return;
        };
        let d = Dial { peer, addr };
        let Some(slot) = self.slot(&d) else {
            return;
        };
        if slot.state != State::Connected(conn) {
            return;
        }
        if !slot.wanted {
            if let Some(slots) = self.targets.get_mut(&d.peer) {
                slots.remove(&d.addr);
            }
            return;
        }
        if established {
            slot.attempt = 0;
            slot.failures = 0;
        }
        self.wait(now, &d);
    }

    fn wait(&mut self, now: Time, d: &Dial) {
        let (base, max) = (self.base, self.max);
        let j: f64 = self.rng.gen_range(-DIAL_JITTER..=DIAL_JITTER);
        let Some(slot) = self.slot(d) else {
            return;
        };
        let exp = base.saturating_mul(1u32 << slot.attempt.min(16)).min(max);
        slot.attempt = slot.attempt.saturating_add(1);
        slot.state = State::Waiting {
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
