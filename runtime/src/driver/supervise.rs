//! Restarting supervision for the node's singleton tasks (acceptor, admin plane, samplers,
//! logger). A panic is caught where the task's resources live, so the task restarts with
//! the same listener instead of losing it; while it is down, the probe it stands for reads
//! false, and a panic is counted in `service_restarts_total` only because a restart follows.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use overlay_core::Probe;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::io::messages::{AfterPanic, Control};

/// First pause before a restart; doubled per consecutive panic up to `RESTART_MAX`, so a
/// task that panics at once on every start cannot spin.
pub const RESTART_BASE: Duration = Duration::from_millis(50);
pub const RESTART_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Supervisor<S> {
    task: &'static str,
    ctl: mpsc::Sender<Control<S>>,
    /// The readiness fact this task upholds (listener bound, metrics served).
    probe: Option<Probe>,
    backoff: Duration,
}

impl<S> Supervisor<S> {
    pub(crate) fn new(
        task: &'static str,
        ctl: mpsc::Sender<Control<S>>,
        probe: Option<Probe>,
    ) -> Supervisor<S> {
        Supervisor {
            task,
            ctl,
            probe,
            backoff: RESTART_BASE,
        }
    }

    /// Runs one life of the task. `false`: it ended (the node is stopping). `true`: it
    /// panicked, the driver was told, the backoff has passed and the caller should run it
    /// again now. Used as `while sup.run(body(&mut resource)).await {}`.
    pub(crate) async fn run<F: Future<Output = ()>>(&mut self, fut: F) -> bool {
        let began = Instant::now();
        let Err(p) = AssertUnwindSafe(fut).catch_unwind().await else {
            return false;
        };
        let report = Control::Panicked {
            task: self.task,
            reason: panic_message(&p),
            after: AfterPanic::Restart(self.probe),
        };
        if self.ctl.send(report).await.is_err() {
            return false;
        }
        if began.elapsed() > RESTART_MAX {
            // It ran well for a while: this panic is not part of a crash loop.
            self.backoff = RESTART_BASE;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(RESTART_MAX);
        if let Some(probe) = self.probe {
            if self.ctl.send(Control::Probe(probe, true)).await.is_err() {
                return false;
            }
        }
        true
    }
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let s = if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    };
    crate::telemetry::logging::truncate(s)
}
