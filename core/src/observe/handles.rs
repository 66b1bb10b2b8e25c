//! Registered handles for every inventory metric.

use metrics::{Counter, Gauge, Histogram, Unit};

use super::names::*;
use crate::reason::RejectReason;

/// Handles for the overlay metrics. Build it inside `metrics::with_local_recorder` (or with
/// a global recorder installed) so the handles bind to that node's recorder; every series is
/// registered here, at zero, so it is exported from the first scrape.
#[derive(Clone)]
pub struct Metrics {
    pub service_restarts: Counter,
    pub bus_lagged: Counter,
    pub sessions_active: Gauge,
    pub sessions_open: Counter,
    pub handshake_attempts: Counter,
    pub handshake_failures: [Counter; 6],
    /// `frames_total{dir="tx"}` by kind; the received row is counted with `Stats`.
    pub frames_tx: [Counter; 3],
    pub bytes: [Counter; 2],
    pub frame_size: [Histogram; 2],
    pub chunk_size: [Histogram; 2],
    pub backpressure: [Counter; 4],
    pub queue_depth: [Gauge; 3],
    pub permits: [Gauge; 2],
    pub fanout: Gauge,
    pub auth_failures: [Counter; 3],
    pub tls_failures: [Counter; 4],
    /// `[mode][outcome]`
    pub pq_negotiations: [[Counter; 3]; 2],
    pub readyz_state: Gauge,
    pub egress_fill: Gauge,
    pub dial_failures: Counter,
    /// `[dir][op]`
    pub tree_frames: [[Counter; 4]; 2],
    pub tree_pushes: [Counter; 2],
    pub tree_pulls: [Counter; 3],
    pub tree_peers: [Gauge; 2],
    pub announce_dropped: Counter,
    pub store_bytes: Gauge,
    pub owed: Gauge,
    pub pull_delay: Gauge,
    pub peer_demotions: Counter,
    pub tree_rescues: Counter,
    pub store_evictions: [Counter; 2],
    pub reconcile_rounds: Counter,
    pub reconcile_bytes: [Counter; 2],
    pub accept_paused: [Counter; 3],
    pub refusal_notices: [Counter; RejectReason::ALL.len()],
    pub peer_resolves: [Counter; 2],
    /// Set by the runtime's heap trimmer, which only the daemon runs.
    pub heap_trims: Counter,
    pub heap_returned: Counter,
    /// `request_latency_seconds{route="handshake",method}` by `Transport`.
    pub handshake_latency: [Histogram; 2],
    pub(crate) counted: Counted,
}

/// The series that `Stats` counts too. They are crate-private and only the node's
/// accounting (`core/src/node/accounting.rs`) bumps them, in the same step as the `Stats`
/// field beside them, so what is exported and what the balance sees cannot drift
/// (`core/tests/written_once.rs` checks both the values and that no other file touches them).
#[derive(Clone)]
pub(crate) struct Counted {
    /// `frames_total{dir="rx"}` by kind.
    pub(crate) rx_frames: [Counter; 3],
    pub(crate) outcomes: [Counter; 5],
    pub(crate) rx_dropped: [Counter; 5],
    /// `rejected_total`: frames rejected and connections or writes refused share it.
    pub(crate) rejected: [Counter; RejectReason::ALL.len()],
    /// `[queue][reason]`
    pub(crate) queue_dropped: [[Counter; 3]; 3],
    pub(crate) writes: [Counter; 2],
}

impl Counted {
    fn new() -> Counted {
        Counted {
            rx_frames: std::array::from_fn(
                |k| metrics::counter!(FRAMES_TOTAL, "dir" => Dir::Rx.as_str(), "kind" => FrameClass::ALL[k].as_str()),
            ),
            outcomes: std::array::from_fn(
                |i| metrics::counter!(RX_OUTCOMES_TOTAL, "outcome" => Outcome::ALL[i].as_str()),
            ),
            rx_dropped: std::array::from_fn(
                |i| metrics::counter!(RX_DROPPED_TOTAL, "reason" => RxDrop::ALL[i].as_str()),
            ),
            rejected: RejectReason::ALL
                .map(|r| metrics::counter!(REJECTED_TOTAL, "reason" => r.as_str())),
            queue_dropped: std::array::from_fn(|q| {
                std::array::from_fn(|r| {
                    metrics::counter!(QUEUE_DROPPED_TOTAL,
                        "queue" => Queue::ALL[q].as_str(), "reason" => DropReason::ALL[r].as_str())
                })
            }),
            writes: std::array::from_fn(
                |i| metrics::counter!(WRITES_TOTAL, "outcome" => WriteOutcome::ALL[i].as_str()),
            ),
        }
    }
}

