//! Frame boundaries by length prefix, for debug lines about what a read carried; the node
//! does the real decoding.

use overlay_core::oap::HEADER_LEN;

/// Debug-level `oap_frame_rx` lines: the complete frames in `buf`, from their length
/// prefixes alone (the node does the real decoding).
pub(crate) fn log_frames_rx(buf: &[u8]) {
    let mut at = 0usize;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len < HEADER_LEN || buf.len() - at < len {
            return;
        }
        tracing::debug!(event = "oap_frame_rx", dir = "rx", bytes = len as u64);
        at += len;
    }
}
