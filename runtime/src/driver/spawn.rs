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
use crate::io::accept::{accept_loop, TlsAccept};
use crate::io::fd::FdBudget;
use crate::io::handshakes::HandshakePool;
use crate::io::messages::{AfterPanic, Control};
use crate::io::net::Net;
use crate::io::tls::TlsContext;

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

    /// An acceptor, restarted on a panic with the same listener. With `fds`, it takes
    /// connections only while descriptor headroom stays above `readiness.fd_reserve`.
    /// With `tls`, it is the TLS listener's: each connection's handshake comes first, at
    /// most `overlay.max_conns` at once.
    pub(crate) fn spawn_acceptor(
        &mut self,
        mut listener: N::Listener,
        fds: Option<Arc<FdBudget>>,
        tls: Option<Arc<TlsContext>>,
    ) {
        let ctl = self.ctl_tx.clone();
        let metrics = self.overlay.metrics().clone();
        // Under hybrid the TLS listener is what `pq_ready` stands for: down while it is.
        let probe = match &tls {
            Some(t) if t.hybrid() => Probe::PqReady,
            _ => Probe::ListenersBound,
        };
        let apart = self.net.handshakes_apart();
        let tls = tls.map(|ctx| TlsAccept {
            ctx,
            bound: self.handshake_bound.clone(),
            pool: apart.then(handshake_pool).flatten(),
        });
        let task = if tls.is_some() {
            "tls_acceptor"
        } else {
            "acceptor"
        };
        self.spawn_singleton(task, Some(probe), move |mut sup| async move {
            while sup
                .run(accept_loop(
                    &mut listener,
                    &ctl,
                    fds.as_deref(),
                    &metrics,
                    tls.as_ref(),
                ))
                .await
            {}
        });
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

    /// Runs one dial the core asked for.
    pub(super) fn spawn_dial(&mut self, d: Dial) {
        let key = (d.peer.clone(), d.addr.clone());
        let fut = crate::io::dial::dial(
            self.net.clone(),
            d.clone(),
            self.ctl_tx.clone(),
            self.bounds.connect_timeout,
            self.tls.clone(),
        );
        let task = self.spawn_supervised(AfterPanic::Redial(d), "dialer", fut);
        if let Some(old) = self.dials.insert(key, task) {
            old.abort();
        }
    }
}

/// The TLS handshakes' own runtime; without one (no thread to be had) they share the
/// session runtime, as in a simulation.
fn handshake_pool() -> Option<HandshakePool> {
    HandshakePool::start()
        .inspect_err(|e| {
            tracing::warn!(event = "handshake_pool", reason = "io", error = %e,
                "no thread for TLS handshakes; they share the session runtime");
        })
        .ok()
}
