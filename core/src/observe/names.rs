//! Metric names and their closed label sets: the API operators build dashboards on.
//! Everything that emits a metric takes its name and labels from here.

/// Histogram buckets for `request_latency_seconds`: the usual service buckets from 5 ms up,
/// and finer ones below, since admin requests and loopback handshakes take well under 5 ms
/// and would otherwise all land in the first bucket.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
/// Histogram buckets for frame and chunk sizes, capped at 1 MiB (seed section 7).
pub const SIZE_BUCKETS: &[f64] = &[
    512.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 524288.0, 1048576.0,
];

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub const VALUES: &'static [&'static str] = &[$($s),+];
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
            pub const fn index(self) -> usize { self as usize }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum!(
    /// `overlay_handshake_failures_total{reason}`.
    HandshakeFailure {
        Timeout => "timeout",
        Tls => "tls",
        Mtls => "mtls",
        PqNegFail => "pq_neg_fail",
        Ratelimit => "ratelimit",
        Proto => "proto",
    }
);

label_enum!(
    /// `dir` of frame and byte counters.
    Dir { Rx => "rx", Tx => "tx" }
);

label_enum!(
    /// `kind` of `overlay_frames_total`: HELLO and CTRL are `ctrl`, GOSSIP `gossip`.
    FrameClass { Gossip => "gossip", Ctrl => "ctrl", Other => "other" }
);

label_enum!(
    /// `queue` of `overlay_queue_depth` and `overlay_queue_dropped_total`.
    Queue { Ingress => "ingress", GossipIngress => "gossip_ingress", Egress => "egress" }
);

label_enum!(
    /// `reason` of `overlay_queue_dropped_total`.
    DropReason { Full => "full", Timeout => "timeout", Shed => "shed" }
);

label_enum!(
    /// `peer_bucket` of `overlay_backpressure_events_total`: a peer's class by the bytes the
    /// node has sent it, so that no peer identity reaches a label.
    PeerBucket { Tiny => "tiny", Small => "small", Med => "med", Large => "large" }
);

label_enum!(
    /// `state` of `overlay_egress_permits`.
    PermitState { Available => "available", InUse => "in_use" }
);

label_enum!(
    /// `reason` of `auth_failures_total`.
    AuthFailure { Unauth => "unauth", Expired => "expired", InvalidCaveat => "invalid_caveat" }
);

label_enum!(
    /// `reason` of `tls_handshake_failures_total`.
    TlsFailure { Cert => "cert", Version => "version", Cipher => "cipher", Alpn => "alpn" }
);

label_enum!(
    /// `mode` of `overlay_pq_negotiations_total`.
    PqMode { Off => "off", Hybrid => "hybrid" }
);

label_enum!(
    /// `outcome` of `overlay_pq_negotiations_total`.
    PqOutcome { Ok => "ok", Fail => "fail", Incompatible => "incompatible" }
);

label_enum!(
    /// `route` of the admin plane's HTTP metrics; anything else is `other`.
    Route { Metrics => "/metrics", Healthz => "/healthz", Readyz => "/readyz", Version => "/version", Other => "other" }
);

label_enum!(
    /// `method` of the admin plane's HTTP metrics.
    Method { Get => "GET", Head => "HEAD", Other => "other" }
);

label_enum!(
    /// `status` of `http_requests_total`: the codes the admin plane answers with.
    Status {
        Ok => "200",
        BadRequest => "400",
        NotFound => "404",
        MethodNotAllowed => "405",
        Internal => "500",
        Unavailable => "503",
    }
);

label_enum!(
    /// `op` of `overlay_tree_frames_total`: the broadcast tree's control frames.
    TreeOp { IHave => "ihave", Graft => "graft", Prune => "prune", Digest => "digest" }
);

label_enum!(
    /// `mode` of `overlay_tree_pushes_total` and `overlay_tree_peers`: a message pushed
    /// whole (eager) or announced by id (lazy).
    PushMode { Eager => "eager", Lazy => "lazy" }
);

