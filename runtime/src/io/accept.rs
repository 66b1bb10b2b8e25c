//! The acceptor: takes connections while descriptor headroom lasts and hands them to the
//! driver; a failed accept pauses instead of spinning, and its log line is rate-limited.

use overlay_core::observe::{AcceptPause, Metrics};
use overlay_core::Probe;
use tokio::sync::mpsc;

use crate::bounds;
use crate::io::fd::FdBudget;
use crate::io::messages::Control;
use crate::io::net::Listener;
use crate::telemetry::throttle::{LogThrottle, ACCEPT_ERROR_LOG_EVERY};

pub(crate) async fn accept_loop<L: Listener>(
    listener: &mut L,
    ctl: &mpsc::Sender<Control<L::Stream>>,
    fds: Option<&FdBudget>,
    metrics: &Metrics,
) {
    let mut errors = LogThrottle::new(ACCEPT_ERROR_LOG_EVERY);
    loop {
        if let Some(fds) = fds.filter(|f| !f.headroom()) {
            // The reserve is for the admin plane and outgoing dials: leave new connections
            // in the kernel backlog until the sampler finds descriptors free again.
            metrics.accept_paused(AcceptPause::FdHeadroom);
            if ctl
                .send(Control::Probe(Probe::FdHeadroom, false))
                .await
                .is_err()
            {
                return;
            }
            fds.wait_headroom().await;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Some(fds) = fds {
                    fds.took_one();
                }
                // A full control channel slows accepting down: backpressure, not loss.
                if ctl.send(Control::Accepted { stream, peer }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                metrics.accept_paused(AcceptPause::AcceptError);
                if let Some(suppressed) = errors.admit() {
                    tracing::warn!(event = "accept_error", reason = "io", error = %e,
                        suppressed, "accept failed");
                }
                tokio::time::sleep(bounds::ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}
