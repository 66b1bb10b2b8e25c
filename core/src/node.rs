//! The overlay node: one per process, owning every decision. Inputs are `handle_*` calls
//! with the time passed in; outputs are drained with `poll_transmit`, `poll_event` and
//! `poll_timeout` after every input.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Config, PqModeConfig};
use crate::egress::{Drr, OutFrame, Permits, Refusal};
use crate::event::Event;
use crate::limiter::TokenBucket;
use crate::oap::{
    self, AppProto, Ctrl, Decoder, Flags, Frame, FrameError, FrameKind, GossipHeader, Header,
    Hello, HelloError, HelloOk, Message, MsgId, Reassembler, Role, StreamLimits, HEADER_LEN,
    VERSION,
};
use crate::observe::{
    Dir, DropReason, FrameClass, HandshakeFailure, Metrics, Outcome, PermitState, PqOutcome, Queue,
    RxDrop,
};
use crate::ready::{Probe, RateWindow, ReadyState, ReadyView, Sustained};
use crate::reason::RejectReason;
use crate::seen::{KeyedHasher, SeenCache};
use crate::session::{CloseReason, ConnId, Phase, Session};
use crate::stats::{Balance, Stats};
use crate::time::Time;

/// Housekeeping period: timeouts, keepalives, readiness sampling and gauges. Deadlines are
/// checked at this granularity.
pub const TICK: Duration = Duration::from_millis(250);

/// Trailing window over which the shed rate is measured; `readiness.sustain` then says how
/// long that rate must stay over `shed_rate_max` before readiness reports it.
const SHED_WINDOW: Duration = Duration::from_secs(10);

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
}

#[derive(Clone, Copy, Debug, Default)]
struct Probes {
    listeners_bound: bool,
    metrics_bound: bool,
    cfg_loaded: bool,
    fd_headroom: bool,
    pq_ready: Option<bool>,
    tor_bootstrap: Option<bool>,
}

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
    seen: SeenCache,
    handshakes: TokenBucket,
    /// Arena for frame heads: many small heads share one allocation.
    scratch: BytesMut,
    events: VecDeque<Event>,
    stats: Stats,
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
    fanout_buf: Vec<ConnId>,
}

