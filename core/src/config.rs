//! The node's configuration: every bound has a key, a default and a check.
//!
//! This is the one schema: the runtime layers CLI flags, `SVC_OVERLAY_` environment and a
//! TOML file over these defaults and calls [`Config::validate`], which fails closed and
//! names the offending key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::observe::PqMode;
pub use crate::transport::PeerAddr;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub overlay: OverlayConfig,
    pub admin: AdminConfig,
    pub timeouts: Timeouts,
    pub limits: BodyLimits,
    pub readiness: ReadinessConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub tls: TlsConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// Address the plain-TCP OAP/1 listener binds; empty: none (needs a restart to change).
    pub listen: String,
    /// Address the TLS OAP/1 listener binds; empty: none (needs a restart to change).
    pub tls_listen: String,
    /// This node's id in HELLO; empty means derived from the listen address.
    pub node_id: String,
    /// Peers to dial and keep dialed.
    pub peers: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    pub max_conns: usize,
    /// Global handshake token bucket: sustained handshakes per second...
    pub handshake_rate: u32,
    /// ...and the burst above it.
    pub handshake_burst: u32,
    /// Interval of CTRL PING on a quiet session.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// Most topic filters one client may name in HELLO.
    pub max_topics: usize,
    /// Largest frame a connection may send before its handshake is done. A HELLO is small
    /// (a token and a topic list), and an unauthenticated connection must not make the node
    /// buffer a whole `max_frame_bytes` frame: `max_conns` of them would pin a GiB.
    pub max_hello_bytes: u32,
    /// Post-quantum mode this node asks for in HELLO (`off` or `hybrid`).
    pub pq_mode: PqModeConfig,
    /// First redial delay after a dial to a configured peer fails or its session ends...
    #[serde(with = "humantime_serde")]
    pub dial_backoff_base: Duration,
    /// ...doubling (with jitter) up to this.
    #[serde(with = "humantime_serde")]
    pub dial_backoff_max: Duration,
    /// How often a peer given by name (`host:port`) is looked up again, so a peer that
    /// moves (a pod rescheduled, a DNS record changed) is dialed where it is now.
    #[serde(with = "humantime_serde")]
    pub peer_resolve_interval: Duration,
    pub peer: PeerLimits,
    pub gossip: GossipConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PqModeConfig {
    Off,
    Hybrid,
}

