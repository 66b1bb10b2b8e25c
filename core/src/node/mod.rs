//! The overlay node: one per process, owning every decision. Inputs are `handle_*` calls
//! with the time passed in; outputs are drained with `poll_transmit`, `poll_event`,
//! `poll_dial` and `poll_timeout` after every input (the contract is on `Overlay`).
//!
//! This file holds the node's state and its public API; the decisions live in one module per
//! concern: `ingress` (dispatch and rejects), `handshake`, `gossip` (dedupe, fanout, egress
//! admission), `notice` (refusals told without an answer), `transmit` (control first, then DRR within permits), `timers`, `readiness`,
//! `sessions` (lifecycle), `dial` (the configured peers kept dialed), `drain` (the end of the
//! node), `accounting` (the balance of counts) and `held` (what a session holds, for readers
//! outside the node).

mod access;
mod accounting;
mod dial;
mod drain;
mod gossip;
mod handshake;
mod held;
mod ingress;
mod link;
mod notice;
mod owed;
mod pressure;
pub use pressure::PEER_PRESSURE_MAX;
mod readiness;
mod rescue;
mod sessions;
mod timers;
mod transmit;
mod tree;

pub use held::Held;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cap::CapVerifier;
use crate::config::{Config, PqModeConfig};
use crate::dialer::Dialer;
use crate::egress::{Drr, OutFrame, Permits, Refusal};
use crate::event::Event;
use crate::limiter::TokenBucket;
use crate::oap::{
    self, AppProto, Ctrl, Decoder, Flags, Frame, FrameError, FrameKind, GossipHeader, Header,
    Hello, HelloError, HelloOk, Message, MsgId, Reassembler, Role, StreamLimits,
    GOSSIP_FRAME_OVERHEAD, HEADER_LEN, VERSION,
};
use crate::observe::{
    Dir, DropReason, FrameClass, HandshakeFailure, Metrics, Outcome, PermitState, Queue, RxDrop,
};
use crate::ready::{Probe, RateWindow, ReadyState, ReadyView, Sustained};
use crate::reason::RejectReason;
use crate::seen::{KeyedHasher, SeenCache};
use crate::session::{CloseReason, ConnId, Phase, Session, Unwritten};
use crate::stats::{Balance, Stats};
use crate::store::Store;
use crate::time::Time;
use crate::transport::Link;
use accounting::{Count, Counts};
pub use drain::ShutdownReport;

/// Housekeeping period: timeouts, keepalives, readiness sampling and gauges. Deadlines are
/// checked at this granularity.
pub const TICK: Duration = Duration::from_millis(250);

/// Trailing window over which the shed rate (busy answers over the writes that could have
/// heard one) is measured; `readiness.sustain` then says how long it must keep going over
/// `shed_rate_max` before readiness reports it.
const SHED_WINDOW: Duration = Duration::from_secs(2);

/// How long pressure must be absent before readiness forgets it: dips shorter than this do
/// not restart the sustain window, and recovery follows the end of pressure by about this.
pub const PRESSURE_GRACE: Duration = Duration::from_secs(1);

/// Bytes to send on one connection. Write `head` then `body`; if `close` is set, shut the
/// connection down after writing and report it with `handle_closed`. Every transmit with
/// bytes holds an egress permit until `handle_written` reports it.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub conn: ConnId,
    pub head: Bytes,
    pub body: Bytes,
    pub close: bool,
}

impl Transmit {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a local `publish` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("egress is over its high watermark (writes fail first)")]
    Busy,
    #[error("the node is draining")]
    NotReady,
    #[error("topic must be 1..=255 bytes")]
    Topic,
    #[error("message body exceeds limits.max_body_bytes")]
    TooLarge,
}

