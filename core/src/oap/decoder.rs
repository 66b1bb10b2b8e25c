//! The incremental frame decoder: bytes in, frames out, never more buffered than one frame.

use bytes::{Buf, Bytes, BytesMut};

use super::comp;
use super::error::{FrameError, FrameErrorKind};
use super::frame::Frame;
use super::header::{Flags, Header, DEFAULT_MAX_FRAME, HEADER_LEN, VERSION};

/// The bounds a decoder enforces (docs/OAP1.md, "Limits"; their config keys are in
/// docs/OPERATIONS.md, "Keys").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `overlay.gossip.max_frame_bytes`: largest frame on the wire, header included.
    pub max_frame: u32,
    /// `limits.max_body_bytes`: largest inflated COMP payload.
    pub max_body_bytes: usize,
    /// `limits.decompress_ratio_cap`: largest inflated / compressed ratio.
    pub decompress_ratio_cap: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_body_bytes: 1 << 20,
            decompress_ratio_cap: 10,
        }
    }
}

/// Decodes OAP/1 frames from a connection's receive buffer, in the manner of
/// `tokio_util::codec::Decoder`: `Ok(None)` asks for more bytes.
///
/// After an error the byte stream has lost its framing, so the decoder stays failed and
/// returns the same error on every later call; the buffer is left as it was at the bad frame.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    failed: Option<FrameError>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            failed: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Tightens or loosens the bounds between frames (config reload, negotiated max_frame).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    // Inlined into the caller's read loop: at 64 B frames the call and the move of the
    // result out of it cost as much as the decoding itself (docs/PERFORMANCE.md).
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(still_failed(e));
        }
        match self.decode_inner(buf) {
            Err(e) => Err(self.fail(e)),
            ok => ok,
        }
    }

    #[cold]
    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e.clone());
        e
    }

    #[inline]
    fn decode_inner(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len > self.limits.max_frame {
            return Err(FrameError::at_prefix(FrameErrorKind::Oversize {
                len,
                max: self.limits.max_frame,
            }));
        }
        if (len as usize) < HEADER_LEN {
            return Err(FrameError::at_prefix(FrameErrorKind::TooShort { len }));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&buf[..HEADER_LEN]);
        let header = Header::parse(&raw);
        // Judge the header as soon as it is here, so a bad frame is refused before its
        // body is buffered.
        validate(&header)?;
        let len = len as usize;
        if buf.len() < len {
            // `len <= max_frame`, so this never reserves past the cap.
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let cap_len = header.cap_len as usize;
        let mut flags = header.flags;
        // Inflate before consuming anything: a COMP frame that fails must leave the buffer
        // as it was at the bad frame, like every other reject.
        let inflated = if flags.contains(Flags::COMP) {
            let body = &buf[HEADER_LEN + cap_len..len];
            let limit = comp::inflate_limit(
                body.len(),
                self.limits.max_body_bytes,
                self.limits.decompress_ratio_cap,
            );
            flags = flags.without(Flags::COMP);
            Some(comp::inflate(body, limit).map_err(|kind| FrameError {
                kind,
                app_proto: header.app_proto,
                corr_id: header.corr_id,
            })?)
        } else {
            None
        };
        buf.advance(HEADER_LEN);
        let cap = if cap_len == 0 {
            Bytes::new()
        } else {
            buf.split_to(cap_len).freeze()
        };
        let body_len = len - HEADER_LEN - cap_len;
        let payload = match inflated {
            Some(p) => {
                buf.advance(body_len);
                p
            }
            None => buf.split_to(body_len).freeze(),
        };
        Ok(Some(Frame {
            flags,
            code: header.code,
            app_proto: header.app_proto,
            tenant_id: header.tenant_id,
            corr_id: header.corr_id,
            cap,
            payload,
            wire_len: header.len,
        }))
    }
}

#[cold]
fn still_failed(e: &FrameError) -> FrameError {
    e.clone()
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new(Limits::default())
    }
}

/// The header rules of spec section 1 that do not depend on configured limits.
#[inline]
pub fn validate(h: &Header) -> Result<(), FrameError> {
    let fail = |kind| {
        Err(FrameError {
            kind,
            app_proto: h.app_proto,
            corr_id: h.corr_id,
        })
    };
    if (h.cap_len as u32) > h.len.saturating_sub(HEADER_LEN as u32) {
        return fail(FrameErrorKind::CapTooLong {
            cap_len: h.cap_len,
            len: h.len,
        });
    }
    if h.ver != VERSION {
        return fail(FrameErrorKind::Version(h.ver));
    }
    let unknown = h.flags.bits() & !Flags::DEFINED.bits();
    if unknown != 0 {
        return fail(FrameErrorKind::UnknownFlags(unknown));
    }
    if h.flags.kind().is_none() {
        return fail(FrameErrorKind::Kind(h.flags));
    }
    if h.cap_len > 0 && !h.flags.contains(Flags::START) {
        return fail(FrameErrorKind::CapWithoutStart);
    }
    Ok(())
}
