//! A discrete-event simulator of many `Overlay` nodes over a seeded network model, on
//! simulated time: no tokio, no threads, no clock. The same seed gives the same trace hash.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use overlay_core::oap::{Flags, MsgId, HEADER_LEN};
use overlay_core::observe::{Metrics, Outcome};
use overlay_core::{
    Config, ConnId, Event, Overlay, Probe, ReadyState, Time, PRESSURE_GRACE as GRACE, TICK,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What the simulated network and workload look like.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Peers each node is configured with: the core keeps them dialed, and redials them
    /// with backoff after a failed dial or a session's end (a crash, a partition).
    pub degree: usize,
    pub messages: usize,
    /// Messages are published uniformly over this span.
    pub publish_over: Duration,
    /// One-way latency: `base` plus an exponential tail of mean `tail`.
    pub latency_base: Duration,
    pub latency_tail: Duration,
    /// Chance that a single-frame gossip message is lost in transit.
    pub loss: f64,
    /// Node crashes per simulated second across the network; a crashed node restarts after
    /// `downtime`.
    pub churn_per_sec: f64,
    pub downtime: Duration,
    /// A partition splitting the nodes in two halves between these times.
    pub partition: Option<(Duration, Duration)>,
    pub payload: usize,
    pub fanout: usize,
    pub ttl: u8,
    /// Simulated time after the last publish for dissemination to finish.
    pub settle: Duration,
    /// Nodes `0..n` stop reading between two instants: what is sent to them is held, not
    /// reported written, so their peers' queues fill as behind a full TCP window.
    pub stall: Option<(usize, Duration, Duration)>,
    /// `overlay.peer.egress_queue_frames` and `overlay.peer.send_window_frames` of every node.
    pub queue_frames: usize,
    pub send_window: usize,
    /// `readiness.sustain` of every node: short, so that readiness can change within a run.
    pub sustain: Duration,
    /// `overlay.gossip.graft_timeout` of every node (the core's default when `None`).
    pub graft_timeout: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 1,
            nodes: 100,
            degree: 6,
            messages: 100,
            publish_over: Duration::from_secs(10),
            latency_base: Duration::from_millis(10),
            latency_tail: Duration::from_millis(20),
            loss: 0.0,
            churn_per_sec: 0.0,
            downtime: Duration::from_secs(5),
            partition: None,
            payload: 256,
            fanout: 8,
            ttl: 8,
            settle: Duration::from_secs(10),
            stall: None,
            queue_frames: 1024,
            send_window: 16,
            sustain: Duration::from_secs(1),
            graft_timeout: None,
        }
    }
}

/// The events to come, earliest first (ties in scheduling order), as a calendar: one slot
/// per simulated millisecond over the next `SLOTS`, sorted only when its turn comes, and a
/// heap for what lies further ahead. Nearly every event (a transmit's latency, a node's
/// next tick) falls within the calendar, so most pushes and pops cost O(1) where a heap
/// over all of them sifted through cache-cold entries: the largest cost of the loop.
struct Agenda {
    /// Slot `ms % SLOTS` holds the events of millisecond `ms`, for `ms` in
    /// `next_ms..next_ms + SLOTS`, unsorted.
    ring: Vec<Vec<(u128, Ev)>>,
    in_ring: usize,
    /// The millisecond being run, latest key first (popped from the back).
    current: Vec<(u128, Ev)>,
    /// Events pushed for the very instant being run, in scheduling order. They come after
    /// everything already queued for that instant (their `seq` is larger) and before the
    /// rest of the millisecond; a sorted insert into `current` moved everything behind it
    /// instead, quadratic when thousands of nodes dial at the same instant (the start).
    same_instant: VecDeque<(u128, Ev)>,
    /// The time key of the last event popped.
    last_ns: Option<u128>,
    next_ms: u64,
    /// Events beyond the calendar, by key, waiting in a slab.
    far: BinaryHeap<Reverse<(u128, u32)>>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
}

const SLOTS: u64 = 1024;
const SLOT_NS: u128 = 1_000_000;

fn ms_of(key: u128) -> u64 {
    ((key >> 64) / SLOT_NS) as u64
}

