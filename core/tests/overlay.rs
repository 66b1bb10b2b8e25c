//! The overlay node driven end to end on the in-memory network.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use overlay_core::client::ClientEvent;
use overlay_core::oap::{AppProto, Decoder, Flags, Frame, Role};
use overlay_core::observe::names::*;
use overlay_core::{ConnId, Event, ReadyState, RejectReason};
use support::*;

/// Publishes in batches so a stalled reader's send window fills first, then its queue.
fn fill_stalled(net: &mut Net, publisher: usize, first_id: u64) {
    for batch in 0..6u64 {
        for k in 0..8 {
            net.clients[publisher]
                .client
                .publish(
                    msg_id(first_id + batch * 8 + k),
                    "t",
                    3,
                    &Bytes::from_static(b"payload"),
                    false,
                )
                .unwrap();
        }
        net.settle();
    }
}

fn established(net: &Net, c: usize) -> bool {
    net.clients[c]
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::Established(_)))
}

#[test]
fn peers_and_clients_establish_and_are_counted() {
    let mut net = Net::new(1, 2, |_| test_config());
    net.connect(0, 1);
    let c = net.client(1, Role::Client, &["feed"]);
    net.settle();
    assert!(established(&net, c));
    assert_eq!(net.nodes[0].established(), 1);
    assert_eq!(net.nodes[1].established(), 2);
    assert_eq!(net.gauge(1, SESSIONS_ACTIVE, &[]), 2.0);
    assert_eq!(net.counter(1, SESSIONS_OPEN_TOTAL, &[]), 2);
    assert_eq!(net.counter(1, HANDSHAKE_ATTEMPTS_TOTAL, &[]), 2);
    assert!(net.events[0]
        .iter()
        .any(|e| matches!(e, Event::HandshakeOk { role: Role::Peer, node, .. } if node == "n1")));
    net.assert_balance();
}

