//! What the `Node` handle asks of the driver, and the counts it gets back.

use overlay_core::oap::MsgId;
use overlay_core::{Balance, Config, Probe, PublishError, Stats};
use tokio::sync::oneshot;

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
        /// `auth.*` as loaded from its files by the handle (`token::auth_for`).
        verifier: Option<std::sync::Arc<dyn overlay_core::cap::CapVerifier>>,
        credential: bytes::Bytes,
        reply: oneshot::Sender<Vec<&'static str>>,
    },
    Drain,
    Stats(oneshot::Sender<NodeStats>),
    /// A fact the embedder observes (the daemon: whether the last reload succeeded).
    Probe(Probe, bool),
}
