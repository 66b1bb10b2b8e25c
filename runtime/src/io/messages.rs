//! The messages between the runtime's tasks and the driver, in one leaf module so that the
//! tasks (readers, writers, acceptor, dialers, supervisors) and the driver depend on it
//! rather than on each other.

use std::net::SocketAddr;

use bytes::BytesMut;
use overlay_core::{Admission, ConnId, Dial, Prepaid, Probe, TlsRefusal, TlsSession};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::io::credit::Credit;
use crate::io::tls::Wire;

/// Sockets, dial outcomes, panics and probe samples, from the runtime's own tasks.
pub(crate) enum Control<S> {
    /// A connection ready for HELLO: `tls` is what its TLS handshake verified, if it had
    /// one; `opened` is when it was accepted or dialed, before any TLS; `prepaid`, that
    /// the core admitted it at `Incoming` (its HELLO is not charged again).
    Accepted {
        stream: Wire<S>,
        peer: SocketAddr,
        tls: Option<TlsSession>,
        opened: Instant,
        prepaid: Option<Prepaid>,
    },
    /// `n` connections just accepted on the TLS listener, nothing read from them: whether
    /// each gets a TLS handshake is the core's decision (`Overlay::handle_incoming`). The
    /// acceptor keeps the sockets; only the answers travel, one per connection, in order.
    Incoming {
        n: usize,
        reply: oneshot::Sender<Vec<Admission>>,
    },
    /// A dial the core asked for connected (over TLS for a `tls://` peer, its name
    /// verified).
    Connected {
        stream: Wire<S>,
        dial: Dial,
        tls: Option<TlsSession>,
        opened: Instant,
    },
    /// A TLS handshake that failed: no session, nothing answered.
    TlsFailed {
        refusal: TlsRefusal,
        peer_addr: String,
        inbound: bool,
        detail: String,
    },
    DialFailed {
        dial: Dial,
        error: String,
    },
    /// A lookup of a peer given by name: its addresses, or why it failed (`failures` in a
    /// row).
    Resolved {
        name: String,
        answer: Result<Vec<SocketAddr>, String>,
        failures: u32,
    },
    Probe(Probe, bool),
    Panicked {
        task: &'static str,
        reason: String,
        after: AfterPanic,
    },
}

/// What becomes of a task that panicked. Only the first four count in
/// `service_restarts_total`: something takes its place.
#[derive(Clone, Debug)]
pub(crate) enum AfterPanic {
    /// A connection's reader or writer: the connection is closed; new ones are served.
    Close(ConnId),
    /// A dial's connect task: the dial counts as failed, and the core retries it if the
    /// peer is still configured.
    Redial(Dial),
    /// A peer name's resolver: restarted if the name is still configured.
    Resolve(String),
    /// A singleton task restarted by its `Supervisor`; the probe it upholds reads false
    /// until it runs again.
    Restart(Option<Probe>),
    /// Nothing restarts it (a supervisor itself failed): logged, never counted as
    /// restarted.
    Lost,
}

/// Reader to driver, on one channel shared by every connection.
pub(crate) enum Ingress {
    /// Bytes read. The permit is one of the connection's credits: it returns when the
    /// driver has consumed the chunk, which is what stops one socket from filling the
    /// shared channel.
    Data {
        conn: ConnId,
        chunk: BytesMut,
        credit: Credit,
    },
    /// The peer closed or the read failed. On the data channel, behind the last bytes, so
    /// nothing read before the close is lost.
    Eof { conn: ConnId, error: Option<String> },
}

/// What writers tell the driver.
pub(crate) enum WriterReport {
    /// `n` transmits are on the wire: their egress permits come back.
    Written { conn: ConnId, n: usize },
    /// The writer stopped: after a requested close (`error: None`) or a write error.
    Done { conn: ConnId, error: Option<String> },
}
