//! Running a scenario: one turmoil host per node (the real runtime, `svc_overlay::Node`,
//! with its own recorder and admin plane on the simulated network), agent hosts that run
//! whatever the script hands them (clients, hostile peers), and the script itself on a
//! control host, asserting through HTTP.
//!
//! Everything shared between hosts lives in one `World` behind an `Rc`: turmoil runs every
//! host on the test's thread, one after another, so nothing here needs a lock.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::turmoil::Sim;
use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use overlay_core::oap::MsgId;
use overlay_core::{Config, Event, PublishError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use svc_overlay::bus::{BusEvent, BusKind};
use svc_overlay::node::NodeControl;
use svc_overlay::{Node, NodeOptions, NodeStats, ShutdownReport};
use tokio::sync::{mpsc, oneshot};

use super::expo::Exposition;
use super::http::{self, Response};
use super::net::{SimNet, TCP_CAPACITY};
use super::trace::Trace;

pub const OVERLAY_PORT: u16 = 9444;
pub const ADMIN_PORT: u16 = 9600;

/// The wall clock the simulation starts at (correlation ids are minted from it).
pub fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// The seed a scenario runs with: `SIM_SEED` if set (decimal or 0x-hex), else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("SIM_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("SIM_SEED={s:?} is not a u64"))
        }
        Err(_) => default,
    }
}

/// A node's config for simulations: listeners on the simulated host, `name` as node id,
/// dialing `peers`, and timings short enough for scenarios of a few simulated seconds.
pub fn node_config(name: &str, peers: &[&str]) -> Config {
    let mut c = Config::default();
    c.overlay.listen = format!("0.0.0.0:{OVERLAY_PORT}");
    c.admin.listen = format!("0.0.0.0:{ADMIN_PORT}");
    c.overlay.node_id = name.to_string();
    c.overlay.peers = peers
        .iter()
        .map(|p| format!("{p}:{OVERLAY_PORT}"))
        .collect();
    c.overlay.handshake_timeout = Duration::from_secs(1);
    c.overlay.keepalive = Duration::from_secs(2);
    c.timeouts.idle = Duration::from_secs(6);
    c.overlay.dial_backoff_base = Duration::from_millis(100);
    c.overlay.dial_backoff_max = Duration::from_secs(1);
    c.readiness.sustain = Duration::from_secs(2);
    c
}

/// `names` as a full mesh: each node dials every node before it, so each pair has one
/// connection.
pub fn mesh(names: &[&str], tweak: impl Fn(&str, &mut Config)) -> Vec<(String, Config)> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut c = node_config(n, &names[..i]);
            tweak(n, &mut c);
            (n.to_string(), c)
        })
        .collect()
}

/// What to simulate.
pub struct Setup {
    pub name: &'static str,
    pub seed: u64,
    pub nodes: Vec<(String, Config)>,
    /// Hosts that run the script's jobs (clients, attackers).
    pub agents: Vec<String>,
    /// Simulated time after which the run fails.
    pub limit: Duration,
    pub tick: Duration,
    /// Per-message link latency range.
    pub latency: (Duration, Duration),
}

impl Setup {
    pub fn new(name: &'static str, seed: u64, nodes: Vec<(String, Config)>) -> Setup {
        Setup {
            name,
            seed,
            nodes,
            agents: Vec::new(),
            limit: Duration::from_secs(60),
            tick: Duration::from_millis(1),
            latency: (Duration::from_millis(1), Duration::from_millis(4)),
        }
    }
}

/// A bus event as recorded (messages are kept in `delivered` instead).
#[derive(Clone, Debug)]
pub struct Rec {
    pub at: Duration,
    pub incarnation: u32,
    pub event: BusEvent,
}

