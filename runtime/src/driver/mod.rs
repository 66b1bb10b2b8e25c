//! The driver: the one task that owns a node's `Overlay`. It feeds the node bytes, time,
//! dial outcomes and signals, drains its outputs after every input, and carries them out:
//! transmits to the writer tasks, dials to connect tasks. Nothing else touches the
//! `Overlay`, so it needs no lock; and it decides nothing the node could (no deadline, no
//! backoff of its own).
//!
//! The loop is here; the rest of `Driver` is split by what it does: `spawn` (the tasks it
//! starts and supervises, the dials it runs), `inputs` (one handler per channel), `conns`
//! (the connection table), `peers` (the configured peers, names resolved, handed to the
//! core), `outputs` (draining the node to writers, connects and the bus), `shutdown` (the
//! drain, the flush, and the log of the node's report).

use std::collections::BTreeMap;
use std::sync::Arc;

use overlay_core::sync::{QueueAccount, Snapshot};
use overlay_core::{Config, ConnId, Event, Overlay, ReadyView, Time};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::admin::corr::CorrIds;
use crate::admin::health::Heartbeat;
use crate::admin::ready::ReadySnapshot;
use crate::bounds::{self, Bounds};
use crate::io::messages::{AfterPanic, Control, Ingress, WriterReport};
use crate::io::net::Net;
use crate::io::resolve::PeerTargets;
use crate::io::slots::HandshakeBound;
use crate::io::tls::TlsContext;
use crate::telemetry::bus::BusEvent;
use conns::Conn;
use supervise::panic_message;

mod command;
mod conns;
mod inputs;
mod outputs;
mod peers;
mod shutdown;
mod spawn;
mod supervise;

pub(crate) use command::Command;
pub use command::NodeStats;
pub use overlay_core::ShutdownReport;

pub(crate) struct Parts<N: Net> {
    pub net: N,
    pub overlay: Overlay,
    pub cfg: Config,
    pub start: Instant,
    pub cmd_rx: mpsc::Receiver<Command>,
    pub bus: broadcast::Sender<BusEvent>,
    pub ready: Arc<Snapshot<ReadySnapshot>>,
    pub heartbeat: Arc<Heartbeat>,
    pub corr: Arc<CorrIds>,
    /// Events the node emitted before the driver ran (start-up readiness).
    pub startup: Vec<Event>,
    /// TLS configs for the TLS listener and `tls://` dials (empty when none is configured).
    pub tls: Arc<TlsContext>,
}

pub(crate) struct Driver<N: Net> {
    net: N,
    overlay: Overlay,
    cfg: Config,
    bounds: Bounds,
    node: Arc<str>,
    start: Instant,
    // Ordered maps: the driver aborts and closes by iterating these, and a hash order
    // (random per process) would make simulated runs unrepeatable.
    conns: BTreeMap<ConnId, Conn>,
    /// Connects in flight, by the configured peer and address the core dialed.
    dials: BTreeMap<(Arc<str>, String), AbortHandle>,
    /// What the configured peer entries stand for now, names resolved.
    targets: PeerTargets,
    /// One resolver task per configured peer name.
    resolvers: BTreeMap<String, AbortHandle>,
    tasks: JoinSet<()>,
    ingress_tx: mpsc::Sender<Ingress>,
    ingress_rx: mpsc::Receiver<Ingress>,
    /// Depth of the reader-to-driver channel (the `ingress` queue), kept by the readers and
    /// the driver together in core's loom-checked account.
    ingress_q: Arc<QueueAccount>,
    ctl_tx: mpsc::Sender<Control<N::Stream>>,
    ctl_rx: mpsc::Receiver<Control<N::Stream>>,
    report_tx: mpsc::Sender<WriterReport>,
    report_rx: mpsc::Receiver<WriterReport>,
    cmd_rx: mpsc::Receiver<Command>,
    cmd_open: bool,
    bus: broadcast::Sender<BusEvent>,
    ready: Arc<Snapshot<ReadySnapshot>>,
    last_ready: Option<(ReadyView, u64)>,
    heartbeat: Arc<Heartbeat>,
    corr: Arc<CorrIds>,
    to_close: Vec<ConnId>,
    /// Read credits of peers held back while the core pauses reads (`read_paused`).
    held_credits: Vec<(ConnId, crate::io::credit::Credit)>,
    startup: Vec<Event>,
    tls: Arc<TlsContext>,
    /// The TLS listener's handshake slots and deadline, resized on a reload.
    handshake_bound: Arc<HandshakeBound>,
}