impl Default for Agenda {
    fn default() -> Agenda {
        Agenda {
            ring: (0..SLOTS).map(|_| Vec::new()).collect(),
            in_ring: 0,
            current: Vec::new(),
            same_instant: VecDeque::new(),
            last_ns: None,
            next_ms: 0,
            far: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl Agenda {
    /// Keys order by time, then by `seq` (unique): exactly the order of a heap of
    /// `(time, seq)`, so a seed replays the same trace.
    fn push(&mut self, at: Time, seq: u64, ev: Ev) {
        let key = (at.since_epoch().as_nanos() << 64) | seq as u128;
        let ms = ms_of(key);
        if self.last_ns == Some(at.since_epoch().as_nanos()) {
            self.same_instant.push_back((key, ev));
        } else if ms < self.next_ms {
            let pos = self.current.partition_point(|(k, _)| *k > key);
            self.current.insert(pos, (key, ev));
        } else if ms < self.next_ms + SLOTS {
            self.ring[(ms % SLOTS) as usize].push((key, ev));
            self.in_ring += 1;
        } else {
            let slot = match self.free.pop() {
                Some(s) => {
                    self.slab[s as usize] = Some(ev);
                    s
                }
                None => {
                    self.slab.push(Some(ev));
                    (self.slab.len() - 1) as u32
                }
            };
            self.far.push(Reverse((key, slot)));
        }
    }

    fn pop(&mut self) -> Option<(Time, Ev)> {
        let (key, ev) = self.pop_keyed()?;
        self.last_ns = Some(key >> 64);
        Some((
            Time::from_duration(Duration::from_nanos((key >> 64) as u64)),
            ev,
        ))
    }

    fn pop_keyed(&mut self) -> Option<(u128, Ev)> {
        loop {
            // Both are sorted and hold distinct keys: the smaller head is the next event.
            // Nothing later than the running instant is popped while `same_instant` holds
            // anything, so it never outlives its instant.
            if let Some(&(k, _)) = self.same_instant.front() {
                if self.current.last().map_or(true, |(c, _)| k < *c) {
                    return self.same_instant.pop_front();
                }
            }
            if let Some(e) = self.current.pop() {
                return Some(e);
            }
            if self.in_ring == 0 {
                // Nothing in the calendar: jump to the first event beyond it.
                let &Reverse((key, _)) = self.far.peek()?;
                self.next_ms = self.next_ms.max(ms_of(key));
            }
            while let Some(&Reverse((key, slot))) = self.far.peek() {
                if ms_of(key) >= self.next_ms + SLOTS {
                    break;
                }
                self.far.pop();
                self.free.push(slot);
                if let Some(ev) = self.slab[slot as usize].take() {
                    self.ring[(ms_of(key) % SLOTS) as usize].push((key, ev));
                    self.in_ring += 1;
                }
            }
            let slot = &mut self.ring[(self.next_ms % SLOTS) as usize];
            std::mem::swap(&mut self.current, slot);
            self.in_ring -= self.current.len();
            self.current.sort_unstable_by_key(|e| Reverse(e.0));
            self.next_ms += 1;
        }
    }

    fn len(&self) -> usize {
        self.current.len() + self.same_instant.len() + self.in_ring + self.far.len()
    }
}

#[derive(Debug)]
enum Ev {
    // The order of the first four is `Ev::kind`'s, and the report's `events_by_kind`.
    /// Bytes arrive at `(node, conn)`; `epoch` guards against a restarted node.
    Deliver {
        node: usize,
        epoch: u32,
        conn: ConnId,
        // Built once when sent and handed to the reader as is: no second copy.
        bytes: BytesMut,
    },
    /// The far end of a connection closed.
    Closed {
        node: usize,
        epoch: u32,
        conn: ConnId,
    },
    Timer {
        node: usize,
        epoch: u32,
    },
    /// A dial the node's core asked for: it connects if `to` is up and reachable.
    Dial {
        node: usize,
        epoch: u32,
        peer: Arc<str>,
        to: usize,
    },
    Publish {
        index: usize,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    PartitionStart,
    PartitionEnd,
    StallStart,
    StallEnd,
}

/// What the report counts events by: the first four are nearly all of a run.
pub const EVENT_KINDS: [&str; 5] = ["deliver", "closed", "timer", "dial", "other"];

impl Ev {
    fn kind(&self) -> usize {
        match self {
            Ev::Deliver { .. } => 0,
            Ev::Closed { .. } => 1,
            Ev::Timer { .. } => 2,
            Ev::Dial { .. } => 3,
            _ => 4,
        }
    }
}

struct Link {
    peer: (usize, ConnId),
    /// Arrival time of the last bytes sent, so a link stays FIFO like TCP.
    last_arrival: Time,
    /// Crosses the partition: dropped when it starts.
    open: bool,
    /// Transmits toward a stalled reader, neither delivered nor reported written yet
    /// (`None`: lost in transit, but still a write to report).
    held: Vec<Option<BytesMut>>,
}

/// First arrival of each message at each node: simulated nanoseconds and hops.
struct Arrivals {
    nodes: usize,
    slots: Vec<(u64, u32)>,
}

impl Arrivals {
    const NONE: u32 = u32::MAX;

    fn new(messages: usize, nodes: usize) -> Arrivals {
        Arrivals {
            nodes,
            slots: vec![(0, Self::NONE); messages * nodes],
        }
    }

    fn get(&self, index: usize, node: usize) -> Option<(Time, u32)> {
        let (t, h) = self.slots[index * self.nodes + node];
        (h != Self::NONE).then(|| (Time::from_duration(Duration::from_nanos(t)), h))
    }

    fn set(&mut self, index: usize, node: usize, at: Time, hops: u32) {
        self.slots[index * self.nodes + node] = (at.since_epoch().as_nanos() as u64, hops);
    }
}

struct SimNode {
    overlay: Overlay,
    /// Its configured peers, the same across restarts.
    peers: Vec<usize>,
    epoch: u32,
    up: bool,
    // Ordered: closing a node's links draws one latency each, so their order is part of the
    // replayed trace.
    links: BTreeMap<ConnId, Link>,
    /// Every (crash, restart) of the node: a node down during a message's life may miss it.
    downs: Vec<(Time, Time)>,
    /// Since when one of its sessions' queues has been at or over the watermark, as the
    /// simulator sees it after every step (finer than the node's own tick sampling).
    over_since: Option<Time>,
    /// The last step it saw a queue over the watermark: dips shorter than the node's grace
    /// (1 s) do not end an episode of pressure, as they do not for the node.
    last_over: Option<Time>,
    timer_at: Option<Time>,
    finals: Vec<overlay_core::Balance>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub nodes: usize,
    pub messages: usize,
    /// Deliveries that happened / deliveries possible to nodes up the whole run.
    pub coverage: f64,
    /// Deliveries owed to the nodes alive at the end (every message each), and those missed.
    pub end_possible: u64,
    pub end_misses: u64,
    /// Nodes up throughout that missed a message, summed over messages.
    pub misses: u64,
    /// Missed deliveries to nodes that churned and were down during the message's life
    /// (from its publication to its last first arrival anywhere).
    pub down_misses: u64,
    /// Missed deliveries to nodes that churned but were up during the message's whole life.
    pub churn_misses: u64,
    /// Every missed (message, node) pair, in message order.
    pub missed: Vec<Miss>,
    /// Deliveries possible to nodes up for a message's whole life, counting only messages
    /// whose origin had a peer when it published, and how many of those were missed.
    pub up_possible: u64,
    pub up_misses: u64,
    /// When each message was published, since the start of the run.
    pub published_at: Vec<Duration>,
    /// Times a node reported `queues_ok` false (each checked to have a cause).
    pub queues_degraded: u64,
    /// The first readiness untruths seen (empty when `readiness_ok`).
    pub untruths: Vec<String>,
    /// Gossip frames sent per delivery.
    pub redundancy: f64,
    pub hops_mean: f64,
    pub hops_max: u32,
    pub theoretical_hops: f64,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    pub simulated: Duration,
    pub real: Duration,
    /// Wall time of each phase: building the nodes, the publishing span, the settle time
    /// after it, and the tally of this report.
    pub phases: Vec<(&'static str, Duration)>,
    /// Events the simulator applied, and the most it held queued at once.
    pub events: u64,
    /// `events` by `EVENT_KINDS`; and the timer events that found their node's deadline
    /// moved later (left behind when the node's next timeout changed).
    pub events_by_kind: [u64; 5],
    pub stale_timers: u64,
    /// Transmits the nodes handed out, and the deliveries they made: the transmits a node
    /// hands out on one link in one step arrive together, as TCP delivers them in one read.
    pub transmits: u64,
    pub deliveries: u64,
    pub queue_peak: usize,
    pub trace_hash: u64,
    pub balance_ok: bool,
    pub readiness_ok: bool,
    pub frames_rx: u64,
    pub duplicates: u64,
    pub dropped: u64,
    pub rejected: u64,
}

/// One message that one node never received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Miss {
    pub index: usize,
    pub node: usize,
    pub origin: usize,
    /// Publication time, since the start of the run.
    pub published: Duration,
    /// The node crashed at some point in the run.
    pub churned: bool,
    /// The node was down at some point while the message spread.
    pub down: bool,
    /// How long before publication the node last restarted, if it had.
    pub node_restarted: Option<Duration>,
    /// How long before publication the origin last restarted, if it had.
    pub origin_restarted: Option<Duration>,
    /// How long after publication the origin crashed, if it did.
    pub origin_crashed: Option<Duration>,
    /// The origin had no established peer when it published (it was rejoining).
    pub origin_alone: bool,
    /// The message's last first arrival anywhere, since the start of the run.
    pub spread_until: Duration,
}

impl Report {
    pub fn speedup(&self) -> f64 {
        self.simulated.as_secs_f64() / self.real.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "nodes {}  messages {}", self.nodes, self.messages)?;
        writeln!(
            f,
            "coverage {:.4}% of every node alive at the end ({} of {} deliveries missed); misses {} (at nodes that churned: {} while down, {} while up)",
            self.coverage * 100.0,
            self.end_misses,
            self.end_possible,
            self.misses,
            self.down_misses,
            self.churn_misses
        )?;
        writeln!(
            f,
            "misses at nodes up for a message's whole life {} of {} ({} messages from an origin with no peer)",
            self.up_misses,
            self.up_possible,
            self.missed
                .iter()
                .filter(|m| m.origin_alone)
                .map(|m| m.index)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        )?;
        writeln!(
            f,
            "redundancy {:.2} gossip frames sent per delivery",
            self.redundancy
        )?;
        writeln!(
            f,
            "hops mean {:.2} max {} (ln N / ln fanout = {:.2})",
            self.hops_mean, self.hops_max, self.theoretical_hops
        )?;
        writeln!(
            f,
            "latency p50 {:?} p99 {:?} max {:?}",
            self.latency_p50, self.latency_p99, self.latency_max
        )?;
        writeln!(
            f,
            "frames rx {}  duplicates {}  dropped {}  rejected {}",
            self.frames_rx, self.duplicates, self.dropped, self.rejected
        )?;
        writeln!(
            f,
            "simulated {:?} in {:?} real ({:.1}x)",
            self.simulated,
            self.real,
            self.speedup()
        )?;
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(p, d)| format!("{p} {:.2}s", d.as_secs_f64()))
            .collect();
        writeln!(
            f,
            "wall time per phase: {}  ({} events, at most {} queued)",
            phases.join("  "),
            self.events,
            self.queue_peak
        )?;
        let kinds: Vec<String> = EVENT_KINDS
            .iter()
            .zip(self.events_by_kind)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "events by kind: {}  ({} timers found their deadline moved; {} transmits in {} deliveries)",
            kinds.join("  "),
            self.stale_timers,
            self.transmits,
            self.deliveries
        )?;
        writeln!(f, "queues_ok reported false {} times", self.queues_degraded)?;
        writeln!(
            f,
            "balance law {}  readiness truth {}",
            if self.balance_ok { "holds" } else { "BROKEN" },
            if self.readiness_ok { "holds" } else { "BROKEN" }
        )?;
        for u in &self.untruths {
            writeln!(f, "readiness untruth {u}")?;
        }
        write!(f, "trace hash {:016x} (seed replays it)", self.trace_hash)
    }
}

pub struct Sim {
    cfg: SimConfig,
    /// Wall time `new` took (the nodes and their first links).
    setup: Duration,
    rng: ChaCha8Rng,
    now: Time,
    seq: u64,
    queue: Agenda,
    nodes: Vec<SimNode>,
    partitioned: bool,
    /// msg index -> (id, origin, publish time)
    published: Vec<Option<(MsgId, usize, Time)>>,
    /// Messages published by a node with no established peer (a restart still rejoining):
    /// nothing can carry them anywhere.
    alone: Vec<bool>,
    ids: HashMap<MsgId, usize>,
    /// First arrivals, one slot per (msg index, node): a flat table, as every pair is
    /// filled by the end of a run (an ordered map of 10 million pairs cost seconds).
    seen: Arrivals,
    gossip_tx: u64,
    trace: std::collections::hash_map::DefaultHasher,
    readiness_ok: bool,
    untruths: Vec<String>,
    queues_degraded: u64,
    stalled: bool,
    /// What the step being drained wrote, in order: every link's parts are copied into
    /// one allocation of their total size when the step ends (grown one transmit at a
    /// time, the buffers were reallocated over and over). Kept for its allocation.
    outgoing: Vec<(ConnId, Bytes)>,
    events_by_kind: [u64; 5],
    stale_timers: u64,
    transmits: u64,
    deliveries: u64,
}

fn node_config(cfg: &SimConfig, i: usize) -> Config {
    let mut c = Config::default();
    c.overlay.node_id = format!("n{i}");
    c.overlay.gossip.relay_fanout = cfg.fanout;
    c.overlay.gossip.default_ttl = cfg.ttl;
    c.overlay.peer.max_rps = 1_000_000;
    c.overlay.max_conns = 4 * cfg.degree + 64;
    c.overlay.handshake_rate = 100_000;
    c.overlay.handshake_burst = 100_000;
    c.overlay.peer.egress_queue_frames = cfg.queue_frames;
    c.overlay.peer.send_window_frames = cfg.send_window;
    c.readiness.sustain = cfg.sustain;
    if let Some(t) = cfg.graft_timeout {
        c.overlay.gossip.graft_timeout = t;
    }
    c
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let started = Instant::now();
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut sim = Sim {
            rng,
            now: Time::ZERO,
            seq: 0,
            queue: Agenda::default(),
            nodes: Vec::with_capacity(cfg.nodes),
            partitioned: false,
            published: vec![None; cfg.messages],
            alone: vec![false; cfg.messages],
            ids: HashMap::new(),
            seen: Arrivals::new(cfg.messages, cfg.nodes),
            gossip_tx: 0,
            trace: Default::default(),
            readiness_ok: true,
            untruths: Vec::new(),
            queues_degraded: 0,
            stalled: false,
            outgoing: Vec::new(),
            events_by_kind: [0; 5],
            stale_timers: 0,
            transmits: 0,
            deliveries: 0,
            setup: Duration::ZERO,
            cfg,
        };
        for i in 0..sim.cfg.nodes {
            let peers = sim.pick_peers(i);
            let overlay = sim.fresh_overlay(i, 0, &peers);
            sim.nodes.push(SimNode {
                overlay,
                peers,
                epoch: 0,
                up: true,
                links: BTreeMap::new(),
                downs: Vec::new(),
                over_since: None,
                last_over: None,
                timer_at: None,
                finals: Vec::new(),
            });
        }
        for i in 0..sim.cfg.nodes {
            sim.drain(i);
        }
        let span = sim.cfg.publish_over.as_nanos() as u64;
        for index in 0..sim.cfg.messages {
            let at = Time::from_duration(Duration::from_secs(1))
                + Duration::from_nanos(sim.rng.gen_range(0..span.max(1)));
            sim.schedule(at, Ev::Publish { index });
        }
        if sim.cfg.churn_per_sec > 0.0 {
            let end = sim.cfg.publish_over + Duration::from_secs(1);
            let mut t = Duration::from_secs(1);
            loop {
                let gap = -sim.rng.gen::<f64>().max(1e-12).ln() / sim.cfg.churn_per_sec;
                t += Duration::from_secs_f64(gap);
                if t >= end {
                    break;
                }
                let node = sim.rng.gen_range(0..sim.cfg.nodes);
                sim.schedule(Time::from_duration(t), Ev::Crash { node });
            }
        }
        if let Some((a, b)) = sim.cfg.partition {
            sim.schedule(Time::from_duration(a), Ev::PartitionStart);
            sim.schedule(Time::from_duration(b), Ev::PartitionEnd);
        }
        if let Some((_, a, b)) = sim.cfg.stall {
            sim.stalled = a.is_zero();
            sim.schedule(Time::from_duration(a), Ev::StallStart);
            sim.schedule(Time::from_duration(b), Ev::StallEnd);
        }
        sim.setup = started.elapsed();
        sim
    }

