//! The node's periodic tasks besides the driver: the Prometheus recorder's upkeep and the
//! descriptor count behind `fd_headroom`.

use metrics_exporter_prometheus::PrometheusHandle;
use overlay_core::Probe;
use tokio::sync::mpsc;

use crate::bounds;
use crate::io::fd::{FdBudget, Unknown};
use crate::io::messages::Control;

pub(super) async fn upkeep(prom: &PrometheusHandle) {
    let mut t = tokio::time::interval(bounds::UPKEEP_EVERY);
    loop {
        t.tick().await;
        prom.run_upkeep();
    }
}

/// Counts descriptors every `FD_SAMPLE_EVERY` for readiness and the acceptor. A count that
/// cannot be taken is no headroom.
pub(super) async fn fd_sampler<S>(ctl: &mpsc::Sender<Control<S>>, fds: &FdBudget) {
    let mut t = tokio::time::interval(bounds::FD_SAMPLE_EVERY);
    let mut failing = false;
    loop {
        t.tick().await;
        let ok = match fds.sample() {
            Ok(ok) => {
                failing = false;
                ok
            }
            Err(why) => {
                if !failing {
                    failing = true;
                    let reason = match why {
                        Unknown::Exhausted => "exhausted".to_string(),
                        Unknown::Unavailable(e) => e.to_string(),
                    };
                    tracing::warn!(
                        event = "fd_sampler",
                        reason = "unavailable",
                        detail = %reason,
                        "cannot count open descriptors; fd_headroom reported missing"
                    );
                }
                false
            }
        };
        if ctl
            .send(Control::Probe(Probe::FdHeadroom, ok))
            .await
            .is_err()
        {
            return;
        }
    }
}
