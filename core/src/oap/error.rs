//! What can be wrong with bytes on the wire, each mapped to its canonical reject reason.

use super::header::Flags;
use crate::reason::RejectReason;

/// A frame that broke a rule of OAP/1 section 1. Once returned, the stream is out of sync
/// and the decoder refuses everything after it: the session must answer and close.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} (app_proto {app_proto}, corr_id {corr_id})")]
pub struct FrameError {
    pub kind: FrameErrorKind,
    /// `app_proto` of the offending frame, or 0 when judged from the length prefix alone.
    pub app_proto: u16,
    /// `corr_id` of the offending frame, or 0 when judged from the length prefix alone.
    pub corr_id: u64,
}

impl FrameError {
    pub(crate) fn at_prefix(kind: FrameErrorKind) -> FrameError {
        FrameError {
            kind,
            app_proto: 0,
            corr_id: 0,
        }
    }

    pub fn reason(&self) -> RejectReason {
        self.kind.reason()
    }

    /// The status code of the RESP that reports this error to the peer.
    pub fn status(&self) -> u16 {
        self.reason().status()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameErrorKind {
    #[error("frame length {len} exceeds max_frame {max}")]
    Oversize { len: u32, max: u32 },
    /// Not a decoder error: the node's budget for received data
    /// (`overlay.gossip.max_partial_bytes_total`) has no room for the frame begun.
    #[error("frame length {len} exceeds the {room} bytes left of overlay.gossip.max_partial_bytes_total")]
    OverBudget { len: u32, room: usize },
    #[error("frame length {len} is shorter than the 38-byte header")]
    TooShort { len: u32 },
    #[error("cap_len {cap_len} does not fit in frame length {len}")]
    CapTooLong { cap_len: u16, len: u32 },
    #[error("unsupported protocol version {0}")]
    Version(u16),
    #[error("undefined flag bits {0:#06x}")]
    UnknownFlags(u16),
    #[error("flags {0:?} must carry exactly one of REQ, RESP, EVENT")]
    Kind(Flags),
    #[error("capability token without START")]
    CapWithoutStart,
    #[error("compressed payload is not a valid zstd frame")]
    BadCompression,
    #[error("compressed payload inflates beyond {limit} bytes")]
    InflateLimit { limit: usize },
}

impl FrameErrorKind {
    pub fn reason(&self) -> RejectReason {
        match self {
            FrameErrorKind::Oversize { .. } | FrameErrorKind::OverBudget { .. } => {
                RejectReason::Oversize
            }
            FrameErrorKind::InflateLimit { .. } => RejectReason::RatioCap,
            _ => RejectReason::Proto,
        }
    }
}

/// A gossip stream that broke a rule of OAP/1 section 3.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("gossip header is malformed: {0}")]
    Header(&'static str),
    #[error("message body of {size} bytes exceeds max_body_bytes {max}")]
    BodyTooLarge { size: usize, max: usize },
    #[error("partial streams would exceed {max} bytes buffered on this session")]
    BufferFull { max: usize },
    #[error("more than {max} partial streams on this session")]
    TooManyStreams { max: usize },
    #[error("continuation frame for stream {0} without a START")]
    NoStart(u64),
    #[error("START for stream {0} that is already open")]
    DuplicateStart(u64),
    #[error("gossip frame is not an EVENT")]
    NotEvent,
}

impl StreamError {
    pub fn reason(&self) -> RejectReason {
        match self {
            StreamError::BodyTooLarge { .. } | StreamError::BufferFull { .. } => {
                RejectReason::Oversize
            }
            _ => RejectReason::Proto,
        }
    }
}

/// A frame that cannot be put on the wire as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("frame of {len} bytes exceeds the limit {max}")]
    TooLong { len: usize, max: usize },
    #[error("capability token of {0} bytes exceeds 65535")]
    CapTooLong(usize),
    #[error("gossip topic must be 1..=255 bytes, got {0}")]
    Topic(usize),
}
