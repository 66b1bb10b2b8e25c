//! The tasks the driver starts: supervised tasks whose panic is reported and contained,
//! singletons restarted by their `Supervisor`, the acceptor, and a connect per dial the core
//! asks for.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use overlay_core::{Dial, Probe};
use tokio::task::AbortHandle;

use super::supervise::{panic_message, Supervisor};
use super::Driver;
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

    /// Hands the configured peers to the core, which decides when each is dialed. An
    /// address is the configured `host:port` itself, connected as given.
    pub(crate) fn configure_peers(&mut self) {
        let now = self.now();
        let peers = self.cfg.overlay.peers.clone();
        self.overlay.retain_peers(|p| peers.iter().any(|c| c == p));
        for peer in &peers {
            self.overlay.set_peer_addrs(now, peer, vec![peer.clone()]);
        }
        self.drain_outputs(now);
    }

    /// Runs one dial the core asked for.
    pub(super) fn spawn_dial(&mut self, d: Dial) {
        let fut = crate::io::dial::dial(
            self.net.clone(),
            d.peer.clone(),
            d.addr,
            self.ctl_tx.clone(),
            self.bounds.connect_timeout,
        );
        let task = self.spawn_supervised(AfterPanic::Redial(d.peer.clone()), "dialer", fut);
        if let Some(old) = self.dials.insert(d.peer, task) {
            old.abort();
        }
    }
}
