//! Cutting a gossip message into chunk frames, and putting chunk frames back together
//! within fixed bounds.

use bytes::{BufMut, Bytes, BytesMut};

use crate::time::Time;

use super::error::{EncodeError, StreamError};
use super::frame::Frame;
use super::gossip::GossipHeader;
use super::header::{AppProto, Flags};

/// One frame's worth of a message: START on the first, END on the last. The first also
/// carries the gossip header. `data` is a slice of the message, never a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub flags: Flags,
    pub head: Option<GossipHeader>,
    pub data: Bytes,
}

impl Chunk {
    pub fn payload_len(&self) -> usize {
        self.head.as_ref().map_or(0, GossipHeader::len) + self.data.len()
    }

    /// The chunk as a gossip EVENT frame (the payload is assembled into one buffer).
    pub fn to_frame(&self, corr_id: u64, extra: Flags) -> Frame {
        let payload = match &self.head {
            None => self.data.clone(),
            Some(h) => {
                let mut b = BytesMut::with_capacity(self.payload_len());
                h.put(&mut b);
                b.put_slice(&self.data);
                b.freeze()
            }
        };
        Frame::new(
            AppProto::GOSSIP,
            Flags::EVENT | self.flags | extra,
            corr_id,
            payload,
        )
    }
}

/// Cuts a message into chunks whose payloads are each at most `chunk_bytes`.
pub fn split(
    header: &GossipHeader,
    data: &Bytes,
    chunk_bytes: usize,
) -> Result<Vec<Chunk>, EncodeError> {
    Ok(Chunks::new(header, data, chunk_bytes)?.collect())
}

/// The chunks of one message, made as they are taken (no list is built: the relay path
/// cuts every message once per destination).
#[derive(Clone, Debug)]
pub struct Chunks<'a> {
    header: &'a GossipHeader,
    data: &'a Bytes,
    chunk_bytes: usize,
    at: usize,
    first: bool,
}

impl<'a> Chunks<'a> {
    pub fn new(
        header: &'a GossipHeader,
        data: &'a Bytes,
        chunk_bytes: usize,
    ) -> Result<Chunks<'a>, EncodeError> {
        if chunk_bytes <= header.len() {
            return Err(EncodeError::TooLong {
                len: header.len() + 1,
                max: chunk_bytes,
            });
        }
        Ok(Chunks {
            header,
            data,
            chunk_bytes,
            at: 0,
            first: true,
        })
    }

    /// How many frames the message takes.
    pub fn frames(&self) -> usize {
        let first = self.data.len().min(self.chunk_bytes - self.header.len());
        1 + (self.data.len() - first).div_ceil(self.chunk_bytes)
    }

    /// Bytes on the wire for the whole message, frame headers included.
    pub fn wire_len(&self) -> usize {
        self.frames() * super::HEADER_LEN + self.header.len() + self.data.len()
    }
}

impl Iterator for Chunks<'_> {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if !self.first && self.at >= self.data.len() {
            return None;
        }
        let room = if self.first {
            self.chunk_bytes - self.header.len()
        } else {
            self.chunk_bytes
        };
        let end = (self.at + room).min(self.data.len());
        let mut flags = if self.first {
            Flags::START
        } else {
            Flags::empty()
        };
        if end == self.data.len() {
            flags = flags | Flags::END;
        }
        let chunk = Chunk {
            flags,
            head: self.first.then(|| self.header.clone()),
            data: self.data.slice(self.at..end),
        };
        self.first = false;
        self.at = end;
        Some(chunk)
    }
}

/// Bounds on what one session may hold in partial streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// `limits.max_body_bytes`: largest message data.
    pub max_body_bytes: usize,
    /// `overlay.gossip.max_partial_streams`: streams started but not ended.
    pub max_streams: usize,
    /// `overlay.gossip.max_partial_bytes`: data held across all partial streams.
    pub max_buffered_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            max_body_bytes: 1 << 20,
            max_streams: 16,
            max_buffered_bytes: 2 << 20,
        }
    }
}

/// A whole gossip message, ready for dedupe and relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub corr_id: u64,
    pub tenant_id: u128,
    pub header: GossipHeader,
    pub data: Bytes,
    /// ACK_REQ was set on the END frame.
    pub ack_req: bool,
    /// How many frames carried it, for the per-frame balance of counts.
    pub frames: u32,
}

/// A stream the reassembler refused: the error and every frame of that stream it discards
/// (the offending one included), so that each is counted once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamReject {
    pub error: StreamError,
    pub frames: u32,
    pub corr_id: u64,
}

#[derive(Debug)]
struct Partial {
    corr_id: u64,
    tenant_id: u128,
    /// Owns its topic: a slice of the START frame would keep that frame's whole read
    /// allocation alive for as long as the stream stays open.
    header: GossipHeader,
    /// Owned, grown exactly (capacity == len): what the bounds count is what it holds.
    data: Vec<u8>,
    frames: u32,
    /// When a frame of this stream last arrived: each stream must progress on its own, so
    /// one complete message now and then cannot keep a session's stalled streams alive.
    progress: Time,
}

/// Puts chunk frames back together per stream id (`corr_id`), refusing anything that would
/// grow past its limits.
#[derive(Debug)]
pub struct Reassembler {
    limits: StreamLimits,
    // Few streams per session (max_streams is small), so a scan beats a map.
    streams: Vec<Partial>,
    buffered: usize,
}

