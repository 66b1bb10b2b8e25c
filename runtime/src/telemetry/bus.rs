//! The event bus: every overlay event, with the connection it concerns, goes out on a
//! broadcast channel. The logger is one subscriber; embedders and tests may be others.
//! A subscriber that falls behind loses the oldest events, and the loss is counted.

use std::sync::Arc;

use metrics::Counter;
use overlay_core::observe::{HandshakeFailure, TlsFailure};
use overlay_core::{ConnId, Event};
use tokio::sync::broadcast;

/// What the runtime knows about a connection, for logs.
#[derive(Clone, Debug)]
pub struct ConnCtx {
    pub conn: ConnId,
    /// Minted by the runtime at accept/connect; propagated to every log line and span of
    /// the connection.
    pub corr_id: String,
    pub peer_addr: String,
    pub inbound: bool,
    /// Accepted or dialed (before any TLS handshake).
    pub opened: tokio::time::Instant,
    /// The class of the session's capability (`cap_id`, never the token), once admitted.
    pub cap_id: Option<Arc<str>>,
    /// The key exchange group TLS negotiated; `None` over plain TCP.
    pub tls_group: Option<&'static str>,
}

impl ConnCtx {
    pub fn dir(&self) -> &'static str {
        if self.inbound {
            "in"
        } else {
            "out"
        }
    }
}

#[derive(Clone, Debug)]
pub enum BusKind {
    Overlay(Event),
    Accepted,
    Connected,
    /// A TLS handshake failed (accepted or dialed); no session exists.
    TlsFailed {
        peer_addr: String,
        inbound: bool,
        reason: HandshakeFailure,
        tls_reason: Option<TlsFailure>,
        detail: String,
    },
    /// A dial to a configured peer failed; `failures` in a row since its last session.
    DialFailed {
        addr: String,
        error: String,
        failures: u32,
    },
    /// A lookup of a peer given by name failed (`failures` in a row); its last good
    /// addresses are still dialed.
    ResolveFailed {
        name: String,
        error: String,
        failures: u32,
    },
    /// A peer given by name now stands for `addrs` (the answer changed).
    Resolved {
        name: String,
        addrs: Vec<std::net::SocketAddr>,
    },
}

#[derive(Clone, Debug)]
pub struct BusEvent {
    pub node: Arc<str>,
    pub ctx: Option<Arc<ConnCtx>>,
    pub kind: BusKind,
}

/// A bus receiver that counts what it missed in `bus_lagged_total`.
pub struct Subscription {
    rx: broadcast::Receiver<BusEvent>,
    lagged: Counter,
}

impl Subscription {
    pub(crate) fn new(rx: broadcast::Receiver<BusEvent>, lagged: Counter) -> Subscription {
        Subscription { rx, lagged }
    }

    /// The next event, skipping (and counting) any that were lost to lag; `None` once the
    /// node is gone.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        loop {
            match self.rx.recv().await {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.lagged.increment(n);
                    tracing::warn!(
                        event = "bus_lagged",
                        missed = n,
                        "event bus subscriber lagged"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event already on the bus, without waiting (lag counted as in `recv`).
    pub fn try_recv(&mut self) -> Option<BusEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.lagged.increment(n);
                    tracing::warn!(
                        event = "bus_lagged",
                        missed = n,
                        "event bus subscriber lagged"
                    );
                }
                Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lagging_subscriber_counts_what_it_missed() {
        let rec = crate::telemetry::recorder::Recorder::new().unwrap();
        let (tx, rx) = broadcast::channel(2);
        let mut sub = Subscription::new(rx, rec.metrics.bus_lagged.clone());
        for _ in 0..5 {
            tx.send(BusEvent {
                node: Arc::from("n"),
                ctx: None,
                kind: BusKind::Accepted,
            })
            .unwrap();
        }
        assert!(sub.recv().await.is_some());
        assert!(rec.handle.render().contains("bus_lagged_total 3"));
        assert!(sub.recv().await.is_some());
        drop(tx);
        assert!(sub.recv().await.is_none());
    }
}
