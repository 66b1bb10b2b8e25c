//! The driver: the one task that owns a node's `Overlay`. It feeds the node bytes, time
//! and signals, drains its outputs after every input, and moves transmits to the writer
//! tasks. Nothing else touches the `Overlay`, so it needs no lock.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use overlay_core::oap::{MsgId, HEADER_LEN};
use overlay_core::observe::{AcceptPause, Metrics};
use overlay_core::sync::{QueueAccount, Snapshot};
use overlay_core::{
    Balance, Config, ConnId, Event, Overlay, Probe, PublishError, ReadyView, RejectReason, Stats,
    Time, Transmit,
};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{field, Span};

use crate::bounds::{self, Bounds};
use crate::telemetry::bus::{BusEvent, BusKind, ConnCtx};
use crate::io::conn::{self, Ingress, WriterReport};
use crate::admin::corr::CorrIds;
use crate::io::credit::CreditPool;
use crate::io::fd::FdBudget;
use crate::io::net::{Listener, Net};
use crate::driver::supervise::Supervisor;
use crate::telemetry::throttle::{LogThrottle, ACCEPT_ERROR_LOG_EVERY};

pub(crate) mod supervise;

/// Liveness: the driver stamps this every loop turn; `/healthz` reads its age.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: AtomicU64,
}

/// How long the end of a shutdown waits for bus subscribers to catch up.
const LOGGER_GRACE: Duration = Duration::from_millis(200);

/// `last_ms` before the first beat: not alive until the driver has run once.
const NEVER: u64 = u64::MAX;

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(NEVER),
        }
    }
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    pub fn age(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last == NEVER {
            return Duration::MAX;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(last))
    }
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat::new()
    }
}

/// `/readyz` as the driver last computed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadySnapshot {
    pub status: u16,
    pub body: String,
    /// Seconds, for the `Retry-After` header of a 503.
    pub retry_after: u64,
    pub view: Option<ReadyView>,
}

/// Sockets, dial outcomes, panics and probe samples, from the runtime's own tasks.
pub(crate) enum Control<S> {
    Accepted {
        stream: S,
        peer: SocketAddr,
    },
    Connected {
        stream: S,
        addr: String,
    },
    DialFailed {
        addr: String,
        error: String,
        failures: u32,
    },
    Probe(Probe, bool),
    Panicked {
        task: &'static str,
        reason: String,
        after: AfterPanic,
    },
}

/// What becomes of a task that panicked. Only the first three count in
/// `service_restarts_total`: something takes its place.
#[derive(Clone, Debug)]
pub(crate) enum AfterPanic {
    /// A connection's reader or writer: the connection is closed; new ones are served.
    Close(ConnId),
    /// A dialer: restarted if its peer is still configured.
    Redial(String),
    /// A singleton task restarted by its `Supervisor`; the probe it upholds reads false
    /// until it runs again.
    Restart(Option<Probe>),
    /// Nothing restarts it (a supervisor itself failed): logged, never counted as
    /// restarted.
    Lost,
}

/// Counts of the node as it stands, for embedders and tests.
#[derive(Clone, Debug)]
pub struct NodeStats {
    pub established: usize,
    pub peers: usize,
    pub sessions: usize,
    pub connections: usize,
    pub stats: Stats,
    /// The core's balance of counts (stats plus frames held in partial streams), taken at
    /// the same instant as the rest, so a caller can check the law without a race.
    pub balance: Balance,
    pub draining: bool,
}

/// Requests from the `Node` handle.
pub(crate) enum Command {
    Publish {
        topic: String,
        data: bytes::Bytes,
        ttl: Option<u8>,
        reply: oneshot::Sender<Result<MsgId, PublishError>>,
    },
    Reconfigure {
        cfg: Box<Config>,
        reply: oneshot::Sender<Vec<&'static str>>,
    },
    Drain,
    Stats(oneshot::Sender<NodeStats>),
    /// A fact the embedder observes (the daemon: whether the last reload succeeded).
    Probe(Probe, bool),
}