label_enum!(
    /// `outcome` of `overlay_tree_pulls_total`: ids this node asked for (`requested`), ids
    /// it sent when asked (`served`), ids asked for that its store no longer had (`miss`).
    PullOutcome { Requested => "requested", Served => "served", Miss => "miss" }
);

label_enum!(
    /// `reason` of `overlay_store_evictions_total`.
    StoreEviction { Bytes => "bytes", Age => "age" }
);

label_enum!(
    /// `outcome` of `overlay_rx_outcomes_total`: what became of each frame received.
    Outcome {
        Delivered => "delivered",
        Relayed => "relayed",
        Duplicate => "duplicate",
        Dropped => "dropped",
        Rejected => "rejected",
    }
);

label_enum!(
    /// `reason` of `overlay_rx_dropped_total`: why a received frame was let go unanswered.
    RxDrop {
        Full => "full",
        Shed => "shed",
        Timeout => "timeout",
        Closed => "closed",
        Unroutable => "unroutable",
    }
);

label_enum!(
    /// `reason` of `admin_refusals_total`: why the admin plane dropped or refused a
    /// connection.
    AdminRefusal {
        HeaderTimeout => "header_timeout",
        HeadersTooLarge => "headers_too_large",
        Malformed => "malformed",
        WriteTimeout => "write_timeout",
        Pipeline => "pipeline",
        MaxConns => "max_conns",
    }
);

label_enum!(
    /// `reason` of `overlay_accept_paused_total`: why the overlay acceptor stopped taking
    /// connections from the backlog for a while (`tls_handshakes`: `overlay.max_conns` TLS
    /// handshakes already in flight on the TLS listener).
    AcceptPause {
        FdHeadroom => "fd_headroom",
        AcceptError => "accept_error",
        TlsHandshakes => "tls_handshakes",
    }
);

label_enum!(
    /// `outcome` of `overlay_peer_resolve_total`: a lookup of a peer given by name either
    /// answered addresses or failed (an error, a timeout, or no address), and then the last
    /// good answer stays.
    ResolveOutcome { Ok => "ok", Error => "error" }
);

label_enum!(
    /// `outcome` of `overlay_writes_total`: a write (a message with ACK_REQ, or a local
    /// publish) either passes the shedding decision or is refused `503 busy`.
    WriteOutcome { Accepted => "accepted", Busy => "busy" }
);

label_enum!(
    /// `route` of `request_latency_seconds` beyond the admin plane's: OAP/1 handshakes
    /// (accept or dial to HELLO answered), under a route no admin request has, so the SLO
    /// query can select them.
    LatencyRoute { Handshake => "handshake" }
);

label_enum!(
    /// `method` of the handshake latency: the transport it was measured on.
    Transport { Tcp => "tcp", Tls => "tls" }
);

