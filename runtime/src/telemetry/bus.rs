//! The event bus: every overlay event, with the connection it concerns, goes out on a
//! broadcast channel. The logger is one subscriber; embedders and tests may be others.
//! A subscriber that falls behind loses the oldest events, and the loss is counted.

use std::sync::Arc;

use metrics::Counter;
use overlay_core::observe::{HandshakeFailure, TlsFailure};
use overlay_core::{ConnId, Event};
use tokio::sync::broadcast;

use crate::telemetry::throttle::{LogThrottle, BUS_LAG_LOG_EVERY};

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
    /// The logger lags exactly when events come faster than it writes them (a flood of
    /// handshakes): a line per lag was itself the flood, ~50 lines a second. At most one a
    /// second, carrying everything missed since the last.
    lines: LogThrottle,
    missed: u64,
}

impl Subscription {
    pub(crate) fn new(rx: broadcast::Receiver<BusEvent>, lagged: Counter) -> Subscription {
        Subscription {
            rx,
            lagged,
            lines: LogThrottle::new(BUS_LAG_LOG_EVERY),
            missed: 0,
        }
    }

    /// Counts every event lost; logs at most one `bus_lagged` line a second (`missed`:
    /// events lost since the last line, `suppressed`: lags folded into it).
    fn lag(&mut self, n: u64) {
        self.lag_at(n, tokio::time::Instant::now());
    }

    fn lag_at(&mut self, n: u64, now: tokio::time::Instant) {
        self.lagged.increment(n);
        self.missed += n;
        if let Some(suppressed) = self.lines.admit_at(now) {
            tracing::warn!(
                event = "bus_lagged",
                missed = std::mem::take(&mut self.missed),
                suppressed,
                "event bus subscriber lagged"
            );
        }
    }

    /// The next event, skipping (and counting) any that were lost to lag; `None` once the
    /// node is gone.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        loop {
            match self.rx.recv().await {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lag(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event already on the bus, without waiting (lag counted as in `recv`).
    pub fn try_recv(&mut self) -> Option<BusEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lag(n),
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

    /// The `bus_lagged` lines a closure logs, as (missed, suppressed).
    fn lag_lines(f: impl FnOnce()) -> Vec<(u64, u64)> {
        use std::sync::Mutex;
        use tracing::field::{Field, Visit};
        use tracing_subscriber::layer::{Context, SubscriberExt};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<(u64, u64)>>>);
        #[derive(Default)]
        struct Fields(bool, u64, u64);
        impl Visit for Fields {
            fn record_str(&mut self, f: &Field, v: &str) {
                self.0 |= f.name() == "event" && v == "bus_lagged";
            }
            fn record_u64(&mut self, f: &Field, v: u64) {
                match f.name() {
                    "missed" => self.1 = v,
                    "suppressed" => self.2 = v,
                    _ => {}
                }
            }
            fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
        }
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
            fn on_event(&self, ev: &tracing::Event<'_>, _: Context<'_, S>) {
                let mut v = Fields::default();
                ev.record(&mut v);
                if v.0 {
                    self.0.lock().unwrap().push((v.1, v.2));
                }
            }
        }
        let lines = Lines::default();
        let sub = tracing_subscriber::registry().with(lines.clone());
        tracing::subscriber::with_default(sub, f);
        let out = lines.0.lock().unwrap().clone();
        out
    }

    /// A flood lags the logger again and again: every lost event is counted, and the log
    /// gets one line a second with what it stands for, not a line per lag.
    #[test]
    fn lags_are_counted_each_and_logged_once_a_second() {
        let rec = crate::telemetry::recorder::Recorder::new().unwrap();
        let (_tx, rx) = broadcast::channel::<BusEvent>(2);
        let mut sub = Subscription::new(rx, rec.metrics.bus_lagged.clone());
        let start = tokio::time::Instant::now();
        let at = |ms| start + std::time::Duration::from_millis(ms);
        let lines = lag_lines(|| {
            for i in 0..100 {
                sub.lag_at(7, at(i * 10));
            }
            sub.lag_at(1, at(1000));
        });
        assert_eq!(lines, vec![(7, 0), (99 * 7 + 1, 99)]);
        assert!(rec.handle.render().contains("bus_lagged_total 701"));
    }
}
