//! One connection's state: where it is in the handshake, what it has told us, and the
//! bounds that apply to it.

use std::collections::VecDeque;

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
pub struct TreeLink {
    /// New messages go to this peer whole; otherwise they are announced (IHAVE).
    pub eager: bool,
    /// Ids waiting to be announced, bounded by `overlay.gossip.announce_queue`.
    pub announce: VecDeque<MsgId>,
    /// When this peer is next sent a DIGEST of the store.
    pub next_digest: Time,
    /// The first DIGEST (of the whole store) has gone out.
    pub digested: bool,
}

/// A frame the writer has and has not yet reported written.
#[derive(Clone, Copy, Debug)]
pub struct Unwritten {
    pub class: FrameClass,
    pub len: usize,
    /// Gossip chunk bytes in it, for `overlay_chunk_bytes`.
    pub chunk: Option<usize>,
}

#[derive(Debug)]
pub struct Session {
    pub id: ConnId,
    pub inbound: bool,
    pub phase: Phase,
    pub opened: Time,
    /// Their role and node id, once HELLO has told us.
    pub role: Option<Role>,
    pub node: String,
    /// Client topic filters; empty means every topic.
    pub topics: Vec<Bytes>,
    pub decoder: Decoder,
    pub reasm: Reassembler,
    pub rate: TokenBucket,
    pub egress: EgressQueue,
    pub drr: DrrSlot,
    /// Frames handed to the writer and not yet reported written, oldest first: they count
    /// as transmitted only once the writer says so.
    pub unwritten: VecDeque<Unwritten>,
    pub last_rx: Time,
    /// Last time the writer made progress (or the session had nothing in flight).
    pub last_write: Time,
    /// Since when an incomplete frame has sat in the receive buffer.
    pub partial_since: Option<Time>,
    pub ping: Option<(u64, Time)>,
    pub next_stream: u64,
    /// They sent GOAWAY: no new streams go to them.
    pub peer_draining: bool,
    /// Gossip payload bytes per frame toward them (their max_frame may be smaller than ours).
    pub chunk: usize,
    /// The most they accept in one frame.
    pub max_frame: u32,
    pub tx_bytes: u64,
    pub over_watermark: bool,
    /// In the node's control round robin.
    pub ctrl_queued: bool,
    pub close_reason: Option<CloseReason>,
    /// The deadline this session is filed under in the node's timer table, if any.
    pub armed: Option<Time>,
    /// Set once established with a peer that speaks the broadcast tree.
    pub tree: Option<TreeLink>,
    /// Refusals this writer has not been told about yet.
    pub notices: NoticeLedger,
    /// The transport it came over and what TLS verified of the peer.
    pub link: Link,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: ConnId,
        inbound: bool,
        now: Time,
        decoder: Decoder,
        reasm: Reassembler,
        rate: TokenBucket,
        chunk: usize,
        max_frame: u32,
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
            ping: None,
            next_stream: 1,
            peer_draining: false,
            chunk,
            max_frame,
            tx_bytes: 0,
            over_watermark: false,
            ctrl_queued: false,
            close_reason: None,
            armed: None,
            tree: None,
            notices: NoticeLedger::default(),
            link: Link::tcp(now),
        }
    }

    /// Frames handed to the writer and not yet reported written (each holds a permit).
    pub fn in_flight(&self) -> usize {
        self.unwritten.len()
    }

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    pub fn is_peer(&self) -> bool {
        self.is_established() && self.role == Some(Role::Peer)
    }

    pub fn is_client(&self) -> bool {
        self.is_established() && self.role == Some(Role::Client)
    }

    /// Whether a client asked for this topic.
    pub fn wants(&self, topic: &[u8]) -> bool {
        self.topics.is_empty() || self.topics.iter().any(|t| t.as_ref() == topic)
    }

    pub fn next_stream_id(&mut self) -> u64 {
        let id = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1).max(1);
        id
    }

    /// Coarse class by bytes sent to it, for `peer_bucket` (no identity in labels).
    pub fn bucket(&self) -> PeerBucket {
        match self.tx_bytes {
            0..=1_048_575 => PeerBucket::Tiny,
            1_048_576..=104_857_599 => PeerBucket::Small,
            104_857_600..=10_737_418_239 => PeerBucket::Med,
            _ => PeerBucket::Large,
        }
    }
}