/// `values` followed by `extra`, for allowlists that extend an enum's values.
const fn with<const N: usize>(
    values: &[&'static str],
    extra: &[&'static str],
) -> [&'static str; N] {
    let mut v = [""; N];
    let mut i = 0;
    while i < values.len() {
        v[i] = values[i];
        i += 1;
    }
    let mut j = 0;
    while j < extra.len() {
        v[i + j] = extra[j];
        j += 1;
    }
    v
}
const LATENCY_ROUTES: [&str; Route::VALUES.len() + 1] = with(Route::VALUES, LatencyRoute::VALUES);
const LATENCY_METHODS: [&str; Method::VALUES.len() + Transport::VALUES.len()] =
    with(Method::VALUES, Transport::VALUES);

impl Status {
    pub fn from_code(code: u16) -> Status {
        match code {
            200..=299 => Status::Ok,
            400 => Status::BadRequest,
            404 => Status::NotFound,
            405 => Status::MethodNotAllowed,
            503 => Status::Unavailable,
            _ => Status::Internal,
        }
    }
}

impl Route {
    pub fn from_path(path: &str) -> Route {
        match path {
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/version" => Route::Version,
            _ => Route::Other,
        }
    }
}

impl Method {
    pub fn from_name(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => Method::Other,
        }
    }
}

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const REQUEST_LATENCY_SECONDS: &str = "request_latency_seconds";
pub const INFLIGHT_REQUESTS: &str = "inflight_requests";
pub const SERVICE_RESTARTS_TOTAL: &str = "service_restarts_total";
pub const BUS_LAGGED_TOTAL: &str = "bus_lagged_total";
pub const REJECTED_TOTAL: &str = "rejected_total";
pub const SESSIONS_ACTIVE: &str = "overlay_sessions_active";
pub const SESSIONS_OPEN_TOTAL: &str = "overlay_sessions_open_total";
pub const HANDSHAKE_ATTEMPTS_TOTAL: &str = "overlay_handshake_attempts_total";
pub const HANDSHAKE_FAILURES_TOTAL: &str = "overlay_handshake_failures_total";
pub const FRAMES_TOTAL: &str = "overlay_frames_total";
pub const BYTES_TOTAL: &str = "overlay_bytes_total";
pub const FRAME_SIZE_BYTES: &str = "overlay_frame_size_bytes";
pub const CHUNK_BYTES: &str = "overlay_chunk_bytes";
pub const BACKPRESSURE_EVENTS_TOTAL: &str = "overlay_backpressure_events_total";
pub const QUEUE_DEPTH: &str = "overlay_queue_depth";
pub const QUEUE_DROPPED_TOTAL: &str = "overlay_queue_dropped_total";
pub const EGRESS_PERMITS: &str = "overlay_egress_permits";
pub const FANOUT_CURRENT: &str = "overlay_fanout_current";
pub const AUTH_FAILURES_TOTAL: &str = "auth_failures_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "tls_handshake_failures_total";
pub const PQ_NEGOTIATIONS_TOTAL: &str = "overlay_pq_negotiations_total";
pub const READYZ_STATE: &str = "readyz_state";
pub const RX_OUTCOMES_TOTAL: &str = "overlay_rx_outcomes_total";
pub const RX_DROPPED_TOTAL: &str = "overlay_rx_dropped_total";
pub const EGRESS_FILL_RATIO: &str = "overlay_egress_fill_ratio";
pub const DIAL_FAILURES_TOTAL: &str = "overlay_dial_failures_total";
pub const ADMIN_CONNECTIONS_ACTIVE: &str = "admin_connections_active";
pub const TREE_FRAMES_TOTAL: &str = "overlay_tree_frames_total";
pub const TREE_PUSHES_TOTAL: &str = "overlay_tree_pushes_total";
pub const TREE_PULLS_TOTAL: &str = "overlay_tree_pulls_total";
pub const TREE_PEERS: &str = "overlay_tree_peers";
pub const ANNOUNCE_DROPPED_TOTAL: &str = "overlay_announce_dropped_total";
pub const STORE_BYTES: &str = "overlay_store_bytes";
pub const OWED_MESSAGES: &str = "overlay_owed_messages";
pub const TREE_PULL_DELAY: &str = "overlay_tree_pull_delay_seconds";
pub const TREE_RESCUES_TOTAL: &str = "overlay_tree_rescues_total";
pub const PEER_DEMOTIONS_TOTAL: &str = "overlay_peer_demotions_total";
pub const STORE_EVICTIONS_TOTAL: &str = "overlay_store_evictions_total";
pub const RECONCILE_ROUNDS_TOTAL: &str = "overlay_reconcile_rounds_total";
pub const RECONCILE_BYTES_TOTAL: &str = "overlay_reconcile_bytes_total";
pub const ADMIN_REFUSALS_TOTAL: &str = "admin_refusals_total";
pub const ACCEPT_PAUSED_TOTAL: &str = "overlay_accept_paused_total";
pub const REFUSAL_NOTICES_TOTAL: &str = "overlay_refusal_notices_total";
pub const WRITES_TOTAL: &str = "overlay_writes_total";
pub const PEER_RESOLVE_TOTAL: &str = "overlay_peer_resolve_total";
pub const HEAP_TRIMS_TOTAL: &str = "overlay_heap_trims_total";
pub const HEAP_RETURNED_BYTES_TOTAL: &str = "overlay_heap_returned_bytes_total";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One inventory entry: name, type, help text and the allowlist of each label.
#[derive(Clone, Copy, Debug)]
pub struct MetricSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [(&'static str, &'static [&'static str])],
    /// Cargo feature the metric belongs to, if it exists only with that feature.
    pub feature: Option<&'static str>,
}

const fn spec(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    labels: &'static [(&'static str, &'static [&'static str])],
) -> MetricSpec {
    MetricSpec {
        name,
        kind,
        help,
        labels,
        feature: None,
    }
}

