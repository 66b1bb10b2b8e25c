//! One session cannot hurt the others: permits shared fairly whatever the frames, refusals
//! scoped to where a write would go, readiness that sees sustained pressure through dips,
//! and counts that stay true across reloads and closes.

mod support;

use std::time::Duration;

use bytes::Bytes;
use overlay_core::oap::{AppProto, Ctrl, Flags, Frame, Role};
use overlay_core::observe::names::*;
use overlay_core::ConnId;
use support::*;

fn cfg_with(f: impl Fn(&mut overlay_core::Config)) -> overlay_core::Config {
    let mut cfg = test_config();
    cfg.overlay.peer.max_rps = 100_000;
    cfg.timeouts.write = Duration::from_secs(600);
    cfg.timeouts.idle = Duration::from_secs(600);
    f(&mut cfg);
    cfg
}

fn publish(net: &mut Net, c: usize, id: u64, topic: &str, ack: bool) {
    net.clients[c]
        .client
        .publish(msg_id(id), topic, 3, &Bytes::from_static(b"payload"), ack)
        .unwrap();
}

/// Fills a stalled subscriber of `topic` past its watermark with un-acked messages.
fn fill(net: &mut Net, publisher: usize, topic: &str, first: u64, n: u64) {
    // In small batches: one read of many messages would meet the queue's hard bound before
    // the writer took any, and drop instead of filling.
    for k in 0..n {
        publish(net, publisher, first + k, topic, false);
        if k % 4 == 3 {
            net.settle();
        }
    }
    net.settle();
}

fn ping(nonce: u64) -> Vec<u8> {
    Frame::new(
        AppProto::CTRL,
        Flags::EVENT,
        0,
        Ctrl::Ping(nonce).to_payload(),
    )
    .to_bytes(u32::MAX)
    .unwrap()
    .to_vec()
}

