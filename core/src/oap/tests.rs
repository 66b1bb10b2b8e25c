use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::RejectReason;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const HELLO: &str = "00000070000100090000000000000000000000000000000000000000000000000000000000017b2276657273696f6e73223a5b315d2c226e6f6465223a226e31222c22726f6c65223a2270656572222c226d61785f6672616d65223a313034383537362c22746f70696373223a5b5d7d";
const HELLO_OK: &str = "000000610001000a00c8000000000000000000000000000000000000000000000000000000017b2276657273696f6e223a312c226e6f6465223a226e32222c226d61785f6672616d65223a313034383537362c226368756e6b223a36353533367d";
const GOSSIP: &str = "0000003e0001001c000000010000000000000000000000000000000000000000000000000007000102030405060708090a0b0c0d0e0f0304666565646869";
const PING: &str = "0000002f0001000400000002000000000000000000000000000000000000000000000000000901000000000000002a";

fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let out = Decoder::default().decode(&mut buf);
    if let Ok(Some(_)) = out {
        assert!(buf.is_empty(), "a whole frame leaves nothing behind");
    }
    out
}

#[test]
fn vector_hello_both_directions() {
    let wire = hex(HELLO);
    let f = decode_one(&wire).unwrap().unwrap();
    assert_eq!(f.flags, Flags::REQ | Flags::START);
    assert_eq!((f.app_proto, f.corr_id, f.code, f.tenant_id), (0, 1, 0, 0));
    assert!(f.cap.is_empty());
    let hello: Hello = serde_json::from_slice(&f.payload).unwrap();
    assert_eq!(hello.node, "n1");
    assert_eq!(hello.role, Role::Peer);
    assert_eq!(hello.versions, vec![1]);

    let built = Hello {
        versions: vec![1],
        node: "n1".into(),
        role: Role::Peer,
        max_frame: 1_048_576,
        topics: vec![],
        pq: None,
        comp: false,
        features: vec![],
    };
    let frame = Frame::new(
        AppProto::HELLO,
        Flags::REQ | Flags::START,
        1,
        built.to_json().into(),
    );
    assert_eq!(&frame.to_bytes(DEFAULT_MAX_FRAME).unwrap()[..], &wire[..]);
}

#[test]
fn vector_hello_ok_both_directions() {
    let wire = hex(HELLO_OK);
    let f = decode_one(&wire).unwrap().unwrap();
    assert_eq!(f.flags, Flags::RESP | Flags::START);
    assert_eq!((f.code, f.corr_id), (200, 1));
    let ok = HelloOk {
        version: 1,
        node: "n2".into(),
        max_frame: 1_048_576,
        chunk: 65_536,
        features: vec![],
    };
    assert_eq!(serde_json::from_slice::<HelloOk>(&f.payload).unwrap(), ok);
    let mut frame = Frame::resp(AppProto::HELLO, 1, 200, ok.to_json().into());
    frame.flags = frame.flags | Flags::START;
    assert_eq!(&frame.to_bytes(DEFAULT_MAX_FRAME).unwrap()[..], &wire[..]);
}

#[test]
fn vector_gossip_both_directions() {
    let wire = hex(GOSSIP);
    let f = decode_one(&wire).unwrap().unwrap();
    assert_eq!(f.flags, Flags::EVENT | Flags::START | Flags::END);
    assert_eq!((f.app_proto, f.corr_id), (1, 7));
    let (h, data) = GossipHeader::parse(&f.payload).unwrap();
    let id: MsgId = core::array::from_fn(|i| i as u8);
    assert_eq!(h.msg_id, id);
    assert_eq!((h.ttl, h.topic_str(), &data[..]), (3, "feed", &b"hi"[..]));

    let header = GossipHeader::new(id, 3, "feed").unwrap();
    let chunks = split(&header, &Bytes::from_static(b"hi"), 65_536).unwrap();
    assert_eq!(chunks.len(), 1);
    let frame = chunks[0].to_frame(7, Flags::empty());
    assert_eq!(&frame.to_bytes(DEFAULT_MAX_FRAME).unwrap()[..], &wire[..]);
}