use crate::reason::RejectReason;

/// Every metric svc-overlay exports (seed sections 1.1 and 1.2, plus the frame outcomes
/// that make the balance of counts visible).
pub const INVENTORY: &[MetricSpec] = &[
    spec(
        HTTP_REQUESTS_TOTAL,
        Kind::Counter,
        "Admin plane HTTP requests by route, method and status.",
        &[
            ("route", Route::VALUES),
            ("method", Method::VALUES),
            ("status", Status::VALUES),
        ],
    ),
    spec(
        REQUEST_LATENCY_SECONDS,
        Kind::Histogram,
        "Admin plane request latency, and OAP/1 handshake latency from accept or dial to the HELLO answer (route handshake, method tcp or tls), in seconds.",
        &[("route", &LATENCY_ROUTES), ("method", &LATENCY_METHODS)],
    ),
    spec(
        INFLIGHT_REQUESTS,
        Kind::Gauge,
        "Admin plane requests being served.",
        &[("route", Route::VALUES)],
    ),
    spec(
        SERVICE_RESTARTS_TOTAL,
        Kind::Counter,
        "Supervised tasks restarted after a panic (reason in logs).",
        &[],
    ),
    spec(
        BUS_LAGGED_TOTAL,
        Kind::Counter,
        "Events a lagging event-bus subscriber missed.",
        &[],
    ),
    spec(
        REJECTED_TOTAL,
        Kind::Counter,
        "Frames, requests and connections refused, by canonical reason.",
        &[("reason", RejectReason::VALUES)],
    ),
    spec(
        SESSIONS_ACTIVE,
        Kind::Gauge,
        "Established OAP/1 sessions.",
        &[],
    ),
    spec(
        SESSIONS_OPEN_TOTAL,
        Kind::Counter,
        "OAP/1 sessions established since start.",
        &[],
    ),
    spec(
        HANDSHAKE_ATTEMPTS_TOTAL,
        Kind::Counter,
        "Handshakes begun (connections accepted or dialed).",
        &[],
    ),
    spec(
        HANDSHAKE_FAILURES_TOTAL,
        Kind::Counter,
        "Handshakes that failed, by reason.",
        &[("reason", HandshakeFailure::VALUES)],
    ),
    spec(
        FRAMES_TOTAL,
        Kind::Counter,
        "OAP/1 frames by direction and kind.",
        &[("dir", Dir::VALUES), ("kind", FrameClass::VALUES)],
    ),
    spec(
        BYTES_TOTAL,
        Kind::Counter,
        "OAP/1 bytes on the wire by direction.",
        &[("dir", Dir::VALUES)],
    ),
    spec(
        FRAME_SIZE_BYTES,
        Kind::Histogram,
        "OAP/1 frame sizes on the wire, header included.",
        &[("dir", Dir::VALUES)],
    ),
    spec(
        CHUNK_BYTES,
        Kind::Histogram,
        "Gossip chunk payload sizes.",
        &[("dir", Dir::VALUES)],
    ),
    spec(
        BACKPRESSURE_EVENTS_TOTAL,
        Kind::Counter,
        "Egress refusals (shed or full) by peer volume class.",
        &[("peer_bucket", PeerBucket::VALUES)],
    ),
    spec(
        QUEUE_DEPTH,
        Kind::Gauge,
        "Sampled queue depth in frames (ingress: read chunks).",
        &[("queue", Queue::VALUES)],
    ),
    spec(
        QUEUE_DROPPED_TOTAL,
        Kind::Counter,
        "Frames dropped from a queue, by queue and reason.",
        &[("queue", Queue::VALUES), ("reason", DropReason::VALUES)],
    ),
    spec(
        EGRESS_PERMITS,
        Kind::Gauge,
        "Global egress permits (frames handed to writers).",
        &[("state", PermitState::VALUES)],
    ),
    spec(
        FANOUT_CURRENT,
        Kind::Gauge,
        "Peers the last new message was relayed to.",
        &[],
    ),
    spec(
        AUTH_FAILURES_TOTAL,
        Kind::Counter,
        "Capability checks that failed, by reason: at HELLO (answered 401) and on writes (answered 403).",
        &[("reason", AuthFailure::VALUES)],
    ),
    spec(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        Kind::Counter,
        "TLS handshakes that failed, by reason.",
        &[("reason", TlsFailure::VALUES)],
    ),
    spec(
        PQ_NEGOTIATIONS_TOTAL,
        Kind::Counter,
        "Key exchanges of TLS handshakes by pq_mode: ok (completed), incompatible (no X25519MLKEM768 offered under hybrid), fail (completed without the hybrid group under hybrid).",
        &[("mode", PqMode::VALUES), ("outcome", PqOutcome::VALUES)],
    ),
    spec(
        READYZ_STATE,
        Kind::Gauge,
        "Readiness: 0 down, 1 ready, 2 degraded.",
        &[],
    ),
    spec(
        RX_OUTCOMES_TOTAL,
        Kind::Counter,
        "What became of every frame received: exactly one outcome each.",
        &[("outcome", Outcome::VALUES)],
    ),
    spec(
        RX_DROPPED_TOTAL,
        Kind::Counter,
        "Received frames dropped, by reason.",
        &[("reason", RxDrop::VALUES)],
    ),
    spec(
        TREE_FRAMES_TOTAL,
        Kind::Counter,
        "Broadcast-tree control frames (IHAVE, GRAFT, PRUNE, DIGEST) by direction.",
        &[("dir", Dir::VALUES), ("op", TreeOp::VALUES)],
    ),
    spec(
        TREE_PUSHES_TOTAL,
        Kind::Counter,
        "Messages sent to a tree peer whole (eager) or announced by id (lazy).",
        &[("mode", PushMode::VALUES)],
    ),
    spec(
        TREE_PULLS_TOTAL,
        Kind::Counter,
        "Message ids pulled with GRAFT: requested by this node, served to a peer, or missing from the store.",
        &[("outcome", PullOutcome::VALUES)],
    ),
    spec(
        TREE_PEERS,
        Kind::Gauge,
        "Tree peers this node pushes to eagerly or announces to lazily.",
        &[("mode", PushMode::VALUES)],
    ),
    spec(
        ANNOUNCE_DROPPED_TOTAL,
        Kind::Counter,
        "Announcements dropped because a lazy peer's announce queue was full (reconciliation repairs them).",
        &[],
    ),
    spec(
        STORE_BYTES,
        Kind::Gauge,
        "Bytes held by the message store (payloads, topics and bookkeeping).",
        &[],
    ),
    spec(
        OWED_MESSAGES,
        Kind::Gauge,
        "Messages owed to subscribers whose queues were full, waiting in the store to be sent.",
        &[],
    ),
    spec(
        TREE_PULL_DELAY,
        Kind::Gauge,
        "How long an announced message may now take before it is pulled: the graft timeout, up to 1.5 times it while announced messages arrive late.",
        &[],
    ),
    spec(
        TREE_RESCUES_TOTAL,
        Kind::Counter,
        "Times no peer had delivered anything new for a quarter graft timeout while an announced message waited as long, and everything announced and missing was pulled ahead of its deadline (a tree cut off from its source, or a parent gone).",
        &[],
    ),
    spec(
        PEER_DEMOTIONS_TOTAL,
        Kind::Counter,
        "Sessions (peers or subscribers) that stayed over their egress watermark long enough to stop pausing the node's reads (slow, not busy).",
        &[],
    ),
    spec(
        STORE_EVICTIONS_TOTAL,
        Kind::Counter,
        "Messages the store let go, by bound.",
        &[("reason", StoreEviction::VALUES)],
    ),
    spec(
        RECONCILE_ROUNDS_TOTAL,
        Kind::Counter,
        "Store digests sent to tree peers.",
        &[],
    ),
    spec(
        RECONCILE_BYTES_TOTAL,
        Kind::Counter,
        "Bytes of reconciliation (DIGEST frames and the IHAVEs that answer them) by direction.",
        &[("dir", Dir::VALUES)],
    ),
    spec(
        EGRESS_FILL_RATIO,
        Kind::Gauge,
        "Fill of the fullest session egress queue, 0 to 1 (writes fail at readiness.queue_high_watermark).",
        &[],
    ),
    spec(
        DIAL_FAILURES_TOTAL,
        Kind::Counter,
        "Dials to configured peers that failed; each is retried with backoff.",
        &[],
    ),
    spec(
        ADMIN_CONNECTIONS_ACTIVE,
        Kind::Gauge,
        "Admin plane connections being served, at most admin.max_conns.",
        &[],
    ),
    spec(
        ADMIN_REFUSALS_TOTAL,
        Kind::Counter,
        "Admin plane connections closed or requests refused to protect the plane, by reason.",
        &[("reason", AdminRefusal::VALUES)],
    ),
    spec(
        ACCEPT_PAUSED_TOTAL,
        Kind::Counter,
        "Times the overlay acceptor paused, leaving connections in the backlog, by reason.",
        &[("reason", AcceptPause::VALUES)],
    ),
    spec(
        REFUSAL_NOTICES_TOTAL,
        Kind::Counter,
        "Refusal notices sent (GOSSIP RESP corr_id 0) telling a writer how many messages were refused.",
        &[("reason", RejectReason::VALUES)],
    ),
    spec(
        WRITES_TOTAL,
        Kind::Counter,
        "Writes (messages with ACK_REQ, local publishes) by shedding decision: the busy SLO's denominator.",
        &[("outcome", WriteOutcome::VALUES)],
    ),
    spec(
        PEER_RESOLVE_TOTAL,
        Kind::Counter,
        "Lookups of peers given by name (every overlay.peer_resolve_interval), by outcome; an error keeps the last good addresses.",
        &[("outcome", ResolveOutcome::VALUES)],
    ),
    spec(
        HEAP_TRIMS_TOTAL,
        Kind::Counter,
        "Times the daemon gave freed heap back to the OS (malloc_trim), after freed memory stayed resident.",
        &[],
    ),
    spec(
        HEAP_RETURNED_BYTES_TOTAL,
        Kind::Counter,
        "Anonymous resident bytes those trims gave back to the OS.",
        &[],
    ),
];

