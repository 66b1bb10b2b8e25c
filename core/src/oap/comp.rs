//! COMP payloads: zstd, inflated in bounded steps so that a bomb costs at most the cap.

use std::io::Read;

use bytes::Bytes;

use super::error::FrameErrorKind;

/// Largest zstd window the decoder accepts (2^23 = 8 MiB, what level 19 asks for). A frame
/// asking for more would make the decoder allocate that window before producing a byte.
const WINDOW_LOG_MAX: u32 = 23;

/// Bytes produced per read while inflating; the output never grows past the limit + 1 step.
const STEP: usize = 16 * 1024;

/// The most an inflated payload of `compressed_len` bytes may grow to.
pub fn inflate_limit(compressed_len: usize, max_body_bytes: usize, ratio_cap: u32) -> usize {
    max_body_bytes.min(compressed_len.saturating_mul(ratio_cap as usize))
}

/// Magic number of a Zstandard frame, as it appears on the wire (little-endian 0xFD2FB528).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Inflates `payload`, stopping as soon as the output would pass `limit` bytes.
///
/// The payload must be exactly one Zstandard frame: a skippable frame, or bytes after the
/// frame, are refused, because a peer that decoded them differently would see a different
/// message under the same msg_id.
pub fn inflate(payload: &[u8], limit: usize) -> Result<Bytes, FrameErrorKind> {
    if !payload.starts_with(&ZSTD_MAGIC) {
        return Err(FrameErrorKind::BadCompression);
    }
    // A declared content size over the limit is refused before the decoder allocates.
    if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(payload) {
        if declared > limit as u64 {
            return Err(FrameErrorKind::InflateLimit { limit });
        }
    }
    let mut dec = zstd::stream::read::Decoder::with_buffer(payload)
        .map_err(|_| FrameErrorKind::BadCompression)?;
    dec.window_log_max(WINDOW_LOG_MAX)
        .map_err(|_| FrameErrorKind::BadCompression)?;
    let mut dec = dec.single_frame();
    let mut out = Vec::with_capacity(limit.min(STEP));
    let mut step = [0u8; STEP];
    loop {
        let n = match dec.read(&mut step) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(FrameErrorKind::BadCompression),
        };
        if n == 0 {
            break;
        }
        if out.len() + n > limit {
            return Err(FrameErrorKind::InflateLimit { limit });
        }
        out.extend_from_slice(&step[..n]);
    }
    if !dec.finish().is_empty() {
        return Err(FrameErrorKind::BadCompression);
    }
    Ok(Bytes::from(out))
}

/// Compresses `data` as one zstd frame (content size recorded, so peers size buffers exactly).
pub fn deflate(data: &[u8], level: i32) -> std::io::Result<Bytes> {
    zstd::bulk::compress(data, level.clamp(1, 19)).map(Bytes::from)
}
