//! The tasks the driver starts: supervised tasks whose panic is reported and contained,
//! singletons restarted by their `Supervisor`, the acceptor, and the dialer of one peer
//! address.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use overlay_core::Probe;
use rand::RngCore;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::supervise::{panic_message, Supervisor};
use super::{Dial, Driver};
use crate::io::accept::accept_loop;
use crate::io::fd::FdBudget;
use crate::io::messages::{AfterPanic, Control};
use crate::io::net::Net;

impl<N: Net> Driver<N> {
    /// Runs `fut` as a supervised task: a panic is caught, reported as `Control::Panicked`
    /// and counted, and the node goes on.
    pub(crate) fn spawn_supervised<F>(
        &mut self,
        after: AfterPanic,
        task: &'static str,
        fut: F,
    ) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let ctl = self.ctl_tx.clone();
        self.tasks.spawn(async move {
            if let Err(p) = AssertUnwindSafe(fut).catch_unwind().await {
                let reason = panic_message(&p);
                let _ = ctl
                    .send(Control::Panicked {
                        task,
                        reason,
                        after,
                    })
                    .await;
            }
        })
    }

    /// The acceptor, restarted on a panic with the same listener. With `fds`, it takes
    /// connections only while descriptor headroom stays above `readiness.fd_reserve`.
    pub(crate) fn spawn_acceptor(&mut self, mut listener: N::Listener, fds: Option<Arc<FdBudget>>) {
        let ctl = self.ctl_tx.clone();
        let metrics = self.overlay.metrics().clone();
        self.spawn_singleton(
            "acceptor",
            Some(Probe::ListenersBound),
            move |mut sup| async move {
                while sup
                    .run(accept_loop(&mut listener, &ctl, fds.as_deref(), &metrics))
                    .await
                {}
            },
        );
    }

    /// Runs a singleton task under its `Supervisor` (which restarts it); `body` takes the
    /// supervisor and loops `while sup.run(..).await {}` around the task's resources.
    pub(crate) fn spawn_singleton<B, F>(
        &mut self,
        task: &'static str,
        probe: Option<Probe>,
        body: B,
    ) where
        B: FnOnce(Supervisor<N::Stream>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let fut = body(Supervisor::new(task, self.ctl_tx.clone(), probe));
        self.spawn_supervised(AfterPanic::Lost, task, fut);
    }

    pub(super) fn spawn_dialer(&mut self, addr: String) {
        if self.dials.contains_key(&addr) || self.drain.is_some() {
            return;
        }
        let (ended_tx, ended_rx) = mpsc::channel(1);
        let fut = crate::io::dial::dial_loop(
            self.net.clone(),
            addr.clone(),
            self.ctl_tx.clone(),
            ended_rx,
            self.rng.next_u64(),
            self.bounds.clone(),
        );
        let task = self.spawn_supervised(AfterPanic::Redial(addr.clone()), "dialer", fut);
        self.dials.insert(
            addr,
            Dial {
                task,
                ended: ended_tx,
                retired: false,
            },
        );
    }
}
