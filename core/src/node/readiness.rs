//! Readiness keys computed from the queues and the shed rate, and the sampled gauges.

use super::*;

impl Overlay {
    pub(super) fn refresh_readiness(&mut self, now: Time) {
        // Sampled when readiness is refreshed (every tick at least): dips between samples
        // shorter than the grace do not end the episode (see `Sustained`).
        self.queues_ok = !self.queues_bad.observe(now, self.over_watermark > 0);
        let (busy, total) = self.shed_window.totals(now);
        let shedding = busy > 0 && busy as f64 > self.cfg.readiness.shed_rate_max * total as f64;
        self.shed_rate_ok = !self.shed_bad.observe(now, shedding);
        let view = self.readiness();
        let state = view.state();
        self.metrics.readyz_state.set(state as u8 as f64);
        let missing = view.missing();
        let now_view = (state, missing);
        if self.last_ready.as_ref() != Some(&now_view) {
            self.events.push_back(Event::ReadinessChanged {
                state: now_view.0,
                missing: now_view.1.clone(),
            });
            self.last_ready = Some(now_view);
        }
    }

    /// `conns_ok` is read live by `readiness()`; when a session crosses `overlay.max_conns`
    /// the gauge and the readiness event follow at once, not at the next tick, so
    /// `readyz_state` never says ready while `/readyz` says the node is full.
    pub(super) fn conns_changed(&mut self, now: Time) {
        let ok = self.sessions.len() < self.cfg.overlay.max_conns;
        let stale = self
            .last_ready
            .as_ref()
            .is_some_and(|(_, missing)| missing.contains(&"conns_ok") == ok);
        if stale {
            self.refresh_readiness(now);
        }
    }

    pub(super) fn update_gauges(&self) {
        let m = &self.metrics;
        let (mut egress, partial, mut fill) = (0usize, self.partial_frames, 0.0f64);
        let peer = &self.cfg.overlay.peer;
        for s in self.queued.iter().filter_map(|id| self.sessions.get(id)) {
            egress += s.egress.frames();
            fill = fill.max(
                s.egress
                    .fill(peer.egress_queue_frames, peer.egress_queue_bytes),
            );
        }
        m.egress_fill.set(fill);
        m.queue_depth[Queue::Ingress.index()].set(self.ingress_depth as f64);
        m.queue_depth[Queue::GossipIngress.index()].set(partial as f64);
        m.queue_depth[Queue::Egress.index()].set(egress as f64);
        m.permits[PermitState::Available.index()].set(self.permits.available() as f64);
        m.permits[PermitState::InUse.index()].set(self.permits.in_use() as f64);
        m.sessions_active.set(self.established() as f64);
    }
}
