//! What the node tells its driver, besides bytes to send.

use bytes::Bytes;

use crate::oap::{Message, Role};
use crate::observe::HandshakeFailure;
use crate::ready::ReadyState;
use crate::reason::RejectReason;
use crate::session::{CloseReason, ConnId};

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    HandshakeStarted {
        conn: ConnId,
        corr_id: u64,
        inbound: bool,
    },
    HandshakeOk {
        conn: ConnId,
        corr_id: u64,
        inbound: bool,
        role: Role,
        node: String,
        /// The class of the capability the session holds (`cap_id`), when auth is on.
        cap_id: Option<String>,
    },
    HandshakeFailed {
        conn: ConnId,
        corr_id: u64,
        /// The `overlay_handshake_failures_total` label, when the failure has one.
        reason: Option<HandshakeFailure>,
        /// The `rejected_total` reason, when the node refused the handshake.
        reject: Option<RejectReason>,
        /// Status code answered or received.
        code: u16,
        detail: String,
    },
    /// Frames refused (each counted under `rejected_total{reason}`), or a connection refused.
    Rejected {
        conn: ConnId,
        reason: RejectReason,
        corr_id: u64,
        app_proto: u16,
        frames: u64,
        detail: String,
    },
    /// The session is gone; the runtime may forget the connection.
    Closed { conn: ConnId, reason: CloseReason },
    /// Drop the connection now without flushing (its writer stopped making progress).
    Abort { conn: ConnId },
    /// The peer sent GOAWAY: it is draining and will close.
    PeerDraining { conn: ConnId },
    ReadinessChanged {
        state: ReadyState,
        missing: Vec<&'static str>,
    },
    /// A new message, for embedders that asked for local delivery.
    Message {
        from: Option<ConnId>,
        message: Message,
    },
    /// A RESP to one of our gossip streams (only clients ask for acks).
    Ack {
        conn: ConnId,
        corr_id: u64,
        code: u16,
        body: Bytes,
    },
}