impl Overlay {
    /// A node with `cfg` (already validated), its metric handles and an RNG seed.
    pub fn new(cfg: Config, metrics: Metrics, seed: u64, now: Time) -> Overlay {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let hasher = KeyedHasher::new(rng.next_u64(), rng.next_u64());
        let g = &cfg.overlay.gossip;
        let quantum = g.chunk_bytes + HEADER_LEN + 18 + 255;
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
            seen: SeenCache::new(g.seen_cache_size, g.seen_ttl, hasher),
            handshakes: TokenBucket::new(
                cfg.overlay.handshake_rate,
                cfg.overlay.handshake_burst,
                now,
            ),
            scratch: BytesMut::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            probes,
            queues_bad: Sustained::new(sustain),
            shed_bad: Sustained::new(sustain),
            shed_window: RateWindow::new(SHED_WINDOW),
            queues_ok: true,
            shed_rate_ok: true,
            last_ready: None,
            next_tick: now,
            draining: false,
            local_delivery: false,
            ingress_depth: 0,
            over_watermark: 0,
            fanout_buf: Vec::new(),
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
        &self.stats
    }
    /// The balance of counts now, with frames still held in partial streams.
    pub fn balance(&self) -> Balance {
        Balance {
            stats: self.stats.clone(),
            pending: self
                .sessions
                .values()
                .map(|s| s.reasm.partial_frames())
                .sum(),
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
    pub fn session(&self, conn: ConnId) -> Option<&Session> {
        self.sessions.get(&conn)
    }
    pub fn permits(&self) -> &Permits {
        &self.permits
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
                .all(|s| s.egress.is_empty() && s.in_flight == 0)
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
            tor_bootstrap: self.probes.tor_bootstrap,
            queues_ok: self.queues_ok,
            shed_rate_ok: self.shed_rate_ok,
            fd_headroom: self.probes.fd_headroom,
            draining: self.draining,
        }
    }

    // ----- inputs from the runtime ---------------------------------------------------

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
            Probe::TorBootstrap => p.tor_bootstrap = Some(ok),
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
            let mut d = Drr::new(g.chunk_bytes + HEADER_LEN + 18 + 255, g.burst_budget_frames);
            for (id, s) in self.sessions.iter_mut() {
                s.drr.queued = false;
                if s.egress.gossip_frames() > 0 {
                    d.activate(*id, &mut s.drr);
                }
            }
            d
        };
        self.permits.set_capacity(g.egress_permits);
        self.handshakes
            .reconfigure(cfg.overlay.handshake_rate, cfg.overlay.handshake_burst);
        self.queues_bad.set_sustain(cfg.readiness.sustain);
        self.shed_bad.set_sustain(cfg.readiness.sustain);
        let dl = decoder_limits(&cfg);
        for s in self.sessions.values_mut() {
            s.decoder.set_limits(dl);
            s.rate
                .reconfigure(cfg.overlay.peer.max_rps, cfg.overlay.peer.max_rps);
        }
        self.cfg = cfg;
        self.refresh_readiness(now);
        restart
    }

    /// A connection accepted on the listener; the dialer owes us a HELLO.
    pub fn handle_accept(&mut self, now: Time) -> ConnId {
        let id = self.new_session(now, true);
        self.metrics.handshake_attempts.increment(1);
        if self.sessions.len() > self.cfg.overlay.max_conns {
            self.refuse_conn(now, id, RejectReason::Busy, "max_conns reached");
        }
        id
    }

    /// A connection we dialed is up: send HELLO as a `peer`.
    pub fn handle_connected(&mut self, now: Time) -> ConnId {
        let id = self.new_session(now, false);
        self.metrics.handshake_attempts.increment(1);
        let corr_id = self.rng.gen_range(1..u64::MAX);
        let hello = Hello {
            versions: vec![VERSION],
            node: self.node_id.clone(),
            role: Role::Peer,
            max_frame: self.cfg.overlay.gossip.max_frame_bytes,
            topics: vec![],
            pq: (self.cfg.overlay.pq_mode == PqModeConfig::Hybrid).then(|| "hybrid".to_string()),
            comp: false,
        };
        let mut f = Frame::new(
            AppProto::HELLO,
            Flags::REQ | Flags::START,
            corr_id,
            hello.to_json().into(),
        );
        if let Some(tok) = self.cfg.auth.tokens.first() {
            f.cap = Bytes::copy_from_slice(tok.as_bytes());
        }
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
        self.debug_check_balance();
    }

    /// The writer of `conn` finished `frames` transmits: their permits come back.
    pub fn handle_written(&mut self, now: Time, conn: ConnId, frames: usize) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let n = frames.min(s.in_flight);
        s.in_flight -= n;
        s.last_write = now;
        self.permits.release(n);
        if s.egress.gossip_frames() > 0 {
            self.drr.activate(conn, &mut s.drr);
        }
    }

    /// The connection is gone (peer closed, error, or our close completed).
    pub fn handle_closed(&mut self, _now: Time, conn: ConnId) {
        let Some(mut s) = self.sessions.remove(&conn) else {
            return;
        };
        self.unlist(&s);
        self.drr.remove(conn);
        self.ctrl_ready.retain(|c| *c != conn);
        self.permits.release(s.in_flight);
        // Frames still queued, and frames handed to the writer but never reported written,
        // did not reach the peer as far as the node can tell: counted, not forgotten.
        let (ctrl, gossip) = s.egress.clear();
        self.egress_drop(DropReason::Shed, (ctrl + gossip + s.in_flight) as u64);
        let partial = s.reasm.clear();
        self.rx_dropped(RxDrop::Closed, partial);
        if s.over_watermark {
            self.over_watermark -= 1;
        }
        let reason = s.close_reason.unwrap_or(CloseReason::PeerClosed);
        self.events.push_back(Event::Closed { conn, reason });
        self.update_gauges();
    }

    /// Timers: handshake, read, write and idle timeouts, keepalive, readiness sampling.
    pub fn handle_timeout(&mut self, now: Time) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        self.seen.expire(now);
        let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.session_timers(now, id);
        }
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
            self.stats.refused[RejectReason::NotReady.index()] += 1;
            self.metrics.reject(RejectReason::NotReady);
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
        if self.over_watermark > 0 {
            self.shed_window.record(now, true);
            self.stats.refused[RejectReason::Busy.index()] += 1;
            self.metrics.reject(RejectReason::Busy);
            return Err(PublishError::Busy);
        }
        self.shed_window.record(now, false);
        self.seen.insert(msg_id, now);
        self.stats.published += 1;
        self.stats.accepted_messages += 1;
        let message = Message {
            corr_id: 0,
            tenant_id: 0,
            header,
            data,
            ack_req: false,
            frames: 0,
        };
        self.fan_out(None, &message);
        if self.local_delivery {
            self.events.push_back(Event::Message {
                from: None,
                message,
            });
        }
        Ok(msg_id)
    }

    /// Starts draining for shutdown: readiness goes down first, every session is told
    /// GOAWAY, new handshakes are refused `503 not_ready`, and sessions close as their
    /// queues empty.
    pub fn begin_drain(&mut self, now: Time) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.refresh_readiness(now);
        let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
        for id in ids {
            if self.sessions.get(&id).is_some_and(|s| s.is_established()) {
                let f = Frame::new(AppProto::CTRL, Flags::EVENT, 0, Ctrl::Goaway.to_payload());
                self.send_ctrl(id, &f);
            }
        }
    }

    /// The drain deadline passed: close every session now, counting what is still queued
    /// as dropped (`timeout`).
    pub fn shutdown(&mut self, now: Time) {
        self.draining = true;
        let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                let (c, g) = s.egress.clear();
                self.egress_drop(DropReason::Timeout, (c + g) as u64);
            }
            self.close(now, id, CloseReason::Shutdown, false);
        }
        self.refresh_readiness(now);
    }

    // ----- outputs -------------------------------------------------------------------

    /// The next bytes to write, control frames first, then gossip by deficit round robin,
    /// within the global egress permits and each session's send window.
    pub fn poll_transmit(&mut self, _now: Time) -> Option<Transmit> {
        if let Some(t) = self.next_ctrl() {
            return Some(t);
        }
        self.next_gossip()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` wants to run next.
    pub fn poll_timeout(&self) -> Option<Time> {
        Some(self.next_tick)
    }

    // ----- frames in -----------------------------------------------------------------

    fn on_frame(&mut self, now: Time, conn: ConnId, frame: Frame) {
        let class = frame_class(frame.app_proto);
        let m = &self.metrics;
        m.frames[Dir::Rx.index()][class.index()].increment(1);
        m.bytes[Dir::Rx.index()].increment(frame.wire_len as u64);
        m.frame_size[Dir::Rx.index()].record(frame.wire_len as f64);
        if class == FrameClass::Gossip {
            m.chunk_size[Dir::Rx.index()].record(frame.payload.len() as f64);
        }
        self.stats.rx_frames += 1;
        let Some(phase) = self.sessions.get(&conn).map(|s| s.phase) else {
            return;
        };
        match phase {
            Phase::AwaitHello => self.on_hello(now, conn, frame),
            Phase::AwaitAnswer { corr_id } => self.on_answer(now, conn, corr_id, frame),
            Phase::Established => match frame.proto() {
                AppProto::Gossip => self.on_gossip(now, conn, frame),
                AppProto::Ctrl => self.on_ctrl(now, conn, frame),
                AppProto::Hello => self.reject_frame(
                    now,
                    conn,
                    &frame,
                    RejectReason::Proto,
                    1,
                    "HELLO on an established session",
                ),
                AppProto::Other(_) => self.on_other(conn, frame),
            },
            Phase::Closing => {}
        }
    }

    fn on_frame_error(&mut self, now: Time, conn: ConnId, e: FrameError) {
        // The bad frame counts as received and rejected, so the balance covers it.
        self.stats.rx_frames += 1;
        self.metrics.frames[Dir::Rx.index()][frame_class(e.app_proto).index()].increment(1);
        let phase = self.sessions.get(&conn).map(|s| s.phase);
        if matches!(phase, Some(Phase::AwaitHello | Phase::AwaitAnswer { .. })) {
            self.metrics.handshake_failure(HandshakeFailure::Proto);
            self.events.push_back(Event::HandshakeFailed {
                conn,
                corr_id: e.corr_id,
                reason: Some(HandshakeFailure::Proto),
                reject: Some(e.reason()),
                code: e.status(),
                detail: e.to_string(),
            });
        }
        let blame = Frame {
            app_proto: e.app_proto,
            corr_id: e.corr_id,
            ..Frame::default()
        };
        self.reject_frame(now, conn, &blame, e.reason(), 1, &e.kind.to_string());
    }

    fn on_hello(&mut self, now: Time, conn: ConnId, frame: Frame) {
        let corr = frame.corr_id;
        self.events.push_back(Event::HandshakeStarted {
            conn,
            corr_id: corr,
            inbound: true,
        });
        let hello = match self.judge_hello(now, &frame) {
            Ok(h) => h,
            Err(refusal) => return self.fail_hello(now, conn, &frame, refusal),
        };
        let ours = self.cfg.overlay.gossip.max_frame_bytes;
        let max_frame = hello.max_frame.min(ours);
        let chunk = self.chunk_for(max_frame, None);
        let ok = HelloOk {
            version: VERSION,
            node: self.node_id.clone(),
            max_frame: ours,
            chunk: chunk as u32,
        };
        let mut resp = Frame::resp(AppProto::HELLO, corr, 200, ok.to_json().into());
        resp.flags = resp.flags | Flags::START;
        self.send_ctrl(conn, &resp);
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.topics = hello
                .topics
                .iter()
                .map(|t| Bytes::copy_from_slice(t.as_bytes()))
                .collect();
            s.max_frame = max_frame;
            s.chunk = chunk;
        }
        self.outcome(Outcome::Delivered, 1);
        self.establish(now, conn, corr, hello.role, hello.node);
    }

    /// Every check a HELLO must pass, in the order that refuses floods cheapest first.
    fn judge_hello(&mut self, now: Time, frame: &Frame) -> Result<Hello, HelloRefusal> {
        let refuse = |reason, label, why: &'static str| HelloRefusal {
            reason,
            label,
            why,
            retry_after: None,
        };
        let proto = Some(HandshakeFailure::Proto);
        let is_hello = frame.app_proto == AppProto::HELLO
            && frame.flags.kind() == Some(FrameKind::Req)
            && frame.flags.contains(Flags::START);
        if !is_hello {
            return Err(refuse(
                RejectReason::Proto,
                proto,
                "first frame is not a HELLO REQ|START",
            ));
        }
        if self.draining {
            return Err(HelloRefusal {
                retry_after: Some(self.cfg.readiness.retry_after),
                ..refuse(RejectReason::NotReady, None, "draining")
            });
        }
        if !self.handshakes.try_take(now) {
            return Err(HelloRefusal {
                retry_after: Some(self.handshakes.retry_after_secs()),
                ..refuse(
                    RejectReason::Ratelimit,
                    Some(HandshakeFailure::Ratelimit),
                    "handshake rate limit",
                )
            });
        }
        let hello: Hello = serde_json::from_slice(&frame.payload).map_err(|_| {
            refuse(
                RejectReason::Proto,
                proto,
                "HELLO payload is not valid JSON",
            )
        })?;
        self.check_hello(&hello)
            .map_err(|why| refuse(RejectReason::Proto, proto, why))?;
        if self.cfg.auth.required && !self.authorized(&frame.cap) {
            self.metrics.auth_failures[crate::observe::AuthFailure::Unauth.index()].increment(1);
            return Err(refuse(
                RejectReason::Unauth,
                proto,
                "missing or unknown capability",
            ));
        }
        self.negotiate_pq(&hello)
            .map_err(|why| refuse(RejectReason::Proto, Some(HandshakeFailure::PqNegFail), why))?;
        Ok(hello)
    }

    fn check_hello(&self, h: &Hello) -> Result<(), &'static str> {
        if !h.versions.contains(&VERSION) {
            return Err("no common version");
        }
        if h.node.len() > 128 {
            return Err("node id longer than 128 bytes");
        }
        if h.topics.len() > self.cfg.overlay.max_topics {
            return Err("too many topics");
        }
        if h.topics.iter().any(|t| t.is_empty() || t.len() > 255) {
            return Err("topic must be 1..=255 bytes");
        }
        if h.max_frame < 1024 {
            return Err("max_frame below 1024");
        }
        Ok(())
    }

    fn authorized(&self, cap: &[u8]) -> bool {
        // Constant time per token, so the comparison does not leak how much matched.
        self.cfg.auth.tokens.iter().fold(false, |ok, t| {
            let t = t.as_bytes();
            let same = t.len() == cap.len()
                && t.iter().zip(cap).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            ok | same
        })
    }

    fn negotiate_pq(&self, h: &Hello) -> Result<(), &'static str> {
        let ours = self.cfg.overlay.pq_mode;
        let mode = ours.mode();
        let outcome = match (ours, h.pq.as_deref()) {
            (_, Some(other)) if other != "off" && other != "hybrid" => PqOutcome::Fail,
            (PqModeConfig::Hybrid, Some("hybrid")) => PqOutcome::Ok,
            (PqModeConfig::Hybrid, _) => PqOutcome::Incompatible,
            (PqModeConfig::Off, _) => PqOutcome::Ok,
        };
        self.metrics.pq_negotiations[mode.index()][outcome.index()].increment(1);
        match outcome {
            PqOutcome::Ok => Ok(()),
            PqOutcome::Fail => Err("unknown pq mode"),
            PqOutcome::Incompatible => Err("pq hybrid required"),
        }
    }

    fn fail_hello(&mut self, now: Time, conn: ConnId, frame: &Frame, refusal: HelloRefusal) {
        let HelloRefusal {
            reason,
            label,
            why,
            retry_after,
        } = refusal;
        if let Some(l) = label {
            self.metrics.handshake_failure(l);
        }
        self.count_rejected(reason, 1);
        self.events.push_back(Event::HandshakeFailed {
            conn,
            corr_id: frame.corr_id,
            reason: label,
            reject: Some(reason),
            code: reason.status(),
            detail: why.to_string(),
        });
        let mut resp = error_resp(
            AppProto::HELLO,
            frame.corr_id,
            reason.status(),
            reason.as_str(),
            retry_after,
        );
        resp.flags = resp.flags | Flags::START;
        self.send_ctrl(conn, &resp);
        self.close(now, conn, CloseReason::Rejected(reason), true);
    }

    fn on_answer(&mut self, now: Time, conn: ConnId, corr_id: u64, frame: Frame) {
        let is_answer = frame.app_proto == AppProto::HELLO
            && frame.flags.kind() == Some(FrameKind::Resp)
            && frame.corr_id == corr_id;
        if !is_answer {
            self.metrics.handshake_failure(HandshakeFailure::Proto);
            self.events.push_back(Event::HandshakeFailed {
                conn,
                corr_id,
                reason: Some(HandshakeFailure::Proto),
                reject: Some(RejectReason::Proto),
                code: 400,
                detail: "expected the HELLO answer".into(),
            });
            return self.reject_frame(
                now,
                conn,
                &frame,
                RejectReason::Proto,
                1,
                "expected the HELLO answer",
            );
        }
        // The answer is consumed whatever it says.
        self.outcome(Outcome::Delivered, 1);
        let ok = (frame.code == 200)
            .then(|| serde_json::from_slice::<HelloOk>(&frame.payload).ok())
            .flatten()
            .filter(|ok| ok.version == VERSION && ok.max_frame >= 1024);
        let Some(ok) = ok else {
            let label = match frame.code {
                429 => HandshakeFailure::Ratelimit,
                _ => HandshakeFailure::Proto,
            };
            self.metrics.handshake_failure(label);
            let detail = String::from_utf8_lossy(&frame.payload[..frame.payload.len().min(256)])
                .into_owned();
            self.events.push_back(Event::HandshakeFailed {
                conn,
                corr_id,
                reason: Some(label),
                reject: None,
                code: frame.code,
                detail,
            });
            return self.close(now, conn, CloseReason::HandshakeFailed, true);
        };
        let max_frame = ok.max_frame.min(self.cfg.overlay.gossip.max_frame_bytes);
        let chunk = self.chunk_for(max_frame, Some(ok.chunk as usize));
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.max_frame = max_frame;
            s.chunk = chunk;
        }
        self.establish(now, conn, corr_id, Role::Peer, ok.node);
    }

    fn chunk_for(&self, max_frame: u32, theirs: Option<usize>) -> usize {
        let fit = (max_frame as usize).saturating_sub(HEADER_LEN + 18 + 255);
        let mut c = self.cfg.overlay.gossip.chunk_bytes.min(fit);
        if let Some(t) = theirs.filter(|t| *t >= 512) {
            c = c.min(t);
        }
        c.max(512)
    }

    fn establish(&mut self, now: Time, conn: ConnId, corr_id: u64, role: Role, node: String) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        s.phase = Phase::Established;
        s.role = Some(role);
        s.node = node.clone();
        s.last_rx = now;
        let inbound = s.inbound;
        match role {
            Role::Peer => self.peers.push(conn),
            Role::Client => self.clients.push(conn),
        }
        self.metrics.sessions_open.increment(1);
        self.metrics.sessions_active.set(self.established() as f64);
        self.events.push_back(Event::HandshakeOk {
            conn,
            corr_id,
            inbound,
            role,
            node,
        });
        if self.draining {
            let f = Frame::new(AppProto::CTRL, Flags::EVENT, 0, Ctrl::Goaway.to_payload());
            self.send_ctrl(conn, &f);
        }
    }

    fn on_gossip(&mut self, now: Time, conn: ConnId, frame: Frame) {
        if frame.flags.kind() == Some(FrameKind::Resp) {
            self.outcome(Outcome::Delivered, 1);
            self.events.push_back(Event::Ack {
                conn,
                corr_id: frame.corr_id,
                code: frame.code,
                body: frame.payload,
            });
            return;
        }
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if s.reasm.partial_streams() == 0 {
            s.stream_progress = now;
        }
        let app_proto = frame.app_proto;
        let tenant = frame.tenant_id;
        match s.reasm.push(frame) {
            Ok(None) => {
                s.stream_progress = now;
                let held = s.reasm.partial_frames();
                let over_session = held as usize > self.cfg.overlay.peer.inflight_frames;
                let over_node = !over_session
                    && self
                        .sessions
                        .values()
                        .map(|s| s.reasm.buffered_bytes())
                        .sum::<usize>()
                        > self.cfg.overlay.gossip.max_partial_bytes_total;
                if over_session || over_node {
                    // Either bound is the sender's to respect: more frames held than a
                    // session may have in flight, or more partial bytes than the whole node
                    // holds for everyone (so many sessions cannot add up to unbounded memory).
                    let (reason, why) = if over_session {
                        (
                            RejectReason::Proto,
                            "more partial frames than overlay.peer.inflight_frames",
                        )
                    } else {
                        (
                            RejectReason::Oversize,
                            "partial streams over overlay.gossip.max_partial_bytes_total",
                        )
                    };
                    let held = self.sessions.get_mut(&conn).map_or(0, |s| s.reasm.clear());
                    let f = Frame {
                        app_proto,
                        tenant_id: tenant,
                        ..Frame::default()
                    };
                    self.reject_frame(now, conn, &f, reason, held, why);
                }
            }
            Ok(Some(m)) => {
                s.stream_progress = now;
                self.on_message(now, conn, m);
            }
            Err(rej) => {
                let f = Frame {
                    app_proto,
                    corr_id: rej.corr_id,
                    ..Frame::default()
                };
                let reason = rej.error.reason();
                let detail = rej.error.to_string();
                self.reject_frame(now, conn, &f, reason, rej.frames as u64, &detail);
            }
        }
    }

    fn on_message(&mut self, now: Time, conn: ConnId, m: Message) {
        let frames = m.frames as u64;
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if !s.rate.try_take(now) {
            let retry = s.rate.retry_after_secs();
            self.count_rejected(RejectReason::Ratelimit, frames);
            self.events.push_back(Event::Rejected {
                conn,
                reason: RejectReason::Ratelimit,
                corr_id: m.corr_id,
                app_proto: AppProto::GOSSIP,
                frames,
                detail: "overlay.peer.max_rps exceeded".into(),
            });
            if m.ack_req {
                self.ack(conn, m.corr_id, 429, Some(("ratelimit", retry)));
            }
            return;
        }
        if self.seen.contains(&m.header.msg_id, now) {
            self.outcome(Outcome::Duplicate, frames);
            if m.ack_req {
                self.ack(conn, m.corr_id, 202, None);
            }
            return;
        }
        if m.ack_req && self.over_watermark > 0 {
            // Writes fail first: the writer hears 503 before relayed traffic is shed.
            self.shed_window.record(now, true);
            self.count_rejected(RejectReason::Busy, frames);
            self.events.push_back(Event::Rejected {
                conn,
                reason: RejectReason::Busy,
                corr_id: m.corr_id,
                app_proto: AppProto::GOSSIP,
                frames,
                detail: "egress over its high watermark".into(),
            });
            let retry = self.cfg.readiness.retry_after;
            self.ack(conn, m.corr_id, 503, Some(("busy", retry)));
            return;
        }
        self.shed_window.record(now, false);
        self.seen.insert_new(m.header.msg_id, now);
        self.stats.accepted_messages += 1;
        let (relayed, delivered, refusal) = self.fan_out(Some(conn), &m);
        match (relayed, delivered, refusal) {
            (true, _, _) => self.outcome(Outcome::Relayed, frames),
            (false, true, _) | (false, false, None) => self.outcome(Outcome::Delivered, frames),
            (false, false, Some(Refusal::Full)) => self.rx_dropped(RxDrop::Full, frames),
            (false, false, Some(Refusal::Shed)) => self.rx_dropped(RxDrop::Shed, frames),
        }
        if m.ack_req {
            self.ack(conn, m.corr_id, 202, None);
        }
        if self.local_delivery {
            self.events.push_back(Event::Message {
                from: Some(conn),
                message: m,
            });
        }
    }

    /// Sends a new message to every matching client and up to `relay_fanout` peers.
    /// Returns (relayed to a peer, delivered to a client, first refusal met).
    fn fan_out(&mut self, from: Option<ConnId>, m: &Message) -> (bool, bool, Option<Refusal>) {
        let mut refusal = None;
        let mut delivered = false;
        let topic = m.header.topic.clone();
        for i in 0..self.clients.len() {
            let c = self.clients[i];
            if Some(c) == from || !self.sessions.get(&c).is_some_and(|s| s.wants(&topic)) {
                continue;
            }
            match self.enqueue_message(c, &m.header, m.tenant_id, &m.data, false) {
                Ok(()) => delivered = true,
                Err(r) => {
                    refusal.get_or_insert(r);
                }
            }
        }
        let mut relayed = false;
        if m.header.ttl > 0 {
            let fanout = self.cfg.overlay.gossip.relay_fanout;
            // A buffer kept across messages: no allocation per fanout.
            let mut candidates = std::mem::take(&mut self.fanout_buf);
            candidates.clear();
            candidates.extend(self.peers.iter().copied().filter(|p| Some(*p) != from));
            let k = fanout.min(candidates.len());
            // Partial Fisher-Yates: the first k are a uniform sample.
            for i in 0..k {
                let j = self.rng.gen_range(i..candidates.len());
                candidates.swap(i, j);
            }
            self.metrics.fanout.set(k as f64);
            let header = m.header.with_ttl(m.header.ttl - 1);
            for &p in &candidates[..k] {
                match self.enqueue_message(p, &header, m.tenant_id, &m.data, true) {
                    Ok(()) => relayed = true,
                    Err(r) => {
                        refusal.get_or_insert(r);
                    }
                }
            }
            self.fanout_buf = candidates;
        }
        (relayed, delivered, refusal)
    }

    fn enqueue_message(
        &mut self,
        dest: ConnId,
        header: &GossipHeader,
        tenant_id: u128,
        data: &Bytes,
        relay: bool,
    ) -> Result<(), Refusal> {
        let peer = &self.cfg.overlay.peer;
        let (max_frames, max_bytes) = (peer.egress_queue_frames, peer.egress_queue_bytes);
        let wm = self.cfg.readiness.queue_high_watermark;
        let Some(s) = self.sessions.get_mut(&dest) else {
            return Err(Refusal::Full);
        };
        let Ok(chunks) = oap::Chunks::new(header, data, s.chunk) else {
            return Err(Refusal::Full);
        };
        let (n, bytes) = (chunks.frames(), chunks.wire_len());
        let refusal = if s.egress.gossip_frames() + n > max_frames
            || s.egress.gossip_bytes() + bytes > max_bytes
        {
            Some(Refusal::Full)
        } else if relay && s.egress.fill(max_frames, max_bytes) >= wm {
            Some(Refusal::Shed)
        } else {
            None
        };
        if let Some(r) = refusal {
            let reason = match r {
                Refusal::Full => DropReason::Full,
                Refusal::Shed => DropReason::Shed,
            };
            self.metrics.backpressure[s.bucket().index()].increment(1);
            self.egress_drop(reason, n as u64);
            return Err(r);
        }
        let corr_id = s.next_stream_id();
        let scratch = &mut self.scratch;
        let frames = chunks.map(|c| {
            let head_len = HEADER_LEN + c.head.as_ref().map_or(0, GossipHeader::len);
            let h = Header {
                len: (HEADER_LEN + c.payload_len()) as u32,
                ver: VERSION,
                flags: Flags::EVENT | c.flags,
                code: 0,
                app_proto: AppProto::GOSSIP,
                tenant_id,
                cap_len: 0,
                corr_id,
            };
            if scratch.capacity() < head_len {
                scratch.reserve(head_len.max(16 << 10));
            }
            oap::put_header(&h, scratch);
            if let Some(gh) = &c.head {
                gh.put(scratch);
            }
            OutFrame {
                head: scratch.split().freeze(),
                chunk: Some(c.payload_len()),
                body: c.data,
                class: FrameClass::Gossip,
            }
        });
        s.egress.push_message(frames);
        self.drr.activate(dest, &mut s.drr);
        self.recheck_watermark(dest);
        Ok(())
    }

    /// Keeps the count of sessions over the high watermark (what makes writes fail first)
    /// in step with a session's queue after it changed.
    fn recheck_watermark(&mut self, id: ConnId) {
        let peer = &self.cfg.overlay.peer;
        let wm = self.cfg.readiness.queue_high_watermark;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let over = s.phase != Phase::Closing
            && s.egress
                .fill(peer.egress_queue_frames, peer.egress_queue_bytes)
                >= wm;
        if over != s.over_watermark {
            s.over_watermark = over;
            if over {
                self.over_watermark += 1;
            } else {
                self.over_watermark -= 1;
            }
        }
    }

    fn on_ctrl(&mut self, now: Time, conn: ConnId, frame: Frame) {
        let op = (frame.flags.kind() == Some(FrameKind::Event))
            .then(|| Ctrl::parse(&frame.payload))
            .flatten();
        let Some(op) = op else {
            return self.reject_frame(
                now,
                conn,
                &frame,
                RejectReason::Proto,
                1,
                "CTRL frame is not a known EVENT op",
            );
        };
        match op {
            Ctrl::Ping(nonce) => {
                let pong = Frame::new(
                    AppProto::CTRL,
                    Flags::EVENT,
                    frame.corr_id,
                    Ctrl::Pong(nonce).to_payload(),
                );
                self.send_ctrl(conn, &pong);
            }
            Ctrl::Pong(nonce) => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    if s.ping.is_some_and(|(n, _)| n == nonce) {
                        s.ping = None;
                    }
                }
            }
            Ctrl::Goaway => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.peer_draining = true;
                }
                self.peers.retain(|p| *p != conn);
                self.events.push_back(Event::PeerDraining { conn });
            }
        }
        self.outcome(Outcome::Delivered, 1);
    }

    fn on_other(&mut self, conn: ConnId, frame: Frame) {
        // No application protocol is served here: a request hears 404, the rest is let go.
        if frame.flags.kind() == Some(FrameKind::Req) {
            let resp = error_resp(frame.app_proto, frame.corr_id, 404, "unroutable", None);
            self.send_ctrl(conn, &resp);
        }
        self.rx_dropped(RxDrop::Unroutable, 1);
    }

    /// Rejects `frames` frames with `reason`, answers the peer and closes the session.
    fn reject_frame(
        &mut self,
        now: Time,
        conn: ConnId,
        frame: &Frame,
        reason: RejectReason,
        frames: u64,
        why: &str,
    ) {
        self.count_rejected(reason, frames);
        self.events.push_back(Event::Rejected {
            conn,
            reason,
            corr_id: frame.corr_id,
            app_proto: frame.app_proto,
            frames,
            detail: why.to_string(),
        });
        let resp = error_resp(
            frame.app_proto,
            frame.corr_id,
            reason.status(),
            reason.as_str(),
            None,
        );
        self.send_ctrl(conn, &resp);
        self.close(now, conn, CloseReason::Rejected(reason), true);
    }

    // ----- timers --------------------------------------------------------------------

    fn session_timers(&mut self, now: Time, id: ConnId) {
        let t = self.cfg.timeouts.clone();
        let (hs_timeout, keepalive) = (
            self.cfg.overlay.handshake_timeout,
            self.cfg.overlay.keepalive,
        );
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.in_flight == 0 {
            s.last_write = now;
        }
        match s.phase {
            Phase::Closing => {
                // A closing session whose writer is stuck is aborted rather than waited on.
                if s.in_flight > 0 && now.saturating_since(s.last_write) >= t.write {
                    self.events.push_back(Event::Abort { conn: id });
                }
                return;
            }
            Phase::AwaitHello | Phase::AwaitAnswer { .. } => {
                if now.saturating_since(s.opened) >= hs_timeout {
                    self.metrics.handshake_failure(HandshakeFailure::Timeout);
                    self.events.push_back(Event::HandshakeFailed {
                        conn: id,
                        corr_id: 0,
                        reason: Some(HandshakeFailure::Timeout),
                        reject: Some(RejectReason::Timeout),
                        code: 408,
                        detail: "handshake not finished within overlay.handshake_timeout".into(),
                    });
                    self.refuse_conn(now, id, RejectReason::Timeout, "handshake timeout");
                }
                return;
            }
            Phase::Established => {}
        }
        if s.in_flight > 0 && now.saturating_since(s.last_write) >= t.write {
            let (c, g) = s.egress.clear();
            self.egress_drop(DropReason::Timeout, (c + g) as u64);
            self.events.push_back(Event::Abort { conn: id });
            return self.close(now, id, CloseReason::WriteTimeout, true);
        }
        if s.partial_since
            .is_some_and(|p| now.saturating_since(p) >= t.read)
        {
            return self.refuse_conn(
                now,
                id,
                RejectReason::Timeout,
                "frame not finished within timeouts.read",
            );
        }
        if s.reasm.partial_streams() > 0 && now.saturating_since(s.stream_progress) >= t.read {
            let n = s.reasm.clear();
            self.metrics
                .queue_drop(Queue::GossipIngress, DropReason::Timeout, n);
            self.rx_dropped(RxDrop::Timeout, n);
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let quiet = now.saturating_since(s.last_rx);
        if quiet >= t.idle {
            return self.close(now, id, CloseReason::IdleTimeout, false);
        }
        if quiet >= keepalive && s.ping.is_none() {
            let nonce = self.rng.next_u64();
            s.ping = Some((nonce, now));
            let ping = Frame::new(
                AppProto::CTRL,
                Flags::EVENT,
                0,
                Ctrl::Ping(nonce).to_payload(),
            );
            self.send_ctrl(id, &ping);
        }
        let idle = |s: &Session| s.egress.is_empty() && s.in_flight == 0;
        if self.draining && self.sessions.get(&id).is_some_and(idle) {
            self.close(now, id, CloseReason::Drained, false);
        }
    }

    /// Refuses a connection with no frame to blame: answers `503`/`408`-style where the
    /// peer can hear it, counts the reason and closes.
    fn refuse_conn(&mut self, now: Time, id: ConnId, reason: RejectReason, why: &str) {
        self.stats.refused[reason.index()] += 1;
        self.metrics.reject(reason);
        self.events.push_back(Event::Rejected {
            conn: id,
            reason,
            corr_id: 0,
            app_proto: 0,
            frames: 0,
            detail: why.to_string(),
        });
        if reason == RejectReason::Busy {
            let resp = error_resp(
                AppProto::HELLO,
                0,
                503,
                "busy",
                Some(self.cfg.readiness.retry_after),
            );
            self.send_ctrl(id, &resp);
        }
        self.close(now, id, CloseReason::Rejected(reason), true);
    }

    // ----- readiness -----------------------------------------------------------------

    fn refresh_readiness(&mut self, now: Time) {
        let peer = &self.cfg.overlay.peer;
        let fill = self
            .sessions
            .values()
            .map(|s| {
                s.egress
                    .fill(peer.egress_queue_frames, peer.egress_queue_bytes)
            })
            .fold(0.0, f64::max);
        let wm = self.cfg.readiness.queue_high_watermark;
        self.queues_ok = !self.queues_bad.observe(now, fill >= wm);
        let (busy, total) = self.shed_window.totals(now);
        let shedding = busy > 0 && busy as f64 > self.cfg.readiness.shed_rate_max * total as f64;
        self.shed_rate_ok = !self.shed_bad.observe(now, shedding);
        let view = self.readiness();
        let state = view.state();
        self.metrics.readyz_state.set(state as u8 as f64);
        let missing = view.missing();
        let now_view = (state, missing);
        if self.last_ready.as_ref() != Some(&now_view) {
            self.events.push_back(Event::ReadinessChanged {
                state: now_view.0,
                missing: now_view.1.clone(),
            });
            self.last_ready = Some(now_view);
        }
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        let (mut egress, mut partial, mut fill) = (0usize, 0u64, 0.0f64);
        let peer = &self.cfg.overlay.peer;
        for s in self.sessions.values() {
            egress += s.egress.frames();
            partial += s.reasm.partial_frames();
            fill = fill.max(
                s.egress
                    .fill(peer.egress_queue_frames, peer.egress_queue_bytes),
            );
        }
        m.egress_fill.set(fill);
        m.queue_depth[Queue::Ingress.index()].set(self.ingress_depth as f64);
        m.queue_depth[Queue::GossipIngress.index()].set(partial as f64);
        m.queue_depth[Queue::Egress.index()].set(egress as f64);
        m.permits[PermitState::Available.index()].set(self.permits.available() as f64);
        m.permits[PermitState::InUse.index()].set(self.permits.in_use() as f64);
        m.sessions_active.set(self.established() as f64);
    }

    // ----- frames out ----------------------------------------------------------------

    fn send_ctrl(&mut self, conn: ConnId, frame: &Frame) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let mut b = BytesMut::with_capacity(frame.encoded_len());
        // Our own control frames are far below any max_frame.
        if frame.encode(u32::MAX, &mut b).is_err() {
            return;
        }
        if s.egress.ctrl_frames() >= self.cfg.overlay.peer.egress_queue_frames {
            // A peer that asks for answers (acks, PONGs) and never reads them fills only
            // its own bounded queue; the answer is counted as dropped.
            self.egress_drop(DropReason::Full, 1);
            return;
        }
        let class = frame_class(frame.app_proto);
        s.egress.push_ctrl(OutFrame {
            head: b.freeze(),
            body: Bytes::new(),
            class,
            chunk: None,
        });
        self.mark_ctrl_ready(conn);
    }

    /// Puts a session in the control round robin once (a flag, not a scan of the list).
    fn mark_ctrl_ready(&mut self, id: ConnId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if !s.ctrl_queued {
                s.ctrl_queued = true;
                self.ctrl_ready.push_back(id);
            }
        }
    }

    fn ack(&mut self, conn: ConnId, corr_id: u64, code: u16, err: Option<(&str, u64)>) {
        let payload = match err {
            None => Bytes::new(),
            Some((e, retry)) => HelloError {
                error: e.to_string(),
                retry_after: Some(retry),
            }
            .to_json()
            .into(),
        };
        let resp = Frame::resp(AppProto::GOSSIP, corr_id, code, payload);
        self.send_ctrl(conn, &resp);
    }

    fn next_ctrl(&mut self) -> Option<Transmit> {
        let mut tries = self.ctrl_ready.len();
        while tries > 0 {
            tries -= 1;
            let id = self.ctrl_ready.pop_front()?;
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            s.ctrl_queued = false;
            if s.egress.ctrl_frames() > 0 {
                if !self.permits.can_ctrl() {
                    s.ctrl_queued = true;
                    self.ctrl_ready.push_front(id);
                    return None;
                }
                let f = s.egress.pop_ctrl()?;
                if s.egress.ctrl_frames() > 0 || s.egress.close_pending() {
                    s.ctrl_queued = true;
                    self.ctrl_ready.push_back(id);
                }
                return Some(self.hand_out(id, f));
            }
            if s.egress.close_pending() && s.egress.gossip_frames() == 0 {
                s.egress.take_close();
                return Some(Transmit {
                    conn: id,
                    head: Bytes::new(),
                    body: Bytes::new(),
                    close: true,
                });
            }
        }
        None
    }

    fn next_gossip(&mut self) -> Option<Transmit> {
        let window = self.cfg.overlay.peer.send_window_frames;
        loop {
            let id = self.drr.front()?;
            let Some(s) = self.sessions.get_mut(&id) else {
                self.drr.deactivate_front(None, false);
                continue;
            };
            let Some(len) = s.egress.front_gossip_len() else {
                self.drr.deactivate_front(Some(&mut s.drr), false);
                continue;
            };
            if s.in_flight >= window {
                // Re-activated by handle_written when the writer catches up.
                self.drr.deactivate_front(Some(&mut s.drr), true);
                continue;
            }
            if !self.permits.can_gossip() {
                return None;
            }
            if !self.drr.admit_front(&mut s.drr, len) {
                continue;
            }
            let f = s.egress.pop_gossip()?;
            let close_next = s.egress.gossip_frames() == 0 && s.egress.close_pending();
            if close_next {
                self.mark_ctrl_ready(id);
            }
            self.recheck_watermark(id);
            return Some(self.hand_out(id, f));
        }
    }

    fn hand_out(&mut self, id: ConnId, f: OutFrame) -> Transmit {
        self.permits.acquire();
        let len = f.len();
        let m = &self.metrics;
        m.frames[Dir::Tx.index()][f.class.index()].increment(1);
        m.bytes[Dir::Tx.index()].increment(len as u64);
        m.frame_size[Dir::Tx.index()].record(len as f64);
        if let Some(c) = f.chunk {
            m.chunk_size[Dir::Tx.index()].record(c as f64);
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.in_flight += 1;
            s.tx_bytes += len as u64;
        }
        Transmit {
            conn: id,
            head: f.head,
            body: f.body,
            close: false,
        }
    }

    // ----- bookkeeping ---------------------------------------------------------------

    fn new_session(&mut self, now: Time, inbound: bool) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let cfg = &self.cfg;
        let s = Session::new(
            id,
            inbound,
            now,
            Decoder::new(decoder_limits(cfg)),
            Reassembler::new(StreamLimits {
                max_body_bytes: cfg.limits.max_body_bytes,
                max_streams: cfg.overlay.gossip.max_partial_streams,
                max_buffered_bytes: cfg.overlay.gossip.max_partial_bytes,
            }),
            TokenBucket::new(cfg.overlay.peer.max_rps, cfg.overlay.peer.max_rps, now),
            cfg.overlay.gossip.chunk_bytes,
            cfg.overlay.gossip.max_frame_bytes,
        );
        self.sessions.insert(id, s);
        id
    }

    /// Starts closing a session: it leaves the fanout at once, its partial streams are
    /// dropped, and its queue drains (or is dropped, for errors) before the close goes out.
    fn close(&mut self, _now: Time, id: ConnId, reason: CloseReason, drop_gossip: bool) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.phase == Phase::Closing {
            return;
        }
        let was_established = s.is_established();
        s.phase = Phase::Closing;
        s.close_reason = Some(reason);
        let mut dropped = 0;
        if drop_gossip {
            dropped = s.egress.gossip_frames();
            while s.egress.pop_gossip().is_some() {}
        }
        let partial = s.reasm.clear();
        s.egress.mark_close();
        self.egress_drop(DropReason::Shed, dropped as u64);
        if was_established {
            self.peers.retain(|p| *p != id);
            self.clients.retain(|c| *c != id);
            self.metrics.sessions_active.set(self.established() as f64);
        }
        self.rx_dropped(RxDrop::Closed, partial);
        self.mark_ctrl_ready(id);
        self.recheck_watermark(id);
    }

    fn unlist(&mut self, s: &Session) {
        self.peers.retain(|p| *p != s.id);
        self.clients.retain(|c| *c != s.id);
    }

    /// Frames on their way out that will not be sent: metric and `Stats` together.
    fn egress_drop(&mut self, reason: DropReason, frames: u64) {
        if frames == 0 {
            return;
        }
        self.stats.egress_dropped[reason.index()] += frames;
        self.metrics.queue_drop(Queue::Egress, reason, frames);
    }

    fn outcome(&mut self, o: Outcome, frames: u64) {
        if frames == 0 {
            return;
        }
        self.stats.outcomes[o.index()] += frames;
        self.metrics.outcome(o, frames);
    }

    fn rx_dropped(&mut self, r: RxDrop, frames: u64) {
        if frames == 0 {
            return;
        }
        self.stats.dropped[r.index()] += frames;
        self.metrics.rx_dropped[r.index()].increment(frames);
        self.outcome(Outcome::Dropped, frames);
    }

    fn count_rejected(&mut self, r: RejectReason, frames: u64) {
        self.stats.rejected[r.index()] += frames;
        self.metrics.rejected[r.index()].increment(frames);
        self.outcome(Outcome::Rejected, frames);
    }

    fn debug_check_balance(&self) {
        #[cfg(debug_assertions)]
        {
            let b = self.balance();
            debug_assert!(b.holds(), "balance of counts broken: {b}");
        }
    }
}

fn decoder_limits(cfg: &Config) -> oap::Limits {
    oap::Limits {
        max_frame: cfg.overlay.gossip.max_frame_bytes,
        max_body_bytes: cfg.limits.max_body_bytes,
        decompress_ratio_cap: cfg.limits.decompress_ratio_cap,
    }
}

fn frame_class(app_proto: u16) -> FrameClass {
    match AppProto::from_u16(app_proto) {
        AppProto::Hello | AppProto::Ctrl => FrameClass::Ctrl,
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