fn describe() {
    for s in INVENTORY {
        let unit = if s.name.ends_with("_seconds") {
            Unit::Seconds
        } else if s.name.ends_with("_bytes") || s.name == BYTES_TOTAL {
            Unit::Bytes
        } else {
            Unit::Count
        };
        match s.kind {
            Kind::Counter => metrics::describe_counter!(s.name, unit, s.help),
            Kind::Gauge => metrics::describe_gauge!(s.name, unit, s.help),
            Kind::Histogram => metrics::describe_histogram!(s.name, unit, s.help),
        }
    }
}

impl Metrics {
    /// Registers every overlay metric with the current recorder.
    pub fn new() -> Metrics {
        describe();
        let dirs = |f: &dyn Fn(Dir) -> Counter| [f(Dir::Rx), f(Dir::Tx)];
        Metrics {
            service_restarts: metrics::counter!(SERVICE_RESTARTS_TOTAL),
            bus_lagged: metrics::counter!(BUS_LAGGED_TOTAL),
            sessions_active: metrics::gauge!(SESSIONS_ACTIVE),
            sessions_open: metrics::counter!(SESSIONS_OPEN_TOTAL),
            handshake_attempts: metrics::counter!(HANDSHAKE_ATTEMPTS_TOTAL),
            handshake_failures: std::array::from_fn(|i| {
                metrics::counter!(HANDSHAKE_FAILURES_TOTAL, "reason" => HandshakeFailure::ALL[i].as_str())
            }),
            frames_tx: std::array::from_fn(|k| {
                metrics::counter!(FRAMES_TOTAL, "dir" => Dir::Tx.as_str(), "kind" => FrameClass::ALL[k].as_str())
            }),
            bytes: dirs(&|d| metrics::counter!(BYTES_TOTAL, "dir" => d.as_str())),
            frame_size: [Dir::Rx, Dir::Tx]
                .map(|d| metrics::histogram!(FRAME_SIZE_BYTES, "dir" => d.as_str())),
            chunk_size: [Dir::Rx, Dir::Tx].map(|d| metrics::histogram!(CHUNK_BYTES, "dir" => d.as_str())),
            backpressure: std::array::from_fn(|i| {
                metrics::counter!(BACKPRESSURE_EVENTS_TOTAL, "peer_bucket" => PeerBucket::ALL[i].as_str())
            }),
            queue_depth: std::array::from_fn(|i| {
                metrics::gauge!(QUEUE_DEPTH, "queue" => Queue::ALL[i].as_str())
            }),
            permits: std::array::from_fn(|i| {
                metrics::gauge!(EGRESS_PERMITS, "state" => PermitState::ALL[i].as_str())
            }),
            fanout: metrics::gauge!(FANOUT_CURRENT),
            auth_failures: std::array::from_fn(|i| {
                metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => AuthFailure::ALL[i].as_str())
            }),
            tls_failures: std::array::from_fn(|i| {
                metrics::counter!(TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => TlsFailure::ALL[i].as_str())
            }),
            pq_negotiations: std::array::from_fn(|m| {
                std::array::from_fn(|o| {
                    metrics::counter!(PQ_NEGOTIATIONS_TOTAL,
                        "mode" => PqMode::ALL[m].as_str(), "outcome" => PqOutcome::ALL[o].as_str())
                })
            }),
            readyz_state: metrics::gauge!(READYZ_STATE),
            egress_fill: metrics::gauge!(EGRESS_FILL_RATIO),
            dial_failures: metrics::counter!(DIAL_FAILURES_TOTAL),
            tree_frames: [Dir::Rx, Dir::Tx].map(|d| {
                std::array::from_fn(|k| {
                    metrics::counter!(TREE_FRAMES_TOTAL, "dir" => d.as_str(), "op" => TreeOp::ALL[k].as_str())
                })
            }),
            tree_pushes: std::array::from_fn(|i| {
                metrics::counter!(TREE_PUSHES_TOTAL, "mode" => PushMode::ALL[i].as_str())
            }),
            tree_pulls: std::array::from_fn(|i| {
                metrics::counter!(TREE_PULLS_TOTAL, "outcome" => PullOutcome::ALL[i].as_str())
            }),
            tree_peers: std::array::from_fn(|i| {
                metrics::gauge!(TREE_PEERS, "mode" => PushMode::ALL[i].as_str())
            }),
            announce_dropped: metrics::counter!(ANNOUNCE_DROPPED_TOTAL),
            store_bytes: metrics::gauge!(STORE_BYTES),
            owed: metrics::gauge!(OWED_MESSAGES),
            pull_delay: metrics::gauge!(TREE_PULL_DELAY),
            peer_demotions: metrics::counter!(PEER_DEMOTIONS_TOTAL),
            tree_rescues: metrics::counter!(TREE_RESCUES_TOTAL),
            store_evictions: std::array::from_fn(|i| {
                metrics::counter!(STORE_EVICTIONS_TOTAL, "reason" => StoreEviction::ALL[i].as_str())
            }),
            reconcile_rounds: metrics::counter!(RECONCILE_ROUNDS_TOTAL),
            reconcile_bytes: dirs(&|d| metrics::counter!(RECONCILE_BYTES_TOTAL, "dir" => d.as_str())),
            accept_paused: std::array::from_fn(|i| {
                metrics::counter!(ACCEPT_PAUSED_TOTAL, "reason" => AcceptPause::ALL[i].as_str())
            }),
            refusal_notices: RejectReason::ALL
                .map(|r| metrics::counter!(REFUSAL_NOTICES_TOTAL, "reason" => r.as_str())),
            peer_resolves: std::array::from_fn(|i| {
                metrics::counter!(PEER_RESOLVE_TOTAL, "outcome" => ResolveOutcome::ALL[i].as_str())
            }),
            heap_trims: metrics::counter!(HEAP_TRIMS_TOTAL),
            heap_returned: metrics::counter!(HEAP_RETURNED_BYTES_TOTAL),
            handshake_latency: std::array::from_fn(|i| {
                metrics::histogram!(REQUEST_LATENCY_SECONDS,
                    "route" => LatencyRoute::Handshake.as_str(), "method" => Transport::ALL[i].as_str())
            }),
            counted: Counted::new(),
        }
    }

    /// Handles bound to no recorder: every update is a no-op. For embedders and benchmarks
    /// that do not export metrics.
    pub fn noop() -> Metrics {
        metrics::with_local_recorder(&metrics::NoopRecorder, Metrics::new)
    }

    pub fn handshake_failure(&self, r: HandshakeFailure) {
        self.handshake_failures[r.index()].increment(1);
    }
    pub fn accept_paused(&self, r: AcceptPause) {
        self.accept_paused[r.index()].increment(1);
    }
    pub fn peer_resolve(&self, o: ResolveOutcome) {
        self.peer_resolves[o.index()].increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Handles for the admin plane's golden HTTP metrics, every route, method and status
/// registered up front.
#[derive(Clone)]
pub struct HttpMetrics {
    /// `[route][method][status]`
    pub requests: Vec<Counter>,
    /// `[route][method]`
    pub latency: Vec<Histogram>,
    pub inflight: Vec<Gauge>,
    pub connections: Gauge,
    pub refusals: [Counter; 6],
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for r in Route::ALL {
            for m in Method::ALL {
                for s in Status::ALL {
                    requests.push(metrics::counter!(HTTP_REQUESTS_TOTAL,
                        "route" => r.as_str(), "method" => m.as_str(), "status" => s.as_str()));
                }
                latency.push(metrics::histogram!(REQUEST_LATENCY_SECONDS,
                    "route" => r.as_str(), "method" => m.as_str()));
            }
        }
        let inflight = Route::ALL
            .iter()
            .map(|r| metrics::gauge!(INFLIGHT_REQUESTS, "route" => r.as_str()))
            .collect();
        HttpMetrics {
            requests,
            latency,
            inflight,
            connections: metrics::gauge!(ADMIN_CONNECTIONS_ACTIVE),
            refusals: std::array::from_fn(
                |i| metrics::counter!(ADMIN_REFUSALS_TOTAL, "reason" => AdminRefusal::ALL[i].as_str()),
            ),
        }
    }

    pub fn request(&self, r: Route, m: Method, s: Status) -> &Counter {
        &self.requests[(r.index() * Method::ALL.len() + m.index()) * Status::ALL.len() + s.index()]
    }
    pub fn latency(&self, r: Route, m: Method) -> &Histogram {
        &self.latency[r.index() * Method::ALL.len() + m.index()]
    }
    pub fn inflight(&self, r: Route) -> &Gauge {
        &self.inflight[r.index()]
    }
    pub fn refuse(&self, r: AdminRefusal) {
        self.refusals[r.index()].increment(1);
    }
}

impl Default for HttpMetrics {
    fn default() -> HttpMetrics {
        HttpMetrics::new()
    }
}
