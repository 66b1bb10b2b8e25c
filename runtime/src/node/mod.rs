//! A running node: binds its listeners, starts the driver, the admin plane, the logger and
//! the samplers, and hands back a handle. The daemon, `demo`, the tests and the simulator
//! all start nodes through here.
//!
//! `handle` is what callers hold once it runs; `samplers` are the node's periodic tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use overlay_core::observe::Metrics;
use overlay_core::sync::Snapshot;
use overlay_core::{Config, Overlay, Probe, Time};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::corr::{os_seed, CorrIds, WallClock};
use crate::admin::health::Heartbeat;
use crate::admin::ready::ReadySnapshot;
use crate::admin::{self, AdminState, Scrapes, VersionInfo};
use crate::bounds::{self, Bounds};
pub use crate::driver::ShutdownReport;
use crate::driver::{Driver, Parts};
use crate::io::fd::FdBudget;
use crate::io::net::{Listener, Net};
use crate::io::tls::TlsContext;
use crate::telemetry::bus::{BusEvent, Subscription};
use crate::telemetry::logging::LogPolicy;
use crate::telemetry::recorder::Recorder;
use samplers::{fd_sampler, heap_trimmer, upkeep};

mod handle;
pub mod heap;
mod samplers;

pub use handle::NodeControl;

/// How to run a node beyond its config.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Seed of the node's RNG (dedupe keys, fanout, msg ids, dial jitter).
    pub seed: u64,
    /// Serve the admin plane on `admin.listen`.
    pub admin: bool,
    /// Sample `/proc/self/fd` for `fd_headroom`; off where the process's descriptors are
    /// not this node's to judge (simulations), which then reports headroom as fine.
    pub fd_sampler: bool,
    /// Give freed heap back to the OS (`heap.rs`). The allocator is the process's: only
    /// the node that has the process to itself (the daemon) runs it.
    pub heap_trim: bool,
    /// Emit `Event::Message` on the bus for every new message.
    pub local_delivery: bool,
    /// Log overlay events from the bus (the logger subscriber).
    pub log_events: bool,
    /// Log policy shared with the process's log layer; `None` builds one from the config.
    pub log_policy: Option<Arc<LogPolicy>>,
    /// Wall-clock time at the node's start for correlation ids, which then advance with
    /// tokio time; `None` reads the system clock. Simulations set it so that ids repeat
    /// run for run.
    pub wall_clock_epoch: Option<std::time::SystemTime>,
    /// Log the `listening` line (bound addresses) before anything else of this node: the
    /// daemon's first line, which scripts wait for.
    pub announce: bool,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            seed: os_seed(),
            admin: true,
            fd_sampler: true,
            heap_trim: false,
            local_delivery: false,
            log_events: true,
            log_policy: None,
            wall_clock_epoch: None,
            announce: false,
        }
    }
}

/// Handle to a running node. Dropping it (and every `NodeControl`) drains the node.
pub struct Node {
    ctl: NodeControl,
    admin_addr: Option<SocketAddr>,
    bus: broadcast::Sender<BusEvent>,
    metrics: Metrics,
    prometheus: PrometheusHandle,
    ready: Arc<Snapshot<ReadySnapshot>>,
    done: JoinHandle<ShutdownReport>,
}

impl Node {
    /// Binds `overlay.listen` and `overlay.tls_listen` (those set, and `admin.listen`),
    /// then runs the node until drained. `cfg` is validated again here and the TLS files
    /// are read: a node never runs on an unchecked config or an unusable key.
    pub async fn start<N: Net>(net: N, mut cfg: Config, opts: NodeOptions) -> anyhow::Result<Node> {
        cfg.validate()?;
        let tls = TlsContext::load(&cfg)?;
        let rec = Recorder::new()?;
        let bind = |key: &'static str, addr: String| {
            let net = net.clone();
            async move {
                if addr.is_empty() {
                    return anyhow::Ok(None);
                }
                let l = net
                    .bind(&addr)
                    .await
                    .with_context(|| format!("binding {key} {addr}"))?;
                Ok(Some(l))
            }
        };
        let listener = bind("overlay.listen", cfg.overlay.listen.clone()).await?;
        let tls_listener = bind("overlay.tls_listen", cfg.overlay.tls_listen.clone()).await?;
        let plain_addr = listener.as_ref().map(Listener::local_addr).transpose()?;
        let tls_addr = tls_listener
            .as_ref()
            .map(Listener::local_addr)
            .transpose()?;
        // Validation requires one of the two.
        let overlay_addr = plain_addr.or(tls_addr).context("no OAP/1 listener")?;
        crate::config::fill_node_id(&mut cfg, overlay_addr);
        let admin_listener = if opts.admin {
            Some(
                net.bind(&cfg.admin.listen)
                    .await
                    .with_context(|| format!("binding admin.listen {}", cfg.admin.listen))?,
            )
        } else {
            None
        };
        let admin_addr = admin_listener
            .as_ref()
            .map(Listener::local_addr)
            .transpose()?;

