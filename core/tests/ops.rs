//! Random sequences of operations against a small mesh: no panic, bounded memory, and the
//! balance of counts after every step. A failing case prints its seed and operations.

mod support;

use std::time::Duration;

use bytes::Bytes;
use overlay_core::oap::Role;
use proptest::prelude::*;
use support::*;

#[derive(Clone, Debug)]
enum Op {
    Client {
        node: usize,
        filtered: bool,
    },
    Peer {
        a: usize,
        b: usize,
    },
    Publish {
        client: usize,
        id: u8,
        size: usize,
        ack: bool,
        ttl: u8,
    },
    Garbage {
        client: usize,
        bytes: Vec<u8>,
    },
    Split {
        client: usize,
        cut: usize,
    },
    Advance {
        ms: u64,
    },
    Stall {
        client: usize,
        on: bool,
    },
    Disconnect {
        client: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..3usize, any::<bool>()).prop_map(|(node, filtered)| Op::Client { node, filtered }),
        1 => (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Peer { a, b }),
        6 => (0..8usize, any::<u8>(), prop_oneof![0..200usize, 60_000..140_000usize], any::<bool>(), 0..4u8)
            .prop_map(|(client, id, size, ack, ttl)| Op::Publish { client, id, size, ack, ttl }),
        1 => (0..8usize, proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(client, bytes)| Op::Garbage { client, bytes }),
        1 => (0..8usize, any::<usize>()).prop_map(|(client, cut)| Op::Split { client, cut }),
        3 => (0..7000u64).prop_map(|ms| Op::Advance { ms }),
        1 => (0..8usize, any::<bool>()).prop_map(|(client, on)| Op::Stall { client, on }),
        1 => (0..8usize).prop_map(|client| Op::Disconnect { client }),
    ]
}

fn check_bounds(net: &Net) {
    for node in &net.nodes {
        let cfg = node.config();
        assert!(node.permits().in_use() <= node.permits().capacity());
        assert!(node.session_count() <= cfg.overlay.max_conns + 1);
        for id in 0..64u64 {
            if let Some(h) = node.held(overlay_core::ConnId(id)) {
                assert!(h.gossip_frames <= cfg.overlay.peer.egress_queue_frames);
                assert!(h.gossip_bytes <= cfg.overlay.peer.egress_queue_bytes);
                assert!(h.partial_streams <= cfg.overlay.gossip.max_partial_streams);
                assert!(h.partial_bytes <= cfg.overlay.gossip.max_partial_bytes);
                // Every frame kind counts against the session's share: no fudge for control.
                assert!(h.in_flight <= cfg.overlay.peer.send_window_frames);
                assert!(h.ctrl_frames <= cfg.overlay.peer.egress_queue_frames);
            }
        }
    }
}

fn run(seed: u64, ops: &[Op]) {
    let mut net = Net::new(seed, 3, |_| {
        let mut c = test_config();
        c.overlay.peer.egress_queue_frames = 24;
        c.overlay.peer.egress_queue_bytes = 1 << 20;
        c.overlay.peer.max_rps = 20;
        c.overlay.gossip.max_partial_bytes = 256 << 10;
        c.overlay.gossip.chunk_bytes = 16 << 10;
        c
    });
    net.connect(0, 1);
    for op in ops {
        match op.clone() {
            Op::Client { node, filtered } => {
                let topics: &[&str] = if filtered { &["t1"] } else { &[] };
                net.client(node, Role::Client, topics);
            }
            Op::Peer { a, b } => {
                if a != b {
                    net.connect(a, b);
                }
            }
            Op::Publish {
                client,
                id,
                size,
                ack,
                ttl,
            } => {
                if let Some(c) = net.clients.get_mut(client) {
                    let topic = if id % 2 == 0 { "t1" } else { "t2" };
                    let data = Bytes::from(vec![id; size]);
                    let _ = c.client.publish(msg_id(id as u64), topic, ttl, &data, ack);
                }
            }
            Op::Garbage { client, bytes } => {
                if let Some(c) = net.clients.get(client) {
                    let (node, conn) = (c.node, c.conn);
                    net.feed(node, conn, &bytes);
                }
            }
            Op::Split { client, cut } => {
                if let Some(c) = net.clients.get_mut(client) {
                    let (node, conn) = (c.node, c.conn);
                    if let Some(b) = c.client.poll_transmit() {
                        let cut = cut % (b.len() + 1);
                        // Both halves go through one receive buffer, as a socket would.
                        let mut buf = bytes::BytesMut::from(&b[..cut]);
                        let now = net.now;
                        net.nodes[node].handle_bytes(now, conn, &mut buf);
                        buf.extend_from_slice(&b[cut..]);
                        net.nodes[node].handle_bytes(now, conn, &mut buf);
                    }
                }
            }
            Op::Advance { ms } => net.advance(Duration::from_millis(ms)),
            Op::Stall { client, on } => {
                if let Some(c) = net.clients.get(client) {
                    let end = End::Node(c.node, c.conn);
                    net.stall(end, on);
                }
            }
            Op::Disconnect { client } => {
                if client < net.clients.len() {
                    net.disconnect(End::Client(client));
                }
            }
        }
        while net.step() {}
        check_bounds(&net);
        net.assert_balance();
        net.assert_counts_exported();
    }
    net.advance(Duration::from_secs(30));
    check_bounds(&net);
    net.assert_balance();
    net.assert_counts_exported();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn operation_sequences_keep_bounds_and_balance(
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(seed, &ops);
    }
}