/// Why a HELLO is refused: the reject reason, the handshake-failure label (if the
/// refusal has one), a detail for logs, and the `retry_after` to advertise.
struct HelloRefusal {
    reason: RejectReason,
    label: Option<HandshakeFailure>,
    why: &'static str,
    retry_after: Option<u64>,
    /// The answer's `error` when it is finer than the reason (the auth failure of a 401).
    error: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Probes {
    listeners_bound: bool,
    metrics_bound: bool,
    cfg_loaded: bool,
    fd_headroom: bool,
    pq_ready: Option<bool>,
}

/// One overlay node: every decision of a svc-overlay process, with no IO, clock or thread.
///
/// # The run loop
///
/// The node is driven as quinn-proto's `Connection` or str0m's `Rtc`: the driver owns it
/// alone and, over and over,
///
/// 1. feeds it **one input**, with the time: a connection accepted (`handle_accept`), a
///    dial connected or failed (`handle_dialed`, `handle_dial_failed`), bytes read
///    (`handle_bytes`), transmits written (`handle_written`), a connection gone
///    (`handle_closed`), the time reached (`handle_timeout`), or a command (`publish`,
///    `set_peer_addrs`, `set_probe`, `reconfigure`, `begin_drain`);
/// 2. drains **every output**, in this order, until none is left: `poll_transmit` (bytes to
///    write), `poll_event` (what happened, and aborts to carry out), `poll_dial`
///    (connections to open to configured peers). Carrying an output out may itself be an
///    input (an abort closes a connection: `handle_closed`), hence the loop;
/// 3. waits for the next input or the instant `poll_timeout` names, whichever comes first.
///
/// Every deadline is the node's: each session's timeouts, the next dial of each configured
/// peer (its backoff), and the drain's (`shutdown.drain_deadline`). When `drain_ended`, the
/// driver calls `shutdown`, lets the closes flush, and logs `shutdown_report`.
///
/// ```no_run
/// use overlay_core::observe::Metrics;
/// use overlay_core::{Config, ConnId, Dial, Event, Overlay, Time, Transmit};
///
/// enum Input {
///     Read(ConnId, bytes::BytesMut),
///     Dialed(Dial, bool),
///     Timeout,
/// }
/// # fn now() -> Time { Time::ZERO }
/// # fn next_input(_wake: Option<Time>) -> Input { Input::Timeout }
/// # fn write(_: Transmit) {}
/// # fn connect(_: Dial) {}
/// # fn on_event(_: Event) {}
///
/// let mut node = Overlay::new(Config::default(), Metrics::noop(), 7, now());
/// node.set_peer_addrs(now(), "n2", vec!["10.0.0.2:7000".into()]);
/// while !node.drain_ended() {
///     match next_input(node.poll_timeout()) {
///         Input::Read(conn, mut buf) => node.handle_bytes(now(), conn, &mut buf),
///         Input::Dialed(d, true) => _ = node.handle_dialed(now(), &d),
///         Input::Dialed(d, false) => _ = node.handle_dial_failed(now(), &d),
///         Input::Timeout => node.handle_timeout(now()),
///     }
///     loop {
///         let mut any = false;
///         while let Some(t) = node.poll_transmit(now()) {
///             write(t);
///             any = true;
///         }
///         while let Some(ev) = node.poll_event() {
///             on_event(ev);
///             any = true;
///         }
///         while let Some(d) = node.poll_dial() {
///             connect(d);
///             any = true;
///         }
///         if !any {
///             break;
///         }
///     }
/// }
/// node.shutdown(now());
/// let report = node.shutdown_report(now());
/// ```
pub struct Overlay {
    cfg: Config,
    node_id: String,
    metrics: Metrics,
    rng: ChaCha8Rng,
    next_conn: u64,
    sessions: BTreeMap<ConnId, Session>,
    /// Established peers and clients, in establishment order (fanout draws from these).
    peers: Vec<ConnId>,
    clients: Vec<ConnId>,
    drr: Drr<ConnId>,
    /// Sessions with control frames or a close to hand out.
    ctrl_ready: VecDeque<ConnId>,
    permits: Permits,
    /// Sessions holding at least one permit (for each session's fair share).
    holders: usize,
    /// Bytes held in every session's partial streams (`max_partial_bytes_total`).
    partial_bytes: usize,
    /// Receive buffer held by every session's incomplete frame (`Session::incomplete`),
    /// within the same `max_partial_bytes_total`.
    incomplete_bytes: usize,
    /// Frames held in them (the `gossip_ingress` depth and the balance's pending).
    partial_frames: u64,
    /// Sessions with frames queued: the gauges look at these, not at every session.
    queued: std::collections::BTreeSet<ConnId>,
    seen: SeenCache,
    handshakes: TokenBucket,
    /// Arena for frame heads: many small heads share one allocation.
    scratch: BytesMut,
    events: VecDeque<Event>,
    counts: Counts,
    probes: Probes,
    queues_bad: Sustained,
    shed_bad: Sustained,
    shed_window: RateWindow,
    queues_ok: bool,
    shed_rate_ok: bool,
    last_ready: Option<(ReadyState, Vec<&'static str>)>,
    next_tick: Time,
    draining: bool,
    local_delivery: bool,
    ingress_depth: usize,
    over_watermark: usize,
    /// Client sessions over their watermark: while there is one, reads from peers pause.
    client_pressure: usize,
    /// The planned destinations of the message being handled (see `gossip::plan`).
    fanout_buf: Vec<ConnId>,
    plan_clients: Vec<ConnId>,
    /// Tree peers the planned message goes to whole, and those it is announced to.
    plan_eager: Vec<ConnId>,
    plan_lazy: Vec<ConnId>,
    /// One copy of each recent message, for pulls and repair.
    store: Store,
    /// Messages owed to clients, over all sessions (for the gauge).
    owed_total: usize,
    /// Peers over their watermark and not demoted: while any, reads from the other peers
    /// pause, so the pressure travels back hop by hop to the writers.
    peer_pressure: usize,
    /// Announced messages not yet arrived, and their pull deadlines in order.
    missing: HashMap<MsgId, tree::Missing, KeyedHasher>,
    missing_order: VecDeque<(Time, MsgId)>,
    /// How late announced messages have lately arrived (see `tree::Missing`).
    arrival_lag: Duration,
    /// When a peer last delivered a new message (`tree_first`), and when a rescue was last
    /// looked for (see `rescue`).
    last_first: Time,
    rescue_looked: Time,
    /// When the last rescue pulled (see `rescue`).
    rescued_at: Option<Time>,
    /// Recent pulls and who they were asked of, oldest first (see `tree::tree_duplicate`).
    pulled: HashMap<MsgId, ConnId, KeyedHasher>,
    pulled_order: VecDeque<MsgId>,
    /// Established tree sessions.
    tree_links: usize,
    /// Sessions filed under their earliest deadline (see `timers`).
    timers: std::collections::BinaryHeap<std::cmp::Reverse<(Time, ConnId)>>,
    /// Checks HELLO tokens under `auth.required` (`set_auth`); none: every token fails.
    verifier: Option<Arc<dyn CapVerifier>>,
    /// The token this node presents when it dials (`auth.token_file`, read by the runtime).
    credential: Bytes,
    /// The configured peers kept dialed, with their backoff.
    dialer: Dialer,
    /// Set by `begin_drain` (or a bare `shutdown`): the drain's deadline and its end.
    drain: Option<drain::Drain>,
}

impl Overlay {
    /// A node with `cfg` (already validated), its metric handles and an RNG seed.
    pub fn new(cfg: Config, metrics: Metrics, seed: u64, now: Time) -> Overlay {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Its own stream from the same seed: dials drawing jitter do not move the ids and
        // nonces drawn from `rng`.
        let dialer = Dialer::new(
            cfg.overlay.dial_backoff_base,
            cfg.overlay.dial_backoff_max,
            ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_D1A1),
        );
        let hasher = KeyedHasher::new(rng.next_u64(), rng.next_u64());
        let g = &cfg.overlay.gossip;
        let counts = Counts::new(&metrics);
        let quantum = g.chunk_bytes + GOSSIP_FRAME_OVERHEAD;
        let sustain = cfg.readiness.sustain;
        let probes = Probes {
            pq_ready: (cfg.overlay.pq_mode == PqModeConfig::Hybrid).then_some(false),
            ..Probes::default()
        };
        let node = Overlay {
            node_id: cfg.node_id(),
            metrics,
            rng,
            next_conn: 1,
            sessions: BTreeMap::new(),
            peers: Vec::new(),
            clients: Vec::new(),
            drr: Drr::new(quantum, g.burst_budget_frames),
            ctrl_ready: VecDeque::new(),
            permits: Permits::new(g.egress_permits),
            holders: 0,
            partial_bytes: 0,
            incomplete_bytes: 0,
            partial_frames: 0,
            queued: std::collections::BTreeSet::new(),
            seen: SeenCache::new(g.seen_cache_size, g.seen_ttl, hasher.clone()),
            handshakes: TokenBucket::new(
                cfg.overlay.handshake_rate,
                cfg.overlay.handshake_burst,
                now,
            ),
            scratch: BytesMut::new(),
            events: VecDeque::new(),
            counts,
            probes,
            queues_bad: Sustained::new(sustain, PRESSURE_GRACE),
            shed_bad: Sustained::new(sustain, PRESSURE_GRACE),
            shed_window: RateWindow::new(SHED_WINDOW),
            queues_ok: true,
            shed_rate_ok: true,
            last_ready: None,
            next_tick: now,
            draining: false,
            local_delivery: false,
            ingress_depth: 0,
            over_watermark: 0,
            client_pressure: 0,
            fanout_buf: Vec::new(),
            plan_clients: Vec::new(),
            plan_eager: Vec::new(),
            plan_lazy: Vec::new(),
            store: Store::new(g.store_bytes, g.store_ttl, hasher.clone()),
            owed_total: 0,
            peer_pressure: 0,
            missing: HashMap::with_hasher(hasher.clone()),
            missing_order: VecDeque::new(),
            arrival_lag: Duration::ZERO,
            last_first: now,
            rescue_looked: now,
            rescued_at: None,
            pulled: HashMap::with_hasher(hasher.clone()),
            pulled_order: VecDeque::new(),
            tree_links: 0,
            timers: std::collections::BinaryHeap::new(),
            verifier: None,
            credential: Bytes::new(),
            dialer,
            drain: None,
            cfg,
        };
        node.update_gauges();
        node
    }