    /// A node's configured peers: `degree` draws among the others.
    fn pick_peers(&mut self, a: usize) -> Vec<usize> {
        let mut peers = Vec::new();
        for _ in 0..self.cfg.degree {
            let b = self.rng.gen_range(0..self.cfg.nodes);
            if b != a && !peers.contains(&b) {
                peers.push(b);
            }
        }
        peers
    }

    fn fresh_overlay(&self, i: usize, epoch: u32, peers: &[usize]) -> Overlay {
        let seed = self.cfg.seed ^ ((i as u64) << 20) ^ ((epoch as u64) << 48);
        let mut o = Overlay::new(node_config(&self.cfg, i), Metrics::noop(), seed, self.now);
        let facts = [
            Probe::ListenersBound,
            Probe::MetricsBound,
            Probe::CfgLoaded,
            Probe::FdHeadroom,
        ]
        .map(|p| (p, true));
        o.set_probes(self.now, &facts);
        o.set_local_delivery(true);
        for &b in peers {
            let name = format!("n{b}");
            o.set_peer_addrs(self.now, &name, vec![name.clone()]);
        }
        o
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(at, self.seq, ev);
    }

    fn side(&self, i: usize) -> bool {
        i < self.cfg.nodes / 2
    }

    /// Carries out node `a`'s dial to `b`: connected when `b` is up and on `a`'s side of a
    /// partition, failed at once otherwise (a refused connect).
    fn dial(&mut self, a: usize, peer: &str, b: usize) {
        let now = self.now;
        // A node's address is its name (`set_peer_addrs` above).
        let d = overlay_core::Dial {
            peer: peer.into(),
            addr: format!("n{b}"),
        };
        let reachable = self.nodes[b].up && !(self.partitioned && self.side(a) != self.side(b));
        if !reachable {
            self.nodes[a].overlay.handle_dial_failed(now, &d);
            self.drain(a);
            return;
        }
        let Some(ca) = self.nodes[a].overlay.handle_dialed(now, &d) else {
            return;
        };
        let cb = self.nodes[b].overlay.handle_accept(now);
        self.nodes[a].links.insert(
            ca,
            Link {
                peer: (b, cb),
                last_arrival: now,
                open: true,
                held: Vec::new(),
            },
        );
        self.nodes[b].links.insert(
            cb,
            Link {
                peer: (a, ca),
                last_arrival: now,
                open: true,
                held: Vec::new(),
            },
        );
        self.drain(a);
        self.drain(b);
    }