#[test]
fn a_message_reaches_every_node_exactly_once() {
    let n = 12;
    let mut net = Net::new(7, n, |_| test_config());
    // A ring plus chords: every node has 2-4 peers.
    for i in 0..n {
        net.connect(i, (i + 1) % n);
        if i % 3 == 0 {
            net.connect(i, (i + 5) % n);
        }
    }
    let subs: Vec<usize> = (0..n)
        .map(|i| net.client(i, Role::Client, &["feed"]))
        .collect();
    let other = net.client(5, Role::Client, &["other"]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    for k in 0..20u64 {
        let data = Bytes::from(format!("message {k}"));
        net.clients[publisher]
            .client
            .publish(msg_id(k), "feed", 8, &data, false)
            .unwrap();
    }
    net.settle();
    for &s in &subs {
        let got = net.messages(s);
        assert_eq!(got.len(), 20, "client {s} got {}", got.len());
    }
    assert!(net.messages(other).is_empty(), "topic filters hold");
    let dups: u64 = (0..n)
        .map(|i| {
            net.nodes[i]
                .stats()
                .outcome(overlay_core::observe::Outcome::Duplicate)
        })
        .sum();
    assert!(
        dups > 0,
        "a mesh with cycles sees duplicates, and counts them"
    );
    net.assert_balance();
}

#[test]
fn chunked_messages_cross_the_mesh_intact() {
    let mut net = Net::new(3, 3, |_| test_config());
    net.connect(0, 1);
    net.connect(1, 2);
    let sub = net.client(2, Role::Client, &[]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    let data = Bytes::from((0..900_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    net.clients[publisher]
        .client
        .publish(msg_id(1), "big", 4, &data, true)
        .unwrap();
    net.settle();
    let got = net.messages(sub);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, data);
    assert_eq!(
        got[0].header.ttl, 4,
        "tree links do not spend the ttl (reachability does not depend on it)"
    );
    assert_eq!(net.acks(publisher), vec![202]);
    assert!(net.counter(1, CHUNK_BYTES, &[("dir", "rx")]) >= 14);
    net.assert_balance();
}

#[test]
fn duplicates_are_counted_and_acked_but_not_relayed() {
    let mut net = Net::new(4, 2, |_| test_config());
    net.connect(0, 1);
    let sub = net.client(1, Role::Client, &[]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    let data = Bytes::from_static(b"once");
    for _ in 0..3 {
        net.clients[publisher]
            .client
            .publish(msg_id(9), "t", 3, &data, true)
            .unwrap();
    }
    net.settle();
    assert_eq!(net.messages(sub).len(), 1);
    assert_eq!(net.acks(publisher), vec![202, 202, 202]);
    assert_eq!(
        net.counter(0, RX_OUTCOMES_TOTAL, &[("outcome", "duplicate")]),
        2
    );
    net.assert_balance();
}

#[test]
fn ttl_zero_is_delivered_locally_but_not_relayed() {
    let mut net = Net::new(5, 2, |_| test_config());
    net.connect(0, 1);
    let local = net.client(0, Role::Client, &[]);
    let remote = net.client(1, Role::Client, &[]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    net.clients[publisher]
        .client
        .publish(msg_id(1), "t", 0, &Bytes::from_static(b"x"), false)
        .unwrap();
    net.settle();
    assert_eq!(net.messages(local).len(), 1);
    assert!(net.messages(remote).is_empty());
    net.assert_balance();
}

#[test]
fn relay_fanout_is_bounded_and_reported() {
    // The spec's eager push (what a peer without the tree feature gets).
    let mut cfg = test_config();
    cfg.overlay.gossip.tree = false;
    cfg.overlay.gossip.relay_fanout = 3;
    let mut net = Net::new(6, 8, move |_| cfg.clone());
    for i in 1..8 {
        net.connect(i, 0);
    }
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    net.clients[publisher]
        .client
        .publish(msg_id(1), "t", 1, &Bytes::from_static(b"x"), false)
        .unwrap();
    net.settle();
    let reached = (1..8)
        .filter(|&i| net.nodes[i].has_seen(&msg_id(1), net.now))
        .count();
    assert_eq!(reached, 3);
    assert_eq!(net.gauge(0, FANOUT_CURRENT, &[]), 3.0);
    net.assert_balance();
}

/// One peer floods while three light peers publish at a modest rate through one node to a
/// subscriber: every light message arrives, the flooder is shed, and the counters say so.
#[test]
fn a_flooding_peer_cannot_starve_light_peers() {
    let mut cfg = test_config();
    cfg.overlay.peer.max_rps = 50;
    let mut net = Net::new(8, 1, move |_| cfg.clone());
    let sub = net.client(0, Role::Client, &[]);
    let flooder = net.client(0, Role::Client, &[]);
    let light: Vec<usize> = (0..3).map(|_| net.client(0, Role::Client, &[])).collect();
    net.settle();
    let mut next_id = 0u64;
    let mut light_ids = Vec::new();
    for tick in 0..40 {
        // The flooder sends 200 messages every 100 ms (2,000/s); each light peer sends one.
        for _ in 0..200 {
            next_id += 1;
            net.clients[flooder]
                .client
                .publish(
                    msg_id(next_id),
                    "t",
                    3,
                    &Bytes::from(vec![0xF1; 512]),
                    false,
                )
                .unwrap();
        }
        for &l in &light {
            next_id += 1;
            light_ids.push(msg_id(next_id));
            let data = Bytes::from(format!("light {l} {tick}"));
            net.clients[l]
                .client
                .publish(msg_id(next_id), "t", 3, &data, true)
                .unwrap();
        }
        net.advance(Duration::from_millis(100));
    }
    net.settle();
    let got: std::collections::HashSet<[u8; 16]> =
        net.messages(sub).iter().map(|m| m.header.msg_id).collect();
    for id in &light_ids {
        assert!(got.contains(id), "a light message was lost");
    }
    for &l in &light {
        assert!(net.acks(l).iter().all(|c| *c == 202));
    }
    // The flooder's excess is refused at its own session, exactly as its token bucket
    // allows (burst 50, then 50/s over the 4 s it floods): every flood message is either
    // delivered or counted, and no more got through than the limit lets.
    let limited = net.counter(0, REJECTED_TOTAL, &[("reason", "ratelimit")]);
    let flood_delivered = net
        .messages(sub)
        .iter()
        .filter(|m| m.data.len() == 512)
        .count() as u64;
    assert_eq!(
        flood_delivered + limited,
        40 * 200,
        "every flood message accounted for"
    );
    assert!(
        flood_delivered <= 50 + 50 * 4,
        "the limiter let {flood_delivered} through"
    );
    assert_eq!(
        net.nodes[0].stats().rejected(RejectReason::Ratelimit),
        limited,
        "metric and balance agree"
    );
    net.assert_balance();
}

#[test]
fn drr_shares_egress_between_heavy_and_light_sessions() {
    // Two subscribers behind one node; permits so scarce that the scheduler decides.
    let mut cfg = test_config();
    cfg.overlay.gossip.egress_permits = 2;
    cfg.overlay.peer.max_rps = 100_000;
    let mut net = Net::new(9, 1, move |_| cfg.clone());
    let heavy = net.client(0, Role::Client, &["heavy"]);
    let light = net.client(0, Role::Client, &["light"]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    for k in 0..200 {
        net.clients[publisher]
            .client
            .publish(msg_id(k), "heavy", 2, &Bytes::from(vec![1; 4096]), false)
            .unwrap();
    }
    for k in 0..5 {
        net.clients[publisher]
            .client
            .publish(
                msg_id(1000 + k),
                "light",
                2,
                &Bytes::from_static(b"hi"),
                false,
            )
            .unwrap();
    }
    net.settle();
    assert_eq!(net.messages(light).len(), 5);
    assert_eq!(net.messages(heavy).len(), 200);
    // The heavy backlog was queued first; a first-come scheduler would send all of it before
    // the light session's first frame. Round robin by bytes lets the light one in at its
    // first turn: all five go out before the heavy session is a quarter through.
    let light_conn = net.clients[light].conn;
    let heavy_conn = net.clients[heavy].conn;
    let order: Vec<_> = net
        .tx_log
        .iter()
        .filter(|(n, c)| *n == 0 && (*c == light_conn || *c == heavy_conn))
        .map(|(_, c)| *c)
        .collect();
    let last_light = order.iter().rposition(|c| *c == light_conn).unwrap();
    let heavy_before = order[..last_light]
        .iter()
        .filter(|c| **c == heavy_conn)
        .count();
    assert!(
        heavy_before < 50,
        "light waited behind {heavy_before} heavy frames: {order:?}"
    );
    net.assert_balance();
}

/// Writes fail first: with a subscriber's queue over the high watermark, a publish with
/// ACK_REQ hears 503 and counts as busy, while un-acked relayed traffic is shed per queue.
#[test]
fn writes_fail_first_then_relayed_traffic_is_shed() {
    let mut cfg = test_config();
    cfg.overlay.peer.egress_queue_frames = 20;
    // Owing off: this is the spec's plain relay, where a full queue drops (tests/owed.rs
    // covers owing).
    cfg.overlay.peer.owed_messages = 0;
    cfg.overlay.peer.max_rps = 100_000;
    cfg.timeouts.write = Duration::from_secs(600);
    let mut net = Net::new(10, 2, move |_| cfg.clone());
    net.connect(0, 1);
    let slow = net.client(0, Role::Client, &[]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    let slow_end = End::Node(0, net.clients[slow].conn);
    net.stall(slow_end, true);
    fill_stalled(&mut net, publisher, 0);
    let full = net.counter(
        0,
        QUEUE_DROPPED_TOTAL,
        &[("queue", "egress"), ("reason", "full")],
    );
    assert!(full > 0, "the stalled client's queue filled and dropped");
    assert!(net.counter(0, BACKPRESSURE_EVENTS_TOTAL, &[("peer_bucket", "tiny")]) > 0);
    net.clients[publisher]
        .client
        .publish(msg_id(999), "t", 3, &Bytes::from_static(b"write"), true)
        .unwrap();
    net.settle();
    assert_eq!(net.acks(publisher), vec![503]);
    assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", "busy")]), 1);
    assert!(
        !net.nodes[1].has_seen(&msg_id(999), net.now),
        "a refused write goes nowhere"
    );
    // The peer kept receiving everything else.
    assert!(net.nodes[1].has_seen(&msg_id(47), net.now));
    net.assert_balance();
}

#[test]
fn readiness_degrades_only_after_the_sustain_window_and_recovers() {
    let mut cfg = test_config();
    cfg.overlay.peer.egress_queue_frames = 10;
    cfg.overlay.peer.max_rps = 100_000;
    cfg.readiness.sustain = Duration::from_secs(2);
    cfg.timeouts.write = Duration::from_secs(600);
    cfg.timeouts.idle = Duration::from_secs(600);
    let mut net = Net::new(11, 1, move |_| cfg.clone());
    let slow = net.client(0, Role::Client, &[]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    assert_eq!(
        net.nodes[0].readiness().http(5),
        (200, r#"{"ready":true}"#.to_string())
    );
    assert_eq!(net.gauge(0, READYZ_STATE, &[]), 1.0);
    net.stall(End::Node(0, net.clients[slow].conn), true);
    fill_stalled(&mut net, publisher, 0);
    net.advance(Duration::from_millis(1500));
    assert!(
        net.nodes[0].readiness().queues_ok,
        "not before the sustain window"
    );
    net.advance(Duration::from_millis(1000));
    let view = net.nodes[0].readiness();
    assert!(!view.queues_ok);
    assert_eq!(view.state(), ReadyState::Degraded);
    let (code, body) = view.http(5);
    assert_eq!(code, 503);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ready": false, "degraded": true, "missing": ["queues_ok"], "retry_after": 5})
    );
    assert_eq!(net.gauge(0, READYZ_STATE, &[]), 2.0);
    assert!(net.events[0].iter().any(
        |e| matches!(e, Event::ReadinessChanged { state: ReadyState::Degraded, missing } if missing == &vec!["queues_ok"])
    ));
    // Release: the queue drains and readiness is true again once the grace (1 s) passes
    // without pressure.
    let slow_end = End::Node(0, net.clients[slow].conn);
    net.stall(slow_end, false);
    let conn = net.clients[slow].conn;
    let now = net.now;
    net.nodes[0].handle_written(now, conn, 1_000);
    net.advance(Duration::from_millis(1250));
    assert!(net.nodes[0].readiness().queues_ok);
    assert_eq!(net.nodes[0].readiness().state(), ReadyState::Ready);
    net.assert_balance();
}

#[test]
fn shed_rate_flips_readiness_when_sustained() {
    let mut cfg = test_config();
    cfg.overlay.peer.egress_queue_frames = 10;
    cfg.overlay.peer.max_rps = 100_000;
    cfg.readiness.sustain = Duration::from_secs(1);
    cfg.timeouts.write = Duration::from_secs(600);
    cfg.timeouts.idle = Duration::from_secs(600);
    let mut net = Net::new(12, 1, move |_| cfg.clone());
    let slow = net.client(0, Role::Client, &[]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    net.stall(End::Node(0, net.clients[slow].conn), true);
    fill_stalled(&mut net, publisher, 0);
    for k in 100..150 {
        net.clients[publisher]
            .client
            .publish(msg_id(k), "t", 3, &Bytes::from_static(b"x"), true)
            .unwrap();
        net.advance(Duration::from_millis(30));
    }
    assert!(net.acks(publisher).iter().all(|c| *c == 503));
    let view = net.nodes[0].readiness();
    assert!(!view.shed_rate_ok);
    assert!(view.missing().contains(&"shed_rate_ok"));
    net.assert_balance();
}

fn read_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut d = Decoder::default();
    let mut b = BytesMut::from(bytes);
    let mut out = vec![];
    while let Ok(Some(f)) = d.decode(&mut b) {
        out.push(f);
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const HELLO_N1: &str = "00000070000100090000000000000000000000000000000000000000000000000000000000017b2276657273696f6e73223a5b315d2c226e6f6465223a226e31222c22726f6c65223a2270656572222c226d61785f6672616d65223a313034383537362c22746f70696373223a5b5d7d";

#[test]
fn the_spec_hello_vector_is_answered_200() {
    let mut net = Net::new(13, 1, |_| test_config());
    let conn = net.raw(0);
    net.feed(0, conn, &hex(HELLO_N1));
    let (out, closed) = net.drain_raw(0, conn);
    assert!(!closed);
    let frames = read_frames(&out);
    assert_eq!(frames.len(), 1);
    let f = &frames[0];
    assert_eq!((f.code, f.corr_id, f.app_proto), (200, 1, 0));
    assert_eq!(f.flags, Flags::RESP | Flags::START);
    let ok: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
    assert_eq!(ok["version"], 1);
    assert_eq!(ok["node"], "n0");
    assert_eq!(ok["max_frame"], 1_048_576);
    assert_eq!(ok["chunk"], 65_536);
}

#[test]
fn malformed_prefixes_are_answered_and_closed_with_their_reason() {
    for (prefix, reason, code) in [
        ("00000025", "proto", 400),
        ("00100001", "oversize", 413),
        ("00000000", "proto", 400),
    ] {
        let mut net = Net::new(14, 1, |_| test_config());
        let bystander = net.client(0, Role::Client, &[]);
        net.settle();
        let conn = net.raw(0);
        net.feed(0, conn, &hex(prefix));
        let (out, closed) = net.drain_raw(0, conn);
        assert!(closed, "{prefix}: the connection closes");
        let frames = read_frames(&out);
        assert_eq!(frames.len(), 1, "{prefix}: one answer");
        assert_eq!(
            (frames[0].code, frames[0].app_proto, frames[0].corr_id),
            (code, 0, 0)
        );
        let body: serde_json::Value = serde_json::from_slice(&frames[0].payload).unwrap();
        assert_eq!(body["error"], reason);
        assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", reason)]), 1);
        assert_eq!(
            net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", "proto")]),
            1
        );
        assert!(established(&net, bystander));
        assert_eq!(net.nodes[0].established(), 1, "others keep their sessions");
        net.assert_balance();
    }
}

/// A connection nobody has admitted may not make the node buffer a whole `max_frame_bytes`
/// frame: the length prefix of a HELLO over `overlay.max_hello_bytes` is refused
/// `oversize` before any of it is held (1024 such connections pinned 0.9 GiB in the
/// release daemon). Once established, the session may send frames of any size again.
#[test]
fn a_frame_over_max_hello_bytes_before_the_handshake_is_refused_from_its_prefix() {
    let mut net = Net::new(16, 1, |_| test_config());
    let limit = net.nodes[0].config().overlay.max_hello_bytes;
    assert_eq!(limit, 32 << 10, "the default");
    let conn = net.raw(0);
    // REQ|START HELLO header declaring one byte over the limit; none of its body is sent.
    let head = Frame::new(
        AppProto::HELLO,
        Flags::REQ | Flags::START,
        5,
        vec![b' '; limit as usize - 38 + 1].into(),
    )
    .to_bytes(1 << 20)
    .unwrap();
    net.feed(0, conn, &head[..38]);
    let (out, closed) = net.drain_raw(0, conn);
    assert!(closed, "refused from the length prefix");
    let frames = read_frames(&out);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].code, 413);
    assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", "oversize")]), 1);
    assert_eq!(
        net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", "proto")]),
        1
    );

    // The spec's HELLO is far below it; after it, a 512 KiB PING is answered.
    let conn = net.raw(0);
    net.feed(0, conn, &hex(HELLO_N1));
    let (_, closed) = net.drain_raw(0, conn);
    assert!(!closed);
    let mut ping = vec![0x01];
    ping.extend_from_slice(&7u64.to_be_bytes());
    ping.resize(512 << 10, 0);
    let ping = Frame::new(AppProto::CTRL, Flags::EVENT, 9, ping.into())
        .to_bytes(1 << 20)
        .unwrap();
    net.feed(0, conn, &ping);
    let (out, closed) = net.drain_raw(0, conn);
    assert!(!closed, "an established session may send large frames");
    let frames = read_frames(&out);
    assert_eq!(frames.len(), 1, "the PONG");
    assert_eq!(frames[0].payload[..9], [2, 0, 0, 0, 0, 0, 0, 0, 7]);
    net.assert_balance();
}

/// Incomplete frames count against `overlay.gossip.max_partial_bytes_total` at their
/// declared length (the receive buffer the decoder reserves for them): established clients
/// that each begin a large frame and never finish it cannot together hold more than the
/// total. The one that would pass it is refused `oversize`, the others keep their frames, and
/// a frame finished gives its room back.
#[test]
fn incomplete_frames_are_held_within_max_partial_bytes_total() {
    let mut cfg = test_config();
    cfg.overlay.gossip.max_partial_bytes_total = 2 << 20;
    let mut net = Net::new(19, 1, move |_| cfg.clone());
    let big_ping = |nonce: u64| {
        let mut p = vec![0x01];
        p.extend_from_slice(&nonce.to_be_bytes());
        p.resize(900 << 10, 0);
        Frame::new(AppProto::CTRL, Flags::EVENT, nonce, p.into())
            .to_bytes(1 << 20)
            .unwrap()
    };
    let conns: Vec<ConnId> = (0..3)
        .map(|_| {
            let c = net.raw(0);
            net.feed(0, c, &hex(HELLO_N1));
            assert!(!net.drain_raw(0, c).1);
            c
        })
        .collect();
    let pings: Vec<Bytes> = (1..=3).map(big_ping).collect();
    // Two begun 900 KiB frames fit in 2 MiB; the third does not.
    for (c, p) in conns.iter().zip(&pings) {
        net.feed(0, *c, &p[..1000]);
    }
    let (out, closed) = net.drain_raw(0, conns[2]);
    assert!(closed, "the frame that would pass the total is refused");
    assert_eq!(read_frames(&out)[0].code, 413);
    assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", "oversize")]), 1);
    for c in &conns[..2] {
        assert!(!net.drain_raw(0, *c).1, "the others keep their sessions");
    }
    // The first frame is finished (the harness keeps no receive buffer between feeds, so the
    // whole frame stands for its rest): it is answered, and its room is free again.
    let mut rest = BytesMut::from(&pings[0][..]);
    let now = net.now;
    net.nodes[0].handle_bytes(now, conns[0], &mut rest);
    assert!(rest.is_empty());
    let (out, closed) = net.drain_raw(0, conns[0]);
    assert!(!closed);
    assert_eq!(read_frames(&out).len(), 1, "the PONG");
    let c = net.raw(0);
    net.feed(0, c, &hex(HELLO_N1));
    net.feed(0, c, &big_ping(4)[..1000]);
    assert!(!net.drain_raw(0, c).1, "room again");
    net.assert_balance();
}

#[test]
fn a_bad_frame_after_good_ones_loses_nothing_before_it() {
    let mut net = Net::new(15, 1, |_| test_config());
    let sub = net.client(0, Role::Client, &[]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    net.clients[publisher]
        .client
        .publish(msg_id(1), "t", 2, &Bytes::from_static(b"ok"), false)
        .unwrap();
    let mut bytes = net.clients[publisher]
        .client
        .poll_transmit()
        .unwrap()
        .to_vec();
    // A gossip frame with version 2 right behind it.
    let mut bad = Frame::new(
        AppProto::GOSSIP,
        Flags::EVENT | Flags::START | Flags::END,
        77,
        Bytes::from_static(b"zz"),
    )
    .to_bytes(1 << 20)
    .unwrap()
    .to_vec();
    bad[5] = 2;
    bytes.extend_from_slice(&bad);
    let conn = net.clients[publisher].conn;
    net.feed(0, conn, &bytes);
    net.settle();
    assert_eq!(net.messages(sub).len(), 1, "the good message was delivered");
    assert!(net.clients[publisher]
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::Refused { code: 400, error, .. } if error == "proto")));
    assert!(net.clients[publisher].closed);
    assert_eq!(net.nodes[0].stats().rejected(RejectReason::Proto), 1);
    net.assert_balance();
}

#[test]
fn handshake_rate_limit_answers_429() {
    let mut cfg = test_config();
    cfg.overlay.handshake_rate = 1;
    cfg.overlay.handshake_burst = 2;
    let mut net = Net::new(16, 1, move |_| cfg.clone());
    let cs: Vec<usize> = (0..4).map(|_| net.client(0, Role::Client, &[])).collect();
    net.settle();
    let refused: Vec<_> = cs
        .iter()
        .filter(|&&c| {
            net.clients[c].events.iter().any(
                |e| matches!(e, ClientEvent::Refused { code: 429, error, retry_after: Some(_) } if error == "ratelimit"),
            )
        })
        .collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(
        net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", "ratelimit")]),
        2
    );
    assert_eq!(
        net.counter(0, REJECTED_TOTAL, &[("reason", "ratelimit")]),
        2
    );
    assert_eq!(net.nodes[0].established(), 2);
    net.assert_balance();
}

#[test]
fn max_conns_refuses_with_503_busy() {
    let mut cfg = test_config();
    cfg.overlay.max_conns = 2;
    let mut net = Net::new(17, 1, move |_| cfg.clone());
    let cs: Vec<usize> = (0..3).map(|_| net.client(0, Role::Client, &[])).collect();
    net.settle();
    assert!(established(&net, cs[0]) && established(&net, cs[1]));
    assert!(net.clients[cs[2]]
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::Refused { code: 503, error, .. } if error == "busy")));
    assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", "busy")]), 1);
    assert_eq!(
        net.nodes[0].stats().writes_busy,
        0,
        "a connection refused at max_conns is not a write refused busy"
    );
    // Readiness says so while the node is at the bound (every new client would hear 503),
    // in /readyz and in readyz_state at once, and recovers when a session ends.
    let view = net.nodes[0].readiness();
    assert_eq!(view.missing(), vec!["conns_ok"]);
    assert_eq!(view.state(), ReadyState::Degraded);
    assert_eq!(net.gauge(0, READYZ_STATE, &[]), 2.0);
    net.disconnect(End::Client(cs[0]));
    net.settle();
    assert!(net.nodes[0].readiness().missing().is_empty());
    assert_eq!(net.gauge(0, READYZ_STATE, &[]), 1.0);
}

#[test]
fn handshake_read_idle_and_write_timeouts() {
    let mut cfg = test_config();
    cfg.timeouts.write = Duration::from_secs(4);
    let mut net = Net::new(18, 1, move |_| cfg.clone());
    // A connection that never says HELLO.
    let silent = net.raw(0);
    // A client that goes quiet and stops reading.
    let quiet = net.client(0, Role::Client, &[]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    net.advance(Duration::from_millis(3300));
    assert_eq!(
        net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", "timeout")]),
        1
    );
    assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", "timeout")]), 1);
    assert!(net.nodes[0].is_closed_or_closing(silent));
    let qend = End::Node(0, net.clients[quiet].conn);
    net.stall(qend, true);
    net.clients[publisher]
        .client
        .publish(msg_id(1), "t", 2, &Bytes::from_static(b"x"), false)
        .unwrap();
    net.advance(Duration::from_secs(5));
    assert!(
        net.clients[quiet].closed,
        "a writer making no progress is cut off"
    );
    assert!(net.events[0]
        .iter()
        .any(|e| matches!(e, Event::Abort { .. })));
    // Keepalive: PINGs flow on a quiet session and keep it alive past the idle timeout.
    net.advance(Duration::from_secs(40));
    assert!(
        !net.clients[publisher].closed,
        "the publisher answers PINGs"
    );
    net.assert_balance();
}

#[test]
fn a_slow_frame_is_cut_off_by_the_read_timeout() {
    let mut net = Net::new(19, 1, |_| test_config());
    let c = net.client(0, Role::Client, &[]);
    net.settle();
    let conn = net.clients[c].conn;
    // Half a frame, then nothing.
    net.feed(0, conn, &hex("0000003e0001001c"));
    net.advance(Duration::from_secs(6));
    assert!(net.clients[c].closed);
    assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", "timeout")]), 1);
}

#[test]
fn drain_sends_goaway_and_turns_readiness_down() {
    let mut net = Net::new(20, 2, |_| test_config());
    net.connect(0, 1);
    let c = net.client(0, Role::Client, &[]);
    net.settle();
    let now = net.now;
    net.nodes[0].begin_drain(now);
    assert_eq!(net.nodes[0].readiness().state(), ReadyState::Down);
    let (code, body) = net.nodes[0].readiness().http(5);
    assert_eq!(code, 503);
    assert!(body.contains("draining"));
    net.advance(Duration::from_millis(600));
    assert!(net.clients[c].events.contains(&ClientEvent::Goaway));
    assert!(net.nodes[0].is_drained());
    assert_eq!(net.nodes[0].session_count(), 0, "drained sessions close");
    net.assert_balance();
}

#[test]
fn unknown_app_proto_requests_hear_404() {
    let mut net = Net::new(21, 1, |_| test_config());
    let c = net.client(0, Role::Client, &[]);
    net.settle();
    let conn = net.clients[c].conn;
    let req = Frame::new(77, Flags::REQ, 5, Bytes::from_static(b"?"))
        .to_bytes(1 << 20)
        .unwrap();
    net.feed(0, conn, &req);
    net.settle();
    assert!(!net.clients[c].closed);
    assert_eq!(
        net.counter(0, RX_DROPPED_TOTAL, &[("reason", "unroutable")]),
        1
    );
    net.assert_balance();
}

#[test]
fn zstd_bomb_is_refused_with_ratio_cap() {
    let mut net = Net::new(22, 1, |_| test_config());
    let c = net.client(0, Role::Client, &[]);
    net.settle();
    let conn = net.clients[c].conn;
    let bomb = overlay_core::oap::comp::deflate(&vec![0u8; 32 << 20], 19).unwrap();
    let f = Frame::new(
        AppProto::GOSSIP,
        Flags::EVENT | Flags::START | Flags::END | Flags::COMP,
        3,
        bomb,
    )
    .to_bytes(1 << 20)
    .unwrap();
    net.feed(0, conn, &f);
    net.settle();
    assert!(net.clients[c].closed);
    assert_eq!(
        net.counter(0, REJECTED_TOTAL, &[("reason", "ratio_cap")]),
        1
    );
    net.assert_balance();
}

#[test]
fn lossy_jittery_links_still_converge_and_balance() {
    let n = 16;
    let mut net = Net::new(23, n, |_| {
        let mut c = test_config();
        c.overlay.gossip.relay_fanout = 4;
        c.overlay.peer.max_rps = 100_000;
        c
    });
    net.model = LinkModel {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(20),
        loss: 0.05,
    };
    for i in 0..n {
        for d in [1, 2, 5] {
            net.connect(i, (i + d) % n);
        }
    }
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    for k in 0..50 {
        net.clients[publisher]
            .client
            .publish(msg_id(k), "t", 10, &Bytes::from_static(b"gossip"), false)
            .unwrap();
    }
    net.settle();
    let now = net.now;
    let coverage: usize = (0..50)
        .map(|k| {
            (0..n)
                .filter(|&i| net.nodes[i].has_seen(&msg_id(k), now))
                .count()
        })
        .sum();
    assert!(
        coverage as f64 >= 0.95 * (50 * n) as f64,
        "coverage {coverage}"
    );
    net.assert_balance();
}

/// Two clients each start a 1 MiB message in 1 KiB chunks and send only its first 50 KiB.
fn two_half_streams(seed: u64, inflight_frames: usize) -> (Net, usize, usize) {
    let mut cfg = test_config();
    cfg.overlay.gossip.chunk_bytes = 1024;
    cfg.overlay.gossip.max_partial_bytes = 64 << 10;
    cfg.overlay.gossip.max_partial_bytes_total = 80 << 10;
    cfg.overlay.peer.inflight_frames = inflight_frames;
    let mut net = Net::new(seed, 1, move |_| cfg.clone());
    let a = net.client(0, Role::Client, &[]);
    let b = net.client(0, Role::Client, &[]);
    net.settle();
    for (c, id) in [(a, 1u64), (b, 2u64)] {
        let header = overlay_core::oap::GossipHeader::new(msg_id(id), 3, "t").unwrap();
        let data = Bytes::from(vec![7u8; 50 << 10]);
        let chunks = overlay_core::oap::split(&header, &data, 1024).unwrap();
        let mut bytes = BytesMut::new();
        for ch in &chunks[..chunks.len() - 1] {
            ch.to_frame(9, Flags::empty())
                .encode(1 << 20, &mut bytes)
                .unwrap();
        }
        let conn = net.clients[c].conn;
        net.feed(0, conn, &bytes);
        net.settle();
    }
    (net, a, b)
}

/// Partial streams are bounded per session (frames in flight) and across the node (bytes),
/// so many sessions cannot add up to unbounded memory.
#[test]
fn partial_streams_are_bounded_per_session_and_per_node() {
    // 40 frames in flight is a session's bound: its stream is refused as proto.
    let (net, a, _) = two_half_streams(24, 40);
    let stats = net.nodes[0].stats();
    assert!(
        stats.rejected(RejectReason::Proto) > 0,
        "{:?}",
        stats.rejected
    );
    assert!(net.clients[a].closed);
    net.assert_balance();
    // With room per session, the second 50 KiB passes the node-wide 80 KiB: oversize.
    let (net, a, b) = two_half_streams(25, 1000);
    assert!(!net.clients[a].closed, "the first 50 KiB fit");
    assert!(
        net.clients[b].closed,
        "the second pushed the node past 80 KiB"
    );
    let oversize = net.nodes[0].stats().rejected(RejectReason::Oversize);
    assert!(oversize > 0);
    assert_eq!(
        net.counter(0, REJECTED_TOTAL, &[("reason", "oversize")]),
        oversize
    );
    net.assert_balance();
}

/// A client that asks for acks and never reads them fills only its own bounded queue.
#[test]
fn unread_answers_are_bounded_and_counted() {
    let mut cfg = test_config();
    cfg.overlay.peer.egress_queue_frames = 16;
    cfg.overlay.peer.max_rps = 100_000;
    cfg.timeouts.write = Duration::from_secs(600);
    cfg.overlay.gossip.egress_permits = 8;
    let mut net = Net::new(26, 1, move |_| cfg.clone());
    let c = net.client(0, Role::Client, &[]);
    net.settle();
    let conn = net.clients[c].conn;
    net.stall(End::Node(0, conn), true);
    for k in 0..500 {
        net.clients[c]
            .client
            .publish(msg_id(k), "t", 1, &Bytes::from_static(b"x"), true)
            .unwrap();
    }
    net.settle();
    let ctrl = net.nodes[0].held(conn).unwrap().ctrl_frames;
    assert!(ctrl <= 16, "{ctrl}");
    // Messages whose answer finds no room are refused busy and told in a refusal notice
    // (core/tests/notice.rs), never accepted with a dropped answer.
    let refused = net.counter(0, REJECTED_TOTAL, &[("reason", "busy")]);
    assert!(
        refused >= 500 - 16 - 8,
        "answers past the bound refused: {refused}"
    );
    let dropped = net.counter(
        0,
        QUEUE_DROPPED_TOTAL,
        &[("queue", "egress"), ("reason", "full")],
    );
    assert_eq!(dropped, 0);
    net.assert_balance();
}