    // ----- getters -------------------------------------------------------------------

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub fn stats(&self) -> &Stats {
        self.counts.stats()
    }
    /// The balance of counts now, with frames still held in partial streams.
    pub fn balance(&self) -> Balance {
        Balance {
            stats: self.stats().clone(),
            pending: self.partial_frames,
        }
    }
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
    pub fn established(&self) -> usize {
        self.peers.len() + self.clients.len()
    }
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
    /// Sessions with frames queued, in id order: only these can be over a watermark, and
    /// they are few, where the sessions are many.
    pub fn queued_sessions(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.queued.iter().copied()
    }
    pub fn permits(&self) -> &Permits {
        &self.permits
    }
    /// Whether the runtime should stop reading from `conn` for now: a peer, while some
    /// client of this node is over its watermark. What the clients cannot take then waits
    /// in the peers' queues and TCP windows instead of arriving here to be dropped, and the
    /// pressure travels back to the writer, who hears `503 busy` at its own node (its
    /// node's eager tree peers are over their watermark). Clients are always read (their
    /// PINGs, acks and writes), so the waiting never forms a cycle.
    pub fn read_paused(&self, conn: ConnId) -> bool {
        // A client backed up pauses every peer: its pace does not depend on the mesh. A peer
        // backed up pauses the others but not itself: reading from it is how two nodes
        // that wait on each other drain.
        self.sessions.get(&conn).is_some_and(|s| {
            s.is_peer()
                && (self.client_pressure > 0 || (self.peer_pressure > 0 && !s.over_watermark))
        })
    }

