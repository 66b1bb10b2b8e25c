//! What the node really retains, measured by a counting allocator: small frames that share a
//! read allocation with a large one must not keep it alive past the bounds. One test in this
//! binary, so no other thread allocates while it measures.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use overlay_core::oap::{AppProto, Ctrl, Flags, Frame, Role};
use support::*;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// A CTRL PING padded to about 1 MiB (bytes after the nonce are ignored by the spec).
fn big_ping(nonce: u64) -> Bytes {
    let mut p = Ctrl::Ping(nonce).to_payload().to_vec();
    p.resize((1 << 20) - 64, 0);
    Frame::new(AppProto::CTRL, Flags::EVENT, 0, p.into())
        .to_bytes(u32::MAX)
        .unwrap()
}

fn gossip(corr_id: u64, id: u64, flags: Flags, data: &[u8]) -> Bytes {
    let mut p = BytesMut::new();
    p.put_slice(&msg_id(id));
    p.put_u8(3);
    p.put_u8(1);
    p.put_slice(b"t");
    p.put_slice(data);
    Frame::new(AppProto::GOSSIP, Flags::EVENT | flags, corr_id, p.freeze())
        .to_bytes(u32::MAX)
        .unwrap()
}

fn one_write(parts: &[Bytes]) -> Vec<u8> {
    parts.iter().flat_map(|b| b.iter().copied()).collect()
}

#[test]
fn small_frames_behind_large_ones_do_not_pin_their_read_buffer() {
    let mut cfg = test_config();
    cfg.overlay.peer.max_rps = 100_000;
    cfg.timeouts.write = std::time::Duration::from_secs(600);
    let mut net = Net::new(51, 1, move |_| cfg.clone());
    let sessions: Vec<usize> = (0..8)
        .map(|_| net.client(0, Role::Client, &["none"]))
        .collect();
    let sub = net.client(0, Role::Client, &["t"]);
    let publisher = net.client(0, Role::Client, &["none"]);
    net.settle();

    // Attack 1: each write is a 1 MiB PING and the START of a 1-byte stream that never
    // ends, 15 per session: 120 open streams. Before the fix each stream's topic was a
    // slice of its write and kept ~1 MiB alive (120 MiB against an 8 MiB bound).
    let before = live();
    for &c in &sessions {
        let conn = net.clients[c].conn;
        for k in 0..15u64 {
            let w = one_write(&[
                big_ping(k),
                gossip(k + 1, 1000 * c as u64 + k, Flags::START, b"x"),
            ]);
            net.feed(0, conn, &w);
        }
    }
    net.settle();
    let grown = live() - before;
    let partial: usize = net.nodes[0].balance().pending as usize;
    assert_eq!(partial, 120, "all 120 streams are open");
    eprintln!("attack 1: 120 open streams retain {grown} bytes");
    // The streams hold 120 bytes of data; allow 1 KiB per stream for its bookkeeping and
    // whatever the harness keeps (PONGs on their way to the clients).
    assert!(
        grown < 120 * 1024,
        "120 one-byte streams retain {grown} bytes"
    );

    // Attack 2: a publisher writes a 1 MiB PING and a 4 KiB message in one write, 96 times,
    // for a subscriber that does not read. Each queued delivery must hold about 4 KiB,
    // not its whole write (before the fix: +96 MiB while the queue said 400 KiB).
    let sub_conn = net.clients[sub].conn;
    net.stall(End::Node(0, sub_conn), true);
    let pconn = net.clients[publisher].conn;
    let before = live();
    for k in 0..96u64 {
        let data = vec![7u8; 4096];
        let w = one_write(&[
            big_ping(k),
            gossip(k + 1, 50_000 + k, Flags::START | Flags::END, &data),
        ]);
        net.feed(0, pconn, &w);
        net.settle();
    }
    let grown = live() - before;
    let h = net.nodes[0].held(sub_conn).unwrap();
    let held = h.gossip_frames + h.in_flight;
    assert_eq!(held, 96, "every delivery is queued or with the writer");
    eprintln!("attack 2: 96 queued 4 KiB deliveries retain {grown} bytes");
    // 96 x 4 KiB of data, plus per message its header, queue entry and the harness's copy
    // of what the writer took: 16 KiB a message is generous and still far from 1 MiB.
    assert!(
        grown < 96 * 16 * 1024,
        "96 queued 4 KiB messages retain {grown} bytes"
    );
    net.assert_balance();
}
