//! An in-memory network for overlay nodes and clients, in the manner of quinn-proto's test
//! `Pair`: every endpoint is stepped on virtual time, bytes move through per-link queues
//! with seeded latency and loss, and the clock jumps to the next wake-up instead of sleeping.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use overlay_core::client::{Client, ClientEvent};
use overlay_core::oap::{Flags, Role, HEADER_LEN};
use overlay_core::observe::Metrics;
use overlay_core::{Config, ConnId, Event, Overlay, Probe, Time};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Node(usize, ConnId),
    Client(usize),
}

#[derive(Clone, Debug)]
pub struct LinkModel {
    pub latency: Duration,
    pub jitter: Duration,
    /// Chance that a whole single-frame gossip message is lost on the way.
    pub loss: f64,
}

impl Default for LinkModel {
    fn default() -> LinkModel {
        LinkModel {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }
}

struct Pipe {
    to: End,
    /// (arrival time, bytes): FIFO per direction, like a TCP stream.
    inflight: VecDeque<(Time, Bytes)>,
    last_arrival: Time,
    rx: BytesMut,
    /// A stalled reader: bytes pile up in `inflight`, the writer is never told they went.
    stalled: bool,
    unacked: usize,
    closed: bool,
}

pub struct TestClient {
    pub client: Client,
    pub node: usize,
    pub conn: ConnId,
    pub events: Vec<ClientEvent>,
    pub closed: bool,
}

pub struct Net {
    pub now: Time,
    pub nodes: Vec<Overlay>,
    pub snapshotters: Vec<Snapshotter>,
    pub events: Vec<Vec<Event>>,
    pub clients: Vec<TestClient>,
    pipes: BTreeMap<End, Pipe>,
    pub model: LinkModel,
    rng: ChaCha8Rng,
    pub seed: u64,
    /// Every transmit with bytes, in the order nodes handed them out: (node, conn).
    pub tx_log: Vec<(usize, ConnId)>,
}

pub fn test_config() -> Config {
    let mut c = Config::default();
    c.overlay.max_conns = 64;
    c
}

impl Net {
    pub fn new(seed: u64, n: usize, cfg: impl Fn(usize) -> Config) -> Net {
        let now = Time::ZERO;
        let mut nodes = Vec::new();
        let mut snapshotters = Vec::new();
        for i in 0..n {
            let rec = DebuggingRecorder::new();
            snapshotters.push(rec.snapshotter());
            let metrics = metrics::with_local_recorder(&rec, Metrics::new);
            let mut c = cfg(i);
            c.overlay.node_id = format!("n{i}");
            let mut node = Overlay::new(c, metrics, seed.wrapping_add(i as u64), now);
            for p in [
                Probe::ListenersBound,
                Probe::MetricsBound,
                Probe::CfgLoaded,
                Probe::FdHeadroom,
            ] {
                node.set_probe(now, p, true);
            }
            nodes.push(node);
        }
        Net {
            now,
            events: vec![Vec::new(); n],
            nodes,
            snapshotters,
            clients: Vec::new(),
            pipes: BTreeMap::new(),
            model: LinkModel::default(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed),
            seed,
            tx_log: Vec::new(),
        }
    }

    fn pipe(&mut self, from: End, to: End) {
        self.pipes.insert(
            from,
            Pipe {
                to,
                inflight: VecDeque::new(),
                last_arrival: self.now,
                rx: BytesMut::new(),
                stalled: false,
                unacked: 0,
                closed: false,
            },
        );
    }

    /// Node `a` dials node `b`.
    pub fn connect(&mut self, a: usize, b: usize) -> (ConnId, ConnId) {
        let now = self.now;
        let cb = self.nodes[b].handle_accept(now);
        let ca = self.nodes[a].handle_connected(now);
        self.pipe(End::Node(a, ca), End::Node(b, cb));
        self.pipe(End::Node(b, cb), End::Node(a, ca));
        (ca, cb)
    }

    /// A client dials node `n`; returns the client's index.
    pub fn client(&mut self, n: usize, role: Role, topics: &[&str]) -> usize {
        self.client_with_cap(n, role, topics, None)
    }

