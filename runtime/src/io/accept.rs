//! The acceptors: take connections while descriptor headroom lasts and hand them to the
//! driver; a failed accept pauses instead of spinning, and its log line is rate-limited.
//! On the TLS listener each connection's handshake runs in its own task, at most
//! `overlay.max_conns` at once, so a client that stalls its handshake holds one slot for
//! at most `overlay.handshake_timeout` and cannot hold up the others (both follow a
//! reload: `slots`). Before a TLS
//! connection is read from, the core decides whether it gets a handshake at all
//! (`Control::Incoming`): one over the handshake rate is closed unread, so a flood costs an
//! accept and a close per connection, not a TLS handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use overlay_core::observe::{AcceptPause, Metrics};
use overlay_core::{Admission, Prepaid, Probe};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bounds;
use crate::io::fd::FdBudget;
use crate::io::handshakes::HandshakePool;
use crate::io::messages::Control;
use crate::io::net::{Listener, Stream};
use crate::io::slots::HandshakeBound;
use crate::io::tls::{TlsContext, Wire};
use crate::telemetry::throttle::{LogThrottle, ACCEPT_ERROR_LOG_EVERY, INCOMING_REFUSED_LOG_EVERY};

/// TLS handshakes of one listener: the context, their deadline, their bound, and the
/// runtime they run on (`None`: this one).
pub(crate) struct TlsAccept {
    pub ctx: Arc<TlsContext>,
    pub bound: Arc<HandshakeBound>,
    pub pool: Option<HandshakePool>,
}

pub(crate) async fn accept_loop<L: Listener>(
    listener: &mut L,
    ctl: &mpsc::Sender<Control<L::Stream>>,
    fds: Option<&FdBudget>,
    metrics: &Metrics,
    tls: Option<&TlsAccept>,
) {
    let mut errors = LogThrottle::new(ACCEPT_ERROR_LOG_EVERY);
    let mut refusals = LogThrottle::new(INCOMING_REFUSED_LOG_EVERY);
    // Refused since the last `incoming_refused` line.
    let mut refused = 0u64;
    // Dropped with this loop (a panic, the node stopping): their handshakes end with it.
    let mut handshakes = JoinSet::new();
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
        let slot = match tls {
            Some(t) => Some(take_slot(t, metrics, &mut handshakes).await),
            None => None,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // Reap finished handshakes while waiting, so the set holds only live ones.
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(fds) = fds {
                    fds.took_one();
                }
                let opened = Instant::now();
                match (tls, slot) {
                    (Some(t), Some(slot)) => {
                        let mut batch = vec![Arrival {
                            stream,
                            peer,
                            opened,
                            slot,
                        }];
                        more_arrivals(listener, t, fds, &mut batch);
                        let Some(admissions) = ask(ctl, batch.len()).await else {
                            return;
                        };
                        for (a, admission) in batch.into_iter().zip(admissions) {
                            let Admission::Admit(prepaid) = admission else {
                                // Dropped unread (the kernel answers unread bytes with a
                                // RST); already counted by the core.
                                refused += 1;
                                continue;
                            };
                            let hs = handshake(
                                t.ctx.clone(),
                                t.bound.timeout(),
                                ctl.clone(),
                                a,
                                prepaid,
                            );
                            match &t.pool {
                                Some(pool) => handshakes.spawn_on(hs, pool.handle()),
                                None => handshakes.spawn(hs),
                            };
                        }
                        if refused > 0 && refusals.admit().is_some() {
                            tracing::warn!(event = "incoming_refused", reason = "ratelimit",
                                refused, "TLS connections over overlay.handshake_rate closed before the handshake");
                            refused = 0;
                        }
                    }
                    _ => {
                        let msg = Control::Accepted {
                            stream: Wire::Plain(stream),
                            peer,
                            tls: None,
                            opened,
                            prepaid: None,
                        };
                        // A full control channel slows accepting down: backpressure, not loss.
                        if ctl.send(msg).await.is_err() {
                            return;
                        }
                    }
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

/// Connections the kernel already holds behind the first, while slots and descriptors
/// last, up to `ADMIT_BATCH`: under a flood one question to the core (one wake-up of the
/// driver and one of this loop) then covers a whole batch instead of each connection.
fn more_arrivals<L: Listener>(
    listener: &mut L,
    t: &TlsAccept,
    fds: Option<&FdBudget>,
    batch: &mut Vec<Arrival<L::Stream>>,
) {
    while batch.len() < bounds::ADMIT_BATCH {
        if fds.is_some_and(|f| !f.headroom()) {
            return;
        }
        let Some(slot) = t.bound.try_take() else {
            return;
        };
        // Never waits. A failed accept is left to the loop's own accept, which pauses.
        let Some(Ok((stream, peer))) = listener.accept().now_or_never() else {
            return;
        };
        if let Some(f) = fds {
            f.took_one();
        }
        batch.push(Arrival {
            stream,
            peer,
            opened: Instant::now(),
            slot,
        });
    }
}

/// The core's admission of each of `n` TLS connections; `None` once the driver is gone.
async fn ask<S>(ctl: &mpsc::Sender<Control<S>>, n: usize) -> Option<Vec<Admission>> {
    let (reply, answer) = oneshot::channel();
    ctl.send(Control::Incoming { n, reply }).await.ok()?;
    answer.await.ok()
}

/// A handshake slot; with none free the acceptor pauses (counted) and leaves new
/// connections in the kernel backlog until a handshake in flight ends.
async fn take_slot(
    t: &TlsAccept,
    metrics: &Metrics,
    handshakes: &mut JoinSet<()>,
) -> OwnedSemaphorePermit {
    if let Some(p) = t.bound.try_take() {
        return p;
    }
    metrics.accept_paused(AcceptPause::TlsHandshakes);
    loop {
        tokio::select! {
            p = t.bound.take() => return p,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
}

/// A TLS connection accepted and nothing read from it, holding its handshake slot until
/// it is refused or its handshake ends.
struct Arrival<S> {
    stream: S,
    peer: SocketAddr,
    opened: Instant,
    slot: OwnedSemaphorePermit,
}

async fn handshake<S: Stream>(
    ctx: Arc<TlsContext>,
    timeout: Duration,
    ctl: mpsc::Sender<Control<S>>,
    a: Arrival<S>,
    prepaid: Prepaid,
) {
    let Arrival {
        stream,
        peer,
        opened,
        slot: _slot,
    } = a;
    let msg = match ctx.accept(stream, timeout).await {
        Ok((stream, session)) => Control::Accepted {
            stream,
            peer,
            tls: Some(session),
            opened,
            prepaid: Some(prepaid),
        },
        Err((refusal, detail)) => Control::TlsFailed {
            refusal,
            peer_addr: peer.to_string(),
            inbound: true,
            detail,
        },
    };
    let _ = ctl.send(msg).await;
}