#[test]
fn vector_ping_both_directions() {
    let wire = hex(PING);
    let f = decode_one(&wire).unwrap().unwrap();
    assert_eq!(f.flags, Flags::EVENT);
    assert_eq!((f.app_proto, f.corr_id), (2, 9));
    assert_eq!(Ctrl::parse(&f.payload), Some(Ctrl::Ping(42)));
    let frame = Frame::new(AppProto::CTRL, Flags::EVENT, 9, Ctrl::Ping(42).to_payload());
    assert_eq!(&frame.to_bytes(DEFAULT_MAX_FRAME).unwrap()[..], &wire[..]);
}

#[test]
fn vector_prefix_rejects() {
    for (prefix, reason) in [
        ("00000025", RejectReason::Proto),
        ("00100001", RejectReason::Oversize),
        ("00000000", RejectReason::Proto),
    ] {
        let e = decode_one(&hex(prefix)).unwrap_err();
        assert_eq!(e.reason(), reason, "{prefix}");
        assert_eq!(
            (e.app_proto, e.corr_id),
            (0, 0),
            "prefix rejects carry no frame ids"
        );
    }
    assert_eq!(RejectReason::Oversize.status(), 413);
}

#[test]
fn oversize_is_judged_before_buffering() {
    let mut buf = BytesMut::with_capacity(4);
    buf.extend_from_slice(&hex("7fffffff"));
    let mut d = Decoder::default();
    assert_eq!(
        d.decode(&mut buf).unwrap_err().reason(),
        RejectReason::Oversize
    );
    assert!(
        buf.capacity() < 1024,
        "nothing reserved for a refused frame"
    );
    // The stream is out of sync: the decoder stays failed.
    assert!(d.decode(&mut buf).is_err());
}

#[test]
fn reserve_never_exceeds_the_frame() {
    let mut buf = BytesMut::new();
    let len = 38 + 100_000u32;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&hex(&GOSSIP[8..76]));
    let mut d = Decoder::default();
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    assert!(buf.capacity() >= len as usize);
    assert!(buf.capacity() <= 2 * len as usize);
}

fn header_with(f: impl FnOnce(&mut Header)) -> Vec<u8> {
    let mut h = Header {
        len: 38 + 4,
        ver: 1,
        flags: Flags::EVENT,
        code: 0,
        app_proto: 1,
        tenant_id: 5,
        cap_len: 0,
        corr_id: 77,
    };
    f(&mut h);
    let mut b = [0u8; HEADER_LEN];
    h.write(&mut b);
    let mut v = b.to_vec();
    v.extend_from_slice(b"abcd");
    v
}

#[test]
fn every_header_rule_has_its_reason() {
    let cases: Vec<(Vec<u8>, FrameErrorKind)> = vec![
        (header_with(|h| h.ver = 2), FrameErrorKind::Version(2)),
        (
            header_with(|h| h.flags = Flags::from_bits(0x0104)),
            FrameErrorKind::UnknownFlags(0x0100),
        ),
        (
            header_with(|h| h.flags = Flags::empty()),
            FrameErrorKind::Kind(Flags::empty()),
        ),
        (
            header_with(|h| h.flags = Flags::REQ | Flags::RESP),
            FrameErrorKind::Kind(Flags::REQ | Flags::RESP),
        ),
        (
            header_with(|h| h.cap_len = 5),
            FrameErrorKind::CapTooLong {
                cap_len: 5,
                len: 42,
            },
        ),
        (
            header_with(|h| h.cap_len = 2),
            FrameErrorKind::CapWithoutStart,
        ),
    ];
    for (bytes, kind) in cases {
        let e = decode_one(&bytes).unwrap_err();
        assert_eq!(e.kind, kind);
        assert_eq!(e.reason(), RejectReason::Proto);
        assert_eq!(
            (e.app_proto, e.corr_id),
            (1, 77),
            "header rejects name the frame"
        );
    }
    // Judged from the header alone, before the payload arrives.
    let bad = header_with(|h| {
        h.ver = 9;
        h.len = 1000;
    });
    assert!(decode_one(&bad[..HEADER_LEN]).is_err());
}