impl<N: Net> Driver<N> {
    pub(crate) fn new(p: Parts<N>) -> Driver<N> {
        let bounds = Bounds::from_config(&p.cfg);
        let targets = PeerTargets::new(&p.cfg.overlay.peers);
        let ingress_channel = bounds.ingress_channel;
        let (ingress_tx, ingress_rx) = mpsc::channel(bounds.ingress_channel);
        let (ctl_tx, ctl_rx) = mpsc::channel(bounds::CONTROL_CHANNEL);
        let (report_tx, report_rx) = mpsc::channel(bounds::CONTROL_CHANNEL);
        let o = &p.cfg.overlay;
        let handshake_bound = Arc::new(HandshakeBound::new(o.max_conns, o.handshake_timeout));
        Driver {
            node: Arc::from(p.overlay.node_id()),
            net: p.net,
            overlay: p.overlay,
            cfg: p.cfg,
            bounds,
            start: p.start,
            conns: BTreeMap::new(),
            dials: BTreeMap::new(),
            targets,
            resolvers: BTreeMap::new(),
            tasks: JoinSet::new(),
            ingress_tx,
            ingress_rx,
            ingress_q: Arc::new(QueueAccount::new(ingress_channel)),
            ctl_tx,
            ctl_rx,
            report_tx,
            report_rx,
            cmd_rx: p.cmd_rx,
            cmd_open: true,
            bus: p.bus,
            ready: p.ready,
            last_ready: None,
            heartbeat: p.heartbeat,
            corr: p.corr,
            to_close: Vec::new(),
            held_credits: Vec::new(),
            startup: p.startup,
            tls: p.tls,
            handshake_bound,
        }
    }

    pub(crate) fn control(&self) -> mpsc::Sender<Control<N::Stream>> {
        self.ctl_tx.clone()
    }

    fn now(&self) -> Time {
        Time::from_duration(Instant::now().saturating_duration_since(self.start))
    }

    fn time_of(&self, i: Instant) -> Time {
        Time::from_duration(i.saturating_duration_since(self.start))
    }

    fn instant(&self, t: Time) -> Instant {
        self.start + t.since_epoch()
    }

    /// The loop, as `Overlay`'s contract has it: one input, then every output drained
    /// (`drain_outputs`), then sleep until the next input or `poll_timeout`, until the
    /// drain ends. Every deadline (sessions, dials, the drain) is the core's.
    pub(crate) async fn run(mut self) -> ShutdownReport {
        for ev in std::mem::take(&mut self.startup) {
            self.on_event(ev);
        }
        let now = self.now();
        self.drain_outputs(now);
        self.publish_ready();
        loop {
            self.heartbeat.beat();
            let now = self.now();
            if self.overlay.poll_timeout().is_some_and(|t| t <= now) {
                self.overlay.handle_timeout(now);
                self.drain_outputs(now);
                // Timers move readiness (sustained windows, recovery); an idle node
                // would otherwise serve the old /readyz until its next input.
                self.publish_ready();
            }
            if self.overlay.drain_ended() {
                break;
            }
            let wake = self
                .overlay
                .poll_timeout()
                .map(|t| self.instant(t))
                .unwrap_or_else(|| Instant::now() + overlay_core::TICK);
            tokio::select! {
                // Writer reports first: they return egress permits, which unblock output.
                biased;
                Some(r) = self.report_rx.recv() => self.on_report(r),
                Some(c) = self.ctl_rx.recv() => self.on_control(c),
                cmd = self.cmd_rx.recv(), if self.cmd_open => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => {
                        // Every handle is gone: nobody can ask for a drain any more.
                        self.cmd_open = false;
                        self.begin_drain();
                    }
                },
                Some(i) = self.ingress_rx.recv() => self.on_ingress(i),
                Some(res) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = res {
                        if e.is_panic() {
                            let reason = panic_message(&e.into_panic());
                            self.on_panic("task", reason, AfterPanic::Lost);
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = self.now();
            self.drain_outputs(now);
            self.publish_ready();
        }
        self.finish().await
    }
}