#[derive(Default)]
struct NodeSlot {
    cfg: Config,
    incarnation: u32,
    ctl: Option<NodeControl>,
    /// Message id -> the incarnation that delivered it first, and when.
    delivered: BTreeMap<MsgId, (u32, Duration)>,
    events: Vec<Rec>,
    reports: Vec<ShutdownReport>,
}

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>>>;
type Action = Box<dyn FnOnce(&mut Sim<'static>)>;

struct World {
    seed: u64,
    net: SimNet,
    nodes: RefCell<BTreeMap<String, NodeSlot>>,
    trace: RefCell<Trace>,
    actions: RefCell<Vec<Action>>,
    actions_queued: Cell<u64>,
    actions_done: Cell<u64>,
    agents: RefCell<BTreeMap<String, mpsc::UnboundedSender<Job>>>,
    tick: Duration,
    /// Every host, nodes first, then agents, then `ctl`.
    hosts: Vec<String>,
    /// The default latency range, and links set to a fixed latency.
    latency: (Duration, Duration),
    fixed: RefCell<BTreeMap<(String, String), Duration>>,
}

impl World {
    fn now() -> Duration {
        ::turmoil::sim_elapsed().unwrap_or_default()
    }

    fn record(&self, line: String) {
        let t = World::now();
        self.trace
            .borrow_mut()
            .record(format!("{:>10} {line}", t.as_micros()));
    }

    fn slot<T>(&self, name: &str, f: impl FnOnce(&mut NodeSlot) -> T) -> anyhow::Result<T> {
        let mut nodes = self.nodes.borrow_mut();
        let slot = nodes
            .get_mut(name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        Ok(f(slot))
    }

    fn on_event(&self, name: &str, inc: u32, ev: &BusEvent) {
        self.record(format!("{name}#{inc} {}", describe(ev)));
        let mut nodes = self.nodes.borrow_mut();
        let Some(slot) = nodes.get_mut(name) else {
            return;
        };
        if let BusKind::Overlay(Event::Message { message, .. }) = &ev.kind {
            slot.delivered
                .entry(message.header.msg_id)
                .or_insert((inc, World::now()));
        } else {
            slot.events.push(Rec {
                at: World::now(),
                incarnation: inc,
                event: ev.clone(),
            });
        }
    }
}

/// A link's key: its two hosts in order.
fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl World {
    fn apply_latency(&self, sim: &mut Sim<'static>, a: &str, b: &str) {
        match self.fixed.borrow().get(&link(a, b)) {
            Some(v) => sim.set_link_latency(a, b, *v),
            None => {
                sim.set_link_latency(a, b, self.latency.0);
                sim.set_link_max_message_latency(a, b, self.latency.1);
            }
        }
    }

    /// Runs `f` (which drops the host's runtime) with the host's links at one fixed
    /// latency. Dropping a runtime drops its tasks in an order that follows tokio's
    /// process-wide task ids, so the sockets send their FINs in an order that differs
    /// between two runs in one process; turmoil draws each FIN's latency from the seeded
    /// RNG in send order. With one latency on every link of the host the draws still
    /// happen (same number, same RNG state after) but no longer decide anything.
    fn while_closing(&self, sim: &mut Sim<'static>, host: &str, f: impl FnOnce(&mut Sim<'static>)) {
        let others: Vec<&String> = self.hosts.iter().filter(|h| *h != host).collect();
        for o in &others {
            sim.set_link_latency(host, o.as_str(), self.latency.0);
        }
        f(sim);
        for o in &others {
            self.apply_latency(sim, host, o);
        }
    }
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// One trace line per bus event: stable text, payloads summarised.
fn describe(ev: &BusEvent) -> String {
    let ctx = ev
        .ctx
        .as_ref()
        .map(|c| {
            format!(
                "conn={} corr={} peer={} {} ",
                c.conn.0,
                c.corr_id,
                c.peer_addr,
                c.dir()
            )
        })
        .unwrap_or_default();
    let what = match &ev.kind {
        BusKind::Overlay(Event::Message { from, message }) => format!(
            "message from={:?} id={} topic={} bytes={}",
            from.map(|c| c.0),
            hex(&message.header.msg_id),
            message.header.topic_str(),
            message.data.len()
        ),
        BusKind::Overlay(e) => format!("{e:?}"),
        other => format!("{other:?}"),
    };
    format!("{ctx}{what}")
}

fn node_seed(seed: u64, name: &str, incarnation: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ h ^ (u64::from(incarnation) << 48);
    // splitmix64 finaliser: nearby inputs give unrelated seeds.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One node's software: start it (a new incarnation after every bounce), record its bus,
/// run it until it stops.
async fn run_node(w: Rc<World>, name: String) -> anyhow::Result<()> {
    let (cfg, inc) = w.slot(&name, |s| {
        s.incarnation += 1;
        (s.cfg.clone(), s.incarnation)
    })?;
    let opts = NodeOptions {
        seed: node_seed(w.seed, &name, inc),
        admin: true,
        // The process's descriptors are not this host's.
        fd_sampler: false,
        // Many nodes share the process's allocator.
        heap_trim: false,
        local_delivery: true,
        log_events: true,
        log_policy: None,
        wall_clock_epoch: Some(epoch() + World::now()),
        announce: false,
    };
    let node = Node::start(w.net.clone(), cfg, opts)
        .await
        .with_context(|| format!("starting {name}"))?;
    let mut sub = node.subscribe();
    w.slot(&name, |s| s.ctl = Some(node.control()))?;
    w.record(format!("{name}#{inc} started"));
    let (w2, n2) = (w.clone(), name.clone());
    tokio::task::spawn_local(async move {
        while let Some(ev) = sub.recv().await {
            w2.on_event(&n2, inc, &ev);
        }
    });
    let report = node.wait().await?;
    w.record(format!(
        "{name}#{inc} stopped drained={} left_open={} egress_dropped={} stats={:?}",
        report.drained, report.left_open, report.egress_dropped, report.stats
    ));
    w.slot(&name, |s| {
        s.ctl = None;
        s.reports.push(report);
    })?;
    Ok(())
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub trace: Trace,
    pub simulated: Duration,
    pub connections: usize,
}

/// Runs `script` on the control host of a simulation built from `setup`. Fails with the
/// seed in the message, so a failure can be replayed with `SIM_SEED`.
pub fn run<F, Fut>(setup: Setup, script: F) -> anyhow::Result<Outcome>
where
    F: FnOnce(Ctx) -> Fut + 'static,
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
    let seed = setup.seed;
    let name = setup.name;
    println!("turmoil scenario {name}: SIM_SEED={seed:#x} (set SIM_SEED to replay)");
    run_inner(setup, script)
        .with_context(|| format!("scenario {name} failed with SIM_SEED={seed:#x}"))
}

fn run_inner<F, Fut>(setup: Setup, script: F) -> anyhow::Result<Outcome>
where
    F: FnOnce(Ctx) -> Fut + 'static,
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
    let world = Rc::new(World {
        seed: setup.seed,
        net: SimNet::new(),
        nodes: RefCell::new(
            setup
                .nodes
                .iter()
                .map(|(n, c)| {
                    (
                        n.clone(),
                        NodeSlot {
                            cfg: c.clone(),
                            ..NodeSlot::default()
                        },
                    )
                })
                .collect(),
        ),
        trace: RefCell::new(Trace::default()),
        actions: RefCell::new(Vec::new()),
        actions_queued: Cell::new(0),
        actions_done: Cell::new(0),
        agents: RefCell::new(BTreeMap::new()),
        tick: setup.tick,
        hosts: setup
            .nodes
            .iter()
            .map(|(n, _)| n.clone())
            .chain(setup.agents.iter().cloned())
            .chain(std::iter::once("ctl".to_string()))
            .collect(),
        latency: setup.latency,
        fixed: RefCell::new(BTreeMap::new()),
    });
    let mut sim = ::turmoil::Builder::new()
        .simulation_duration(setup.limit)
        .tick_duration(setup.tick)
        .min_message_latency(setup.latency.0)
        .max_message_latency(setup.latency.1)
        .tcp_capacity(TCP_CAPACITY)
        .epoch(epoch())
        .build_with_rng(Box::new(ChaCha8Rng::seed_from_u64(setup.seed)));

    for (name, _) in &setup.nodes {
        let (w, name) = (world.clone(), name.clone());
        sim.host(name.clone(), move || {
            let (w, name) = (w.clone(), name.clone());
            async move { run_node(w, name).await.map_err(|e| format!("{e:#}").into()) }
        });
    }
    for agent in &setup.agents {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        world.agents.borrow_mut().insert(agent.clone(), tx);
        sim.client(agent.clone(), async move {
            while let Some(job) = rx.recv().await {
                tokio::task::spawn_local(job());
            }
            Ok(())
        });
    }
    let ctx = Ctx { w: world.clone() };
    sim.client("ctl", async move {
        let w = ctx.w.clone();
        let r = script(ctx).await;
        // Agents end when their job queues close; whatever they still run is dropped
        // with the simulation.
        w.agents.borrow_mut().clear();
        r.map_err(|e| format!("{e:#}").into())
    });

    let result = (|| -> anyhow::Result<()> {
        loop {
            let done = sim.step().map_err(|e| anyhow!("{e}"))?;
            let actions = std::mem::take(&mut *world.actions.borrow_mut());
            for a in actions {
                a(&mut sim);
                world.actions_done.set(world.actions_done.get() + 1);
            }
            if done {
                return Ok(());
            }
        }
    })();
    let simulated = sim.elapsed();
    drop(sim);
    // The hosts held the world; break the cycle before handing the trace back.
    let trace = std::mem::take(&mut *world.trace.borrow_mut());
    world.nodes.borrow_mut().clear();
    // SIM_TRACE=DIR writes each run's trace there, for reading or diffing two runs.
    if let Ok(dir) = std::env::var("SIM_TRACE") {
        let path =
            std::path::Path::new(&dir).join(format!("{}-{:#x}.trace", setup.name, setup.seed));
        let _ = std::fs::write(&path, trace.lines().join("\n"));
    }
    result.map_err(|e| {
        let tail: Vec<&String> = trace.lines().iter().rev().take(30).collect();
        let tail: Vec<&str> = tail.iter().rev().map(|s| s.as_str()).collect();
        anyhow!("{e:#}\nlast trace lines:\n{}", tail.join("\n"))
    })?;
    Ok(Outcome {
        seed: setup.seed,
        trace,
        simulated,
        connections: world.net.connections(),
    })
}

/// `/readyz` as served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub status: u16,
    pub missing: Vec<String>,
    pub body: String,
}