#[test]
fn cap_with_start_is_split_from_payload() {
    let bytes = header_with(|h| {
        h.cap_len = 3;
        h.flags = Flags::REQ | Flags::START;
    });
    let f = decode_one(&bytes).unwrap().unwrap();
    assert_eq!(&f.cap[..], b"abc");
    assert_eq!(&f.payload[..], b"d");
}

fn comp_frame(payload: &[u8]) -> Vec<u8> {
    Frame::new(
        1,
        Flags::EVENT | Flags::COMP,
        3,
        Bytes::copy_from_slice(payload),
    )
    .to_bytes(DEFAULT_MAX_FRAME)
    .unwrap()
    .to_vec()
}

#[test]
fn comp_inflates_within_caps() {
    let data = b"hello hello hello hello".repeat(4);
    let z = comp::deflate(&data, 3).unwrap();
    let f = decode_one(&comp_frame(&z)).unwrap().unwrap();
    assert_eq!(&f.payload[..], &data[..]);
    assert!(!f.flags.contains(Flags::COMP));
    assert_eq!(f.wire_len as usize, HEADER_LEN + z.len());
}

#[test]
fn zstd_bomb_stops_at_the_ratio_cap() {
    // 64 MiB of zeros squeezes to a few KiB; inflating must stop at 10x, not allocate 64 MiB.
    let bomb = comp::deflate(&vec![0u8; 64 << 20], 19).unwrap();
    assert!(bomb.len() < 8 << 10);
    let e = decode_one(&comp_frame(&bomb)).unwrap_err();
    assert_eq!(e.reason(), RejectReason::RatioCap);
    assert_eq!(e.corr_id, 3);
    // A streamed bomb declares no content size: the cap must hold while inflating.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    std::io::Write::write_all(&mut enc, &vec![0u8; 8 << 20]).unwrap();
    let streamed = enc.finish().unwrap();
    assert!(matches!(
        zstd::zstd_safe::get_frame_content_size(&streamed),
        Ok(None)
    ));
    let e = decode_one(&comp_frame(&streamed)).unwrap_err();
    assert_eq!(e.reason(), RejectReason::RatioCap);
    // And one that passes the ratio but not max_body_bytes.
    let big = comp::deflate(&vec![7u8; 2 << 20], 1).unwrap();
    let limit = comp::inflate_limit(big.len(), 1 << 20, 1_000_000);
    assert_eq!(limit, 1 << 20);
    assert!(matches!(
        comp::inflate(&big, limit),
        Err(FrameErrorKind::InflateLimit { .. })
    ));
}

#[test]
fn comp_garbage_is_proto() {
    let e = decode_one(&comp_frame(b"definitely not zstd")).unwrap_err();
    assert_eq!(e.kind, FrameErrorKind::BadCompression);
    assert_eq!(e.reason(), RejectReason::Proto);
}

/// Found by the `frame_decoder` fuzz target: a COMP frame that failed to inflate had
/// already been consumed from the buffer, unlike every other reject.
#[test]
fn failed_comp_frame_leaves_the_buffer_untouched() {
    let bomb = comp::deflate(&vec![0u8; 1 << 20], 3).unwrap();
    for payload in [&b"definitely not zstd"[..], &bomb[..]] {
        let wire = comp_frame(payload);
        let mut buf = BytesMut::from(&wire[..]);
        let mut d = Decoder::default();
        assert!(d.decode(&mut buf).is_err());
        assert_eq!(&buf[..], &wire[..], "the bad frame is still there");
        assert!(d.decode(&mut buf).is_err());
        assert_eq!(buf.len(), wire.len());
    }
}

