//! OAP/1 decoder throughput against `tokio_util::codec::LengthDelimitedCodec` configured to
//! frame the same bytes. Custom harness (no criterion): `cargo bench -p overlay-core --bench codec`.
//!
//! Both decoders get identical input: a stream of gossip EVENT frames, copied into a fresh
//! `BytesMut` outside the timed region before every pass, so neither benefits from the
//! other's buffer state. Every frame out is passed through `black_box` and dropped, which
//! is what a session does with a frame once it has been handled. Each figure is the best
//! of several runs; a run is the mean over as many passes as fit in its time slice.
//!
//! Set `CODEC_BENCH_SECS` to change the time spent per (payload, decoder) cell (default 3).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use overlay_core::oap::{split, Decoder, Flags, GossipHeader, Limits, DEFAULT_MAX_FRAME};
use tokio_util::codec::{Decoder as _, LengthDelimitedCodec};

/// Large enough to leave the caches on every pass, small enough to copy quickly.
const STREAM_BYTES: usize = 4 << 20;
const RUNS: u32 = 5;
const PAYLOADS: [(usize, &str); 3] = [(64, "64 B"), (1024, "1 KiB"), (64 << 10, "64 KiB")];

/// A stream of one-frame gossip messages whose frame payloads are each `payload` bytes.
fn stream(payload: usize) -> (Bytes, usize) {
    let topic = "bench";
    let head_len = 18 + topic.len();
    let data = Bytes::from(vec![0xA5u8; payload - head_len]);
    let frames = (STREAM_BYTES / (38 + payload)).max(16);
    let mut out = BytesMut::with_capacity(frames * (38 + payload));
    for i in 0..frames {
        let mut msg_id = [0u8; 16];
        msg_id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let header = GossipHeader::new(msg_id, 3, topic).unwrap();
        let chunks = split(&header, &data, payload).unwrap();
        assert_eq!(chunks.len(), 1);
        chunks[0]
            .to_frame(i as u64, Flags::empty())
            .encode(DEFAULT_MAX_FRAME, &mut out)
            .unwrap();
    }
    (out.freeze(), frames)
}

fn baseline_codec() -> LengthDelimitedCodec {
    // The length field counts the whole frame, itself included. tokio-util measures the
    // item from the first byte it keeps, so with the field kept (`num_skip(0)`) the
    // adjustment is 0, not -4 (-4 would cut every item 4 bytes short and lose sync). Each
    // item is then exactly the bytes our decoder turns into one Frame, and the limit
    // applies to the same field value as our max_frame.
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_offset(0)
        .length_field_length(4)
        .length_adjustment(0)
        .num_skip(0)
        .max_frame_length(DEFAULT_MAX_FRAME as usize)
        .new_codec()
}

fn decode_ours(buf: &mut BytesMut) -> usize {
    let mut d = Decoder::new(Limits::default());
    let mut n = 0;
    while let Some(f) = d.decode(buf).expect("valid stream") {
        black_box(f);
        n += 1;
    }
    n
}

fn decode_baseline(buf: &mut BytesMut) -> usize {
    let mut c = baseline_codec();
    let mut n = 0;
    while let Some(f) = c.decode(buf).expect("valid stream") {
        black_box(f);
        n += 1;
    }
    n
}

/// Mean time of one pass over `input`, over as many passes as fit in `slice` (at least 3).
fn run_once(input: &Bytes, frames: usize, slice: Duration, f: fn(&mut BytesMut) -> usize) -> f64 {
    let started = Instant::now();
    let (mut timed, mut passes) = (Duration::ZERO, 0u32);
    while passes < 3 || started.elapsed() < slice {
        let mut buf = BytesMut::from(&input[..]);
        let t = Instant::now();
        let n = f(black_box(&mut buf));
        timed += t.elapsed();
        passes += 1;
        assert_eq!(n, frames);
        assert!(buf.is_empty());
        drop(black_box(buf));
    }
    timed.as_secs_f64() / passes as f64
}

/// Best pass time of each decoder over `RUNS` runs. The runs alternate between the two,
/// so a change of clock speed or a noisy neighbour mid-way hits both alike.
fn measure(input: &Bytes, frames: usize, budget: Duration) -> (f64, f64) {
    let slice = budget / RUNS;
    // One untimed pass each to warm the allocator and the branch predictors.
    assert_eq!(decode_ours(&mut BytesMut::from(&input[..])), frames);
    assert_eq!(decode_baseline(&mut BytesMut::from(&input[..])), frames);
    let (mut ours, mut base) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..RUNS {
        ours = ours.min(run_once(input, frames, slice, decode_ours));
        base = base.min(run_once(input, frames, slice, decode_baseline));
    }
    (ours, base)
}

fn main() {
    let secs: f64 = std::env::var("CODEC_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(secs);

    println!(
        "OAP/1 decode: overlay_core::oap::Decoder vs tokio_util LengthDelimitedCodec \
         ({} MiB stream per pass, best of {RUNS} runs)",
        STREAM_BYTES >> 20
    );
    println!(
        "{:>8} | {:>14} {:>9} | {:>14} {:>9} | {:>12}",
        "payload", "ours frames/s", "ours GB/s", "base frames/s", "base GB/s", "ours/base"
    );
    for (payload, label) in PAYLOADS {
        let (input, frames) = stream(payload);
        // Sanity: both decoders cut the stream at the same places.
        let mut a = BytesMut::from(&input[..]);
        let mut b = BytesMut::from(&input[..]);
        let mut d = Decoder::default();
        let mut c = baseline_codec();
        for _ in 0..frames {
            let ours = d.decode(&mut a).unwrap().unwrap();
            let base = c.decode(&mut b).unwrap().unwrap();
            assert_eq!(ours.to_bytes(DEFAULT_MAX_FRAME).unwrap(), base.freeze());
        }

        let (t_ours, t_base) = measure(&input, frames, budget);
        let fps = |t: f64| frames as f64 / t;
        let gbs = |t: f64| input.len() as f64 / t / 1e9;
        println!(
            "{:>8} | {:>14.0} {:>9.2} | {:>14.0} {:>9.2} | {:>11.2}x",
            label,
            fps(t_ours),
            gbs(t_ours),
            fps(t_base),
            gbs(t_base),
            t_base / t_ours
        );
    }
}