    fn latency(&mut self) -> Duration {
        let tail = self.cfg.latency_tail.as_secs_f64();
        let extra = if tail > 0.0 {
            -self.rng.gen::<f64>().max(1e-12).ln() * tail
        } else {
            0.0
        };
        self.cfg.latency_base + Duration::from_secs_f64(extra)
    }

    /// Drains a node's outputs into the network.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        while let Some(t) = self.nodes[i].overlay.poll_transmit(now) {
            let Some(link) = self.nodes[i].links.get(&t.conn) else {
                continue;
            };
            let peer = link.peer.0;
            let open = link.open;
            if !t.is_empty() {
                let held = self.is_stalled(peer);
                if !held {
                    self.nodes[i].overlay.handle_written(now, t.conn, 1);
                }
                let is_gossip = t.head.len() >= HEADER_LEN && t.head[10..12] == [0, 1];
                if is_gossip
                    && Flags::from_bits(u16::from_be_bytes([t.head[6], t.head[7]]))
                        .contains(Flags::START)
                {
                    self.gossip_tx += 1;
                }
                let single = is_gossip && {
                    let f = Flags::from_bits(u16::from_be_bytes([t.head[6], t.head[7]]));
                    f.contains(Flags::START) && f.contains(Flags::END)
                };
                let lost = single && self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss);
                self.transmits += 1;
                if held {
                    let bytes = (open && !lost).then(|| {
                        let mut b = BytesMut::with_capacity(t.len());
                        b.extend_from_slice(&t.head);
                        b.extend_from_slice(&t.body);
                        b
                    });
                    let link = self.nodes[i].links.get_mut(&t.conn).unwrap();
                    link.held.push(bytes);
                } else if open && !lost {
                    // Every transmit of this step on this link goes in one delivery, as one
                    // TCP read would take them: one event, one `handle_bytes`, one latency.
                    self.outgoing.push((t.conn, t.head));
                    if !t.body.is_empty() {
                        self.outgoing.push((t.conn, t.body));
                    }
                }
            }
            if t.close {
                // What this step wrote before the close arrives before it.
                self.flush_outgoing(i, Some(t.conn));
                self.close_local(i, t.conn, true);
            }
        }
        self.flush_outgoing(i, None);
        while let Some(d) = self.nodes[i].overlay.poll_dial() {
            let to = d.addr[1..].parse().expect("a simulated node's name");
            let epoch = self.nodes[i].epoch;
            self.schedule(
                now,
                Ev::Dial {
                    node: i,
                    epoch,
                    peer: d.peer,
                    to,
                },
            );
        }
        while let Some(e) = self.nodes[i].overlay.poll_event() {
            match e {
                Event::Message { from, message } => self.on_delivery(i, from, &message),
                Event::Abort { conn } => self.close_local(i, conn, true),
                Event::ReadinessChanged { state, missing } => {
                    // Readiness is red only with cause: in this simulator every probe is up,
                    // so `queues_ok` may fail only while some queue is over the watermark.
                    let over = self.queue_over(i)
                        || self.nodes[i]
                            .last_over
                            .is_some_and(|l| now.saturating_since(l) <= GRACE + 2 * TICK);
                    if missing.contains(&"queues_ok") {
                        self.queues_degraded += 1;
                    }
                    let unexplained = (missing.contains(&"queues_ok") && !over)
                        || missing
                            .iter()
                            .any(|k| !matches!(*k, "queues_ok" | "shed_rate_ok"))
                        || (state == ReadyState::Degraded && missing.is_empty());
                    if unexplained {
                        self.untruth(format!(
                            "n{i} {state:?} missing {missing:?} with no queue over the watermark"
                        ));
                    }
                }
                _ => {}
            }
        }
        let over = self.queue_over(i);
        let n = &mut self.nodes[i];
        let gap_over = |l: Option<Time>| l.map_or(true, |l| now.saturating_since(l) >= GRACE);
        if over {
            if n.over_since.is_none() || gap_over(n.last_over) {
                n.over_since = Some(now);
            }
            n.last_over = Some(now);
        } else if gap_over(n.last_over) {
            n.over_since = None;
        }
        let next = self.nodes[i].overlay.poll_timeout();
        if let Some(t) = next {
            if self.nodes[i]
                .timer_at
                .map_or(true, |at| t < at || at <= now)
            {
                self.nodes[i].timer_at = Some(t);
                let epoch = self.nodes[i].epoch;
                self.schedule(t.max(now), Ev::Timer { node: i, epoch });
            }
        }
    }

    /// Sends what this step wrote on `only` (or on every link), in the order first written.
    fn flush_outgoing(&mut self, i: usize, only: Option<ConnId>) {
        if self.outgoing.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.outgoing);
        // A step writes on a few links: finding each link's parts by scanning is cheaper
        // than any map.
        for k in 0..out.len() {
            let c = out[k].0;
            let first = !out[..k].iter().any(|(p, _)| *p == c);
            if !first || only.is_some_and(|o| o != c) {
                continue;
            }
            let parts = || out[k..].iter().filter(|(p, _)| *p == c).map(|(_, b)| b);
            let mut b = BytesMut::with_capacity(parts().map(Bytes::len).sum());
            for part in parts() {
                b.extend_from_slice(part);
            }
            self.send(i, c, b);
        }
        match only {
            Some(o) => out.retain(|(c, _)| *c != o),
            None => out.clear(),
        }
        self.outgoing = out;
    }

    /// Schedules bytes on a link, after the last bytes sent on it (FIFO, as TCP).
    fn send(&mut self, i: usize, conn: ConnId, bytes: BytesMut) {
        self.deliveries += 1;
        let lat = self.latency();
        let link = self.nodes[i].links.get_mut(&conn).unwrap();
        let (peer, pconn) = link.peer;
        let at = (self.now + lat).max(link.last_arrival);
        link.last_arrival = at;
        let epoch = self.nodes[peer].epoch;
        self.schedule(
            at,
            Ev::Deliver {
                node: peer,
                epoch,
                conn: pconn,
                bytes,
            },
        );
    }

    fn is_stalled(&self, node: usize) -> bool {
        self.stalled && self.cfg.stall.is_some_and(|(n, _, _)| node < n)
    }

    /// Whether one of the node's session queues is at or over the readiness watermark.
    fn queue_over(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        let wm = n.overlay.config().readiness.queue_high_watermark;
        // Only sessions with frames queued can be over: looking every link up after every
        // step cost more than any other part of the simulator's own bookkeeping.
        n.overlay
            .queued_sessions()
            .any(|c| n.links.contains_key(&c) && n.overlay.held(c).is_some_and(|h| h.fill >= wm))
    }

    /// `queues_ok` is the truth at the node's tick, both ways. The simulator samples the
    /// queues after every step, finer than the node does, so a queue it saw over the
    /// watermark since `since` was over at every sample the node took since then:
    /// - red only with cause: `queues_ok` false means a queue over for at least the sustain;
    /// - green only without: over for longer than the sustain (plus the node's first tick
    ///   and the tick that sees it sustained) means `queues_ok` false.
    fn check_queue_readiness(&mut self, i: usize) {
        let n = &self.nodes[i];
        let now = self.now;
        let over = n.over_since.map(|t| now.saturating_since(t));
        let since_last = n.last_over.map(|t| now.saturating_since(t));
        let red = n.overlay.readiness().missing().contains(&"queues_ok");
        let sustain = self.cfg.sustain;
        let over_now = since_last == Some(Duration::ZERO);
        match over {
            Some(d) if !red && over_now && d > sustain + 2 * TICK => {
                self.untruth(format!("n{i} queues_ok after {d:?} of pressure"));
            }
            // Red is allowed through an episode that has lasted the sustain, and for the
            // grace (plus the tick that sees it end) after the last pressure.
            _ if red
                && (over.map_or(true, |d| d + TICK < sustain)
                    || since_last.map_or(true, |l| l > GRACE + 2 * TICK)) =>
            {
                self.untruth(format!(
                    "n{i} queues_ok false with pressure for {over:?}, last {since_last:?} ago"
                ));
            }
            _ => {}
        }
    }

    /// Readiness told an untruth; the first few are kept for the report.
    fn untruth(&mut self, what: String) {
        self.readiness_ok = false;
        if self.untruths.len() < 8 {
            self.untruths
                .push(format!("at {:?}: {what}", self.now.since_epoch()));
        }
    }

    fn close_local(&mut self, i: usize, conn: ConnId, tell_peer: bool) {
        let now = self.now;
        if let Some(link) = self.nodes[i].links.remove(&conn) {
            let (peer, pconn) = link.peer;
            if tell_peer {
                let lat = self.latency();
                let at = (now + lat).max(link.last_arrival);
                let epoch = self.nodes[peer].epoch;
                self.schedule(
                    at,
                    Ev::Closed {
                        node: peer,
                        epoch,
                        conn: pconn,
                    },
                );
            }
        }
        self.nodes[i].overlay.handle_closed(now, conn);
    }

    fn on_delivery(&mut self, i: usize, from: Option<ConnId>, m: &overlay_core::oap::Message) {
        let Some(&index) = self.ids.get(&m.header.msg_id) else {
            return;
        };
        // Hops along the path the first copy took: tree links do not spend the ttl, so it
        // cannot tell.
        let sender = from
            .and_then(|c| self.nodes[i].links.get(&c))
            .map(|l| l.peer.0);
        let hops = match sender {
            None => 0,
            Some(p) => self.seen.get(index, p).map_or(1, |(_, h)| h + 1),
        };
        if self.seen.get(index, i).is_none() {
            self.seen.set(index, i, self.now, hops);
        }
        index.hash(&mut self.trace);
        i.hash(&mut self.trace);
        self.now.hash(&mut self.trace);
    }

    /// Runs to the end of the workload plus the settle time.
    pub fn run(mut self) -> Report {
        let started = Instant::now();
        let last_publish = Time::from_duration(Duration::from_secs(1) + self.cfg.publish_over);
        let end = last_publish + self.cfg.settle;
        let mut settling = None;
        let (mut events, mut peak) = (0u64, 0usize);
        while let Some((at, ev)) = self.queue.pop() {
            if at > end {
                break;
            }
            if settling.is_none() && at > last_publish {
                settling = Some(Instant::now());
            }
            events += 1;
            self.events_by_kind[ev.kind()] += 1;
            peak = peak.max(self.queue.len() + 1);
            self.now = at;
            self.apply(ev);
        }
        self.now = end;
        let settled = Instant::now();
        let settling = settling.unwrap_or(settled);
        let setup = self.setup;
        let (by_kind, stale) = (self.events_by_kind, self.stale_timers);
        let (transmits, deliveries) = (self.transmits, self.deliveries);
        let mut report = self.finish(started.elapsed());
        report.phases.extend([
            ("setup", setup),
            ("publishing", settling - started),
            ("settle", settled - settling),
            ("report", settled.elapsed()),
        ]);
        report.events = events;
        report.events_by_kind = by_kind;
        report.stale_timers = stale;
        report.transmits = transmits;
        report.deliveries = deliveries;
        report.queue_peak = peak;
        report
    }

    fn apply(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver {
                node,
                epoch,
                conn,
                bytes,
            } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].up {
                    return;
                }
                let mut b = bytes;
                self.nodes[node].overlay.handle_bytes(now, conn, &mut b);
                self.drain(node);
            }
            Ev::Closed { node, epoch, conn } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].up {
                    return;
                }
                self.close_local(node, conn, false);
                self.drain(node);
            }
            Ev::Timer { node, epoch } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].up {
                    return;
                }
                if self.nodes[node].timer_at.is_some_and(|t| t > now) {
                    self.stale_timers += 1;
                    return;
                }
                self.nodes[node].timer_at = None;
                self.nodes[node].overlay.handle_timeout(now);
                self.check_queue_readiness(node);
                self.drain(node);
            }
            Ev::Dial {
                node,
                epoch,
                peer,
                to,
            } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].up {
                    return;
                }
                self.dial(node, &peer, to);
            }
            Ev::Publish { index } => {
                let live: Vec<usize> = (0..self.cfg.nodes).filter(|&i| self.nodes[i].up).collect();
                if live.is_empty() {
                    return;
                }
                let origin = live[self.rng.gen_range(0..live.len())];
                let data = Bytes::from(vec![(index % 251) as u8; self.cfg.payload]);
                let ttl = self.cfg.ttl;
                if let Ok(id) = self.nodes[origin]
                    .overlay
                    .publish(now, "sim", data, Some(ttl))
                {
                    self.published[index] = Some((id, origin, now));
                    self.alone[index] = self.nodes[origin].overlay.peer_count() == 0;
                    self.ids.insert(id, index);
                    self.seen.set(index, origin, now, 0);
                }
                self.drain(origin);
            }
            Ev::Crash { node } => {
                if !self.nodes[node].up {
                    return;
                }
                let conns: Vec<ConnId> = self.nodes[node].links.keys().copied().collect();
                for c in conns {
                    self.close_local(node, c, true);
                }
                let n = &mut self.nodes[node];
                n.finals.push(n.overlay.balance());
                n.up = false;
                n.over_since = None;
                n.last_over = None;
                let at = now + self.cfg.downtime;
                n.downs.push((now, at));
                self.schedule(at, Ev::Restart { node });
            }
            Ev::Restart { node } => {
                let epoch = self.nodes[node].epoch + 1;
                let peers = std::mem::take(&mut self.nodes[node].peers);
                let overlay = self.fresh_overlay(node, epoch, &peers);
                self.nodes[node].peers = peers;
                let n = &mut self.nodes[node];
                n.overlay = overlay;
                n.epoch = epoch;
                n.up = true;
                n.timer_at = None;
                n.links.clear();
                self.drain(node);
            }
            Ev::PartitionStart => {
                self.partitioned = true;
                for i in 0..self.cfg.nodes {
                    let cut: Vec<ConnId> = self.nodes[i]
                        .links
                        .iter()
                        .filter(|(_, l)| self.side(l.peer.0) != self.side(i))
                        .map(|(c, _)| *c)
                        .collect();
                    for c in cut {
                        self.close_local(i, c, true);
                    }
                    self.drain(i);
                }
            }
            Ev::StallStart => self.stalled = true,
            Ev::StallEnd => {
                self.stalled = false;
                // The readers resume: what was held arrives, and its writes are reported.
                for i in 0..self.cfg.nodes {
                    let conns: Vec<ConnId> = self.nodes[i]
                        .links
                        .iter()
                        .filter(|(_, l)| !l.held.is_empty())
                        .map(|(c, _)| *c)
                        .collect();
                    for c in conns {
                        let held =
                            std::mem::take(&mut self.nodes[i].links.get_mut(&c).unwrap().held);
                        self.nodes[i].overlay.handle_written(now, c, held.len());
                        for b in held.into_iter().flatten() {
                            self.send(i, c, b);
                        }
                    }
                    if self.nodes[i].up {
                        self.drain(i);
                    }
                }
            }
            // Repair is the nodes' own: each redials the configured peers it lost across the
            // cut once their backoff ends, and a new link reconciles.
            Ev::PartitionEnd => self.partitioned = false,
        }
    }

    fn finish(mut self, real: Duration) -> Report {
        let n = self.cfg.nodes;
        let mut report = Report {
            nodes: n,
            messages: self.cfg.messages,
            theoretical_hops: (n as f64).ln() / (self.cfg.fanout as f64).ln(),
            simulated: self.now.since_epoch(),
            real,
            balance_ok: true,
            readiness_ok: self.readiness_ok,
            queues_degraded: self.queues_degraded,
            untruths: std::mem::take(&mut self.untruths),
            ..Report::default()
        };
        let (mut possible, mut got) = (0u64, 0u64);
        let mut latencies = Vec::new();
        let mut hops_sum = 0u64;
        // The life of each message: from its publication to its last first arrival.
        let life_end: Vec<Option<Time>> = (0..self.cfg.messages)
            .map(|index| {
                (0..n)
                    .filter_map(|i| self.seen.get(index, i))
                    .map(|(t, _)| t)
                    .max()
            })
            .collect();
        for (index, p) in self.published.iter().enumerate() {
            let Some((_, origin, t0)) = *p else { continue };
            report.published_at.push(t0.since_epoch());
            let t1 = life_end[index].unwrap_or(t0);
            for i in 0..n {
                let node = &self.nodes[i];
                let churned = !node.downs.is_empty();
                let up_throughout = !node.downs.iter().any(|&(a, b)| a <= t1 && b >= t0);
                if up_throughout && !self.alone[index] {
                    report.up_possible += 1;
                }
                match self.seen.get(index, i) {
                    Some((t, h)) => {
                        if !churned {
                            possible += 1;
                        }
                        got += 1;
                        latencies.push(t.saturating_since(t0));
                        hops_sum += h as u64;
                        report.hops_max = report.hops_max.max(h);
                    }
                    None => {
                        let down = node.downs.iter().any(|&(a, b)| a <= t1 && b >= t0);
                        if !down && !self.alone[index] {
                            report.up_misses += 1;
                        }
                        if !churned {
                            possible += 1;
                            report.misses += 1;
                        } else if down {
                            report.down_misses += 1;
                        } else {
                            report.churn_misses += 1;
                        }
                        let restarted = |n: &SimNode| {
                            n.downs
                                .iter()
                                .filter(|(_, up)| *up <= t0)
                                .map(|(_, up)| t0.saturating_since(*up))
                                .min()
                        };
                        let o = &self.nodes[origin];
                        report.missed.push(Miss {
                            index,
                            node: i,
                            origin,
                            published: t0.since_epoch(),
                            churned,
                            down,
                            node_restarted: restarted(node),
                            origin_restarted: restarted(o),
                            origin_alone: self.alone[index],
                            spread_until: t1.since_epoch(),
                            origin_crashed: o
                                .downs
                                .iter()
                                .find(|(crash, _)| *crash >= t0)
                                .map(|(crash, _)| crash.saturating_since(t0)),
                        });
                    }
                }
            }
        }
        let _ = possible;
        // Coverage: every message at every node alive at the end, nothing excluded (a node
        // that churned must have caught up; a message must have reached every node).
        let alive: Vec<usize> = (0..n).filter(|&i| self.nodes[i].up).collect();
        let published = self.published.iter().filter(|p| p.is_some()).count() as u64;
        report.end_possible = published * alive.len() as u64;
        report.end_misses = report
            .missed
            .iter()
            .filter(|m| self.nodes[m.node].up)
            .count() as u64;
        report.coverage =
            (report.end_possible - report.end_misses) as f64 / report.end_possible.max(1) as f64;
        report.redundancy = self.gossip_tx as f64 / got.max(1) as f64;
        report.hops_mean = hops_sum as f64 / got.max(1) as f64;
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        report.latency_p50 = pct(0.5);
        report.latency_p99 = pct(0.99);
        report.latency_max = latencies.last().copied().unwrap_or_default();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.up {
                node.finals.push(node.overlay.balance());
                let r = node.overlay.readiness();
                if r.state() != ReadyState::Ready {
                    report.readiness_ok = false;
                    report.untruths.push(format!(
                        "n{i} {:?} at the end: {:?}",
                        r.state(),
                        r.missing()
                    ));
                }
            }
            for b in &node.finals {
                report.balance_ok &= b.holds();
                let s = &b.stats;
                report.frames_rx += s.rx_frames;
                report.duplicates += s.outcome(Outcome::Duplicate);
                report.dropped += s.outcome(Outcome::Dropped);
                report.rejected += s.outcome(Outcome::Rejected);
                s.rx_frames.hash(&mut self.trace);
                s.outcomes.hash(&mut self.trace);
            }
        }
        report.trace_hash = self.trace.finish();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calendar pops in exactly the order of a heap of (time, seq), through pushes
    /// into the running millisecond, the calendar and beyond it, interleaved with pops.
    #[test]
    fn the_agenda_pops_in_time_then_scheduling_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut agenda, mut heap) = (Agenda::default(), BinaryHeap::new());
        let (mut now, mut seq) = (0u64, 0u64);
        for round in 0..20_000 {
            for _ in 0..rng.gen_range(0..3) {
                let ahead = match rng.gen_range(0..4) {
                    0 => 0,
                    1 => rng.gen_range(0..1_000_000),
                    2 => rng.gen_range(0..200_000_000),
                    _ => rng.gen_range(0..5_000_000_000),
                };
                seq += 1;
                let at = Time::from_duration(Duration::from_nanos(now + ahead));
                agenda.push(
                    at,
                    seq,
                    Ev::Publish {
                        index: seq as usize,
                    },
                );
                heap.push(Reverse((at, seq)));
            }
            if round % 3 == 0 {
                continue;
            }
            let want = heap.pop().map(|Reverse((at, seq))| (at, seq as usize));
            let got = agenda.pop().map(|(at, ev)| match ev {
                Ev::Publish { index } => (at, index),
                _ => unreachable!(),
            });
            assert_eq!(got, want, "round {round}");
            if let Some((at, _)) = got {
                now = at.since_epoch().as_nanos() as u64;
            }
            assert_eq!(agenda.len(), heap.len());
        }
    }
}
