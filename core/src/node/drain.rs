//! The end of a node: the drain (readiness down, GOAWAY, no new dials, sessions close as
//! their queues empty) until everything is written or `shutdown.drain_deadline` passes,
//! then the shutdown, and the report of what was left undelivered.

use super::*;

/// When the drain began and when it must end, and what its end cost.
#[derive(Clone, Copy, Debug)]
pub(super) struct Drain {
    started: Time,
    deadline: Time,
    /// Set by the first `shutdown`: whether every queue had drained by then...
    drained: Option<bool>,
    /// ...and the frames that shutdowns cleared from the queues.
    cleared: u64,
}

/// How the node ended: what the runtime's `shutdown_end` line reports.
#[derive(Clone, Debug)]
pub struct ShutdownReport {
    /// Every queue drained before the deadline.
    pub drained: bool,
    /// Sessions still open when the runtime's flush ended (their connections are dropped).
    pub left_open: usize,
    pub stats: Stats,
    /// From the start of the drain to the report.
    pub drain_time: Duration,
    /// Gossip frames still queued when the drain ended (cleared by `shutdown`, counted in
    /// `overlay_queue_dropped_total{queue="egress",reason="timeout"}`) plus `unwritten`:
    /// together with `stats.dropped`, what an acked message that was not delivered is
    /// counted under.
    pub egress_dropped: u64,
    /// Frames handed to writers of sessions left open, which never reached the wire.
    pub unwritten: u64,
}

impl Overlay {
    /// Starts draining for shutdown: readiness goes down first, dialing stops, every
    /// session is told GOAWAY, new handshakes are refused `503 not_ready`, and sessions
    /// close as their queues empty. At `shutdown.drain_deadline` the node shuts down.
    pub fn begin_drain(&mut self, now: Time) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.drain = Some(Drain {
            started: now,
            deadline: now + self.cfg.shutdown.drain_deadline,
            drained: None,
            cleared: 0,
        });
        self.dialer.stop();
        self.refresh_readiness(now);
        let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
        for id in ids {
            if self.sessions.get(&id).is_some_and(|s| s.is_established()) {
                self.send_ctrl(id, &Ctrl::goaway());
            }
        }
    }

    /// The drain is over: everything was written, or the deadline passed and the node shut
    /// down. The runtime stops feeding input other than closes, and flushes.
    pub fn drain_ended(&self) -> bool {
        self.draining && (self.is_drained() || self.drain.is_some_and(|d| d.drained.is_some()))
    }

    /// The drain deadline, while it is ahead (a timer of `poll_timeout`).
    pub(super) fn drain_deadline(&self) -> Option<Time> {
        self.drain
            .filter(|d| d.drained.is_none())
            .map(|d| d.deadline)
    }

    /// Shuts down once the drain deadline has passed (from `handle_timeout`).
    pub(super) fn check_drain_deadline(&mut self, now: Time) {
        if self.drain_deadline().is_some_and(|d| d <= now) {
            self.shutdown(now);
        }
    }

    /// The drain is over (or there was none): close every session now, counting what is
    /// still queued as dropped (`timeout`).
    pub fn shutdown(&mut self, now: Time) {
        let drained = self.is_drained();
        self.draining = true;
        self.dialer.stop();
        let before = self.egress_dropped_total();
        let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                let (c, g) = s.egress.clear();
                self.queued.remove(&id);
                self.egress_drop(DropReason::Timeout, (c + g) as u64);
            }
            self.close(now, id, CloseReason::Shutdown, false);
        }
        let cleared = self.egress_dropped_total() - before;
        let d = self.drain.get_or_insert(Drain {
            started: now,
            deadline: now,
            drained: None,
            cleared: 0,
        });
        d.drained.get_or_insert(drained);
        d.cleared += cleared;
        self.refresh_readiness(now);
    }

    /// How the node ended, once the runtime has flushed what it could after `shutdown`.
    pub fn shutdown_report(&self, now: Time) -> ShutdownReport {
        let d = self.drain.unwrap_or(Drain {
            started: now,
            deadline: now,
            drained: None,
            cleared: 0,
        });
        let unwritten: u64 = self.sessions.values().map(|s| s.in_flight() as u64).sum();
        ShutdownReport {
            drained: d.drained.unwrap_or_else(|| self.is_drained()),
            left_open: self.sessions.len(),
            stats: self.stats().clone(),
            drain_time: now.saturating_since(d.started),
            egress_dropped: d.cleared + unwritten,
            unwritten,
        }
    }

    fn egress_dropped_total(&self) -> u64 {
        self.stats().egress_dropped.iter().sum()
    }
}