    /// A client that presents capability token `cap` in its HELLO.
    pub fn client_with_cap(
        &mut self,
        n: usize,
        role: Role,
        topics: &[&str],
        cap: Option<&[u8]>,
    ) -> usize {
        let now = self.now;
        let conn = self.nodes[n].handle_accept(now);
        let idx = self.clients.len();
        let mut client = Client::new(
            &format!("client{idx}"),
            role,
            topics.iter().map(|t| t.to_string()).collect(),
            cap.map(Bytes::copy_from_slice),
        );
        client.start();
        self.clients.push(TestClient {
            client,
            node: n,
            conn,
            events: Vec::new(),
            closed: false,
        });
        self.pipe(End::Client(idx), End::Node(n, conn));
        self.pipe(End::Node(n, conn), End::Client(idx));
        idx
    }

    /// A raw connection to node `n` whose bytes the test writes itself.
    pub fn raw(&mut self, n: usize) -> ConnId {
        let now = self.now;
        self.nodes[n].handle_accept(now)
    }

    pub fn stall(&mut self, from: End, stalled: bool) {
        if let Some(p) = self.pipes.get_mut(&from) {
            p.stalled = stalled;
        }
    }

    /// Un-stalls a reader and reports what piled up as written (the writer catches up).
    pub fn resume(&mut self, from: End) {
        let Some(p) = self.pipes.get_mut(&from) else {
            return;
        };
        p.stalled = false;
        let n = std::mem::take(&mut p.unacked);
        if let End::Node(i, conn) = from {
            let now = self.now;
            self.nodes[i].handle_written(now, conn, n);
        }
    }