    /// Whether any read is paused (`read_paused`); the runtime resumes them when not.
    pub fn reads_paused(&self) -> bool {
        self.client_pressure > 0 || self.peer_pressure > 0
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }
    /// Draining and nothing left to write: the runtime may exit.
    pub fn is_drained(&self) -> bool {
        self.draining
            && self
                .sessions
                .values()
                .all(|s| s.egress.is_empty() && s.in_flight() == 0)
    }
    pub fn has_seen(&self, id: &MsgId, now: Time) -> bool {
        self.seen.contains(id, now)
    }

    /// The readiness keys as they stand.
    pub fn readiness(&self) -> ReadyView {
        ReadyView {
            listeners_bound: self.probes.listeners_bound,
            metrics_bound: self.probes.metrics_bound,
            cfg_loaded: self.probes.cfg_loaded,
            pq_ready: self.probes.pq_ready,
            queues_ok: self.queues_ok,
            shed_rate_ok: self.shed_rate_ok,
            fd_headroom: self.probes.fd_headroom,
            // Live, not sampled: the next connection is refused the moment this is false.
            conns_ok: self.sessions.len() < self.cfg.overlay.max_conns,
            draining: self.draining,
        }
    }

    // ----- inputs from the runtime ---------------------------------------------------

    /// The token verifier (`auth.verify_keys`) and the token this node presents when it
    /// dials (`auth.token_file`): the runtime owns keys, files and the wall clock, and
    /// hands them in at start and on every reload. Sessions already established keep the
    /// capability they were admitted with.
    pub fn set_auth(&mut self, verifier: Option<Arc<dyn CapVerifier>>, credential: Bytes) {
        self.verifier = verifier;
        self.credential = credential;
    }

