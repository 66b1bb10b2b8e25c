//! The anchor's payload layout, `[seq u64 LE][send_ns u64 LE][filler]`, so both systems
//! carry the same bytes and latency is receive − send on one clock.

pub const HEADER: usize = 16;

/// A payload of `size` bytes (at least the 16-byte header) with the filler in place.
pub fn template(size: usize) -> Vec<u8> {
    let pattern = b"svc-overlay mesh ";
    (0..size.max(HEADER))
        .map(|i| pattern[i % pattern.len()])
        .collect()
}

pub fn stamp(p: &mut [u8], seq: u64, send_ns: u64) {
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p[8..16].copy_from_slice(&send_ns.to_le_bytes());
}

/// (seq, send_ns) of a received payload.
pub fn parse(p: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}