/// A client that never reads but keeps asking for answers (PINGs) holds no more than its
/// share of the egress permits: with 8 permits, another subscriber keeps receiving within
/// 100 ms. Before the fix control frames ignored the send window and took all 8.
#[test]
fn a_stalled_client_asking_for_answers_cannot_take_every_permit() {
    let cfg = cfg_with(|c| {
        c.overlay.gossip.egress_permits = 8;
        c.overlay.peer.egress_queue_frames = 64;
    });
    let mut net = Net::new(41, 1, move |_| cfg.clone());
    let stalled = net.client(0, Role::Client, &["quiet"]);
    let sub = net.client(0, Role::Client, &["feed"]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    let stalled_conn = net.clients[stalled].conn;
    net.stall(End::Node(0, stalled_conn), true);
    for k in 0..20 {
        net.feed(0, stalled_conn, &ping(k));
    }
    net.settle();
    let share = net.nodes[0]
        .permits()
        .share(net.nodes[0].config().overlay.peer.send_window_frames, 0);
    let held = net.nodes[0].in_flight(stalled_conn).unwrap();
    assert!(
        held <= share,
        "the stalled client holds {held} permits, share {share}"
    );
    for k in 0..10 {
        publish(&mut net, publisher, 100 + k, "feed", false);
        net.advance(Duration::from_millis(100));
        assert_eq!(
            net.messages(sub).len() as u64,
            k + 1,
            "message {k} reached the healthy subscriber within 100 ms"
        );
    }
    net.assert_balance();
}

/// A slow consumer of one topic refuses only the writes that would reach it: acked writes
/// to another topic are accepted (before the fix any queue over its watermark refused every
/// acked write on the node).
#[test]
fn one_slow_consumer_refuses_only_writes_that_would_reach_it() {
    let cfg = cfg_with(|c| c.overlay.peer.egress_queue_frames = 20);
    let mut net = Net::new(42, 1, move |_| cfg.clone());
    let slow = net.client(0, Role::Client, &["slow"]);
    let fast = net.client(0, Role::Client, &["other"]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    net.stall(End::Node(0, net.clients[slow].conn), true);
    fill(&mut net, publisher, "slow", 0, 40);
    for k in 0..10 {
        publish(&mut net, publisher, 1000 + k, "other", true);
    }
    net.settle();
    assert_eq!(
        net.acks(publisher),
        vec![202; 10],
        "unrelated writes accepted"
    );
    assert_eq!(net.messages(fast).len(), 10);
    publish(&mut net, publisher, 2000, "slow", true);
    net.settle();
    assert_eq!(
        net.acks(publisher).last(),
        Some(&503),
        "a write to the slow topic hears busy"
    );
    assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", "busy")]), 1);
    assert_eq!(
        net.nodes[0].stats().writes_busy,
        1,
        "what shutdown_end reports as busy"
    );
    net.assert_balance();
}

/// Raising the bounds on a reload lets writes through at once (before the fix the count of
/// sessions over the watermark was only rechecked when a queue changed).
#[test]
fn a_reload_that_raises_the_bounds_rechecks_the_watermark() {
    let cfg = cfg_with(|c| c.overlay.peer.egress_queue_frames = 20);
    let mut net = Net::new(43, 1, move |_| cfg.clone());
    let slow = net.client(0, Role::Client, &["slow"]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    net.stall(End::Node(0, net.clients[slow].conn), true);
    fill(&mut net, publisher, "slow", 0, 40);
    publish(&mut net, publisher, 100, "slow", true);
    net.settle();
    assert_eq!(net.acks(publisher), vec![503]);
    let mut bigger = net.nodes[0].config().clone();
    bigger.overlay.peer.egress_queue_frames = 1000;
    let now = net.now;
    net.nodes[0].reconfigure(now, bigger);
    publish(&mut net, publisher, 101, "slow", true);
    net.settle();
    assert_eq!(net.acks(publisher), vec![503, 202]);
    // And shrinking reports a full queue as full, never more (the gauge is 0..1).
    let mut smaller = net.nodes[0].config().clone();
    smaller.overlay.peer.egress_queue_frames = 2;
    let now = net.now;
    net.nodes[0].reconfigure(now, smaller);
    assert_eq!(net.gauge(0, EGRESS_FILL_RATIO, &[]), 1.0);
    net.assert_balance();
}

/// Queue pressure that dips under the watermark between samples is still sustained
/// pressure: readiness degrades after the sustain window, and recovers within about a
/// second of the pressure ending. Before the fix each dip restarted the window.
#[test]
fn pressure_with_dips_degrades_readiness_and_recovers_promptly() {
    let cfg = cfg_with(|c| {
        c.overlay.peer.egress_queue_frames = 10;
        c.readiness.sustain = Duration::from_secs(3);
    });
    let mut net = Net::new(44, 1, move |_| cfg.clone());
    let slow = net.client(0, Role::Client, &["slow"]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    let conn = net.clients[slow].conn;
    net.stall(End::Node(0, conn), true);
    let mut id = 0;
    let mut degraded_at = None;
    // Every 500 ms: fill over the watermark, then let the writer drain most of it, so the
    // queue is under the watermark at every other tick.
    for round in 0..10 {
        fill(&mut net, publisher, "slow", id, 30);
        id += 30;
        net.advance(Duration::from_millis(250));
        let now = net.now;
        net.nodes[0].handle_written(now, conn, 1_000);
        net.settle();
        let now = net.now;
        net.nodes[0].handle_written(now, conn, 1_000);
        net.advance(Duration::from_millis(250));
        if !net.nodes[0].readiness().queues_ok && degraded_at.is_none() {
            degraded_at = Some(round);
        }
    }
    let at = degraded_at.expect("sustained pressure with dips degraded readiness");
    assert!(at >= 5, "not before the 3 s sustain window (round {at})");
    // Pressure ends: drained and nothing new.
    net.stall(End::Node(0, conn), false);
    let now = net.now;
    net.nodes[0].handle_written(now, conn, 1_000);
    net.advance(Duration::from_millis(1_500));
    assert!(net.nodes[0].readiness().queues_ok, "recovered within 1.5 s");
    net.assert_balance();
}

/// The shed rate is busy answers over the writes that could hear one (acked writes): an
/// un-acked flood elsewhere cannot dilute it. Before the fix it divided by every message.
#[test]
fn an_unacked_flood_cannot_hide_refused_writes() {
    let cfg = cfg_with(|c| {
        c.overlay.peer.egress_queue_frames = 10;
        c.readiness.sustain = Duration::from_secs(2);
    });
    let mut net = Net::new(45, 1, move |_| cfg.clone());
    let slow = net.client(0, Role::Client, &["slow"]);
    let _bulk = net.client(0, Role::Client, &["bulk"]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    net.stall(End::Node(0, net.clients[slow].conn), true);
    fill(&mut net, publisher, "slow", 0, 40);
    let mut id = 1000;
    for _ in 0..30 {
        // 1 acked write to the slow topic per 100 ms, 200 un-acked to a healthy one.
        publish(&mut net, publisher, id, "slow", true);
        id += 1;
        for _ in 0..200 {
            publish(&mut net, publisher, id, "bulk", false);
            id += 1;
        }
        net.advance(Duration::from_millis(100));
    }
    assert!(net.acks(publisher).iter().all(|c| *c == 503));
    let view = net.nodes[0].readiness();
    assert!(!view.shed_rate_ok, "every acked write was refused for 3 s");
    net.assert_balance();
}

/// Frames handed to a writer that never reports them written are counted once, as shed
/// when the session ends: never also as transmitted.
#[test]
fn frames_in_flight_at_close_are_shed_not_transmitted() {
    let cfg = cfg_with(|_| {});
    let mut net = Net::new(46, 1, move |_| cfg.clone());
    let slow = net.client(0, Role::Client, &["slow"]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    let conn: ConnId = net.clients[slow].conn;
    let tx = |net: &Net| net.counter(0, FRAMES_TOTAL, &[("dir", "tx"), ("kind", "gossip")]);
    let before = tx(&net);
    net.stall(End::Node(0, conn), true);
    fill(&mut net, publisher, "slow", 0, 5);
    let in_flight = net.nodes[0].in_flight(conn).unwrap() as u64;
    assert!(in_flight > 0);
    assert_eq!(tx(&net), before, "not transmitted until the writer says so");
    net.disconnect(End::Node(0, conn));
    assert_eq!(tx(&net), before);
    let shed = net.counter(
        0,
        QUEUE_DROPPED_TOTAL,
        &[("queue", "egress"), ("reason", "shed")],
    );
    assert_eq!(shed, 5, "the five frames counted once, as shed");
    net.assert_balance();
}

/// A partial stream times out on its own: complete messages on the same session now and
/// then do not keep a stalled stream alive (before the fix the timer was per session).
#[test]
fn a_stalled_stream_times_out_while_its_session_keeps_sending() {
    use bytes::{BufMut, BytesMut};
    let cfg = cfg_with(|c| c.timeouts.read = Duration::from_secs(3));
    let mut net = Net::new(47, 1, move |_| cfg.clone());
    let c = net.client(0, Role::Client, &[]);
    net.settle();
    let conn = net.clients[c].conn;
    let mut p = BytesMut::new();
    p.put_slice(&msg_id(9_999));
    p.put_u8(3);
    p.put_u8(1);
    p.put_slice(b"t");
    p.put_slice(b"half");
    let start = Frame::new(
        AppProto::GOSSIP,
        Flags::EVENT | Flags::START,
        77,
        p.freeze(),
    )
    .to_bytes(u32::MAX)
    .unwrap();
    net.feed(0, conn, &start);
    let timed_out = |net: &Net| net.counter(0, RX_DROPPED_TOTAL, &[("reason", "timeout")]);
    for k in 0..5 {
        publish(&mut net, c, k, "t", false);
        net.advance(Duration::from_secs(1));
    }
    assert_eq!(
        timed_out(&net),
        1,
        "the stalled stream's frame, dropped with timeout"
    );
    assert!(!net.clients[c].closed, "the session itself is fine");
    assert_eq!(net.nodes[0].balance().pending, 0);
    net.assert_balance();
}

/// While a client of a node is over its watermark, the node asks the runtime to stop
/// reading from its peers (the pressure goes back to the writer through TCP and the
/// upstream queues) and never from its clients; reads resume once the client caught up.
#[test]
fn a_client_over_its_watermark_pauses_reads_from_peers_only() {
    let cfg = cfg_with(|c| c.overlay.peer.egress_queue_frames = 20);
    let mut net = Net::new(48, 2, move |_| cfg.clone());
    let (peer_at_0, _) = net.connect(0, 1);
    let slow = net.client(0, Role::Client, &["slow"]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    let slow_conn = net.clients[slow].conn;
    assert!(!net.nodes[0].reads_paused());
    net.stall(End::Node(0, slow_conn), true);
    fill(&mut net, publisher, "slow", 0, 40);
    assert!(net.nodes[0].reads_paused());
    assert!(net.nodes[0].read_paused(peer_at_0), "the peer is paused");
    assert!(
        !net.nodes[0].read_paused(net.clients[publisher].conn),
        "clients are always read"
    );
    net.stall(End::Node(0, slow_conn), false);
    let now = net.now;
    net.nodes[0].handle_written(now, slow_conn, 1_000);
    net.settle();
    assert!(
        !net.nodes[0].reads_paused(),
        "resumed once the client caught up"
    );
    net.assert_balance();
}
