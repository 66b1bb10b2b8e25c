//! TREE frames (app_proto 3): the epidemic broadcast tree's control traffic, exchanged only
//! on sessions whose HELLOs both listed the `tree` feature. A peer that speaks only spec
//! sections 1–6 never receives one (and would drop it as an unroutable EVENT if it did).
//!
//! Every TREE frame is an EVENT whose payload starts with an op byte:
//!
//! | op | payload after the op | meaning |
//! | --- | --- | --- |
//! | `0x01` IHAVE | u16 count, count × 16-byte msg ids | "I have these": pull what you lack |
//! | `0x02` GRAFT | u16 count, count × 16-byte msg ids | "send me these, and push to me eagerly" |
//! | `0x03` PRUNE | — | "I got that already: announce to me instead of pushing" |
//! | `0x04` DIGEST | u16 count, count × (u64 fingerprint, u32 ids), optional u32 settle ms | my store, in buckets by id |

use bytes::{BufMut, Bytes, BytesMut};

use super::gossip::MsgId;

/// Most ids one IHAVE or GRAFT carries: 16 KiB of ids, far under any max_frame.
pub const MAX_IDS: usize = 1024;
/// Buckets of a DIGEST: msg ids by their first byte, `>> 2`.
pub const DIGEST_BUCKETS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeFrame {
    IHave(Vec<MsgId>),
    Graft(Vec<MsgId>),
    Prune,
    /// Buckets, and the settle time the sender used (omitted on the wire when it is the
    /// default, [`DIGEST_SETTLE_MS`]).
    Digest(Vec<(u64, u32)>, u32),
}

/// Store entries younger than this are left out of a periodic digest: still in flight.
pub const DIGEST_SETTLE_MS: u32 = 2000;

impl TreeFrame {
    pub const IHAVE: u8 = 0x01;
    pub const GRAFT: u8 = 0x02;
    pub const PRUNE: u8 = 0x03;
    pub const DIGEST: u8 = 0x04;

    /// `None` for anything malformed: an unknown op, a count past the payload or past
    /// [`MAX_IDS`] / [`DIGEST_BUCKETS`]. Bytes after the fields are ignored.
    pub fn parse(p: &[u8]) -> Option<TreeFrame> {
        let op = *p.first()?;
        if op == Self::PRUNE {
            return Some(TreeFrame::Prune);
        }
        let n = u16::from_be_bytes(p.get(1..3)?.try_into().ok()?) as usize;
        let body = &p[3..];
        match op {
            Self::IHAVE | Self::GRAFT => {
                if n > MAX_IDS || body.len() < n * 16 {
                    return None;
                }
                let ids = body[..n * 16]
                    .chunks_exact(16)
                    .map(|c| c.try_into().unwrap_or([0; 16]))
                    .collect();
                Some(if op == Self::IHAVE {
                    TreeFrame::IHave(ids)
                } else {
                    TreeFrame::Graft(ids)
                })
            }
            Self::DIGEST => {
                if n > DIGEST_BUCKETS || body.len() < n * 12 {
                    return None;
                }
                let settle = body
                    .get(n * 12..n * 12 + 4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(DIGEST_SETTLE_MS, u32::from_be_bytes);
                let buckets = body[..n * 12]
                    .chunks_exact(12)
                    .map(|c| {
                        let fp = u64::from_be_bytes(c[..8].try_into().unwrap_or([0; 8]));
                        let count = u32::from_be_bytes(c[8..].try_into().unwrap_or([0; 4]));
                        (fp, count)
                    })
                    .collect();
                Some(TreeFrame::Digest(buckets, settle))
            }
            _ => None,
        }
    }

    /// The payload's exact size: built in one allocation, not grown bucket by bucket (a
    /// DIGEST on every link every `reconcile_interval` is a hot path at many nodes).
    fn payload_len(&self) -> usize {
        match self {
            TreeFrame::IHave(ids) | TreeFrame::Graft(ids) => 3 + ids.len().min(MAX_IDS) * 16,
            TreeFrame::Prune => 1,
            TreeFrame::Digest(buckets, settle) => {
                3 + buckets.len().min(DIGEST_BUCKETS) * 12
                    + if *settle != DIGEST_SETTLE_MS { 4 } else { 0 }
            }
        }
    }

    pub fn to_payload(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.payload_len());
        match self {
            TreeFrame::IHave(ids) | TreeFrame::Graft(ids) => {
                let op = if matches!(self, TreeFrame::IHave(_)) {
                    Self::IHAVE
                } else {
                    Self::GRAFT
                };
                let ids = &ids[..ids.len().min(MAX_IDS)];
                b.put_u8(op);
                b.put_u16(ids.len() as u16);
                for id in ids {
                    b.put_slice(id);
                }
            }
            TreeFrame::Prune => b.put_u8(Self::PRUNE),
            TreeFrame::Digest(buckets, settle) => {
                let buckets = &buckets[..buckets.len().min(DIGEST_BUCKETS)];
                b.put_u8(Self::DIGEST);
                b.put_u16(buckets.len() as u16);
                for (fp, n) in buckets {
                    b.put_u64(*fp);
                    b.put_u32(*n);
                }
                if *settle != DIGEST_SETTLE_MS {
                    b.put_u32(*settle);
                }
            }
        }
        debug_assert_eq!(b.len(), self.payload_len());
        b.freeze()
    }
}