        let start = Instant::now();
        let mut overlay = Overlay::new(cfg.clone(), rec.metrics.clone(), opts.seed, Time::ZERO);
        let (verifier, credential) = crate::token::auth_for(&cfg)?;
        overlay.set_auth(verifier, credential);
        overlay.set_local_delivery(opts.local_delivery);
        let fds = opts
            .fd_sampler
            .then(|| Arc::new(FdBudget::new(cfg.readiness.fd_reserve)));
        let fd_ok = fds.as_ref().map_or(true, |f| f.headroom());
        // All start-up facts at once, so readiness moves once: no intermediate states
        // (bound but no config...) that nobody could observe reach the log.
        overlay.set_probes(
            Time::ZERO,
            &[
                (Probe::CfgLoaded, true),
                (Probe::ListenersBound, true),
                // Bound above; without an admin plane the embedder reads the recorder
                // directly, so the metrics are as available as they will ever be.
                (Probe::MetricsBound, true),
                (Probe::FdHeadroom, fd_ok),
                // Ignored unless pq_mode = "hybrid": the TLS listener is bound with the
                // hybrid group and its certificate loaded.
                (Probe::PqReady, tls_addr.is_some() && tls.hybrid_ready()),
            ],
        );
        let node_id = overlay.node_id().to_string();
        let startup: Vec<_> = std::iter::from_fn(|| overlay.poll_event()).collect();

        let b = Bounds::from_config(&cfg);
        let (cmd_tx, cmd_rx) = mpsc::channel(bounds::COMMAND_CHANNEL);
        let (bus, _) = broadcast::channel(b.bus_capacity);
        // Published whole by the driver, read whole by the admin plane (core's loom-checked
        // snapshot: a reader never sees half of one version and half of another).
        let ready_tx = Arc::new(Snapshot::new(ReadySnapshot {
            status: 503,
            body: String::new(),
            retry_after: cfg.readiness.retry_after,
            view: None,
        }));
        let ready_rx = ready_tx.clone();
        let heartbeat = Arc::new(Heartbeat::new());
        let clock = match opts.wall_clock_epoch {
            Some(epoch) => WallClock::Tokio { epoch, start },
            None => WallClock::System,
        };
        let corr = Arc::new(CorrIds::with_clock(opts.seed.rotate_left(29), clock));
        let policy = opts
            .log_policy
            .clone()
            .unwrap_or_else(|| LogPolicy::new(&cfg.log));

        if opts.announce {
            // Before the driver runs: its start-up events (readiness) must not come first.
            announce(&node_id, plain_addr, tls_addr, admin_addr);
        }
        if plain_addr.is_some() && cfg.auth.required {
            tracing::warn!(
                event = "plain_auth",
                reason = "cleartext",
                "auth.required on the plain listener (overlay.listen): capability tokens \
                 travel in clear; use overlay.tls_listen and set overlay.listen = \"\""
            );
        }
        let mut driver = Driver::new(Parts {
            net,
            overlay,
            cfg: cfg.clone(),
            start,
            cmd_rx,
            bus: bus.clone(),
            ready: ready_tx,
            heartbeat: heartbeat.clone(),
            corr: corr.clone(),
            startup,
            tls: tls.clone(),
        });
        if let Some(l) = listener {
            driver.spawn_acceptor(l, fds.clone(), None);
        }
        if let Some(l) = tls_listener {
            driver.spawn_acceptor(l, fds.clone(), Some(tls.clone()));
        }
        if let Some(mut l) = admin_listener {
            let app = admin::router(AdminState {
                scrapes: Arc::new(Scrapes::new(rec.handle.clone())),
                http: rec.http.clone(),
                ready: ready_rx.clone(),
                heartbeat,
                corr,
                version: Arc::new(VersionInfo::current()),
            });
            let (limits, http) = (b.admin.clone(), rec.http.clone());
            driver.spawn_singleton("admin", Some(Probe::MetricsBound), |mut sup| async move {
                while sup
                    .run(admin::serve(&mut l, app.clone(), &limits, &http))
                    .await
                {}
            });
        }
        let prom = rec.handle.clone();
        driver.spawn_singleton("upkeep", None, |mut sup| async move {
            while sup.run(upkeep(&prom)).await {}
        });
        if let Some(fds) = fds {
            let ctl = driver.control();
            driver.spawn_singleton(
                "fd_sampler",
                Some(Probe::FdHeadroom),
                |mut sup| async move { while sup.run(fd_sampler(&ctl, &fds)).await {} },
            );
        }
        if opts.heap_trim {
            let metrics = rec.metrics.clone();
            driver.spawn_singleton("heap_trimmer", None, |mut sup| async move {
                while sup.run(heap_trimmer(&metrics)).await {}
            });
        }
        if opts.log_events {
            let (bus, lagged) = (bus.clone(), rec.metrics.bus_lagged.clone());
            driver.spawn_singleton("logger", None, |mut sup| async move {
                // A restarted logger subscribes anew: what it missed meanwhile is lost, and
                // not counted as lag (nobody was subscribed).
                while sup
                    .run(crate::telemetry::eventlog::run(
                        Subscription::new(bus.subscribe(), lagged.clone()),
                        policy.clone(),
                    ))
                    .await
                {}
            });
        }
        driver.sync_peers();
        let done = tokio::spawn(driver.run());
        Ok(Node {
            ctl: NodeControl {
                overlay_addr,
                tls_addr,
                tls,
                node_id,
                cmd: cmd_tx,
            },
            admin_addr,
            bus,
            metrics: rec.metrics,
            prometheus: rec.handle,
            ready: ready_rx,
            done,
        })
    }
}

/// The `listening` line: where the node listens, logged whatever `log.level` says.
fn announce(
    node: &str,
    overlay_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
) {
    tracing::info!(
        target: crate::telemetry::logging::ANNOUNCE,
        event = "listening",
        node,
        overlay_addr = overlay_addr.map(|a| a.to_string()).as_deref(),
        tls_addr = tls_addr.map(|a| a.to_string()).as_deref(),
        admin_addr = admin_addr.map(|a| a.to_string()).as_deref(),
        version = env!("CARGO_PKG_VERSION"),
        git = env!("OVERLAY_BUILD_GIT"),
        "svc-overlay listening"
    );
}