    /// A fact only the runtime can see (listener bound, config loaded, fd headroom...).
    pub fn set_probe(&mut self, now: Time, probe: Probe, ok: bool) {
        self.set_probes(now, &[(probe, ok)]);
    }

    /// Several facts at once, so readiness moves once (no intermediate states reported).
    pub fn set_probes(&mut self, now: Time, facts: &[(Probe, bool)]) {
        for &(probe, ok) in facts {
            self.apply_probe(probe, ok);
        }
        self.refresh_readiness(now);
    }

    fn apply_probe(&mut self, probe: Probe, ok: bool) {
        let p = &mut self.probes;
        match probe {
            Probe::ListenersBound => p.listeners_bound = ok,
            Probe::MetricsBound => p.metrics_bound = ok,
            Probe::CfgLoaded => p.cfg_loaded = ok,
            Probe::FdHeadroom => p.fd_headroom = ok,
            Probe::PqReady => {
                if p.pq_ready.is_some() {
                    p.pq_ready = Some(ok)
                }
            }
        }
    }

    /// Read chunks waiting between the socket readers and this node (the `ingress` queue).
    pub fn set_ingress_depth(&mut self, depth: usize) {
        self.ingress_depth = depth;
    }

    /// Emit `Event::Message` for every new message (for embedders and simulators).
    pub fn set_local_delivery(&mut self, on: bool) {
        self.local_delivery = on;
    }

