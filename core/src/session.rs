//! One connection's state: where it is in the handshake, what it has told us, and the
//! bounds that apply to it.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

use crate::egress::{DrrSlot, EgressQueue};
use crate::limiter::TokenBucket;
use crate::notice::NoticeLedger;
use crate::oap::{Decoder, MsgId, Reassembler, Role};
use crate::observe::{FrameClass, PeerBucket};
use crate::time::Time;
use crate::transport::Link;

/// A connection, as numbered by the node. Never reused within a node's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; waiting for the dialer's HELLO.
    AwaitHello,
    /// Dialed; our HELLO is out, waiting for the answer.
    AwaitAnswer {
        corr_id: u64,
    },
    Established,
    /// The node decided to close: nothing more is read, the queue drains, then it closes.
    Closing,
}

/// Why a session ended, for the `reason` log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The node refused a frame or handshake (the reason is the canonical one).
    Rejected(crate::RejectReason),
    HandshakeFailed,
    IdleTimeout,
    WriteTimeout,
    PeerClosed,
    Drained,
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Rejected(r) => r.as_str(),
            CloseReason::HandshakeFailed => "handshake_failed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Drained => "drained",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// A session's place in the broadcast tree, when both HELLOs listed the `tree` feature.
#[derive(Debug)]
pub(crate) struct TreeLink {
    /// New messages go to this peer whole; otherwise they are announced (IHAVE). The
    /// peer's to set: its PRUNE clears it, its GRAFT sets it.
    pub(crate) eager: bool,
    /// This node has told the peer to stop pushing to it (PRUNE) and not asked it to push
    /// again (GRAFT) since: a further duplicate from it needs no second PRUNE.
    pub(crate) pruned: bool,
    /// When this node last sent that PRUNE: pushes the peer sent before it landed are
    /// still on the way for about a graft timeout, and say nothing about the peer.
    pub(crate) pruned_at: Time,
    /// When the peer last delivered a message first (pushed or pulled): it is a parent of
    /// this node while that is recent.
    pub(crate) first_at: Option<Time>,
    /// Ids waiting to be announced, bounded by `overlay.gossip.announce_queue`.
    pub(crate) announce: VecDeque<MsgId>,
    /// When this peer is next sent a DIGEST of the store.
    pub(crate) next_digest: Time,
    /// The first DIGEST (of the whole store) has gone out.
    pub(crate) digested: bool,
}

/// A message a session is owed (its queue had no room) and the frames it will take, for the
/// drop count should the store let it go first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owed {
    pub(crate) id: MsgId,
    pub(crate) frames: u32,
}

