//! OAP/1: the frame format every byte from the network passes through.
//! See `docs/OAP1.md` for the format as built.

mod chunk;
pub mod comp;
mod ctrl;
mod decoder;
mod error;
mod frame;
mod gossip;
mod header;
mod hello;
mod tree;

pub use chunk::{split, Chunk, Chunks, Message, Reassembler, StreamLimits, StreamReject};
pub use ctrl::Ctrl;
pub use decoder::{validate, Decoder, Limits};
pub use error::{EncodeError, FrameError, FrameErrorKind, StreamError};
pub use frame::{put_header, Frame};
pub use gossip::{GossipHeader, MsgId, GOSSIP_FRAME_OVERHEAD, GOSSIP_HEADER_FIXED, MAX_TOPIC_LEN};
pub use header::{AppProto, Flags, FrameKind, Header, DEFAULT_MAX_FRAME, HEADER_LEN, VERSION};
pub use hello::{Hello, HelloError, HelloOk, Role, FEATURE_TREE};
pub use tree::{bucket_of, fingerprint, TreeFrame, DIGEST_BUCKETS, DIGEST_SETTLE_MS, MAX_IDS};

#[cfg(test)]
mod tests;