    /// Applies a new config; returns the keys whose change needs a restart (they keep
    /// their old values until then).
    pub fn reconfigure(&mut self, now: Time, mut cfg: Config) -> Vec<&'static str> {
        let mut restart = Vec::new();
        if cfg.overlay.listen != self.cfg.overlay.listen {
            restart.push("overlay.listen");
            cfg.overlay.listen = self.cfg.overlay.listen.clone();
        }
        if cfg.overlay.tls_listen != self.cfg.overlay.tls_listen {
            restart.push("overlay.tls_listen");
            cfg.overlay.tls_listen = self.cfg.overlay.tls_listen.clone();
        }
        if cfg.admin.listen != self.cfg.admin.listen {
            restart.push("admin.listen");
            cfg.admin.listen = self.cfg.admin.listen.clone();
        }
        if cfg.overlay.node_id != self.cfg.overlay.node_id {
            restart.push("overlay.node_id");
            cfg.overlay.node_id = self.cfg.overlay.node_id.clone();
        }
        if cfg.overlay.pq_mode != self.cfg.overlay.pq_mode {
            restart.push("overlay.pq_mode");
            cfg.overlay.pq_mode = self.cfg.overlay.pq_mode;
        }
        let g = &cfg.overlay.gossip;
        self.drr = {
            let mut d = Drr::new(g.chunk_bytes + GOSSIP_FRAME_OVERHEAD, g.burst_budget_frames);
            for (id, s) in self.sessions.iter_mut() {
                s.drr.queued = false;
                if s.egress.gossip_frames() > 0 {
                    d.activate(*id, &mut s.drr);
                }
            }
            d
        };
        self.permits.set_capacity(g.egress_permits);
        self.dialer
            .set_backoff(cfg.overlay.dial_backoff_base, cfg.overlay.dial_backoff_max);
        self.store.set_bounds(g.store_bytes, g.store_ttl);
        self.handshakes
            .reconfigure(cfg.overlay.handshake_rate, cfg.overlay.handshake_burst);
        self.queues_bad.set_sustain(cfg.readiness.sustain);
        self.shed_bad.set_sustain(cfg.readiness.sustain);
        let (dl, hl) = (decoder_limits(&cfg), hello_limits(&cfg));
        for s in self.sessions.values_mut() {
            s.decoder
                .set_limits(if s.is_established() { dl } else { hl });
            s.rate
                .reconfigure(cfg.overlay.peer.max_rps, cfg.overlay.peer.max_rps);
        }
        self.cfg = cfg;
        // New bounds move every session's fill: writes refused under the old watermark
        // must be accepted the moment the new bounds allow them.
        let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
        for id in ids {
            // Room the new bounds give goes to what clients are owed first.
            self.repay(id);
        }
        self.refresh_readiness(now);
        self.update_gauges();
        restart
    }

    /// A connection accepted on the plain listener; the dialer owes us a HELLO.
    pub fn handle_accept(&mut self, now: Time) -> ConnId {
        self.handle_accept_over(now, Link::tcp(now))
    }

    /// A connection accepted, over the transport `link` describes (TLS: after its
    /// handshake); the dialer owes us a HELLO.
    pub fn handle_accept_over(&mut self, now: Time, link: Link) -> ConnId {
        let id = self.new_session(now, true);
        self.metrics.handshake_attempts.increment(1);
        if !self.attach_link(now, id, link) {
            return id;
        }
        if self.sessions.len() > self.cfg.overlay.max_conns {
            self.refuse_conn(now, id, RejectReason::Busy, "max_conns reached");
        }
        id
    }

    /// A connection we dialed over plain TCP is up: send HELLO as a `peer`.
    pub fn handle_connected(&mut self, now: Time) -> ConnId {
        self.handle_connected_over(now, Link::tcp(now))
    }

    /// A connection we dialed is up over `link` (TLS: verified against the expected
    /// name): send HELLO as a `peer`.
    pub fn handle_connected_over(&mut self, now: Time, link: Link) -> ConnId {
        let id = self.new_session(now, false);
        self.metrics.handshake_attempts.increment(1);
        if !self.attach_link(now, id, link) {
            return id;
        }
        let corr_id = self.rng.gen_range(1..u64::MAX);
        let hello = Hello {
            versions: vec![VERSION],
            node: self.node_id.clone(),
            role: Role::Peer,
            max_frame: self.cfg.overlay.gossip.max_frame_bytes,
            topics: vec![],
            pq: (self.cfg.overlay.pq_mode == PqModeConfig::Hybrid).then(|| "hybrid".to_string()),
            comp: false,
            features: self.features(),
        };
        let mut f = Frame::new(
            AppProto::HELLO,
            Flags::REQ | Flags::START,
            corr_id,
            hello.to_json().into(),
        );
        // Bytes share their buffer: every dial presents the same token without a copy.
        f.cap = self.credential.clone();
        if let Some(s) = self.sessions.get_mut(&id) {
            s.phase = Phase::AwaitAnswer { corr_id };
        }
        self.send_ctrl(id, &f);
        self.events.push_back(Event::HandshakeStarted {
            conn: id,
            corr_id,
            inbound: false,
        });
        if self.sessions.len() > self.cfg.overlay.max_conns {
            self.refuse_conn(now, id, RejectReason::Busy, "max_conns reached");
        }
        id
    }