/// A renamed metric (seed section 9: names are API). The node exports it under `old` as
/// well as `new` until the release named in `until`, at least one minor version after the
/// rename, and CHANGELOG.md says so. `released_names.txt` lists every name ever shipped; a
/// test fails when one of them is neither in `INVENTORY` nor the `old` of an alias here.
#[derive(Clone, Copy, Debug)]
pub struct Alias {
    pub old: &'static str,
    pub new: &'static str,
    pub until: &'static str,
}

/// The renames still within their alias period. None so far.
pub const ALIASES: &[Alias] = &[];

/// The inventory entry for `name`.
pub fn spec_of(name: &str) -> Option<&'static MetricSpec> {
    INVENTORY.iter().find(|s| s.name == name)
}

/// Whether a metric exists in a build with these features on.
pub fn enabled(spec: &MetricSpec, features: &[&str]) -> bool {
    spec.feature.map_or(true, |f| features.contains(&f))
}

impl RejectReason {
    /// The label values, derived from the enum so the two cannot drift apart.
    pub const VALUES: &'static [&'static str] = &{
        let mut v = [""; RejectReason::ALL.len()];
        let mut i = 0;
        while i < v.len() {
            v[i] = RejectReason::ALL[i].as_str();
            i += 1;
        }
        v
    };
}
