//! The node's own Prometheus recorder (no global recorder: several nodes may share a
//! process, as in `demo` and the simulator) and the metric handles bound to it.

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use overlay_core::observe::{
    HttpMetrics, Metrics, CHUNK_BYTES, FRAME_SIZE_BYTES, LATENCY_BUCKETS, REQUEST_LATENCY_SECONDS,
    SIZE_BUCKETS,
};

/// A recorder and every handle registered with it.
pub struct Recorder {
    pub recorder: PrometheusRecorder,
    pub handle: PrometheusHandle,
    pub metrics: Metrics,
    pub http: HttpMetrics,
}

impl Recorder {
    pub fn new() -> anyhow::Result<Recorder> {
        let b = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(REQUEST_LATENCY_SECONDS.into()),
                LATENCY_BUCKETS,
            )?
            .set_buckets_for_metric(Matcher::Full(FRAME_SIZE_BYTES.into()), SIZE_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(CHUNK_BYTES.into()), SIZE_BUCKETS)?;
        let recorder = b.build_recorder();
        let handle = recorder.handle();
        // Handles bind to the recorder current at registration: this node's.
        let (metrics, http) =
            metrics::with_local_recorder(&recorder, || (Metrics::new(), HttpMetrics::new()));
        Ok(Recorder {
            recorder,
            handle,
            metrics,
            http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inventory_metric_is_exported_from_the_first_scrape() {
        let r = Recorder::new().unwrap();
        let text = r.handle.render();
        for s in overlay_core::observe::INVENTORY {
            if !overlay_core::observe::enabled(s, &[]) {
                continue;
            }
            assert!(
                text.contains(&format!("# TYPE {} ", s.name)),
                "{} missing TYPE",
                s.name
            );
            assert!(
                text.contains(&format!("# HELP {} ", s.name)),
                "{} missing HELP",
                s.name
            );
        }
        assert!(text.contains("request_latency_seconds_bucket"));
        assert!(text.contains("le=\"0.005\""));
    }

    #[test]
    fn two_recorders_do_not_mix() {
        let a = Recorder::new().unwrap();
        let b = Recorder::new().unwrap();
        a.metrics.sessions_open.increment(5);
        assert!(a.handle.render().contains("overlay_sessions_open_total 5"));
        assert!(b.handle.render().contains("overlay_sessions_open_total 0"));
    }
}
