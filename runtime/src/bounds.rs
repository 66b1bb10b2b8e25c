//! Runtime bounds. Each queue and buffer between sockets and the node is bounded. Bounds an
//! operator may need to move come from config keys (see `Bounds::from_config`); the
//! constants left here are internal plumbing (channel sizes for small control messages,
//! sampling periods) whose values do not change what a peer can make the node hold.

use std::time::Duration;

use overlay_core::config::AdminConfig;
use overlay_core::oap::GOSSIP_FRAME_OVERHEAD;
use overlay_core::Config;

/// Writer wake-ups, accepts, dial results: small messages the driver must see promptly.
pub const CONTROL_CHANNEL: usize = 1024;

/// Embedder commands (publish, reconfigure, drain).
pub const COMMAND_CHANNEL: usize = 256;

/// Transmits one writer task writes with one vectored write.
pub const WRITE_BATCH: usize = 64;

/// Pause after a failed `accept` (EMFILE and friends), so the loop cannot spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Most TLS connections the acceptor takes from the backlog and has the core admit at
/// once (`Control::Incoming`).
pub const ADMIT_BATCH: usize = 64;

/// Threads of the TLS listener's handshake runtime (`io/handshakes.rs`). How many
/// handshakes run is bounded by `overlay.handshake_rate` and `overlay.max_conns`; this only
/// bounds the cores their crypto may take from the sessions at once.
pub const HANDSHAKE_THREADS: usize = 1;

/// The nice value of the TLS handshake thread (io/handshakes.rs): background work to the
/// sessions. 10 is what `nice` gives by default.
pub const HANDSHAKE_NICE: libc::c_int = 10;

/// How often fd headroom is sampled and the Prometheus recorder's upkeep runs.
pub const FD_SAMPLE_EVERY: Duration = Duration::from_secs(1);
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// `/healthz` fails once the driver has not ticked for this long.
pub const HEALTH_STALE: Duration = Duration::from_secs(2);

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
    /// Read chunks one connection may have queued toward the driver
    /// (`overlay.peer.read_credit_chunks`). The shared ingress channel is bounded too, but
    /// without a per-connection credit one flooding socket could fill it and starve every
    /// other connection.
    pub read_credit: usize,
    /// Events the bus holds for its slowest subscriber (`log.bus_capacity`); past that the
    /// subscriber loses the oldest and counts them in `bus_lagged_total`.
    pub bus_capacity: usize,
    /// The admin plane's connections, deadlines and request bounds (`admin.*`): a scrape
    /// storm or a hostile client cannot take unbounded tasks and sockets, nor keep probes
    /// from being answered.
    pub admin: AdminLimits,
    /// Kernel buffers of each connection's socket (`overlay.peer.socket_send_bytes`,
    /// `overlay.peer.socket_recv_bytes`).
    pub socket: SocketBuffers,
}

impl Bounds {
    pub fn from_config(cfg: &Config) -> Bounds {
        let g = &cfg.overlay.gossip;
        Bounds {
            read_chunk: (g.chunk_bytes + GOSSIP_FRAME_OVERHEAD).clamp(4096, 1 << 20),
            ingress_channel: (cfg.overlay.max_conns * 2).clamp(64, 16_384),
            writer_queue: cfg.overlay.peer.send_window_frames + 4,
            connect_timeout: cfg.overlay.handshake_timeout,
            flush_timeout: cfg.timeouts.write.min(Duration::from_secs(1)),
            read_credit: cfg.overlay.peer.read_credit_chunks,
            bus_capacity: cfg.log.bus_capacity,
            admin: AdminLimits::from_config(&cfg.admin),
            socket: SocketBuffers {
                send: cfg.overlay.peer.socket_send_bytes,
                recv: cfg.overlay.peer.socket_recv_bytes,
            },
        }
    }
}

/// Kernel buffer sizes of a connection's socket (`overlay.peer.socket_send_bytes`,
/// `overlay.peer.socket_recv_bytes`); 0 leaves one to the kernel's autotuning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketBuffers {
    pub send: usize,
    pub recv: usize,
}

/// The admin plane's bounds, from `admin.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    pub max_conns: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub max_pipelined: u32,
    pub max_header_bytes: usize,
}

impl AdminLimits {
    pub fn from_config(a: &AdminConfig) -> AdminLimits {
        AdminLimits {
            max_conns: a.max_conns,
            header_timeout: a.header_timeout,
            write_timeout: a.write_timeout,
            max_pipelined: a.max_pipelined,
            max_header_bytes: a.max_header_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_their_config_keys() {
        let mut cfg = Config::default();
        let d = Bounds::from_config(&cfg);
        assert_eq!(d.read_credit, 4);
        assert_eq!(d.bus_capacity, 4096);
        assert_eq!(d.admin.max_conns, 64);
        assert_eq!(d.admin.header_timeout, Duration::from_secs(2));
        assert_eq!(d.admin.max_pipelined, 16);

        cfg.overlay.peer.read_credit_chunks = 2;
        cfg.log.bus_capacity = 16;
        cfg.admin.max_conns = 3;
        cfg.admin.write_timeout = Duration::from_millis(300);
        cfg.validate().unwrap();
        let b = Bounds::from_config(&cfg);
        assert_eq!(b.read_credit, 2);
        assert_eq!(b.bus_capacity, 16);
        assert_eq!(b.admin.max_conns, 3);
        assert_eq!(b.admin.write_timeout, Duration::from_millis(300));
    }
}