/// The DIGEST bucket of a message id.
pub fn bucket_of(id: &MsgId) -> usize {
    (id[0] >> 2) as usize
}

/// A message id's contribution to its bucket's fingerprint (XOR of these): the id's
/// bytes 8..16, mixed so that ids differing in one bit differ in many.
pub fn fingerprint(id: &MsgId) -> u64 {
    let a = u64::from_be_bytes(id[..8].try_into().unwrap_or([0; 8]));
    let b = u64::from_be_bytes(id[8..].try_into().unwrap_or([0; 8]));
    let mut x = a ^ b.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_malformed_ones_are_none() {
        let ids = vec![[1u8; 16], [2u8; 16]];
        for f in [
            TreeFrame::IHave(ids.clone()),
            TreeFrame::Graft(ids),
            TreeFrame::Prune,
            TreeFrame::Digest(vec![(7, 3), (9, 1)], DIGEST_SETTLE_MS),
            TreeFrame::Digest(vec![(7, 3)], 0),
        ] {
            assert_eq!(TreeFrame::parse(&f.to_payload()), Some(f));
        }
        assert_eq!(TreeFrame::parse(&[]), None);
        assert_eq!(TreeFrame::parse(&[0x09]), None);
        assert_eq!(
            TreeFrame::parse(&[0x01, 0, 2, 1, 2, 3]),
            None,
            "count past payload"
        );
        assert_eq!(
            TreeFrame::parse(&[0x01, 0xff, 0xff]),
            None,
            "count past MAX_IDS"
        );
    }

    #[test]
    fn ihave_vector() {
        let f = TreeFrame::IHave(vec![[0xab; 16]]);
        assert_eq!(
            hex(&f.to_payload()),
            "010001abababababababababababababababab"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Each payload is built in exactly the allocation sized for it, past the id limit and
    /// with a settle of its own too.
    #[test]
    fn payloads_are_built_at_their_exact_size() {
        let frames = [
            TreeFrame::Prune,
            TreeFrame::IHave(vec![[1; 16]; 3]),
            TreeFrame::Graft(vec![[2; 16]; MAX_IDS + 5]),
            TreeFrame::Digest(vec![(7, 1); DIGEST_BUCKETS], DIGEST_SETTLE_MS),
            TreeFrame::Digest(vec![(7, 1); 3], DIGEST_SETTLE_MS + 1),
        ];
        for f in &frames {
            let p = f.to_payload();
            assert_eq!(p.len(), f.payload_len(), "{f:?}");
            assert!(TreeFrame::parse(&p).is_some(), "{f:?}");
        }
    }
}
