//! The gossip header at the front of a message's first frame (spec section 3).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{EncodeError, StreamError};

/// Unique per message; the origin picks it, every node dedupes on it.
pub type MsgId = [u8; 16];

/// `msg_id`, `ttl` and the topic's length byte: the gossip header without its topic.
pub const GOSSIP_HEADER_FIXED: usize = 18;

/// The longest topic: its length is one byte.
pub const MAX_TOPIC_LEN: usize = 255;

/// The most a gossip frame carries besides its chunk: the frame header and the largest
/// gossip header. Chunks are sized so that a first frame with the longest topic still fits
/// in `max_frame`, and the read buffer and the DRR quantum are sized so that one whole
/// frame of `chunk_bytes` fits in one read or one turn.
pub const GOSSIP_FRAME_OVERHEAD: usize = super::HEADER_LEN + GOSSIP_HEADER_FIXED + MAX_TOPIC_LEN;

/// `msg_id`, `ttl` and `topic` of a gossip message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GossipHeader {
    pub msg_id: MsgId,
    pub ttl: u8,
    /// 1..=255 bytes of UTF-8, checked on parse; kept as a slice of the frame.
    pub topic: Bytes,
}

impl GossipHeader {
    pub fn new(msg_id: MsgId, ttl: u8, topic: &str) -> Result<GossipHeader, EncodeError> {
        if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
            return Err(EncodeError::Topic(topic.len()));
        }
        Ok(GossipHeader {
            msg_id,
            ttl,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
        })
    }

    /// Encoded size: 16 + 1 + 1 + topic.
    pub fn len(&self) -> usize {
        GOSSIP_HEADER_FIXED + self.topic.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn topic_str(&self) -> &str {
        // Checked as UTF-8 when parsed or built.
        std::str::from_utf8(&self.topic).unwrap_or("")
    }

    /// The same header one hop further on.
    pub fn with_ttl(&self, ttl: u8) -> GossipHeader {
        GossipHeader {
            ttl,
            ..self.clone()
        }
    }

    pub fn put(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.msg_id);
        dst.put_u8(self.ttl);
        dst.put_u8(self.topic.len() as u8);
        dst.put_slice(&self.topic);
    }

    /// The same header with a topic of its own, for keeping past the frame it came in.
    pub fn to_owned_topic(&self) -> GossipHeader {
        GossipHeader {
            topic: Bytes::copy_from_slice(&self.topic),
            ..self.clone()
        }
    }

    /// Splits a first-frame payload into its header and the data that follows.
    pub fn parse(payload: &Bytes) -> Result<(GossipHeader, Bytes), StreamError> {
        if payload.len() < GOSSIP_HEADER_FIXED {
            return Err(StreamError::Header("shorter than 18 bytes"));
        }
        let mut msg_id = [0u8; 16];
        msg_id.copy_from_slice(&payload[..16]);
        let ttl = payload[16];
        let topic_len = payload[17] as usize;
        if topic_len == 0 {
            return Err(StreamError::Header("empty topic"));
        }
        let end = GOSSIP_HEADER_FIXED + topic_len;
        if payload.len() < end {
            return Err(StreamError::Header("topic runs past the payload"));
        }
        if std::str::from_utf8(&payload[GOSSIP_HEADER_FIXED..end]).is_err() {
            return Err(StreamError::Header("topic is not UTF-8"));
        }
        Ok((
            GossipHeader {
                msg_id,
                ttl,
                topic: payload.slice(GOSSIP_HEADER_FIXED..end),
            },
            payload.slice(end..),
        ))
    }
}