    /// Bytes read from `conn`. Every complete frame is consumed from `buf`; an incomplete
    /// one stays for the next call. After a frame error the connection is being closed and
    /// the rest of `buf` is discarded.
    pub fn handle_bytes(&mut self, now: Time, conn: ConnId, buf: &mut BytesMut) {
        loop {
            let Some(s) = self.sessions.get_mut(&conn) else {
                buf.clear();
                return;
            };
            if s.phase == Phase::Closing {
                buf.clear();
                return;
            }
            match s.decoder.decode(buf) {
                Ok(Some(frame)) => {
                    // Whole now: its room moves to the partial stream it may join.
                    self.incomplete_bytes -= std::mem::take(&mut s.incomplete);
                    s.last_rx = now;
                    s.partial_since = (!buf.is_empty()).then_some(now);
                    self.on_frame(now, conn, frame);
                }
                Ok(None) => {
                    if buf.is_empty() {
                        s.partial_since = None;
                    } else if s.partial_since.is_none() {
                        s.partial_since = Some(now);
                    }
                    break;
                }
                Err(e) => {
                    self.on_frame_error(now, conn, e);
                    buf.clear();
                    break;
                }
            }
        }
        self.hold_incomplete(now, conn, buf);
        // A frame or a stream begun brings the read deadline closer.
        self.arm(conn);
        self.debug_check_balance();
    }

