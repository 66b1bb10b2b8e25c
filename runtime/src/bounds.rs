//! Runtime bounds. Each queue and buffer between sockets and the node is bounded; where the
//! config schema has a key for the bound it comes from there, and where it does not yet
//! the bound is derived from the nearest key or fixed here (see runtime/README.md).

use std::time::Duration;

use overlay_core::oap::HEADER_LEN;
use overlay_core::Config;

/// Read chunks one connection may have queued toward the driver. The shared ingress
/// channel is bounded too, but without a per-connection credit one flooding socket could
/// fill it and starve every other connection.
pub const INGRESS_CREDIT_PER_CONN: u32 = 4;

/// Writer wake-ups, accepts, dial results: small messages the driver must see promptly.
pub const CONTROL_CHANNEL: usize = 1024;

/// Embedder commands (publish, reconfigure, drain).
pub const COMMAND_CHANNEL: usize = 256;

/// Overlay events buffered for slow bus subscribers (the logger) before they lag.
pub const BUS_CAPACITY: usize = 4096;

/// Transmits one writer task writes with one vectored write.
pub const WRITE_BATCH: usize = 64;

/// Redial backoff: first delay, ceiling, and the jitter fraction (+-) applied to each.
pub const DIAL_BACKOFF_BASE: Duration = Duration::from_millis(200);
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const DIAL_JITTER: f64 = 0.5;

/// Pause after a failed `accept` (EMFILE and friends), so the loop cannot spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How often fd headroom is sampled and the Prometheus recorder's upkeep runs.
pub const FD_SAMPLE_EVERY: Duration = Duration::from_secs(1);
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// `/healthz` fails once the driver has not ticked for this long.
pub const HEALTH_STALE: Duration = Duration::from_secs(2);

/// Admin connections served at once; more wait in the kernel backlog.
pub const ADMIN_MAX_CONNS: usize = 64;

/// Longest string value in a log line (error chains, details).
pub const LOG_FIELD_MAX: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes one socket read may fill: one largest gossip frame, so a full frame usually
    /// arrives in one chunk.
    pub read_chunk: usize,
    /// Chunks the shared reader-to-driver channel holds.
    pub ingress_channel: usize,
    /// Transmits queued to one writer task: its send window plus room for control frames.
    pub writer_queue: usize,
    /// How long a dial may take before it counts as failed.
    pub connect_timeout: Duration,
    /// How long the runtime waits for closes to flush after `shutdown`.
    pub flush_timeout: Duration,
    /// Admin plane: a request's headers must arrive within this.
    pub admin_header_timeout: Duration,
}

impl Bounds {
    pub fn from_config(cfg: &Config) -> Bounds {
        let g = &cfg.overlay.gossip;
        Bounds {
            read_chunk: (g.chunk_bytes + HEADER_LEN + 18 + 255).clamp(4096, 1 << 20),
            ingress_channel: (cfg.overlay.max_conns * 2).clamp(64, 16_384),
            writer_queue: cfg.overlay.peer.send_window_frames + 4,
            connect_timeout: cfg.overlay.handshake_timeout,
            flush_timeout: cfg.timeouts.write.min(Duration::from_secs(1)),
            admin_header_timeout: cfg.timeouts.read,
        }
    }
}