/// How the node ended.
#[derive(Clone, Debug)]
pub struct ShutdownReport {
    /// Every queue drained before the deadline.
    pub drained: bool,
    /// Connections still open when the flush period ended (then dropped).
    pub left_open: usize,
    pub stats: Stats,
    pub drain_time: Duration,
    /// Gossip frames still queued when the drain ended (cleared by `shutdown`, counted in
    /// `overlay_queue_dropped_total{queue="egress",reason="timeout"}`) plus frames handed to
    /// writers of connections left open, which never reached the wire: together with
    /// `stats.dropped`, what an acked message that was not delivered is counted under.
    pub egress_dropped: u64,
}

struct Conn {
    ctx: Arc<ConnCtx>,
    writer: mpsc::Sender<Transmit>,
    /// Transmits the writer's queue had no room for, in order. Bounded by the node's
    /// egress permits, since each holds one until written.
    pending: VecDeque<Transmit>,
    reader: AbortHandle,
    writer_task: AbortHandle,
    dial: Option<String>,
    /// Bytes of a frame not yet complete.
    buf: BytesMut,
    established: bool,
    span: Span,
    handshake: Option<Span>,
}

struct Dial {
    task: AbortHandle,
    ended: mpsc::Sender<bool>,
}

pub(crate) struct Parts<N: Net> {
    pub net: N,
    pub overlay: Overlay,
    pub cfg: Config,
    pub start: Instant,
    pub seed: u64,
    pub cmd_rx: mpsc::Receiver<Command>,
    pub bus: broadcast::Sender<BusEvent>,
    pub ready: Arc<Snapshot<ReadySnapshot>>,
    pub heartbeat: Arc<Heartbeat>,
    pub corr: Arc<CorrIds>,
    /// Events the node emitted before the driver ran (start-up readiness).
    pub startup: Vec<Event>,
}

pub(crate) struct Driver<N: Net> {
    net: N,
    overlay: Overlay,
    cfg: Config,
    bounds: Bounds,
    node: Arc<str>,
    start: Instant,
    rng: ChaCha8Rng,
    // Ordered maps: the driver aborts and closes by iterating these, and a hash order
    // (random per process) would make simulated runs unrepeatable.
    conns: BTreeMap<ConnId, Conn>,
    dials: BTreeMap<String, Dial>,
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
    drain: Option<(Instant, Instant)>,
    startup: Vec<Event>,
}

impl<N: Net> Driver<N> {
    pub(crate) fn new(p: Parts<N>) -> Driver<N> {
        use rand::SeedableRng;
        let bounds = Bounds::from_config(&p.cfg);
        let ingress_channel = bounds.ingress_channel;
        let (ingress_tx, ingress_rx) = mpsc::channel(bounds.ingress_channel);
        let (ctl_tx, ctl_rx) = mpsc::channel(bounds::CONTROL_CHANNEL);
        let (report_tx, report_rx) = mpsc::channel(bounds::CONTROL_CHANNEL);
        Driver {
            node: Arc::from(p.overlay.node_id()),
            net: p.net,
            overlay: p.overlay,
            cfg: p.cfg,
            bounds,
            start: p.start,
            rng: ChaCha8Rng::seed_from_u64(p.seed ^ 0x5EED_D1A1),
            conns: BTreeMap::new(),
            dials: BTreeMap::new(),
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
            drain: None,
            startup: p.startup,
        }
    }

    pub(crate) fn control(&self) -> mpsc::Sender<Control<N::Stream>> {
        self.ctl_tx.clone()
    }

    fn now(&self) -> Time {
        Time::from_duration(Instant::now().saturating_duration_since(self.start))
    }

    fn instant(&self, t: Time) -> Instant {
        self.start + t.since_epoch()
    }