/// A frame the writer has and has not yet reported written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unwritten {
    pub(crate) class: FrameClass,
    pub(crate) len: usize,
    /// Gossip chunk bytes in it, for `overlay_chunk_bytes`.
    pub(crate) chunk: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: ConnId,
    pub(crate) inbound: bool,
    pub(crate) phase: Phase,
    pub(crate) opened: Time,
    /// Their role and node id, once HELLO has told us.
    pub(crate) role: Option<Role>,
    pub(crate) node: String,
    /// Client topic filters; empty means every topic.
    pub(crate) topics: Vec<Bytes>,
    pub(crate) decoder: Decoder,
    pub(crate) reasm: Reassembler,
    pub(crate) rate: TokenBucket,
    pub(crate) egress: EgressQueue,
    pub(crate) drr: DrrSlot,
    /// Frames handed to the writer and not yet reported written, oldest first: they count
    /// as transmitted only once the writer says so.
    pub(crate) unwritten: VecDeque<Unwritten>,
    pub(crate) last_rx: Time,
    /// Last time the writer made progress (or the session had nothing in flight).
    pub(crate) last_write: Time,
    /// Since when an incomplete frame has sat in the receive buffer.
    pub(crate) partial_since: Option<Time>,
    /// Receive buffer the incomplete frame holds: its declared length, which the decoder
    /// reserves (`Overlay::hold_incomplete`).
    pub(crate) incomplete: usize,
    /// The nonce of the PING awaiting its PONG: while one is out, no other is sent.
    pub(crate) ping: Option<u64>,
    pub(crate) next_stream: u64,
    /// Gossip payload bytes per frame toward them (their max_frame may be smaller than ours).
    pub(crate) chunk: usize,
    pub(crate) tx_bytes: u64,
    pub(crate) over_watermark: bool,
    /// In the node's control round robin.
    pub(crate) ctrl_queued: bool,
    pub(crate) close_reason: Option<CloseReason>,
    /// The deadline this session is filed under in the node's timer table, if any.
    pub(crate) armed: Option<Time>,
    /// Set once established with a peer that speaks the broadcast tree.
    pub(crate) tree: Option<TreeLink>,
    /// Refusals this writer has not been told about yet.
    pub(crate) notices: NoticeLedger,
    /// Messages this session is owed, oldest first, sent from the store as its queue
    /// drains (bounded by `overlay.peer.owed_messages`).
    pub(crate) owed: VecDeque<Owed>,
    /// The same ids, so that a pull asked again is not owed twice.
    pub(crate) owed_ids: HashSet<MsgId>,
    /// A peer that stayed over its watermark past `PEER_PRESSURE_MAX`: it no longer pauses
    /// the node's other reads (it gets announcements and pulls at its own pace) until its
    /// queue is under the watermark again.
    pub(crate) demoted: bool,
    /// Ticks in a row this peer was over its watermark.
    pub(crate) pressured_ticks: u32,
    /// What its token allows, once a HELLO with `auth.required` admitted it.
    pub(crate) cap: Option<crate::cap::Capability>,
    /// The transport it came over and what TLS verified of the peer.
    pub(crate) link: Link,
}

impl Session {
    pub(crate) fn new(
        id: ConnId,
        inbound: bool,
        now: Time,
        decoder: Decoder,
        reasm: Reassembler,
        rate: TokenBucket,
        chunk: usize,
    ) -> Session {
        Session {
            id,
            inbound,
            phase: Phase::AwaitHello,
            opened: now,
            role: None,
            node: String::new(),
            topics: Vec::new(),
            decoder,
            reasm,
            rate,
            egress: EgressQueue::default(),
            drr: DrrSlot::default(),
            unwritten: VecDeque::new(),
            last_rx: now,
            last_write: now,
            partial_since: None,
            incomplete: 0,
            ping: None,
            next_stream: 1,
            chunk,
            tx_bytes: 0,
            over_watermark: false,
            ctrl_queued: false,
            close_reason: None,
            armed: None,
            tree: None,
            notices: NoticeLedger::default(),
            owed: VecDeque::new(),
            owed_ids: HashSet::new(),
            demoted: false,
            pressured_ticks: 0,
            cap: None,
            link: Link::tcp(now),
        }
    }

    /// Frames handed to the writer and not yet reported written (each holds a permit).
    pub(crate) fn in_flight(&self) -> usize {
        self.unwritten.len()
    }

    pub(crate) fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    pub(crate) fn is_peer(&self) -> bool {
        self.is_established() && self.role == Some(Role::Peer)
    }

    /// Whether a client asked for this topic.
    pub(crate) fn wants(&self, topic: &[u8]) -> bool {
        let asked = self.topics.is_empty() || self.topics.iter().any(|t| t.as_ref() == topic);
        // Under auth, what a client gets is also what its token lets it read: naming no
        // topic means every topic it may subscribe to.
        asked
            && self
                .cap
                .as_ref()
                .map_or(true, |c| c.allows(crate::cap::Action::Subscribe, topic))
    }

    pub(crate) fn next_stream_id(&mut self) -> u64 {
        let id = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1).max(1);
        id
    }

    /// Coarse class by bytes sent to it, for `peer_bucket` (no identity in labels).
    pub(crate) fn bucket(&self) -> PeerBucket {
        match self.tx_bytes {
            0..=1_048_575 => PeerBucket::Tiny,
            1_048_576..=104_857_599 => PeerBucket::Small,
            104_857_600..=10_737_418_239 => PeerBucket::Med,
            _ => PeerBucket::Large,
        }
    }
}
