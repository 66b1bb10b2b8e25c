//! Arbitrary bytes, fed in arbitrary pieces, into one OAP/1 `Decoder`.
//!
//! Input layout (the seed generator `fuzz/gen-seeds.sh` writes the same):
//!   byte 0      bits 0..=3: number of cuts N; bit 4: tight limits instead of the defaults
//!   2·N bytes   cut sizes, u16 big-endian: how many bytes to feed before each round of decoding
//!   rest        the byte stream; whatever the cuts leave is fed in one last piece
//!
//! Checked: no panic; every byte given is either inside a decoded frame or still buffered;
//! a decoded frame re-encodes to its exact wire bytes (COMP frames: to the same header and
//! cap, with the payload inflated within its cap); `Ok(None)` only when a frame is truly
//! incomplete; a prefix over `max_frame` is refused from the prefix alone; errors are sticky
//! and touch neither the buffer's contents nor its capacity.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use overlay_core::oap::{comp, Decoder, Flags, FrameErrorKind, Limits, HEADER_LEN};

fuzz_target!(|input: &[u8]| run(input));

fn run(input: &[u8]) {
    let Some((&ctl, rest)) = input.split_first() else {
        return;
    };
    let limits = if ctl & 0x10 != 0 {
        // Small enough that the fuzzer reaches every bound with inputs of a few KiB.
        Limits {
            max_frame: 512,
            max_body_bytes: 1024,
            decompress_ratio_cap: 4,
        }
    } else {
        Limits::default()
    };
    let ncuts = (ctl & 0x0f) as usize;
    let (cuts, data) = rest.split_at((2 * ncuts).min(rest.len()));

    let mut s = Session {
        dec: Decoder::new(limits),
        limits,
        buf: BytesMut::new(),
        data,
        given: 0,
        consumed: 0,
    };
    let mut at = 0;
    for c in cuts.chunks_exact(2) {
        let end = (at + u16::from_be_bytes([c[0], c[1]]) as usize).min(data.len());
        s.feed(at, end);
        at = end;
    }
    s.feed(at, data.len());
    assert_eq!(s.given, data.len());
    assert_eq!(s.consumed + s.buf.len(), s.given, "bytes lost or invented");
}

struct Session<'a> {
    dec: Decoder,
    limits: Limits,
    buf: BytesMut,
    data: &'a [u8],
    given: usize,
    consumed: usize,
}

impl Session<'_> {
    fn feed(&mut self, from: usize, to: usize) {
        self.buf.extend_from_slice(&self.data[from..to]);
        self.given += to - from;
        // A decode call with nothing new must also be harmless, so even an empty piece
        // gets its round.
        while self.decode_once() {}
    }

    /// One `decode` call with its checks; true when a frame came out.
    fn decode_once(&mut self) -> bool {
        let before_len = self.buf.len();
        let before_cap = self.buf.capacity();
        let prefix = (before_len >= 4)
            .then(|| u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]));
        let was_failed = self.dec.is_failed();
        match self.dec.decode(&mut self.buf) {
            Ok(Some(f)) => {
                assert!(!was_failed, "a failed decoder produced a frame");
                let wire_len = f.wire_len as usize;
                assert_eq!(Some(f.wire_len), prefix);
                assert_eq!(before_len - self.buf.len(), wire_len);
                assert!(wire_len >= HEADER_LEN && f.wire_len <= self.limits.max_frame);
                let raw = &self.data[self.consumed..self.consumed + wire_len];
                let wire_flags = Flags::from_bits(u16::from_be_bytes([raw[6], raw[7]]));
                assert_eq!(f.flags, wire_flags.without(Flags::COMP));
                if wire_flags.contains(Flags::COMP) {
                    let compressed = wire_len - HEADER_LEN - f.cap.len();
                    let cap = comp::inflate_limit(
                        compressed,
                        self.limits.max_body_bytes,
                        self.limits.decompress_ratio_cap,
                    );
                    assert!(f.payload.len() <= cap, "inflated past its cap");
                    let re = f.to_bytes(u32::MAX).expect("re-encode");
                    assert_eq!(re[4..6], raw[4..6]);
                    assert_eq!(
                        re[8..HEADER_LEN + f.cap.len()],
                        raw[8..HEADER_LEN + f.cap.len()]
                    );
                } else {
                    let re = f.to_bytes(self.limits.max_frame).expect("re-encode");
                    assert_eq!(&re[..], raw, "decode/encode is not the identity");
                }
                self.consumed += wire_len;
                true
            }
            Ok(None) => {
                assert!(!was_failed && !self.dec.is_failed());
                assert_eq!(self.buf.len(), before_len, "Ok(None) consumed bytes");
                if let Some(len) = prefix {
                    assert!(len <= self.limits.max_frame, "oversize prefix not refused");
                    assert!(len as usize >= HEADER_LEN, "short prefix not refused");
                    if before_len >= HEADER_LEN {
                        assert!(
                            len as usize > before_len,
                            "a whole frame was left undecoded"
                        );
                    }
                }
                false
            }
            Err(e) => {
                assert!(self.dec.is_failed());
                assert_eq!(self.buf.len(), before_len, "an error consumed bytes");
                assert_eq!(self.buf.capacity(), before_cap, "an error reserved memory");
                assert!(matches!(e.status(), 400 | 413));
                if let Some(len) = prefix.filter(|_| !was_failed) {
                    if len > self.limits.max_frame {
                        assert!(matches!(e.kind, FrameErrorKind::Oversize { .. }));
                    }
                }
                if matches!(
                    e.kind,
                    FrameErrorKind::Oversize { .. } | FrameErrorKind::TooShort { .. }
                ) {
                    assert_eq!(
                        (e.app_proto, e.corr_id),
                        (0, 0),
                        "prefix rejects name no frame"
                    );
                }
                // Sticky: the stream has lost its framing, so the same answer every time.
                assert_eq!(self.dec.decode(&mut self.buf), Err(e));
                assert_eq!(self.buf.len(), before_len);
                false
            }
        }
    }
}