    /// Runs `fut` as a supervised task: a panic is caught, reported as `Control::Panicked`
    /// and counted, and the node goes on.
    pub(crate) fn spawn_supervised<F>(
        &mut self,
        after: AfterPanic,
        task: &'static str,
        fut: F,
    ) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let ctl = self.ctl_tx.clone();
        self.tasks.spawn(async move {
            if let Err(p) = AssertUnwindSafe(fut).catch_unwind().await {
                let reason = panic_message(&p);
                let _ = ctl
                    .send(Control::Panicked {
                        task,
                        reason,
                        after,
                    })
                    .await;
            }
        })
    }

    /// The acceptor, restarted on a panic with the same listener. With `fds`, it takes
    /// connections only while descriptor headroom stays above `readiness.fd_reserve`.
    pub(crate) fn spawn_acceptor(&mut self, mut listener: N::Listener, fds: Option<Arc<FdBudget>>) {
        let ctl = self.ctl_tx.clone();
        let metrics = self.overlay.metrics().clone();
        self.spawn_singleton(
            "acceptor",
            Some(Probe::ListenersBound),
            move |mut sup| async move {
                while sup
                    .run(accept_loop(&mut listener, &ctl, fds.as_deref(), &metrics))
                    .await
                {}
            },
        );
    }

    /// Runs a singleton task under its `Supervisor` (which restarts it); `body` takes the
    /// supervisor and loops `while sup.run(..).await {}` around the task's resources.
    pub(crate) fn spawn_singleton<B, F>(
        &mut self,
        task: &'static str,
        probe: Option<Probe>,
        body: B,
    ) where
        B: FnOnce(Supervisor<N::Stream>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let fut = body(Supervisor::new(task, self.ctl_tx.clone(), probe));
        self.spawn_supervised(AfterPanic::Lost, task, fut);
    }

    pub(crate) fn spawn_dialers(&mut self) {
        for addr in self.cfg.overlay.peers.clone() {
            self.spawn_dialer(addr);
        }
    }

    fn spawn_dialer(&mut self, addr: String) {
        if self.dials.contains_key(&addr) || self.drain.is_some() {
            return;
        }
        let (ended_tx, ended_rx) = mpsc::channel(1);
        let fut = crate::io::dial::dial_loop(
            self.net.clone(),
            addr.clone(),
            self.ctl_tx.clone(),
            ended_rx,
            self.rng.next_u64(),
            self.bounds.clone(),
        );
        let task = self.spawn_supervised(AfterPanic::Redial(addr.clone()), "dialer", fut);
        self.dials.insert(
            addr,
            Dial {
                task,
                ended: ended_tx,
            },
        );
    }

    /// The loop: one input, then every output, until the drain ends.
    pub(crate) async fn run(mut self) -> ShutdownReport {
        for ev in std::mem::take(&mut self.startup) {
            self.on_event(ev);
        }
        self.publish_ready();
        loop {
            self.heartbeat.beat();
            let now = self.now();
            if let Some(t) = self.overlay.poll_timeout() {
                if t <= now {
                    self.overlay.handle_timeout(now);
                    self.drain_outputs(now);
                    // Timers move readiness (sustained windows, recovery); an idle node
                    // would otherwise serve the old /readyz until its next input.
                    self.publish_ready();
                }
            }
            if let Some((deadline, _)) = self.drain {
                if self.overlay.is_drained() || Instant::now() >= deadline {
                    break;
                }
            }
            let wake = self
                .overlay
                .poll_timeout()
                .map(|t| self.instant(t))
                .unwrap_or_else(|| Instant::now() + overlay_core::TICK);
            let wake = match self.drain {
                Some((deadline, _)) => wake.min(deadline),
                None => wake,
            };
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

    // ----- inputs --------------------------------------------------------------------

    fn on_report(&mut self, r: WriterReport) {
        let now = self.now();
        match r {
            WriterReport::Written { conn, n } => {
                self.overlay.handle_written(now, conn, n);
                self.flush_pending(conn);
            }
            WriterReport::Done { conn, error } => {
                if let (Some(e), Some(c)) = (error, self.conns.get(&conn)) {
                    c.span.in_scope(
                        || tracing::debug!(event = "write_error", error = %e, "write failed"),
                    );
                }
                self.to_close.push(conn);
            }
        }
    }

    fn on_control(&mut self, c: Control<N::Stream>) {
        let now = self.now();
        match c {
            Control::Accepted { stream, peer } => {
                let ctx = self.new_ctx(peer.to_string(), true);
                let span = self.session_span(&ctx);
                let accept = tracing::info_span!(parent: &span, "svc.overlay.accept",
                    corr_id = %ctx.corr_id, dir = "in");
                let conn = accept.in_scope(|| self.overlay.handle_accept(now));
                self.attach(conn, stream, ctx, span, None);
                self.publish(Some(conn), BusKind::Accepted);
            }
            Control::Connected { stream, addr } => {
                if self.drain.is_some() {
                    return;
                }
                let ctx = self.new_ctx(addr.clone(), false);
                let span = self.session_span(&ctx);
                let conn = span.in_scope(|| self.overlay.handle_connected(now));
                self.attach(conn, stream, ctx, span, Some(addr));
                self.publish(Some(conn), BusKind::Connected);
            }
            Control::DialFailed {
                addr,
                error,
                failures,
            } => {
                self.overlay.metrics().dial_failures.increment(1);
                self.publish(
                    None,
                    BusKind::DialFailed {
                        addr,
                        error,
                        failures,
                    },
                );
            }
            Control::Probe(p, ok) => self.overlay.set_probe(now, p, ok),
            Control::Panicked {
                task,
                reason,
                after,
            } => self.on_panic(task, reason, after),
        }
    }

    fn on_panic(&mut self, task: &'static str, reason: String, after: AfterPanic) {
        let now = self.now();
        let restarted = match after {
            AfterPanic::Close(c) => {
                self.to_close.push(c);
                true
            }
            AfterPanic::Redial(addr) => {
                self.dials.remove(&addr);
                // A dialer of a peer no longer configured is not restarted, so not counted.
                let again = self.cfg.overlay.peers.contains(&addr);
                if again {
                    self.spawn_dialer(addr);
                }
                again
            }
            AfterPanic::Restart(probe) => {
                if let Some(p) = probe {
                    // Down until the supervisor reports it running again.
                    self.overlay.set_probe(now, p, false);
                }
                true
            }
            AfterPanic::Lost => false,
        };
        if restarted {
            self.overlay.metrics().service_restarts.increment(1);
        }
        tracing::error!(
            event = "task_panic",
            reason = if restarted { "panic" } else { "lost" },
            task,
            detail = %reason,
            node = %self.node,
            "a runtime task panicked; contained"
        );
    }

    fn on_ingress(&mut self, i: Ingress) {
        self.ingress_q.take();
        let now = self.now();
        match i {
            Ingress::Data {
                conn,
                chunk,
                credit,
            } => {
                self.overlay.set_ingress_depth(self.ingress_q.depth());
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let n = chunk.len();
                c.buf.unsplit(chunk);
                let span = tracing::debug_span!(parent: &c.span, "svc.overlay.gossip.ingress",
                    corr_id = %c.ctx.corr_id, dir = "rx", frame_bytes = n, fanout = field::Empty);
                let _g = span.enter();
                if tracing::enabled!(tracing::Level::DEBUG) {
                    log_frames_rx(&c.buf);
                }
                self.overlay.handle_bytes(now, conn, &mut c.buf);
                if c.buf.is_empty() {
                    // Let go of the reader's allocation; payload slices keep what they need.
                    c.buf = BytesMut::new();
                }
                drop(credit);
                let fanout = self.drain_outputs(now);
                span.record("fanout", fanout);
            }
            Ingress::Eof { conn, error } => {
                if let (Some(e), Some(c)) = (error, self.conns.get(&conn)) {
                    c.span.in_scope(
                        || tracing::debug!(event = "read_error", error = %e, "read failed"),
                    );
                }
                self.to_close.push(conn);
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Publish {
                topic,
                data,
                ttl,
                reply,
            } => {
                let r = self.overlay.publish(now, &topic, data, ttl);
                let _ = reply.send(r);
            }
            Command::Reconfigure { cfg, reply } => {
                let restart = self.overlay.reconfigure(now, *cfg);
                let old_peers = std::mem::take(&mut self.cfg.overlay.peers);
                self.cfg = self.overlay.config().clone();
                self.bounds = Bounds::from_config(&self.cfg);
                for gone in old_peers
                    .iter()
                    .filter(|p| !self.cfg.overlay.peers.contains(p))
                {
                    if let Some(d) = self.dials.remove(gone) {
                        d.task.abort();
                    }
                }
                self.spawn_dialers();
                let _ = reply.send(restart);
            }
            Command::Drain => self.begin_drain(),
            Command::Probe(p, ok) => self.overlay.set_probe(now, p, ok),
            Command::Stats(reply) => {
                let _ = reply.send(NodeStats {
                    established: self.overlay.established(),
                    peers: self.overlay.peer_count(),
                    sessions: self.overlay.session_count(),
                    connections: self.conns.len(),
                    stats: self.overlay.stats().clone(),
                    balance: self.overlay.balance(),
                    draining: self.overlay.is_draining(),
                });
            }
        }
    }

    fn begin_drain(&mut self) {
        if self.drain.is_some() {
            return;
        }
        let now = self.now();
        let started = Instant::now();
        let deadline = started + self.cfg.shutdown.drain_deadline;
        self.drain = Some((deadline, started));
        // Readiness flips first (core), then peers hear GOAWAY; no new dials.
        self.overlay.begin_drain(now);
        for d in std::mem::take(&mut self.dials).into_values() {
            d.task.abort();
        }
        self.publish_ready();
        tracing::info!(
            event = "shutdown_begin",
            node = %self.node,
            sessions = self.overlay.established(),
            drain_deadline_ms = self.cfg.shutdown.drain_deadline.as_millis() as u64,
            "draining"
        );
        self.drain_outputs(now);
    }

    // ----- connections ---------------------------------------------------------------

    fn new_ctx(&self, peer_addr: String, inbound: bool) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            conn: ConnId(0),
            corr_id: self.corr.next_id(),
            peer_addr,
            inbound,
            opened: Instant::now(),
        })
    }

    fn session_span(&self, ctx: &ConnCtx) -> Span {
        tracing::info_span!(parent: None, "svc.overlay.session",
            corr_id = %ctx.corr_id,
            dir = ctx.dir(),
            pq_mode = self.cfg.overlay.pq_mode.mode().as_str(),
            peer_id = field::Empty)
    }

    fn attach(
        &mut self,
        conn: ConnId,
        stream: N::Stream,
        ctx: Arc<ConnCtx>,
        span: Span,
        dial: Option<String>,
    ) {
        let ctx = Arc::new(ConnCtx {
            conn,
            ..(*ctx).clone()
        });
        let handshake = tracing::info_span!(parent: &span, "svc.overlay.handshake",
            corr_id = %ctx.corr_id, dir = ctx.dir(),
            pq_mode = self.cfg.overlay.pq_mode.mode().as_str(), peer_id = field::Empty);
        let (rd, wr) = tokio::io::split(stream);
        let (wtx, wrx) = mpsc::channel(self.bounds.writer_queue);
        let credit = CreditPool::new(self.bounds.read_credit);
        let reader = self.spawn_supervised(
            AfterPanic::Close(conn),
            "reader",
            conn::reader(
                conn,
                rd,
                self.ingress_tx.clone(),
                self.ingress_q.clone(),
                credit,
                self.bounds.read_chunk,
            ),
        );
        let writer_task = self.spawn_supervised(
            AfterPanic::Close(conn),
            "writer",
            conn::writer(conn, wr, wrx, self.report_tx.clone()),
        );
        self.conns.insert(
            conn,
            Conn {
                ctx,
                writer: wtx,
                pending: VecDeque::new(),
                reader,
                writer_task,
                dial,
                buf: BytesMut::new(),
                established: false,
                span,
                handshake: Some(handshake),
            },
        );
    }

    /// Hands queued transmits to the writer while its queue has room.
    fn flush_pending(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        while let Some(t) = c.pending.pop_front() {
            match c.writer.try_send(t) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(t)) => {
                    c.pending.push_front(t);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.to_close.push(conn);
                    return;
                }
            }
        }
    }

    fn route(&mut self, t: Transmit) {
        let conn = t.conn;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if tracing::enabled!(tracing::Level::DEBUG) && !t.is_empty() {
            let span = tracing::debug_span!(parent: &c.span, "svc.overlay.gossip.egress",
                corr_id = %c.ctx.corr_id, dir = "tx", frame_bytes = t.len());
            span.in_scope(|| {
                tracing::debug!(event = "oap_frame_tx", dir = "tx", bytes = t.len() as u64)
            });
        }
        c.pending.push_back(t);
        self.flush_pending(conn);
    }

    /// Drops the connection's tasks (and with them the socket) and tells the node.
    fn finish_close(&mut self, now: Time, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        c.reader.abort();
        c.writer_task.abort();
        if self.overlay.session(conn).is_some() {
            // The Closed event that follows removes the entry, after it is logged.
            self.overlay.handle_closed(now, conn);
        } else {
            self.forget(conn);
        }
    }

    fn forget(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(addr) = &c.dial {
            if let Some(d) = self.dials.get(addr) {
                let _ = d.ended.try_send(c.established);
            }
        }
    }

    // ----- outputs -------------------------------------------------------------------

    /// Drains every output of the node; returns how many connections got transmits.
    fn drain_outputs(&mut self, now: Time) -> usize {
        let mut touched: Vec<ConnId> = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(t) = self.overlay.poll_transmit(now) {
                if !touched.contains(&t.conn) {
                    touched.push(t.conn);
                }
                self.route(t);
                progressed = true;
            }
            while let Some(ev) = self.overlay.poll_event() {
                self.on_event(ev);
                progressed = true;
            }
            for conn in std::mem::take(&mut self.to_close) {
                self.finish_close(now, conn);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        touched.len()
    }

    fn on_event(&mut self, ev: Event) {
        let conn = event_conn(&ev);
        match &ev {
            Event::HandshakeOk { conn, node, .. } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.established = true;
                    c.span.record("peer_id", node.as_str());
                    if let Some(h) = c.handshake.take() {
                        h.record("peer_id", node.as_str());
                    }
                }
            }
            Event::HandshakeFailed { conn, .. } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.handshake = None;
                }
            }
            Event::Abort { conn } => self.to_close.push(*conn),
            _ => {}
        }
        let closed = matches!(ev, Event::Closed { .. });
        self.publish(conn, BusKind::Overlay(ev));
        if closed {
            if let Some(c) = conn {
                self.forget(c);
            }
        }
    }

    fn publish(&self, conn: Option<ConnId>, kind: BusKind) {
        let ctx = conn.and_then(|c| self.conns.get(&c)).map(|c| c.ctx.clone());
        // No subscriber is not an error: the event is simply not wanted.
        let _ = self.bus.send(BusEvent {
            node: self.node.clone(),
            ctx,
            kind,
        });
    }

    fn publish_ready(&mut self) {
        let view = self.overlay.readiness();
        let retry = self.cfg.readiness.retry_after;
        if self.last_ready.as_ref() == Some(&(view.clone(), retry)) {
            return;
        }
        let (status, body) = view.http(retry);
        self.ready.store(ReadySnapshot {
            status,
            body,
            retry_after: retry,
            view: Some(view.clone()),
        });
        self.last_ready = Some((view, retry));
    }

    // ----- the end -------------------------------------------------------------------

    async fn finish(mut self) -> ShutdownReport {
        let started = self.drain.map(|d| d.1).unwrap_or_else(Instant::now);
        let drained = self.overlay.is_drained();
        let egress_dropped = |o: &Overlay| o.stats().egress_dropped.iter().sum::<u64>();
        let before = egress_dropped(&self.overlay);
        let now = self.now();
        self.overlay.shutdown(now);
        // What shutdown cleared from the queues, exactly as the core counted it.
        let queued = egress_dropped(&self.overlay) - before;
        self.drain_outputs(now);
        self.publish_ready();
        // Let the closes flush, within a bound: a peer that stopped reading cannot hold
        // the exit hostage.
        let flush_deadline = Instant::now() + self.bounds.flush_timeout;
        while !self.conns.is_empty() {
            self.heartbeat.beat();
            tokio::select! {
                biased;
                Some(r) = self.report_rx.recv() => self.on_report(r),
                Some(i) = self.ingress_rx.recv() => {
                    self.ingress_q.take();
                    // Closing sessions read nothing; only EOFs matter now.
                    if let Ingress::Eof { conn, .. } = i {
                        self.to_close.push(conn);
                    }
                }
                _ = tokio::time::sleep_until(flush_deadline) => break,
            }
            let now = self.now();
            self.drain_outputs(now);
        }
        let left_open = self.conns.len();
        let unwritten: u64 = self
            .conns
            .keys()
            .filter_map(|c| self.overlay.session(*c))
            .map(|s| s.in_flight() as u64)
            .sum();
        // Give the logger a moment to write the last events (closes) before it is
        // aborted with the other tasks; bounded, since a subscriber may never read.
        let logs_by = Instant::now() + LOGGER_GRACE;
        while !self.bus.is_empty() && Instant::now() < logs_by {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.tasks.shutdown().await;
        let report = ShutdownReport {
            drained,
            left_open,
            stats: self.overlay.stats().clone(),
            drain_time: started.elapsed(),
            egress_dropped: queued + unwritten,
        };
        let s = &report.stats;
        tracing::info!(
            event = "shutdown_end",
            node = %self.node,
            drained,
            left_open,
            latency_ms = report.drain_time.as_millis() as u64,
            rx_frames = s.rx_frames,
            published = s.published,
            accepted_messages = s.accepted_messages,
            rx_dropped = s.dropped.iter().sum::<u64>(),
            egress_dropped = report.egress_dropped,
            busy = s.rejected(RejectReason::Busy) + s.refused[RejectReason::Busy.index()],
            "stopped"
        );
        report
    }
}

