//! A sequence of gossip frames pushed into one `Reassembler` with small limits, checked
//! against a plain model of OAP/1 section 3 and the bounds in docs/OAP1.md.
//!
//! Input layout (the seed generator `fuzz/gen-seeds.sh` writes the same):
//!   byte 0    limits: max_streams = 1 + (b & 3); max_body_bytes = 64 << ((b >> 2) & 3);
//!             max_buffered_bytes = 64 << ((b >> 4) & 3)
//!   then records, until fewer than 4 bytes remain:
//!     flags u8  0x01 START, 0x02 END, 0x04 ACK_REQ, 0x08 REQ instead of EVENT
//!     corr  u8  stream id
//!     len   u16 big-endian, clipped to what is left
//!     payload
//!
//! Checked after every push: buffered bytes and partial streams stay within their limits
//! and equal the model's; every frame pushed is accounted exactly once (in a message, in a
//! reject, or still partial); accept/reject and the reject reason match the model; a
//! message carries exactly the data of its frames.
#![no_main]

use std::collections::BTreeMap;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use overlay_core::oap::{AppProto, Flags, Frame, Reassembler, StreamLimits};
use overlay_core::RejectReason;

fuzz_target!(|input: &[u8]| run(input));

#[derive(Default)]
struct Stream {
    data: Vec<u8>,
    frames: u32,
}

/// The data after a well-formed gossip header, or None if the header is malformed.
fn body(payload: &[u8]) -> Option<&[u8]> {
    let topic_len = *payload.get(17)? as usize;
    let end = 18 + topic_len;
    if topic_len == 0 || payload.len() < end {
        return None;
    }
    std::str::from_utf8(&payload[18..end]).ok()?;
    Some(&payload[end..])
}

fn run(input: &[u8]) {
    let Some((&cfg, mut rest)) = input.split_first() else {
        return;
    };
    let limits = StreamLimits {
        max_streams: 1 + (cfg & 3) as usize,
        max_body_bytes: 64 << ((cfg >> 2) & 3),
        max_buffered_bytes: 64 << ((cfg >> 4) & 3),
    };
    let mut r = Reassembler::new(limits);
    let mut model: BTreeMap<u64, Stream> = BTreeMap::new();
    let (mut pushed, mut delivered, mut rejected) = (0u64, 0u64, 0u64);

    while rest.len() >= 4 {
        let (ctl, corr) = (rest[0], rest[1] as u64);
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize).min(rest.len() - 4);
        let payload = &rest[4..4 + len];
        rest = &rest[4 + len..];

        let start = ctl & 0x01 != 0;
        let end = ctl & 0x02 != 0;
        let ack = ctl & 0x04 != 0;
        let event = ctl & 0x08 == 0;
        let mut flags = if event { Flags::EVENT } else { Flags::REQ };
        for (bit, f) in [
            (start, Flags::START),
            (end, Flags::END),
            (ack, Flags::ACK_REQ),
        ] {
            if bit {
                flags = flags | f;
            }
        }

        let buffered: usize = model.values().map(|s| s.data.len()).sum();
        let open = model.contains_key(&corr);
        let expect: Result<(), RejectReason> = if !event {
            Err(RejectReason::Proto)
        } else if start {
            match body(payload) {
                _ if open => Err(RejectReason::Proto),
                None => Err(RejectReason::Proto),
                Some(d) if d.len() > limits.max_body_bytes => Err(RejectReason::Oversize),
                Some(_) if end => Ok(()),
                Some(_) if model.len() >= limits.max_streams => Err(RejectReason::Proto),
                Some(d) if buffered + d.len() > limits.max_buffered_bytes => {
                    Err(RejectReason::Oversize)
                }
                Some(_) => Ok(()),
            }
        } else {
            match model.get(&corr) {
                None => Err(RejectReason::Proto),
                Some(s) if s.data.len() + len > limits.max_body_bytes => {
                    Err(RejectReason::Oversize)
                }
                Some(_) if buffered + len > limits.max_buffered_bytes => {
                    Err(RejectReason::Oversize)
                }
                Some(_) => Ok(()),
            }
        };

        let frame = Frame::new(
            AppProto::GOSSIP,
            flags,
            corr,
            Bytes::copy_from_slice(payload),
        );
        pushed += 1;
        match r.push(frame) {
            Ok(None) => {
                assert_eq!(expect, Ok(()));
                assert!(!end, "an END frame left its stream open");
                let s = model.entry(corr).or_default();
                s.data.extend_from_slice(if start {
                    body(payload).unwrap()
                } else {
                    payload
                });
                s.frames += 1;
            }
            Ok(Some(m)) => {
                assert_eq!(expect, Ok(()));
                assert!(end, "a message completed without END");
                let mut s = if start {
                    Stream::default()
                } else {
                    model.remove(&corr).unwrap()
                };
                s.data.extend_from_slice(if start {
                    body(payload).unwrap()
                } else {
                    payload
                });
                s.frames += 1;
                assert_eq!(
                    &m.data[..],
                    &s.data[..],
                    "message data differs from its frames"
                );
                assert_eq!((m.frames, m.corr_id, m.ack_req), (s.frames, corr, ack));
                assert!(m.data.len() <= limits.max_body_bytes);
                delivered += m.frames as u64;
            }
            Err(rej) => {
                assert_eq!(expect, Err(rej.error.reason()), "{:?}", rej.error);
                // A refused frame ends its stream: the frames held for it go with it.
                let held = model.remove(&corr).map_or(0, |s| s.frames);
                assert_eq!((rej.frames, rej.corr_id), (1 + held, corr));
                rejected += rej.frames as u64;
            }
        }

        assert!(r.buffered_bytes() <= limits.max_buffered_bytes);
        assert!(r.partial_streams() <= limits.max_streams);
        assert_eq!(
            r.buffered_bytes(),
            model.values().map(|s| s.data.len()).sum::<usize>()
        );
        assert_eq!(r.partial_streams(), model.len());
        assert_eq!(
            r.partial_frames(),
            model.values().map(|s| s.frames as u64).sum::<u64>()
        );
        assert_eq!(
            pushed,
            delivered + rejected + r.partial_frames(),
            "a frame went uncounted"
        );
    }

    let held = r.partial_frames();
    assert_eq!(r.clear(), held);
    assert_eq!((r.buffered_bytes(), r.partial_streams()), (0, 0));
}
