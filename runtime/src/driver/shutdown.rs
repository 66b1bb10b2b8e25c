//! The end of a node: the drain (readiness down, GOAWAY, no new dials) and, once drained
//! or past the deadline, the shutdown with a bounded flush and the accounting of what was
//! left undelivered.

use std::time::Duration;

use overlay_core::{Overlay, Stats};
use tokio::time::Instant;

use super::Driver;
use crate::io::messages::Ingress;
use crate::io::net::Net;

/// How long the end of a shutdown waits for bus subscribers to catch up.
const LOGGER_GRACE: Duration = Duration::from_millis(200);

/// How the node ended.
#[derive(Clone, Debug)]
pub struct ShutdownReport {
    /// Every queue drained before the deadline.
    pub drained: bool,
    /// Connections still open when the flush period ended (then dropped).
    pub left_open: usize,
    pub stats: Stats,
    pub drain_time: Duration,
    /// Gossip frames still queued when the drain ended (cleared by `shutdown`, counted in
    /// `overlay_queue_dropped_total{queue="egress",reason="timeout"}`) plus frames handed to
    /// writers of connections left open, which never reached the wire: together with
    /// `stats.dropped`, what an acked message that was not delivered is counted under.
    pub egress_dropped: u64,
}

impl<N: Net> Driver<N> {
    pub(super) fn begin_drain(&mut self) {
        if self.drain.is_some() {
            return;
        }
        let now = self.now();
        let started = Instant::now();
        let deadline = started + self.cfg.shutdown.drain_deadline;
        self.drain = Some((deadline, started));
        // Readiness flips first (core), then peers hear GOAWAY; no new dials.
        self.overlay.begin_drain(now);
        for d in std::mem::take(&mut self.dials).into_values() {
            d.task.abort();
        }
        self.restart_resolvers();
        self.publish_ready();
        tracing::info!(
            event = "shutdown_begin",
            node = %self.node,
            sessions = self.overlay.established(),
            drain_deadline_ms = self.cfg.shutdown.drain_deadline.as_millis() as u64,
            "draining"
        );
        self.drain_outputs(now);
    }

    pub(super) async fn finish(mut self) -> ShutdownReport {
        let started = self.drain.map(|d| d.1).unwrap_or_else(Instant::now);
        let drained = self.overlay.is_drained();
        let egress_dropped = |o: &Overlay| o.stats().egress_dropped.iter().sum::<u64>();
        let before = egress_dropped(&self.overlay);
        let now = self.now();
        self.overlay.shutdown(now);
        // What shutdown cleared from the queues, exactly as the core counted it.
        let queued = egress_dropped(&self.overlay) - before;
        self.drain_outputs(now);
        self.publish_ready();
        // Let the closes flush, within a bound: a peer that stopped reading cannot hold
        // the exit hostage.
        let flush_deadline = Instant::now() + self.bounds.flush_timeout;
        while !self.conns.is_empty() {
            self.heartbeat.beat();
            tokio::select! {
                biased;
                Some(r) = self.report_rx.recv() => self.on_report(r),
                Some(i) = self.ingress_rx.recv() => {
                    self.ingress_q.take();
                    // Closing sessions read nothing; only EOFs matter now.
                    if let Ingress::Eof { conn, .. } = i {
                        self.to_close.push(conn);
                    }
                }
                _ = tokio::time::sleep_until(flush_deadline) => break,
            }
            let now = self.now();
            self.drain_outputs(now);
        }
        let left_open = self.conns.len();
        let unwritten: u64 = self
            .conns
            .keys()
            .filter_map(|c| self.overlay.in_flight(*c))
            .map(|n| n as u64)
            .sum();
        // Give the logger a moment to write the last events (closes) before it is
        // aborted with the other tasks; bounded, since a subscriber may never read.
        let logs_by = Instant::now() + LOGGER_GRACE;
        while !self.bus.is_empty() && Instant::now() < logs_by {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.tasks.shutdown().await;
        let report = ShutdownReport {
            drained,
            left_open,
            stats: self.overlay.stats().clone(),
            drain_time: started.elapsed(),
            egress_dropped: queued + unwritten,
        };
        let s = &report.stats;
        // Totals since start, and apart from them what the end itself cost: one line must
        // not add a lifetime count to a drain-time one.
        tracing::info!(
            event = "shutdown_end",
            node = %self.node,
            drained,
            left_open,
            latency_ms = report.drain_time.as_millis() as u64,
            rx_frames = s.rx_frames,
            published = s.published,
            accepted_messages = s.accepted_messages,
            rx_dropped = s.dropped.iter().sum::<u64>(),
            egress_dropped = s.egress_dropped.iter().sum::<u64>() + unwritten,
            drain_egress_dropped = report.egress_dropped,
            busy = s.writes_busy,
            "stopped"
        );
        report
    }
}
