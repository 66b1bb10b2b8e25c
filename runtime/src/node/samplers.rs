//! The node's periodic tasks besides the driver: the Prometheus recorder's upkeep, the
//! descriptor count behind `fd_headroom`, and the heap trimmer.

use metrics_exporter_prometheus::PrometheusHandle;
use overlay_core::observe::Metrics;
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

/// Samples the heap every `HEAP_SAMPLE_EVERY` and gives freed memory back to the OS when
/// the policy says it is worth it (`heap.rs`); samples and trims run on a blocking thread,
/// off the workers. Counts each trim and the anonymous resident bytes it gave back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(super) async fn heap_trimmer(metrics: &Metrics) {
    use super::heap::{glibc, TrimPolicy};

    let mut policy = TrimPolicy::new(bounds::HEAP_TRIM_MIN_BYTES, bounds::HEAP_TRIM_MIN_GAP);
    let mut t = tokio::time::interval(bounds::HEAP_SAMPLE_EVERY);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        t.tick().await;
        // `mallinfo2` walks the allocator's bins under its lock (up to 1.6 ms measured):
        // off the workers too, like the trim.
        let Ok(Some(before)) = tokio::task::spawn_blocking(glibc::sample).await else {
            continue;
        };
        if !policy.sample(before, bounds::HEAP_SAMPLE_EVERY) {
            continue;
        }
        let Ok(Some(after)) = tokio::task::spawn_blocking(|| {
            glibc::trim();
            glibc::sample()
        })
        .await
        else {
            continue;
        };
        policy.trimmed(after);
        metrics.heap_trims.increment(1);
        metrics
            .heap_returned
            .increment(before.anon.saturating_sub(after.anon));
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) async fn heap_trimmer(_metrics: &Metrics) {
    // Another allocator: nothing this task knows how to ask.
    std::future::pending::<()>().await
}