/// The script's handle on the simulation.
#[derive(Clone)]
pub struct Ctx {
    w: Rc<World>,
}

impl Ctx {
    pub fn seed(&self) -> u64 {
        self.w.seed
    }

    pub fn net(&self) -> &SimNet {
        &self.w.net
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        World::now()
    }

    pub async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// A seeded RNG for the script's own choices (message ids of clients...).
    pub fn rng(&self, stream: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(node_seed(self.w.seed, "script", stream as u32))
    }

    /// A line in the trace (hashed with the events).
    pub fn note(&self, line: impl Into<String>) {
        self.w.record(format!("ctl {}", line.into()));
    }

    pub fn nodes(&self) -> Vec<String> {
        self.w.nodes.borrow().keys().cloned().collect()
    }

    /// Nodes whose software is running now.
    pub fn running(&self) -> Vec<String> {
        self.w
            .nodes
            .borrow()
            .iter()
            .filter(|(_, s)| s.ctl.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn control(&self, node: &str) -> anyhow::Result<NodeControl> {
        self.w
            .slot(node, |s| s.ctl.clone())?
            .ok_or_else(|| anyhow!("{node} is not running"))
    }

    pub fn incarnation(&self, node: &str) -> anyhow::Result<u32> {
        self.w.slot(node, |s| s.incarnation)
    }

    pub async fn stats(&self, node: &str) -> anyhow::Result<NodeStats> {
        self.control(node)?.stats().await
    }

    pub async fn publish(
        &self,
        node: &str,
        topic: &str,
        data: Bytes,
    ) -> anyhow::Result<Result<MsgId, PublishError>> {
        self.control(node)?.publish(topic, data, None).await
    }

    /// `GET path` on the node's admin plane.
    pub async fn get(&self, node: &str, path: &str) -> anyhow::Result<Response> {
        http::get(&self.w.net, &format!("{node}:{ADMIN_PORT}"), path).await
    }

    /// `GET /metrics`, parsed.
    pub async fn scrape(&self, node: &str) -> anyhow::Result<Exposition> {
        let r = self.get(node, "/metrics").await?;
        if r.status != 200 {
            bail!("GET /metrics on {node}: {}", r.status);
        }
        Exposition::parse(&r.body).with_context(|| format!("parsing /metrics of {node}"))
    }

    /// `GET /readyz`, with the body's `missing` keys.
    pub async fn readyz(&self, node: &str) -> anyhow::Result<Ready> {
        let r = self.get(node, "/readyz").await?;
        let v: serde_json::Value = serde_json::from_str(&r.body)
            .with_context(|| format!("/readyz body of {node}: {:?}", r.body))?;
        let ready = v["ready"].as_bool() == Some(true);
        if ready != (r.status == 200) {
            bail!(
                "/readyz of {node}: status {} with body {}",
                r.status,
                r.body
            );
        }
        let missing = v["missing"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Ready {
            status: r.status,
            missing,
            body: r.body,
        })
    }

    /// Sets the latency of the link between `a` and `b` to `fixed`, or back to the
    /// default range with `None`.
    pub async fn set_latency(&self, a: &str, b: &str, fixed: Option<Duration>) {
        let key = link(a, b);
        match fixed {
            Some(v) => self.w.fixed.borrow_mut().insert(key, v),
            None => self.w.fixed.borrow_mut().remove(&key),
        };
        let w = self.w.clone();
        let (a, b) = (a.to_string(), b.to_string());
        self.act(&format!("latency {a} <-> {b}: {fixed:?}"), move |sim| {
            w.apply_latency(sim, &a, &b)
        })
        .await;
    }

    /// Kills the host's software (turmoil `crash`): its sockets close as its runtime is
    /// dropped.
    pub async fn crash(&self, host: &str) {
        let (w, h) = (self.w.clone(), host.to_string());
        self.act(&format!("crash {host}"), move |sim| {
            w.while_closing(sim, &h, |sim| sim.crash(h.as_str()))
        })
        .await;
    }

    /// Restarts the host's software (turmoil `bounce`).
    pub async fn bounce(&self, host: &str) {
        let (w, h) = (self.w.clone(), host.to_string());
        self.act(&format!("bounce {host}"), move |sim| {
            w.while_closing(sim, &h, |sim| sim.bounce(h.as_str()))
        })
        .await;
    }

    /// Runs `f` on the simulation between two steps (what only the `Sim` can do), and
    /// waits until it has run. Prefer `crash`, `bounce` and `set_latency`, which keep
    /// runs repeatable.
    pub async fn act(&self, what: &str, f: impl FnOnce(&mut Sim<'static>) + 'static) {
        self.note(format!("act {what}"));
        let ticket = self.w.actions_queued.get() + 1;
        self.w.actions_queued.set(ticket);
        self.w.actions.borrow_mut().push(Box::new(f));
        while self.w.actions_done.get() < ticket {
            tokio::time::sleep(self.w.tick).await;
        }
    }

    /// Starts `f` on agent host `agent`; the receiver yields its result.
    pub fn spawn_on<T, Fut>(
        &self,
        agent: &str,
        f: impl FnOnce() -> Fut + 'static,
    ) -> anyhow::Result<oneshot::Receiver<T>>
    where
        T: 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = tx.send(f().await);
            })
        });
        self.w
            .agents
            .borrow()
            .get(agent)
            .ok_or_else(|| anyhow!("no agent host {agent}"))?
            .send(job)
            .map_err(|_| anyhow!("agent {agent} has stopped"))?;
        Ok(rx)
    }

    /// Runs `f` on agent host `agent` and waits for its result.
    pub async fn on<T, Fut>(
        &self,
        agent: &str,
        f: impl FnOnce() -> Fut + 'static,
    ) -> anyhow::Result<T>
    where
        T: 'static,
        Fut: Future<Output = T> + 'static,
    {
        self.spawn_on(agent, f)?
            .await
            .map_err(|_| anyhow!("job on {agent} was dropped"))
    }

    /// Messages the node delivered (any incarnation), by id.
    pub fn delivered(&self, node: &str) -> BTreeSet<MsgId> {
        self.w
            .slot(node, |s| s.delivered.keys().copied().collect())
            .unwrap_or_default()
    }

    /// When the node first delivered each message (any incarnation).
    pub fn delivered_at(&self, node: &str) -> BTreeMap<MsgId, Duration> {
        self.w
            .slot(node, |s| {
                s.delivered.iter().map(|(id, (_, t))| (*id, *t)).collect()
            })
            .unwrap_or_default()
    }

    /// Bus events the node emitted (messages aside), oldest first.
    pub fn events(&self, node: &str) -> Vec<Rec> {
        self.w.slot(node, |s| s.events.clone()).unwrap_or_default()
    }

    /// How each stop of the node ended.
    pub fn reports(&self, node: &str) -> Vec<ShutdownReport> {
        self.w.slot(node, |s| s.reports.clone()).unwrap_or_default()
    }

    /// Polls `cond` every `every` until it holds; fails after `limit` with `what`.
    pub async fn until<Fut>(
        &self,
        what: &str,
        limit: Duration,
        every: Duration,
        mut cond: impl FnMut() -> Fut,
    ) -> anyhow::Result<Duration>
    where
        Fut: Future<Output = anyhow::Result<bool>>,
    {
        let start = self.now();
        loop {
            if cond().await? {
                let took = self.now() - start;
                self.note(format!("{what}: after {} ms", took.as_millis()));
                return Ok(took);
            }
            if self.now() - start > limit {
                bail!("{what}: not within {limit:?}");
            }
            tokio::time::sleep(every).await;
        }
    }
}