/// Found while writing docs/OAP1.md: bytes after the zstd frame were ignored, and a
/// skippable frame inflated to nothing, so two implementations could read different
/// messages out of the same COMP payload. The payload must be exactly one zstd frame.
#[test]
fn comp_payload_is_exactly_one_zstd_frame() {
    let z = comp::deflate(b"hello world hello world", 3).unwrap();
    let skippable = [0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    let cases: [(&str, Vec<u8>); 5] = [
        ("two frames", [&z[..], &z[..]].concat()),
        ("trailing garbage", [&z[..], b"garbage"].concat()),
        ("skippable frame", skippable.to_vec()),
        ("skippable then frame", [&skippable[..], &z[..]].concat()),
        ("truncated", z[..z.len() - 3].to_vec()),
    ];
    for (name, payload) in cases {
        let e = decode_one(&comp_frame(&payload)).unwrap_err();
        assert_eq!(e.kind, FrameErrorKind::BadCompression, "{name}");
        assert_eq!(e.reason(), RejectReason::Proto, "{name}");
    }
    let f = decode_one(&comp_frame(&z)).unwrap().unwrap();
    assert_eq!(&f.payload[..], b"hello world hello world");
}

#[test]
fn ctrl_rejects_unknown_and_short() {
    assert_eq!(Ctrl::parse(&[]), None);
    assert_eq!(Ctrl::parse(&[9]), None);
    assert_eq!(Ctrl::parse(&[1, 0, 0]), None);
    assert_eq!(Ctrl::parse(&[3]), Some(Ctrl::Goaway));
    assert_eq!(
        Ctrl::parse(&Ctrl::Pong(7).to_payload()),
        Some(Ctrl::Pong(7))
    );
}

fn header(topic: &str) -> GossipHeader {
    GossipHeader::new([9; 16], 4, topic).unwrap()
}

fn reassemble_all(r: &mut Reassembler, chunks: &[Chunk], corr: u64) -> Option<Message> {
    let mut out = None;
    for c in chunks {
        if let Some(m) = r.push(c.to_frame(corr, Flags::empty())).unwrap() {
            out = Some(m);
        }
    }
    out
}

#[test]
fn chunks_respect_size_and_reassemble() {
    let data = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
    let h = header("feed");
    let chunks = split(&h, &data, 65_536).unwrap();
    assert_eq!(chunks.len(), 4);
    assert!(chunks.iter().all(|c| c.payload_len() <= 65_536));
    assert!(chunks[0].flags.contains(Flags::START) && chunks[3].flags.contains(Flags::END));
    let mut r = Reassembler::new(StreamLimits::default());
    let m = reassemble_all(&mut r, &chunks, 5).unwrap();
    assert_eq!((m.data, m.header, m.frames), (data, h, 4));
    assert_eq!((r.partial_streams(), r.buffered_bytes()), (0, 0));
    assert!(
        split(&header("x"), &Bytes::new(), 19).is_err(),
        "chunk smaller than the header"
    );
}

#[test]
fn single_frame_message_is_zero_copy() {
    let wire = Bytes::from(hex(GOSSIP));
    let mut buf = BytesMut::from(&wire[..]);
    let f = Decoder::default().decode(&mut buf).unwrap().unwrap();
    let payload_ptr = f.payload.as_ptr();
    let m = Reassembler::new(StreamLimits::default())
        .push(f)
        .unwrap()
        .unwrap();
    assert_eq!(
        m.data.as_ptr(),
        payload_ptr.wrapping_add(22),
        "data is a slice of the frame"
    );
}

#[test]
fn reassembler_bounds_are_errors_not_growth() {
    let limits = StreamLimits {
        max_body_bytes: 1000,
        max_streams: 2,
        max_buffered_bytes: 1500,
    };
    let h = header("t");
    let start = |corr| {
        Chunk {
            flags: Flags::START,
            head: Some(h.clone()),
            data: Bytes::from(vec![1u8; 800]),
        }
        .to_frame(corr, Flags::empty())
    };
    let cont = |corr, n| Frame::new(1, Flags::EVENT, corr, Bytes::from(vec![2u8; n]));
    let mut r = Reassembler::new(limits);
    assert_eq!(r.push(start(1)).unwrap(), None);
    assert_eq!(
        r.push(start(2)).unwrap_err().error,
        StreamError::BufferFull { max: 1500 }
    );
    let e = r.push(cont(1, 300)).unwrap_err();
    assert_eq!((e.error.reason(), e.frames), (RejectReason::Oversize, 2));
    assert_eq!((r.partial_streams(), r.buffered_bytes()), (0, 0));

    assert_eq!(r.push(start(1)).unwrap(), None);
    assert_eq!(
        r.push(start(1)).unwrap_err().error,
        StreamError::DuplicateStart(1)
    );
    assert_eq!(
        r.push(cont(9, 1)).unwrap_err().error,
        StreamError::NoStart(9)
    );
    let mut small = |corr| {
        let f = Chunk {
            flags: Flags::START,
            head: Some(h.clone()),
            data: Bytes::from_static(b"x"),
        }
        .to_frame(corr, Flags::empty());
        r.push(f)
    };
    assert!(small(1).unwrap().is_none());
    assert!(small(2).unwrap().is_none());
    assert_eq!(
        small(3).unwrap_err().error,
        StreamError::TooManyStreams { max: 2 }
    );
    assert_eq!(r.clear(), 2);
    let not_event = Frame::new(1, Flags::REQ | Flags::START | Flags::END, 1, Bytes::new());
    assert_eq!(
        r.push(not_event).unwrap_err().error.reason(),
        RejectReason::Proto
    );
}

#[test]
fn ack_req_is_taken_from_the_end_frame() {
    let h = header("t");
    let chunks = split(&h, &Bytes::from(vec![0u8; 100]), 64).unwrap();
    let mut r = Reassembler::new(StreamLimits::default());
    let n = chunks.len();
    let mut msg = None;
    for (i, c) in chunks.iter().enumerate() {
        let extra = if i + 1 == n {
            Flags::ACK_REQ
        } else {
            Flags::empty()
        };
        msg = r.push(c.to_frame(3, extra)).unwrap();
    }
    assert!(msg.unwrap().ack_req);
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![Just(Flags::REQ), Just(Flags::RESP), Just(Flags::EVENT)],
        0u16..0x20,
        any::<u16>(),
        any::<u16>(),
        any::<u128>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..3000),
    )
        .prop_map(|(kind, extra, code, app, tenant, corr, cap, payload)| {
            // COMP is left out: an encoded COMP frame must carry real zstd.
            let mut flags = kind | Flags::from_bits((extra << 3) & 0x00B8);
            if !cap.is_empty() {
                flags = flags | Flags::START;
            }
            let mut f = Frame::new(app, flags, corr, Bytes::from(payload));
            f.code = code;
            f.tenant_id = tenant;
            f.cap = Bytes::from(cap);
            f.wire_len = f.encoded_len() as u32;
            f
        })
}