impl PqModeConfig {
    pub fn mode(self) -> PqMode {
        match self {
            PqModeConfig::Off => PqMode::Off,
            PqModeConfig::Hybrid => PqMode::Hybrid,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerLimits {
    /// Frames a session may hold in partial gossip streams.
    pub inflight_frames: usize,
    /// Gossip messages per second one session may send (token bucket, burst of one second).
    pub max_rps: u32,
    /// Frames handed to a session's writer and not yet written.
    pub send_window_frames: usize,
    /// Frames one session's egress queue may hold.
    pub egress_queue_frames: usize,
    /// Bytes one session's egress queue may hold.
    pub egress_queue_bytes: usize,
    /// Read chunks one connection may have waiting for the driver; its reader pauses (and
    /// TCP pushes back) beyond that, so one flooding socket cannot fill the ingress queue.
    pub read_credit_chunks: usize,
    /// Least time between two refusal notices of one reason to one session: a writer hears
    /// how many messages were refused without flooding it with one answer per refusal.
    #[serde(with = "humantime_serde")]
    pub notice_interval: Duration,
    /// Messages a subscriber whose queue is full may be owed: kept as ids, sent from the
    /// message store as its queue drains. Past it (or once the store lets one go) they are
    /// dropped and counted. 0: a full queue drops, as the spec's plain relay does.
    pub owed_messages: usize,
    /// Kernel send buffer (SO_SNDBUF) of each connection's socket; 0 leaves it to the
    /// kernel's autotuning, which on loopback grows to MiBs: a backlog held there is
    /// invisible to the node's watermarks and only adds delay.
    pub socket_send_bytes: usize,
    /// Kernel receive buffer (SO_RCVBUF) of each connection's socket; 0 leaves it to
    /// autotuning. What a paused read leaves unread waits here, so this bounds how much a
    /// pause lets the upstream node push before its own queue, and then its writer, feel it.
    pub socket_recv_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipConfig {
    pub max_frame_bytes: u32,
    pub chunk_bytes: usize,
    pub relay_fanout: usize,
    /// Deficit round robin quantum, in frames of `chunk_bytes`: how much one session may
    /// send before the scheduler moves on.
    pub burst_budget_frames: usize,
    pub max_partial_streams: usize,
    /// Data one session may hold in partial streams...
    pub max_partial_bytes: usize,
    /// ...and all sessions together.
    pub max_partial_bytes_total: usize,
    /// Message ids remembered for dedupe...
    pub seen_cache_size: usize,
    /// ...and for how long.
    #[serde(with = "humantime_serde")]
    pub seen_ttl: Duration,
    /// ttl of messages this node originates.
    pub default_ttl: u8,
    /// Frames the whole node may have handed to writers at once.
    pub egress_permits: usize,
    /// The message store (one copy of each recent payload, serving pulls and repair):
    /// bytes it may hold...
    pub store_bytes: usize,
    /// ...and how long it keeps a message.
    #[serde(with = "humantime_serde")]
    pub store_ttl: Duration,
    /// How long an announced message may take to arrive before it is pulled (GRAFT).
    #[serde(with = "humantime_serde")]
    pub graft_timeout: Duration,
    /// How often each tree peer is sent a DIGEST of the store, to repair what was lost
    /// (partitions, restarts).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Message ids waiting to be announced to one lazy peer; past it the oldest are
    /// dropped (counted), reconciliation repairs them.
    pub announce_queue: usize,
    /// Offer the broadcast tree (the `tree` HELLO feature) to peers. Off: every peer link
    /// uses the spec's eager push with a ttl and `relay_fanout`.
    pub tree: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/metrics /healthz /readyz /version` (needs a restart to change).
    pub listen: String,
    /// Admin connections served at once; one more evicts the connection that has gone
    /// longest without finishing a response, so a probe is never queued behind stalled ones.
    pub max_conns: usize,
    /// A request's headers (and, between requests, the next request) must arrive within this.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Requests one connection may send ahead of reading the answers; one more closes it.
    pub max_pipelined: u32,
    /// Largest request head (request line and headers); more is answered 431.
    pub max_header_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A frame begun must be finished within this (slow senders are cut off).
    #[serde(with = "humantime_serde")]
    pub read: Duration,
    /// A session with frames in flight must make write progress within this.
    #[serde(with = "humantime_serde")]
    pub write: Duration,
    /// A session that receives nothing (not even PONG) for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodyLimits {
    pub max_body_bytes: usize,
    pub decompress_ratio_cap: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadinessConfig {
    /// Egress fill ratio at which writes are refused and, if sustained, `queues_ok` fails.
    pub queue_high_watermark: f64,
    /// How long a bad condition must hold before readiness reports it.
    #[serde(with = "humantime_serde")]
    pub sustain: Duration,
    /// Largest tolerated share of writes answered 503 busy.
    pub shed_rate_max: f64,
    /// `retry_after` in 503 bodies, seconds.
    pub retry_after: u64,
    /// File descriptors that must stay free for `fd_headroom`.
    pub fd_reserve: u64,
}

/// Signed capability tokens (docs/OPERATIONS.md "Tokens"). Nothing here is a secret: the
/// node's own token and the minting key live in files the config only names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a signed capability token in HELLO, and authorise every write with it.
    pub required: bool,
    /// Public keys that verify tokens: each `ed25519/<hex>` inline or the path of a file
    /// holding one. Several at once let keys rotate.
    pub verify_keys: Vec<String>,
    /// The tenant this node serves: a token for another tenant is refused.
    pub tenant: String,
    /// File holding the token this node presents when it dials its peers (empty: none).
    pub token_file: String,
    /// Largest token a HELLO may carry; a larger one is refused before it is parsed.
    pub max_token_bytes: usize,
    /// Most rights (topic, action) a token may grant: each costs one evaluation of the
    /// token's checks per HELLO, so a token with more is refused, not evaluated.
    pub max_rights: usize,
    /// Most facts one evaluation of a token's datalog may derive.
    pub max_datalog_facts: u64,
    /// Most rounds of rule application in one evaluation of a token's datalog.
    pub max_datalog_iterations: u64,
}

/// Most verification keys at once: each is tried in turn on a HELLO.
pub const MAX_VERIFY_KEYS: usize = 16;

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            required: false,
            verify_keys: Vec::new(),
            tenant: "default".into(),
            token_file: String::new(),
            max_token_bytes: 4096,
            max_rights: 64,
            max_datalog_facts: 1000,
            max_datalog_iterations: 100,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `svc_overlay=debug`.
    pub level: String,
    /// Log peer addresses (turn off where policy forbids, e.g. behind Tor).
    pub peer_addr: bool,
    /// Most lines per second of one event kind (event and reason); the rest are counted
    /// and reported as `suppressed`.
    pub max_lines_per_sec: u32,
    /// Events the log bus holds for a slow subscriber before it lags (`bus_lagged_total`).
    pub bus_capacity: usize,
}

/// Transport security files, all PEM; an empty path is unset. The core only validates
/// them: the runtime reads the files and runs TLS, and hands the core what TLS verified.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// This node's certificate chain, for the TLS listener and as client certificate.
    pub cert_file: String,
    /// Its private key; refused at start if group or others may read it.
    pub key_file: String,
    /// Set: clients of the TLS listener must present a certificate from these CAs (mTLS).
    pub client_ca_file: String,
    /// Trust roots for the certificates of `tls://` peers this node dials.
    pub ca_file: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long draining may take after SIGTERM before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub drain_deadline: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            overlay: OverlayConfig::default(),
            admin: AdminConfig {
                listen: "127.0.0.1:9600".into(),
                max_conns: 64,
                header_timeout: Duration::from_secs(2),
                write_timeout: Duration::from_secs(2),
                max_pipelined: 16,
                max_header_bytes: 16 << 10,
            },
            timeouts: Timeouts {
                read: Duration::from_secs(5),
                write: Duration::from_secs(5),
                idle: Duration::from_secs(15),
            },
            limits: BodyLimits {
                max_body_bytes: 1 << 20,
                decompress_ratio_cap: 10,
            },
            readiness: ReadinessConfig {
                queue_high_watermark: 0.9,
                sustain: Duration::from_secs(30),
                shed_rate_max: 0.01,
                retry_after: 5,
                fd_reserve: 64,
            },
            auth: AuthConfig::default(),
            log: LogConfig {
                level: "info".into(),
                peer_addr: true,
                max_lines_per_sec: 10,
                bus_capacity: 4096,
            },
            shutdown: ShutdownConfig {
                drain_deadline: Duration::from_secs(3),
            },
            tls: TlsConfig::default(),
        }
    }
}

impl Default for OverlayConfig {
    fn default() -> OverlayConfig {
        OverlayConfig {
            listen: "127.0.0.1:9444".into(),
            tls_listen: String::new(),
            node_id: String::new(),
            peers: Vec::new(),
            handshake_timeout: Duration::from_secs(3),
            max_conns: 1024,
            handshake_rate: 500,
            handshake_burst: 1000,
            keepalive: Duration::from_secs(5),
            max_topics: 64,
            // A default HELLO at its largest (a 4 KiB token, 64 topics of 255 bytes) is
            // about 21 KiB.
            max_hello_bytes: 32 << 10,
            pq_mode: PqModeConfig::Off,
            dial_backoff_base: Duration::from_millis(200),
            dial_backoff_max: Duration::from_secs(30),
            peer_resolve_interval: Duration::from_secs(30),
            peer: PeerLimits::default(),
            gossip: GossipConfig::default(),
        }
    }
}

impl Default for PeerLimits {
    fn default() -> PeerLimits {
        PeerLimits {
            inflight_frames: 32,
            max_rps: 20_000,
            send_window_frames: 16,
            egress_queue_frames: 1024,
            egress_queue_bytes: 8 << 20,
            read_credit_chunks: 4,
            notice_interval: Duration::from_secs(1),
            owed_messages: 8192,
            socket_send_bytes: 256 << 10,
            socket_recv_bytes: 256 << 10,
        }
    }
}

impl Default for GossipConfig {
    fn default() -> GossipConfig {
        GossipConfig {
            max_frame_bytes: 1 << 20,
            chunk_bytes: 64 << 10,
            relay_fanout: 8,
            burst_budget_frames: 8,
            max_partial_streams: 16,
            max_partial_bytes: 2 << 20,
            max_partial_bytes_total: 64 << 20,
            seen_cache_size: 65_536,
            seen_ttl: Duration::from_secs(120),
            default_ttl: 6,
            egress_permits: 4096,
            store_bytes: 32 << 20,
            store_ttl: Duration::from_secs(30),
            graft_timeout: Duration::from_millis(300),
            reconcile_interval: Duration::from_secs(5),
            announce_queue: 8192,
            tree: true,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        Config::default().admin
    }
}
impl Default for Timeouts {
    fn default() -> Timeouts {
        Config::default().timeouts
    }
}
impl Default for BodyLimits {
    fn default() -> BodyLimits {
        Config::default().limits
    }
}
impl Default for ReadinessConfig {
    fn default() -> ReadinessConfig {
        Config::default().readiness
    }
}
impl Default for LogConfig {
    fn default() -> LogConfig {
        Config::default().log
    }
}
impl Default for ShutdownConfig {
    fn default() -> ShutdownConfig {
        Config::default().shutdown
    }
}

/// A config value out of range; `key` is its dotted path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid config `{key}`: {why}")]
pub struct ConfigError {
    pub key: &'static str,
    pub why: String,
}

fn check(ok: bool, key: &'static str, why: impl Into<String>) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            key,
            why: why.into(),
        })
    }
}