impl Reassembler {
    pub fn new(limits: StreamLimits) -> Reassembler {
        Reassembler {
            limits,
            streams: Vec::new(),
            buffered: 0,
        }
    }

    pub fn limits(&self) -> &StreamLimits {
        &self.limits
    }

    pub fn partial_streams(&self) -> usize {
        self.streams.len()
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Frames held in streams that have not ended.
    pub fn partial_frames(&self) -> u64 {
        self.streams.iter().map(|s| s.frames as u64).sum()
    }

    /// Drops every partial stream and returns how many frames they held.
    pub fn clear(&mut self) -> u64 {
        let n = self.partial_frames();
        self.streams.clear();
        self.buffered = 0;
        n
    }

    /// Takes one gossip frame; returns the message when its stream ends.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, StreamReject> {
        self.push_at(frame, Time::ZERO)
    }

    /// When the stream least recently making progress last did.
    pub fn oldest_progress(&self) -> Option<Time> {
        self.streams.iter().map(|s| s.progress).min()
    }

    /// Drops the streams whose last frame came before `cutoff`; returns the frames they held.
    pub fn expire(&mut self, cutoff: Time) -> u64 {
        let mut frames = 0;
        let mut buffered = self.buffered;
        self.streams.retain(|s| {
            let keep = s.progress >= cutoff;
            if !keep {
                frames += s.frames as u64;
                buffered -= s.data.len();
            }
            keep
        });
        self.buffered = buffered;
        frames
    }

    /// [`push`](Self::push), noting `now` as the stream's last progress.
    pub fn push_at(&mut self, frame: Frame, now: Time) -> Result<Option<Message>, StreamReject> {
        let corr_id = frame.corr_id;
        let reject = |error, frames| StreamReject {
            error,
            frames,
            corr_id,
        };
        if !frame.flags.contains(Flags::EVENT) {
            return Err(reject(StreamError::NotEvent, 1 + self.remove(corr_id)));
        }
        let start = frame.flags.contains(Flags::START);
        let end = frame.flags.contains(Flags::END);
        let ack_req = frame.flags.contains(Flags::ACK_REQ);
        let open = self.streams.iter().position(|s| s.corr_id == corr_id);

        if start {
            if open.is_some() {
                let held = self.remove(corr_id);
                return Err(reject(StreamError::DuplicateStart(corr_id), 1 + held));
            }
            let (header, data) = match GossipHeader::parse(&frame.payload) {
                Ok(v) => v,
                Err(e) => return Err(reject(e, 1)),
            };
            if data.len() > self.limits.max_body_bytes {
                return Err(reject(
                    StreamError::BodyTooLarge {
                        size: data.len(),
                        max: self.limits.max_body_bytes,
                    },
                    1,
                ));
            }
            if end {
                return Ok(Some(Message {
                    corr_id,
                    tenant_id: frame.tenant_id,
                    header,
                    data,
                    ack_req,
                    frames: 1,
                }));
            }
            if self.streams.len() >= self.limits.max_streams {
                return Err(reject(
                    StreamError::TooManyStreams {
                        max: self.limits.max_streams,
                    },
                    1,
                ));
            }
            if self.buffered + data.len() > self.limits.max_buffered_bytes {
                return Err(reject(
                    StreamError::BufferFull {
                        max: self.limits.max_buffered_bytes,
                    },
                    1,
                ));
            }
            let data = data.to_vec();
            self.buffered += data.len();
            self.streams.push(Partial {
                corr_id,
                tenant_id: frame.tenant_id,
                header: header.to_owned_topic(),
                data,
                frames: 1,
                progress: now,
            });
            return Ok(None);
        }

        let Some(i) = open else {
            return Err(reject(StreamError::NoStart(corr_id), 1));
        };
        let add = frame.payload.len();
        let size = self.streams[i].data.len() + add;
        if size > self.limits.max_body_bytes {
            let held = self.remove(corr_id);
            return Err(reject(
                StreamError::BodyTooLarge {
                    size,
                    max: self.limits.max_body_bytes,
                },
                1 + held,
            ));
        }
        if self.buffered + add > self.limits.max_buffered_bytes {
            let held = self.remove(corr_id);
            return Err(reject(
                StreamError::BufferFull {
                    max: self.limits.max_buffered_bytes,
                },
                1 + held,
            ));
        }
        self.buffered += add;
        let s = &mut self.streams[i];
        // Exact growth: what the bounds count is what the stream really holds (amortized
        // doubling could hold twice the data). realloc usually grows in place or remaps.
        s.data.reserve_exact(add);
        s.data.extend_from_slice(&frame.payload);
        s.frames += 1;
        s.progress = now;
        if !end {
            return Ok(None);
        }
        let s = self.streams.swap_remove(i);
        self.buffered -= s.data.len();
        Ok(Some(Message {
            corr_id,
            tenant_id: s.tenant_id,
            header: s.header,
            data: Bytes::from(s.data),
            ack_req,
            frames: s.frames,
        }))
    }

    /// Forgets a stream, returning the frames it held.
    fn remove(&mut self, corr_id: u64) -> u32 {
        match self.streams.iter().position(|s| s.corr_id == corr_id) {
            Some(i) => {
                let s = self.streams.swap_remove(i);
                self.buffered -= s.data.len();
                s.frames
            }
            None => 0,
        }
    }
}