    /// The writer of `conn` finished `frames` transmits: their permits come back.
    pub fn handle_written(&mut self, now: Time, conn: ConnId, frames: usize) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        s.last_write = now;
        self.count_written(conn, frames);
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if s.egress.gossip_frames() > 0 {
            self.drr.activate(conn, &mut s.drr);
        }
        if s.egress.ctrl_frames() > 0 || s.egress.close_pending() {
            self.mark_ctrl_ready(conn);
        }
    }

    /// The connection is gone (peer closed, error, or our close completed).
    pub fn handle_closed(&mut self, now: Time, conn: ConnId) {
        let Some(mut s) = self.sessions.remove(&conn) else {
            return;
        };
        // A session to a configured peer that ended is redialed after the backoff.
        self.dialer.session_ended(now, conn, s.role.is_some());
        self.unlist(&s);
        self.drr.remove(conn);
        self.ctrl_ready.retain(|c| *c != conn);
        let unwritten = s.in_flight();
        self.permits.release(unwritten);
        if unwritten > 0 {
            self.holders -= 1;
        }
        // Frames still queued, and frames handed to the writer but never reported written,
        // did not reach the peer as far as the node can tell: counted as shed, never as
        // transmitted.
        let (ctrl, gossip) = s.egress.clear();
        self.queued.remove(&conn);
        self.egress_drop(DropReason::Shed, (ctrl + gossip + unwritten) as u64);
        self.partial_bytes -= s.reasm.buffered_bytes();
        self.incomplete_bytes -= s.incomplete;
        self.partial_frames -= s.reasm.partial_frames();
        let partial = s.reasm.clear();
        self.rx_dropped(RxDrop::Closed, partial);
        self.forgive(std::mem::take(&mut s.owed));
        if s.over_watermark {
            self.over_watermark -= 1;
            if s.role == Some(Role::Client) && !s.demoted {
                self.client_pressure -= 1;
            } else if s.role == Some(Role::Peer) && !s.demoted {
                self.peer_pressure -= 1;
            }
        }
        let reason = s.close_reason.unwrap_or(CloseReason::PeerClosed);
        self.events.push_back(Event::Closed { conn, reason });
        self.conns_changed(now);
        if s.tree.is_some() {
            self.update_tree_gauges();
        }
        self.update_gauges();
    }

    /// Timers: handshake, read, write and idle timeouts, keepalive, readiness sampling,
    /// dials whose backoff has passed, the drain deadline.
    pub fn handle_timeout(&mut self, now: Time) {
        self.fire_timers(now);
        self.fire_dials(now);
        self.check_drain_deadline(now);
        self.rescue(now);
        if now < self.next_tick {
            self.debug_check_balance();
            return;
        }
        self.next_tick = now + TICK;
        self.seen.expire(now);
        if self.draining {
            self.close_drained(now);
        }
        self.tree_tick(now);
        self.demote_slow_sessions();
        self.refresh_readiness(now);
        self.update_gauges();
        self.debug_check_balance();
    }

    /// Publishes a message from this node (embedders). Writes fail first: refused with
    /// `Busy` while egress is over its high watermark.
    pub fn publish(
        &mut self,
        now: Time,
        topic: &str,
        data: Bytes,
        ttl: Option<u8>,
    ) -> Result<MsgId, PublishError> {
        if self.draining {
            self.count(Count::Refused(RejectReason::NotReady), 1);
            return Err(PublishError::NotReady);
        }
        if data.len() > self.cfg.limits.max_body_bytes {
            return Err(PublishError::TooLarge);
        }
        let mut msg_id = [0u8; 16];
        self.rng.fill_bytes(&mut msg_id);
        let header = GossipHeader::new(
            msg_id,
            ttl.unwrap_or(self.cfg.overlay.gossip.default_ttl),
            topic,
        )
        .map_err(|_| PublishError::Topic)?;
        self.plan(None, &header);
        let busy = self.plan_pressured();
        self.record_write(now, busy);
        if busy {
            self.count(Count::Refused(RejectReason::Busy), 1);
            return Err(PublishError::Busy);
        }
        self.seen.insert(msg_id, now);
        self.count(Count::Published, 1);
        self.count(Count::Accepted, 1);
        let message = Message {
            corr_id: 0,
            tenant_id: 0,
            header,
            data,
            ack_req: false,
            frames: 0,
        };
        self.tree_accept(now, &message);
        self.deliver_plan(&message, now);
        if self.local_delivery {
            self.events.push_back(Event::Message {
                from: None,
                message,
            });
        }
        Ok(msg_id)
    }

    // ----- outputs -------------------------------------------------------------------

    /// The next bytes to write, control frames first, then gossip by deficit round robin,
    /// within the global egress permits and each session's send window.
    pub fn poll_transmit(&mut self, now: Time) -> Option<Transmit> {
        if let Some(t) = self.next_ctrl(now) {
            return Some(t);
        }
        self.next_gossip(now)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` wants to run next.
    pub fn poll_timeout(&self) -> Option<Time> {
        Some(
            self.next_timer()
                .map_or(self.next_tick, |t| t.min(self.next_tick)),
        )
    }
}

fn decoder_limits(cfg: &Config) -> oap::Limits {
    oap::Limits {
        max_frame: cfg.overlay.gossip.max_frame_bytes,
        max_body_bytes: cfg.limits.max_body_bytes,
        decompress_ratio_cap: cfg.limits.decompress_ratio_cap,
    }
}

/// The limits of a session whose handshake is not done: a frame longer than
/// `overlay.max_hello_bytes` is refused `oversize` from its length prefix, before any of it
/// is buffered, so connections nobody has admitted yet hold at most that much each.
fn hello_limits(cfg: &Config) -> oap::Limits {
    let full = decoder_limits(cfg);
    oap::Limits {
        max_frame: full.max_frame.min(cfg.overlay.max_hello_bytes),
        ..full
    }
}

fn frame_class(app_proto: u16) -> FrameClass {
    match AppProto::from_u16(app_proto) {
        AppProto::Hello | AppProto::Ctrl => FrameClass::Ctrl,
        AppProto::Other(AppProto::TREE) => FrameClass::Ctrl,
        AppProto::Gossip => FrameClass::Gossip,
        AppProto::Other(_) => FrameClass::Other,
    }
}

fn error_resp(
    app_proto: u16,
    corr_id: u64,
    code: u16,
    error: &str,
    retry_after: Option<u64>,
) -> Frame {
    let body = HelloError {
        error: error.to_string(),
        retry_after,
    };
    let mut payload = BytesMut::new();
    payload.put_slice(&body.to_json());
    Frame::resp(app_proto, corr_id, code, payload.freeze())
}
