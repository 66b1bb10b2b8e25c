//! The end of a node, as the core decides it: the drain (readiness down, GOAWAY, no new
//! dials) until the core says it ended (drained, or its deadline timer fired), then the
//! shutdown, a bounded flush, and the core's report of what was left undelivered, logged.

use std::time::Duration;

use overlay_core::ShutdownReport;
use tokio::time::Instant;

use super::Driver;
use crate::io::messages::Ingress;
use crate::io::net::Net;

/// How long the end of a shutdown waits for bus subscribers to catch up.
const LOGGER_GRACE: Duration = Duration::from_millis(200);

impl<N: Net> Driver<N> {
    pub(super) fn begin_drain(&mut self) {
        if self.overlay.is_draining() {
            return;
        }
        let now = self.now();
        // Readiness flips first (core), then peers hear GOAWAY; the core dials no more, so
        // the connects in flight are not wanted either. The deadline is the core's timer.
        self.overlay.begin_drain(now);
        for task in std::mem::take(&mut self.dials).into_values() {
            task.abort();
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
        let now = self.now();
        self.overlay.shutdown(now);
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
        // Give the logger a moment to write the last events (closes) before it is
        // aborted with the other tasks; bounded, since a subscriber may never read.
        let logs_by = Instant::now() + LOGGER_GRACE;
        while !self.bus.is_empty() && Instant::now() < logs_by {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.tasks.shutdown().await;
        let report = self.overlay.shutdown_report(self.now());
        let s = &report.stats;
        // Totals since start, and apart from them what the end itself cost: one line must
        // not add a lifetime count to a drain-time one.
        tracing::info!(
            event = "shutdown_end",
            node = %self.node,
            drained = report.drained,
            left_open = report.left_open,
            latency_ms = report.drain_time.as_millis() as u64,
            rx_frames = s.rx_frames,
            published = s.published,
            accepted_messages = s.accepted_messages,
            rx_dropped = s.dropped.iter().sum::<u64>(),
            egress_dropped = s.egress_dropped.iter().sum::<u64>() + report.unwritten,
            drain_egress_dropped = report.egress_dropped,
            busy = s.writes_busy,
            "stopped"
        );
        report
    }
}
