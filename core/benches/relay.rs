//! Core-only relay throughput: one node, 16 peer sessions, 1 KiB gossip, fanout 8, on one
//! core. Prints relayed frames per second and heap bytes allocated per relayed message
//! (a counting allocator), against a baseline measured in the same run: the cost of merely
//! decoding the same input frames and copying each payload once per relay target, which is
//! what a relay that copies payloads would pay at the least.
//!
//! `cargo bench -p overlay-core --bench relay` (`RELAY_BENCH_SECS`, default 3).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use overlay_core::client::Client;
use overlay_core::oap::{Decoder, Role};
use overlay_core::observe::Metrics;
use overlay_core::{Config, ConnId, Overlay, Time};

struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size() as u64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new.saturating_sub(l.size()) as u64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PEERS: usize = 16;
const PAYLOAD: usize = 1024;
const BATCH: usize = 64;

struct Rig {
    node: Overlay,
    peers: Vec<(ConnId, Client)>,
    now: Time,
}

fn rig() -> Rig {
    let mut cfg = Config::default();
    cfg.overlay.peer.max_rps = u32::MAX;
    cfg.overlay.gossip.relay_fanout = 8;
    cfg.overlay.peer.egress_queue_frames = 1 << 16;
    cfg.overlay.peer.egress_queue_bytes = 1 << 30;
    cfg.overlay.gossip.seen_cache_size = 1 << 20;
    let now = Time::ZERO;
    let mut node = Overlay::new(cfg, Metrics::noop(), 1, now);
    let mut peers = Vec::new();
    for i in 0..PEERS {
        let conn = node.handle_accept(now);
        let mut c = Client::new(&format!("p{i}"), Role::Peer, vec![], None);
        c.start();
        let mut b = BytesMut::from(&c.poll_transmit().unwrap()[..]);
        node.handle_bytes(now, conn, &mut b);
        peers.push((conn, c));
    }
    drain(&mut node, now);
    Rig { node, peers, now }
}

/// Drains the node as a runtime would: every transmit written at once. Returns gossip
/// frames handed out.
fn drain(node: &mut Overlay, now: Time) -> u64 {
    let mut n = 0;
    while let Some(t) = node.poll_transmit(now) {
        black_box(&t.body);
        node.handle_written(now, t.conn, 1);
        n += 1;
    }
    while node.poll_event().is_some() {}
    n
}

/// Pre-encodes `batches` batches of BATCH messages, each from a rotating peer.
fn inputs(rig: &mut Rig, batches: usize, base: u64) -> Vec<Vec<(ConnId, BytesMut)>> {
    let data = Bytes::from(vec![0x5a; PAYLOAD]);
    let mut out = Vec::with_capacity(batches);
    let mut id = base;
    for _ in 0..batches {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            id += 1;
            let p = (id as usize) % PEERS;
            let (conn, c) = &mut rig.peers[p];
            let mut msg_id = [0u8; 16];
            msg_id[..8].copy_from_slice(&id.to_be_bytes());
            c.publish(msg_id, "bench", 5, &data, false).unwrap();
            batch.push((*conn, BytesMut::from(&c.poll_transmit().unwrap()[..])));
        }
        out.push(batch);
    }
    out
}

fn run_overlay(secs: f64) -> (f64, f64, f64) {
    let mut rig = rig();
    let mut best = 0.0f64;
    let mut alloc_per_msg = 0.0;
    let mut allocs_per_msg = 0.0;
    let mut base = 0u64;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        let batches = 200;
        let input = inputs(&mut rig, batches, base);
        base += (batches * BATCH) as u64;
        let a0 = ALLOCATED.load(Ordering::Relaxed);
        let n0 = ALLOCATIONS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let mut relayed = 0u64;
        for batch in input {
            for (conn, mut b) in batch {
                rig.node.handle_bytes(rig.now, conn, &mut b);
            }
            relayed += drain(&mut rig.node, rig.now);
        }
        let dt = t0.elapsed().as_secs_f64();
        let msgs = (batches * BATCH) as f64;
        alloc_per_msg = (ALLOCATED.load(Ordering::Relaxed) - a0) as f64 / msgs;
        allocs_per_msg = (ALLOCATIONS.load(Ordering::Relaxed) - n0) as f64 / msgs;
        best = best.max(relayed as f64 / dt);
        rig.now = rig.now + Duration::from_millis(1);
        rig.node.handle_timeout(rig.now);
    }
    (best, alloc_per_msg, allocs_per_msg)
}

/// The floor for a copying relay: decode each frame and copy its payload to 8 targets.
fn run_copy_baseline(secs: f64) -> f64 {
    let mut rig = rig();
    let mut best = 0.0f64;
    let mut base = 0;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        let batches = 200;
        let input = inputs(&mut rig, batches, base);
        base += (batches * BATCH) as u64;
        let mut dec = Decoder::default();
        let t0 = Instant::now();
        let mut relayed = 0u64;
        for batch in input {
            for (_, mut b) in batch {
                while let Ok(Some(f)) = dec.decode(&mut b) {
                    for _ in 0..8 {
                        let copy = BytesMut::from(&f.payload[..]);
                        black_box(copy);
                        relayed += 1;
                    }
                }
            }
        }
        best = best.max(relayed as f64 / t0.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let secs: f64 = std::env::var("RELAY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let (fps, bytes, allocs) = run_overlay(secs);
    let floor = run_copy_baseline(secs);
    println!("relay: 1 node, {PEERS} peer sessions, {PAYLOAD} B gossip, fanout 8, one core");
    println!("{:<34} {:>16}", "", "relayed frames/s");
    println!("{:<34} {:>16.0}", "overlay-core (dedupe+fanout+DRR)", fps);
    println!("{:<34} {:>16.0}", "baseline: decode + copy x8", floor);
    println!("ratio overlay/baseline: {:.2}", fps / floor);
    println!(
        "heap per relayed message: {bytes:.0} bytes in {allocs:.1} allocations (payload {PAYLOAD} B x 8 targets = {} B if copied)",
        PAYLOAD * 8
    );
}