fn decode_split(bytes: &[u8], cuts: &[usize]) -> (Vec<Frame>, Option<FrameError>) {
    let mut d = Decoder::default();
    let mut buf = BytesMut::new();
    let mut frames = vec![];
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.push(bytes.len());
    for p in points {
        buf.extend_from_slice(&bytes[at..p.max(at)]);
        at = p.max(at);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(f in arb_frame()) {
        let bytes = f.to_bytes(DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(decode_one(&bytes).unwrap().unwrap(), f);
    }

    #[test]
    fn any_split_yields_the_same_frames(
        frames in proptest::collection::vec(arb_frame(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(DEFAULT_MAX_FRAME, &mut wire).unwrap();
        }
        let (got, err) = decode_split(&wire, &cuts);
        prop_assert!(err.is_none());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_account_for_every_byte(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        prefix_ok in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if prefix_ok && bytes.len() >= 8 {
            // Steer half the cases past the length check into header validation.
            let len = (bytes.len() as u32).max(38);
            bytes[..4].copy_from_slice(&len.to_be_bytes());
            bytes[4..6].copy_from_slice(&1u16.to_be_bytes());
        }
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&bytes[..]);
        let mut consumed = 0usize;
        loop {
            let before = buf.len();
            match d.decode(&mut buf) {
                Ok(Some(f)) => {
                    prop_assert_eq!(before - buf.len(), f.wire_len as usize);
                    consumed += f.wire_len as usize;
                }
                Ok(None) | Err(_) => {
                    prop_assert_eq!(before, buf.len(), "no bytes vanish without a frame");
                    break;
                }
            }
        }
        prop_assert_eq!(consumed + buf.len(), bytes.len());
    }

    #[test]
    fn split_then_reassemble_is_identity(
        len in 0usize..20_000,
        chunk in 64usize..5000,
        topic in "[a-z]{1,40}",
    ) {
        let data = Bytes::from((0..len).map(|i| (i * 31) as u8).collect::<Vec<_>>());
        let h = GossipHeader::new([3; 16], 2, &topic).unwrap();
        let chunks = split(&h, &data, chunk).unwrap();
        prop_assert!(chunks.iter().all(|c| c.payload_len() <= chunk));
        let mut r = Reassembler::new(StreamLimits::default());
        let m = reassemble_all(&mut r, &chunks, 1).unwrap();
        prop_assert_eq!(m.data, data);
        prop_assert_eq!(m.frames as usize, chunks.len());
    }
}

#[test]
fn hello_payloads_are_read_leniently_and_written_in_full() {
    // A terse dialer: no node, no max_frame, no topics.
    let h: Hello = serde_json::from_str(r#"{"versions":[1],"role":"client"}"#).unwrap();
    assert_eq!(
        (h.node.as_str(), h.max_frame, h.topics.len()),
        ("", DEFAULT_MAX_FRAME, 0)
    );
    // A terse acceptor: only the version.
    let ok: HelloOk = serde_json::from_str(r#"{"version":1}"#).unwrap();
    assert_eq!((ok.max_frame, ok.chunk), (DEFAULT_MAX_FRAME, 65_536));
    // Unknown fields from a newer peer are ignored, not refused.
    let h: Hello =
        serde_json::from_str(r#"{"versions":[1,2],"node":"x","role":"peer","future":true}"#)
            .unwrap();
    assert_eq!(h.versions, vec![1, 2]);
    assert!(serde_json::from_str::<Hello>(r#"{"versions":[1],"role":"admin"}"#).is_err());
}

/// The vectors of docs/OAP1.md's tree section, in its order, are what the codec writes.
#[test]
fn tree_vectors_in_the_docs_are_what_the_codec_writes() {
    let doc = include_str!("../../../docs/OAP1.md");
    let section = &doc[doc
        .find("## Additions: the broadcast tree")
        .expect("tree section")..];
    let vectors: Vec<Vec<u8>> = section
        .lines()
        .filter(|l| l.len() >= 76 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(hex)
        .collect();
    assert_eq!(vectors.len(), 6, "two HELLOs and four TREE frames");
    let hello = Hello {
        versions: vec![1],
        node: "n1".into(),
        role: Role::Peer,
        max_frame: 1_048_576,
        topics: vec![],
        pq: None,
        comp: false,
        features: vec!["tree".into()],
    };
    let f = Frame::new(
        AppProto::HELLO,
        Flags::REQ | Flags::START,
        1,
        hello.to_json().into(),
    );
    assert_eq!(&f.to_bytes(DEFAULT_MAX_FRAME).unwrap()[..], &vectors[0][..]);
    let ok = HelloOk {
        version: 1,
        node: "n2".into(),
        max_frame: 1_048_576,
        chunk: 65_536,
        features: vec!["tree".into()],
    };
    let mut f = Frame::resp(AppProto::HELLO, 1, 200, ok.to_json().into());
    f.flags = f.flags | Flags::START;
    assert_eq!(&f.to_bytes(DEFAULT_MAX_FRAME).unwrap()[..], &vectors[1][..]);
    let frames = [
        TreeFrame::Prune,
        TreeFrame::IHave(vec![[0xab; 16]]),
        TreeFrame::Graft(vec![[0xab; 16]]),
        TreeFrame::Digest(vec![(0x0102_0304_0506_0708, 3)], super::DIGEST_SETTLE_MS),
    ];
    for (t, wire) in frames.iter().zip(&vectors[2..]) {
        let f = Frame::new(AppProto::TREE, Flags::EVENT, 0, t.to_payload());
        assert_eq!(&f.to_bytes(DEFAULT_MAX_FRAME).unwrap()[..], &wire[..]);
        let back = decode_one(wire).unwrap().unwrap();
        assert_eq!(TreeFrame::parse(&back.payload).as_ref(), Some(t));
    }
}