    fn send(&mut self, from: End, bytes: Bytes) {
        let model = self.model.clone();
        let jitter = if model.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.gen_range(0..model.jitter.as_nanos() as u64))
        };
        let lost = model.loss > 0.0 && is_single_gossip(&bytes) && self.rng.gen_bool(model.loss);
        let now = self.now;
        let Some(p) = self.pipes.get_mut(&from) else {
            return;
        };
        if p.closed || lost {
            return;
        }
        // FIFO per direction: a later send never overtakes an earlier one.
        let at = (now + model.latency + jitter).max(p.last_arrival);
        p.last_arrival = at;
        p.inflight.push_back((at, bytes));
    }

    /// Delivers due bytes and drains every endpoint until nothing moves; returns whether
    /// anything happened.
    pub fn step(&mut self) -> bool {
        let mut moved = false;
        let now = self.now;
        // Outputs of nodes.
        for i in 0..self.nodes.len() {
            self.nodes[i].handle_timeout(now);
            while let Some(t) = self.nodes[i].poll_transmit(now) {
                moved = true;
                let from = End::Node(i, t.conn);
                if !t.is_empty() {
                    self.tx_log.push((i, t.conn));
                    let mut b = BytesMut::with_capacity(t.len());
                    b.extend_from_slice(&t.head);
                    b.extend_from_slice(&t.body);
                    self.send(from, b.freeze());
                    let stalled = self.pipes.get(&from).is_some_and(|p| p.stalled);
                    if stalled {
                        if let Some(p) = self.pipes.get_mut(&from) {
                            p.unacked += 1;
                        }
                    } else {
                        self.nodes[i].handle_written(now, t.conn, 1);
                    }
                }
                if t.close {
                    self.close_pair(from);
                }
            }
            while let Some(e) = self.nodes[i].poll_event() {
                if let Event::Abort { conn } = e {
                    self.close_pair(End::Node(i, conn));
                }
                self.events[i].push(e);
            }
        }
        // Outputs of clients.
        for c in 0..self.clients.len() {
            while let Some(b) = self.clients[c].client.poll_transmit() {
                moved = true;
                self.send(End::Client(c), b);
            }
        }
        // Deliveries.
        let froms: Vec<End> = self.pipes.keys().copied().collect();
        for from in froms {
            let p = self.pipes.get_mut(&from).unwrap();
            if p.stalled {
                continue;
            }
            let mut got = false;
            while p.inflight.front().is_some_and(|(at, _)| *at <= now) {
                let (_, b) = p.inflight.pop_front().unwrap();
                p.rx.extend_from_slice(&b);
                got = true;
            }
            if !got {
                continue;
            }
            moved = true;
            let to = p.to;
            let mut rx = std::mem::take(&mut p.rx);
            match to {
                End::Node(n, conn) => self.nodes[n].handle_bytes(now, conn, &mut rx),
                End::Client(c) => {
                    let tc = &mut self.clients[c];
                    tc.client.handle_bytes(&mut rx);
                    while let Some(e) = tc.client.poll_event() {
                        tc.events.push(e);
                    }
                }
            }
            if let Some(p) = self.pipes.get_mut(&from) {
                p.rx = rx;
            }
        }
        moved
    }

    fn close_pair(&mut self, from: End) {
        let Some(p) = self.pipes.get_mut(&from) else {
            return;
        };
        if p.closed {
            return;
        }
        p.closed = true;
        let to = p.to;
        if let Some(q) = self.pipes.get_mut(&to) {
            q.closed = true;
        }
        let now = self.now;
        for end in [from, to] {
            match end {
                End::Node(n, conn) => self.nodes[n].handle_closed(now, conn),
                End::Client(c) => self.clients[c].closed = true,
            }
        }
    }

    /// Closes a connection from the side of `end` (peer went away).
    pub fn disconnect(&mut self, end: End) {
        self.close_pair(end);
    }

    /// Runs until nothing moves and no bytes are in flight, jumping the clock between.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            while self.step() {}
            match self.next_arrival() {
                Some(t) if t > self.now => self.now = t,
                Some(_) => continue,
                None => return,
            }
        }
        panic!("seed {}: network did not settle", self.seed);
    }

    fn next_arrival(&self) -> Option<Time> {
        self.pipes
            .values()
            .filter(|p| !p.stalled && !p.closed)
            .filter_map(|p| p.inflight.front().map(|(t, _)| *t))
            .min()
    }

    /// Advances virtual time by `d`, firing timers at their deadlines.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            while self.step() {}
            let next_timer = self.nodes.iter().filter_map(|n| n.poll_timeout()).min();
            let next = [next_timer, self.next_arrival()]
                .into_iter()
                .flatten()
                .filter(|t| *t > self.now)
                .min();
            match next {
                Some(t) if t <= end => self.now = t,
                _ => {
                    self.now = end;
                    while self.step() {}
                    return;
                }
            }
        }
    }

    /// Writes raw bytes from a raw connection into node `n`.
    pub fn feed(&mut self, n: usize, conn: ConnId, bytes: &[u8]) {
        let mut b = BytesMut::from(bytes);
        let now = self.now;
        self.nodes[n].handle_bytes(now, conn, &mut b);
    }

    /// Everything node `n` wants to send to `conn` right now (for raw connections).
    pub fn drain_raw(&mut self, n: usize, conn: ConnId) -> (Vec<u8>, bool) {
        let now = self.now;
        let mut out = Vec::new();
        let mut closed = false;
        let mut others = Vec::new();
        while let Some(t) = self.nodes[n].poll_transmit(now) {
            if t.conn != conn {
                others.push(t);
                continue;
            }
            out.extend_from_slice(&t.head);
            out.extend_from_slice(&t.body);
            if !t.is_empty() {
                self.nodes[n].handle_written(now, conn, 1);
            }
            if t.close {
                closed = true;
                self.nodes[n].handle_closed(now, conn);
            }
        }
        assert!(others.is_empty(), "raw drains assume one connection");
        (out, closed)
    }

    /// Values of every series of `name` on node `n` whose labels include `labels`.
    fn series(&self, n: usize, name: &str, labels: &[(&str, &str)]) -> Vec<DebugValue> {
        self.snapshotters[n]
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, _, _, _)| {
                k.key().name() == name
                    && labels.iter().all(|(l, v)| {
                        k.key()
                            .labels()
                            .any(|lab| lab.key() == *l && lab.value() == *v)
                    })
            })
            .map(|(_, _, _, v)| v)
            .collect()
    }

    /// Sum of counters (or histogram sample counts) matching `labels`.
    pub fn counter(&self, n: usize, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.series(n, name, labels)
            .into_iter()
            .map(|v| match v {
                DebugValue::Counter(c) => c,
                DebugValue::Gauge(g) => g.into_inner() as u64,
                DebugValue::Histogram(h) => h.len() as u64,
            })
            .sum()
    }

    pub fn gauge(&self, n: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(n, name, labels)
            .into_iter()
            .map(|v| match v {
                DebugValue::Gauge(g) => g.into_inner(),
                _ => 0.0,
            })
            .sum()
    }

    pub fn messages(&self, c: usize) -> Vec<&overlay_core::oap::Message> {
        self.clients[c]
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    pub fn acks(&self, c: usize) -> Vec<u16> {
        self.clients[c]
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Ack { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// Refusal notices client `c` has heard: (error, refused) each.
    pub fn notices(&self, c: usize) -> Vec<(String, u64)> {
        self.clients[c]
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Notice { error, refused, .. } => Some((error.clone(), *refused)),
                _ => None,
            })
            .collect()
    }

    /// Every count `Stats` keeps equals the series exported for it, on every node: the
    /// balance tests check and the dashboards show are the same numbers.
    pub fn assert_counts_exported(&self) {
        use overlay_core::observe::*;
        use overlay_core::RejectReason;
        for (i, node) in self.nodes.iter().enumerate() {
            // One snapshot per node: this runs after every step of the property test.
            let snap: Vec<CounterValue> = self.snapshotters[i]
                .snapshot()
                .into_vec()
                .into_iter()
                .filter_map(|(k, _, _, v)| match v {
                    DebugValue::Counter(c) => Some((
                        k.key().name().to_string(),
                        k.key()
                            .labels()
                            .map(|l| (l.key().to_string(), l.value().to_string()))
                            .collect(),
                        c,
                    )),
                    _ => None,
                })
                .collect();
            let counter = |name: &str, labels: &[(&str, &str)]| -> u64 {
                snap.iter()
                    .filter(|(n, ls, _)| {
                        n == name
                            && labels
                                .iter()
                                .all(|(l, v)| ls.iter().any(|(k, x)| k == l && x == v))
                    })
                    .map(|(_, _, c)| c)
                    .sum()
            };
            let s = node.stats();
            let at = |what: &str| format!("seed {}: node {i}: {what}", self.seed);
            let rx = counter(FRAMES_TOTAL, &[("dir", "rx")]);
            assert_eq!(s.rx_frames, rx, "{}", at("frames received"));
            for &o in Outcome::ALL {
                let m = counter(RX_OUTCOMES_TOTAL, &[("outcome", o.as_str())]);
                assert_eq!(s.outcome(o), m, "{}", at(o.as_str()));
            }
            for &r in RxDrop::ALL {
                let m = counter(RX_DROPPED_TOTAL, &[("reason", r.as_str())]);
                assert_eq!(s.dropped(r), m, "{}", at(r.as_str()));
            }
            for r in RejectReason::ALL {
                let m = counter(REJECTED_TOTAL, &[("reason", r.as_str())]);
                let counted = s.rejected(r) + s.refused[r.index()];
                assert_eq!(counted, m, "{}", at(r.as_str()));
            }
            for &r in DropReason::ALL {
                let labels = [("queue", "egress"), ("reason", r.as_str())];
                let m = counter(QUEUE_DROPPED_TOTAL, &labels);
                assert_eq!(s.egress_dropped[r.index()], m, "{}", at(r.as_str()));
            }
            let writes = |o: WriteOutcome| counter(WRITES_TOTAL, &[("outcome", o.as_str())]);
            assert_eq!(
                s.writes_busy,
                writes(WriteOutcome::Busy),
                "{}",
                at("busy writes")
            );
            assert_eq!(
                s.writes_accepted,
                writes(WriteOutcome::Accepted),
                "{}",
                at("writes")
            );
        }
    }

    pub fn assert_balance(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let b = n.balance();
            assert!(
                b.holds(),
                "seed {}: node {i} balance broken: {b}",
                self.seed
            );
        }
    }
}

/// A counter's name, labels and value, from one snapshot.
type CounterValue = (String, Vec<(String, String)>, u64);

fn is_single_gossip(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && {
        let flags = Flags::from_bits(u16::from_be_bytes([b[6], b[7]]));
        let app = u16::from_be_bytes([b[10], b[11]]);
        app == 1 && flags.contains(Flags::START) && flags.contains(Flags::END)
    }
}

pub fn msg_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8] = 0xAB;
    id
}