async fn accept_loop<L: Listener>(
    listener: &mut L,
    ctl: &mpsc::Sender<Control<L::Stream>>,
    fds: Option<&FdBudget>,
    metrics: &Metrics,
) {
    let mut errors = LogThrottle::new(ACCEPT_ERROR_LOG_EVERY);
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
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Some(fds) = fds {
                    fds.took_one();
                }
                // A full control channel slows accepting down: backpressure, not loss.
                if ctl.send(Control::Accepted { stream, peer }).await.is_err() {
                    return;
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

/// Debug-level `oap_frame_rx` lines: the complete frames in `buf`, from their length
/// prefixes alone (the node does the real decoding).
fn log_frames_rx(buf: &[u8]) {
    let mut at = 0usize;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len < HEADER_LEN || buf.len() - at < len {
            return;
        }
        tracing::debug!(event = "oap_frame_rx", dir = "rx", bytes = len as u64);
        at += len;
    }
}

fn event_conn(ev: &Event) -> Option<ConnId> {
    match ev {
        Event::HandshakeStarted { conn, .. }
        | Event::HandshakeOk { conn, .. }
        | Event::HandshakeFailed { conn, .. }
        | Event::Rejected { conn, .. }
        | Event::Closed { conn, .. }
        | Event::Abort { conn }
        | Event::PeerDraining { conn }
        | Event::Ack { conn, .. } => Some(*conn),
        Event::Message { from, .. } => *from,
        Event::ReadinessChanged { .. } => None,
    }
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let s = if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    };
    crate::telemetry::logging::truncate(s)
}