/// Longest duration any key may hold. Deadlines are computed as `now + duration`; past
/// this, a value is a typo, and near `Duration::MAX` the addition would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A peer to dial: `ip:port`, `[ipv6]:port` or `host:port`, with a port in 1..=65535.
fn is_host_port(peer: &str) -> bool {
    if let Ok(a) = peer.parse::<std::net::SocketAddr>() {
        return a.port() != 0;
    }
    let Some((host, port)) = peer.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// A label a certificate can carry as `DNS:` SAN and rustls can match as a server name.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Config {
    /// The transport security keys: which need which, so a half-configured TLS setup
    /// fails at start instead of at the first connection.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = &self.tls;
        let o = &self.overlay;
        check(
            t.cert_file.is_empty() == t.key_file.is_empty(),
            if t.cert_file.is_empty() {
                "tls.cert_file"
            } else {
                "tls.key_file"
            },
            "tls.cert_file and tls.key_file go together",
        )?;
        check(
            o.tls_listen.is_empty() || !t.cert_file.is_empty(),
            "tls.cert_file",
            "overlay.tls_listen needs tls.cert_file and tls.key_file",
        )?;
        check(
            t.client_ca_file.is_empty() || !o.tls_listen.is_empty(),
            "tls.client_ca_file",
            "mTLS applies to the TLS listener: set overlay.tls_listen",
        )?;
        check(
            o.pq_mode != PqModeConfig::Hybrid || !o.tls_listen.is_empty(),
            "overlay.pq_mode",
            "\"hybrid\" is negotiated by TLS (X25519MLKEM768): set overlay.tls_listen, \
             tls.cert_file and tls.key_file, or use \"off\"",
        )?;
        Ok(())
    }

    /// Every duration key with its value, for the checks that apply to all of them.
    fn durations(&self) -> [(&'static str, Duration); 11] {
        let o = &self.overlay;
        let t = &self.timeouts;
        [
            ("overlay.handshake_timeout", o.handshake_timeout),
            ("overlay.keepalive", o.keepalive),
            ("overlay.dial_backoff_base", o.dial_backoff_base),
            ("overlay.dial_backoff_max", o.dial_backoff_max),
            ("overlay.peer_resolve_interval", o.peer_resolve_interval),
            ("overlay.gossip.seen_ttl", o.gossip.seen_ttl),
            ("timeouts.read", t.read),
            ("timeouts.write", t.write),
            ("timeouts.idle", t.idle),
            ("readiness.sustain", self.readiness.sustain),
            ("shutdown.drain_deadline", self.shutdown.drain_deadline),
        ]
    }

    /// Fails closed on the first value out of range, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let o = &self.overlay;
        let g = &o.gossip;
        let p = &o.peer;
        // Before the checks between keys, so a huge value is named as itself.
        for (key, d) in self.durations() {
            check(d <= MAX_DURATION, key, "must be at most 24h")?;
        }
        for (key, addr) in [
            ("overlay.listen", &o.listen),
            ("overlay.tls_listen", &o.tls_listen),
        ] {
            check(
                addr.is_empty() || addr.parse::<std::net::SocketAddr>().is_ok(),
                key,
                format!("{addr:?} is not an ip:port address (or \"\" for none)"),
            )?;
        }
        check(
            !o.listen.is_empty() || !o.tls_listen.is_empty(),
            "overlay.listen",
            "overlay.listen and overlay.tls_listen are both empty: the node would accept nothing",
        )?;
        self.validate_tls()?;
        check(
            self.admin.listen.parse::<std::net::SocketAddr>().is_ok(),
            "admin.listen",
            format!("{:?} is not an ip:port address", self.admin.listen),
        )?;
        check(
            o.node_id.len() <= 128,
            "overlay.node_id",
            "at most 128 bytes",
        )?;
        for peer in &o.peers {
            let parsed = PeerAddr::parse(peer).filter(|p| is_host_port(p.host_port));
            check(
                parsed.is_some(),
                "overlay.peers",
                format!(
                    "{peer:?} is not host:port with a port in 1..=65535 \
                     (or tls://host:port, tls://node-id@host:port)"
                ),
            )?;
            if let Some(name) = parsed.and_then(|p| p.name) {
                check(
                    is_dns_name(name),
                    "overlay.peers",
                    format!(
                        "{peer:?}: the expected node id must be a DNS name to match a certificate"
                    ),
                )?;
            }
            check(
                !parsed.is_some_and(|p| p.tls) || !self.tls.ca_file.is_empty(),
                "tls.ca_file",
                format!("{peer:?} is dialed over TLS: tls.ca_file must name its trust roots"),
            )?;
        }
        check(
            !o.handshake_timeout.is_zero(),
            "overlay.handshake_timeout",
            "must be > 0",
        )?;
        check(o.max_conns >= 1, "overlay.max_conns", "must be >= 1")?;
        check(
            o.handshake_rate >= 1,
            "overlay.handshake_rate",
            "must be >= 1",
        )?;
        check(
            o.handshake_burst >= 1,
            "overlay.handshake_burst",
            "must be >= 1",
        )?;
        check(!o.keepalive.is_zero(), "overlay.keepalive", "must be > 0")?;
        check(o.max_topics >= 1, "overlay.max_topics", "must be >= 1")?;
        check(
            !o.dial_backoff_base.is_zero(),
            "overlay.dial_backoff_base",
            "must be > 0",
        )?;
        check(
            o.dial_backoff_max >= o.dial_backoff_base,
            "overlay.dial_backoff_max",
            "must be >= overlay.dial_backoff_base",
        )?;
        check(
            !o.peer_resolve_interval.is_zero(),
            "overlay.peer_resolve_interval",
            "must be > 0",
        )?;
        check(
            p.read_credit_chunks >= 1,
            "overlay.peer.read_credit_chunks",
            "must be >= 1",
        )?;
        let a = &self.admin;
        check(a.max_conns >= 1, "admin.max_conns", "must be >= 1")?;
        check(
            !a.header_timeout.is_zero(),
            "admin.header_timeout",
            "must be > 0",
        )?;
        check(
            !a.write_timeout.is_zero(),
            "admin.write_timeout",
            "must be > 0",
        )?;
        check(a.max_pipelined >= 1, "admin.max_pipelined", "must be >= 1")?;
        // hyper's smallest read buffer; a head must fit in it.
        check(
            (8192..=1 << 20).contains(&a.max_header_bytes),
            "admin.max_header_bytes",
            "must be in 8192..=1048576",
        )?;
        check(
            self.log.bus_capacity >= 16,
            "log.bus_capacity",
            "must be >= 16",
        )?;
        check(
            p.inflight_frames >= 1,
            "overlay.peer.inflight_frames",
            "must be >= 1",
        )?;
        check(p.max_rps >= 1, "overlay.peer.max_rps", "must be >= 1")?;
        check(
            g.store_bytes >= 1 << 20,
            "overlay.gossip.store_bytes",
            "must be >= 1 MiB",
        )?;
        for (d, key) in [
            (g.store_ttl, "overlay.gossip.store_ttl"),
            (g.graft_timeout, "overlay.gossip.graft_timeout"),
            (g.reconcile_interval, "overlay.gossip.reconcile_interval"),
        ] {
            check(
                !d.is_zero() && d <= Duration::from_secs(24 * 3600),
                key,
                "must be > 0 and at most 24h",
            )?;
        }
        check(
            g.announce_queue >= crate::oap::MAX_IDS,
            "overlay.gossip.announce_queue",
            format!("must be >= {}", crate::oap::MAX_IDS),
        )?;
        check(
            !p.notice_interval.is_zero(),
            "overlay.peer.notice_interval",
            "must be > 0",
        )?;
        check(
            p.send_window_frames >= 1,
            "overlay.peer.send_window_frames",
            "must be >= 1",
        )?;
        check(
            p.egress_queue_frames >= 2,
            "overlay.peer.egress_queue_frames",
            "must be >= 2",
        )?;
        for (v, key) in [
            (p.socket_send_bytes, "overlay.peer.socket_send_bytes"),
            (p.socket_recv_bytes, "overlay.peer.socket_recv_bytes"),
        ] {
            check(
                v == 0 || (4096..=1 << 30).contains(&v),
                key,
                "must be 0 (kernel autotuning) or in 4096..=1073741824",
            )?;
        }
        check(
            p.egress_queue_bytes >= g.max_frame_bytes as usize,
            "overlay.peer.egress_queue_bytes",
            "must hold at least one max_frame_bytes frame",
        )?;
        check(
            (1024..=1 << 24).contains(&g.max_frame_bytes),
            "overlay.gossip.max_frame_bytes",
            "must be in 1024..=16777216",
        )?;
        check(
            g.chunk_bytes >= 512 && g.chunk_bytes + 38 <= g.max_frame_bytes as usize,
            "overlay.gossip.chunk_bytes",
            "must be >= 512 and fit in max_frame_bytes with the header",
        )?;
        check(
            g.relay_fanout >= 1,
            "overlay.gossip.relay_fanout",
            "must be >= 1",
        )?;
        check(
            g.burst_budget_frames >= 1,
            "overlay.gossip.burst_budget_frames",
            "must be >= 1",
        )?;
        check(
            g.max_partial_streams >= 1,
            "overlay.gossip.max_partial_streams",
            "must be >= 1",
        )?;
        check(
            g.max_partial_bytes >= g.chunk_bytes,
            "overlay.gossip.max_partial_bytes",
            "must be >= chunk_bytes",
        )?;
        check(
            g.seen_cache_size >= 1,
            "overlay.gossip.seen_cache_size",
            "must be >= 1",
        )?;
        check(
            !g.seen_ttl.is_zero(),
            "overlay.gossip.seen_ttl",
            "must be > 0",
        )?;
        check(
            g.default_ttl >= 1,
            "overlay.gossip.default_ttl",
            "must be >= 1",
        )?;
        check(
            g.egress_permits >= 1,
            "overlay.gossip.egress_permits",
            "must be >= 1",
        )?;
        check(
            !self.timeouts.read.is_zero(),
            "timeouts.read",
            "must be > 0",
        )?;
        check(
            !self.timeouts.write.is_zero(),
            "timeouts.write",
            "must be > 0",
        )?;
        check(
            self.timeouts.idle > o.keepalive,
            "timeouts.idle",
            "must be longer than overlay.keepalive",
        )?;
        check(
            self.limits.max_body_bytes >= 1,
            "limits.max_body_bytes",
            "must be >= 1",
        )?;
        check(
            self.limits.decompress_ratio_cap >= 1,
            "limits.decompress_ratio_cap",
            "must be >= 1",
        )?;
        let r = &self.readiness;
        check(
            r.queue_high_watermark > 0.0 && r.queue_high_watermark <= 1.0,
            "readiness.queue_high_watermark",
            "must be in (0, 1]",
        )?;
        check(
            r.shed_rate_max >= 0.0 && r.shed_rate_max <= 1.0,
            "readiness.shed_rate_max",
            "must be in [0, 1]",
        )?;
        check(!r.sustain.is_zero(), "readiness.sustain", "must be > 0")?;
        let a = &self.auth;
        check(
            !a.required || !a.verify_keys.is_empty(),
            "auth.verify_keys",
            "auth.required needs at least one verification key",
        )?;
        check(
            a.verify_keys.len() <= MAX_VERIFY_KEYS
                && a.verify_keys.iter().all(|k| !k.trim().is_empty()),
            "auth.verify_keys",
            "at most 16 keys, none empty",
        )?;
        check(
            !a.tenant.is_empty() && a.tenant.len() <= 128,
            "auth.tenant",
            "must be 1..=128 bytes",
        )?;
        check(
            (64..=65535).contains(&a.max_token_bytes),
            "auth.max_token_bytes",
            "must be in 64..=65535 (the cap field is 16 bits)",
        )?;
        check(
            (1..=1024).contains(&a.max_rights),
            "auth.max_rights",
            "must be in 1..=1024",
        )?;
        check(
            (100..=100_000).contains(&a.max_datalog_facts),
            "auth.max_datalog_facts",
            "must be in 100..=100000",
        )?;
        check(
            (10..=10_000).contains(&a.max_datalog_iterations),
            "auth.max_datalog_iterations",
            "must be in 10..=10000",
        )?;
        // Room for the largest token a HELLO may carry plus its JSON, so a token over
        // `auth.max_token_bytes` is refused `unauth`, not cut off as `oversize`.
        check(
            self.overlay.max_hello_bytes as usize >= self.auth.max_token_bytes + 1024,
            "overlay.max_hello_bytes",
            "must be >= auth.max_token_bytes + 1024",
        )?;
        check(
            self.log.max_lines_per_sec >= 1,
            "log.max_lines_per_sec",
            "must be >= 1",
        )?;
        check(
            !self.shutdown.drain_deadline.is_zero(),
            "shutdown.drain_deadline",
            "must be > 0",
        )?;
        Ok(())
    }

    /// The node id used in HELLO.
    pub fn node_id(&self) -> String {
        if self.overlay.node_id.is_empty() {
            let o = &self.overlay;
            let listen = if o.listen.is_empty() {
                &o.tls_listen
            } else {
                &o.listen
            };
            format!("node-{listen}")
        } else {
            self.overlay.node_id.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_design_table_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.overlay.listen, "127.0.0.1:9444");
        assert_eq!(c.admin.listen, "127.0.0.1:9600");
        assert_eq!(c.overlay.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.overlay.max_conns, 1024);
        let p = &c.overlay.peer;
        assert_eq!(
            (p.inflight_frames, p.max_rps, p.send_window_frames),
            // max_rps: the design table's 200 throttled an acked publisher to 200 msg/s,
            // a hundredth of what one node relays; flow control paces writers instead.
            (32, 20_000, 16)
        );
        let g = &c.overlay.gossip;
        assert_eq!(
            (
                g.max_frame_bytes,
                g.chunk_bytes,
                g.relay_fanout,
                g.burst_budget_frames
            ),
            (1 << 20, 64 << 10, 8, 8)
        );
        let t = &c.timeouts;
        assert_eq!(
            (t.read, t.write, t.idle),
            (
                Duration::from_secs(5),
                Duration::from_secs(5),
                Duration::from_secs(15)
            )
        );
        assert_eq!(
            (c.limits.max_body_bytes, c.limits.decompress_ratio_cap),
            (1 << 20, 10)
        );
        let r = &c.readiness;
        assert_eq!(
            (r.queue_high_watermark, r.sustain, r.shed_rate_max),
            (0.9, Duration::from_secs(30), 0.01)
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let mut c = Config::default();
        c.overlay.gossip.chunk_bytes = 100;
        assert_eq!(c.validate().unwrap_err().key, "overlay.gossip.chunk_bytes");
        let mut c = Config::default();
        c.auth.required = true;
        assert_eq!(c.validate().unwrap_err().key, "auth.verify_keys");
        let mut c = Config::default();
        c.auth.max_token_bytes = 1 << 16;
        assert_eq!(c.validate().unwrap_err().key, "auth.max_token_bytes");
        let mut c = Config::default();
        c.auth.max_rights = 0;
        assert_eq!(c.validate().unwrap_err().key, "auth.max_rights");
        let mut c = Config::default();
        c.auth.max_datalog_facts = 10;
        assert_eq!(c.validate().unwrap_err().key, "auth.max_datalog_facts");
        let mut c = Config::default();
        c.auth.max_datalog_iterations = 1;
        assert_eq!(c.validate().unwrap_err().key, "auth.max_datalog_iterations");
        let mut c = Config::default();
        c.auth.tenant = String::new();
        assert_eq!(c.validate().unwrap_err().key, "auth.tenant");
        let mut c = Config::default();
        c.readiness.queue_high_watermark = 1.5;
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string().contains("readiness.queue_high_watermark"),
            "{e}"
        );
        let mut c = Config::default();
        assert_eq!(c.overlay.peer.socket_recv_bytes, 256 << 10);
        c.overlay.peer.socket_recv_bytes = 0;
        c.validate().expect("0: the kernel's autotuning");
        c.overlay.peer.socket_send_bytes = 100;
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "overlay.peer.socket_send_bytes");
    }

    #[test]
    fn admin_bounds_are_checked() {
        type Breaks = fn(&mut AdminConfig);
        let bad: [(Breaks, &str); 4] = [
            (
                |a| a.header_timeout = Duration::ZERO,
                "admin.header_timeout",
            ),
            (|a| a.write_timeout = Duration::ZERO, "admin.write_timeout"),
            (|a| a.max_pipelined = 0, "admin.max_pipelined"),
            (|a| a.max_header_bytes = 4096, "admin.max_header_bytes"),
        ];
        for (set, key) in bad {
            let mut c = Config::default();
            set(&mut c.admin);
            assert_eq!(c.validate().unwrap_err().key, key);
        }
    }

    #[test]
    fn peer_names_are_looked_up_again_at_a_real_interval() {
        let mut c = Config::default();
        assert_eq!(c.overlay.peer_resolve_interval, Duration::from_secs(30));
        c.overlay.peer_resolve_interval = Duration::ZERO;
        assert_eq!(
            c.validate().unwrap_err().key,
            "overlay.peer_resolve_interval"
        );
    }

    #[test]
    fn hybrid_pq_needs_a_tls_listener_with_a_certificate() {
        let mut c = Config::default();
        c.overlay.pq_mode = PqModeConfig::Hybrid;
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "overlay.pq_mode");
        assert!(e.why.contains("tls_listen"), "{e}");
        c.overlay.tls_listen = "127.0.0.1:0".into();
        assert_eq!(c.validate().unwrap_err().key, "tls.cert_file");
        c.tls.cert_file = "node.pem".into();
        assert_eq!(c.validate().unwrap_err().key, "tls.key_file");
        c.tls.key_file = "node.key".into();
        c.validate().unwrap();
    }

    #[test]
    fn tls_keys_are_checked_together() {
        let mut c = Config::default();
        c.overlay.listen = String::new();
        assert_eq!(c.validate().unwrap_err().key, "overlay.listen");
        c.overlay.tls_listen = "nowhere".into();
        assert_eq!(c.validate().unwrap_err().key, "overlay.tls_listen");
        c.overlay.tls_listen = "127.0.0.1:0".into();
        c.tls.cert_file = "node.pem".into();
        c.tls.key_file = "node.key".into();
        c.validate().unwrap();
        c.tls.client_ca_file = "ca.pem".into();
        c.validate().unwrap();
        c.overlay.tls_listen = String::new();
        c.overlay.listen = "127.0.0.1:0".into();
        assert_eq!(c.validate().unwrap_err().key, "tls.client_ca_file");
        c.tls.client_ca_file = String::new();
        c.overlay.peers = vec!["tls://n2@127.0.0.1:9".into()];
        assert_eq!(c.validate().unwrap_err().key, "tls.ca_file");
        c.tls.ca_file = "ca.pem".into();
        c.validate().unwrap();
        c.overlay.peers = vec!["tls://not a name@127.0.0.1:9".into()];
        assert_eq!(c.validate().unwrap_err().key, "overlay.peers");
        c.overlay.peers = vec!["tls://127.0.0.1".into()];
        assert_eq!(c.validate().unwrap_err().key, "overlay.peers");
    }

    #[test]
    fn peers_must_be_host_and_a_real_port() {
        for bad in [
            ":",
            "host:notaport",
            "host:",
            ":9444",
            "host:0",
            "host:65536",
            "a b:1",
            "[::1]",
        ] {
            let mut c = Config::default();
            c.overlay.peers = vec![bad.into()];
            let e = c.validate().err();
            assert_eq!(e.map(|e| e.key), Some("overlay.peers"), "{bad:?} accepted");
        }
        let mut c = Config::default();
        c.overlay.peers = [
            "10.0.0.2:9444",
            "[::1]:9444",
            "peer-3.example:9444",
            "n_4:1",
        ]
        .map(String::from)
        .to_vec();
        c.validate().unwrap();
    }

    #[test]
    fn every_duration_is_bounded_so_deadlines_cannot_overflow() {
        let huge = Duration::from_secs(u64::MAX / 2);
        for (i, (key, _)) in Config::default().durations().into_iter().enumerate() {
            let mut c = Config::default();
            let mut set = |d: Duration| {
                let o = &mut c.overlay;
                let t = &mut c.timeouts;
                *[
                    &mut o.handshake_timeout,
                    &mut o.keepalive,
                    &mut o.dial_backoff_base,
                    &mut o.dial_backoff_max,
                    &mut o.peer_resolve_interval,
                    &mut o.gossip.seen_ttl,
                    &mut t.read,
                    &mut t.write,
                    &mut t.idle,
                    &mut c.readiness.sustain,
                    &mut c.shutdown.drain_deadline,
                ]
                .into_iter()
                .nth(i)
                .unwrap() = d;
            };
            set(huge);
            assert_eq!(c.durations()[i], (key, huge), "durations() order");
            assert_eq!(c.validate().unwrap_err().key, key);
        }
        let mut c = Config::default();
        c.shutdown.drain_deadline = MAX_DURATION;
        c.validate().unwrap();
        c.shutdown.drain_deadline = MAX_DURATION + Duration::from_millis(1);
        assert_eq!(c.validate().unwrap_err().key, "shutdown.drain_deadline");
    }

    #[test]
    fn the_old_token_list_is_an_unknown_key() {
        // Shared secrets in the config are gone: a file that still lists them fails closed
        // instead of running open.
        let e = serde_json::from_str::<Config>(r#"{"auth":{"tokens":["x"]}}"#).unwrap_err();
        assert!(e.to_string().contains("tokens"), "{e}");
    }

    #[test]
    fn unknown_keys_fail_closed() {
        let e = serde_json::from_str::<Config>(r#"{"overlay":{"max_conn":5}}"#).unwrap_err();
        assert!(e.to_string().contains("max_conn"), "{e}");
        let c: Config =
            serde_json::from_str(r#"{"overlay":{"handshake_timeout":"250ms"}}"#).unwrap();
        assert_eq!(c.overlay.handshake_timeout, Duration::from_millis(250));
    }
}
