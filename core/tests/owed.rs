//! A subscriber whose queue is full is owed messages, not dropped from: they wait in the
//! store as ids and go out in order as its queue drains; what cannot be owed (past the bound,
//! or let go by the store first) is dropped and counted, and the balance holds throughout.

mod support;

use std::time::Duration;

use bytes::Bytes;
use overlay_core::oap::Role;
use overlay_core::observe::names::*;
use overlay_core::ConnId;
use support::*;

fn cfg_with(f: impl Fn(&mut overlay_core::Config)) -> overlay_core::Config {
    let mut cfg = test_config();
    cfg.overlay.peer.max_rps = 100_000;
    cfg.overlay.peer.egress_queue_frames = 20;
    cfg.timeouts.write = Duration::from_secs(600);
    cfg.timeouts.idle = Duration::from_secs(600);
    f(&mut cfg);
    cfg
}

/// One node with a subscriber of "t" that has stopped reading and a publisher: the
/// network, the subscriber, the publisher and the subscriber's connection.
fn stalled(seed: u64, cfg: overlay_core::Config) -> (Net, usize, usize, ConnId) {
    let mut net = Net::new(seed, 1, move |_| cfg.clone());
    let slow = net.client(0, Role::Client, &["t"]);
    let publisher = net.client(0, Role::Client, &["none"]);
    net.settle();
    let conn = net.clients[slow].conn;
    net.stall(End::Node(0, conn), true);
    (net, slow, publisher, conn)
}

/// Publishes `n` un-acked messages in reads of 8, the way a peer's bursts arrive.
fn burst(net: &mut Net, publisher: usize, n: u64) {
    for k in 0..n {
        net.clients[publisher]
            .client
            .publish(msg_id(k), "t", 3, &Bytes::from_static(b"payload"), false)
            .unwrap();
        if k % 8 == 7 {
            net.settle();
        }
    }
    net.settle();
}

fn full_drops(net: &Net) -> u64 {
    net.counter(
        0,
        QUEUE_DROPPED_TOTAL,
        &[("queue", "egress"), ("reason", "full")],
    )
}

/// What a stalled subscriber takes before anything is owed: its writer's window and its
/// queue.
fn room(cfg: &overlay_core::Config) -> usize {
    cfg.overlay.peer.send_window_frames + cfg.overlay.peer.egress_queue_frames
}

fn delivered_ids(net: &Net, c: usize) -> Vec<[u8; 16]> {
    net.messages(c).iter().map(|m| m.header.msg_id).collect()
}

/// 48 messages into a stalled subscriber with room for 36: none dropped, the rest owed,
/// peer reads paused while it owes, and all 48 arrive in order once it reads. Before the
/// fix 12 were dropped (`overlay_queue_dropped_total{reason="full"}`), untold.
#[test]
fn a_full_subscriber_is_owed_every_message_in_order() {
    let cfg = cfg_with(|_| {});
    let (mut net, slow, publisher, conn) = stalled(71, cfg);
    burst(&mut net, publisher, 48);
    assert_eq!(full_drops(&net), 0, "nothing dropped");
    assert!(
        net.nodes[0].reads_paused(),
        "an owing client pauses peer reads"
    );
    net.advance(Duration::from_millis(300));
    assert!(net.gauge(0, OWED_MESSAGES, &[]) > 0.0);
    net.resume(End::Node(0, conn));
    net.settle();
    net.advance(Duration::from_millis(300));
    let want: Vec<[u8; 16]> = (0..48).map(msg_id).collect();
    assert_eq!(delivered_ids(&net, slow), want);
    assert_eq!(net.gauge(0, OWED_MESSAGES, &[]), 0.0);
    assert!(!net.nodes[0].reads_paused());
    net.assert_balance();
}

/// Past `overlay.peer.owed_messages` a message is dropped and counted, as a full queue
/// drops without owing (0 turns owing off).
#[test]
fn owing_past_its_bound_drops_and_counts() {
    for owed in [5usize, 0] {
        let cfg = cfg_with(|c| c.overlay.peer.owed_messages = owed);
        let want = room(&cfg) + owed;
        let (mut net, slow, publisher, conn) = stalled(72, cfg);
        burst(&mut net, publisher, 60);
        net.resume(End::Node(0, conn));
        net.settle();
        let got = net.messages(slow).len();
        assert_eq!(got, want, "owed_messages = {owed}");
        assert_eq!(full_drops(&net), 60 - want as u64, "owed_messages = {owed}");
        net.assert_balance();
    }
}

/// An owed message the store let go (here by age) cannot be sent: it is dropped and
/// counted, and the ones still stored are sent.
#[test]
fn an_owed_message_the_store_let_go_is_dropped_and_counted() {
    let cfg = cfg_with(|c| c.overlay.gossip.store_ttl = Duration::from_secs(1));
    let held = room(&cfg);
    let (mut net, slow, publisher, conn) = stalled(73, cfg);
    burst(&mut net, publisher, 50);
    net.advance(Duration::from_secs(2));
    net.resume(End::Node(0, conn));
    net.settle();
    assert_eq!(net.messages(slow).len(), held, "the queued ones");
    assert_eq!(
        full_drops(&net),
        50 - held as u64,
        "the owed ones, let go by the store"
    );
    net.assert_balance();
}

/// A client that goes away owing: its debts are counted with its queued frames.
#[test]
fn a_client_that_closes_owing_is_counted() {
    let cfg = cfg_with(|_| {});
    let (mut net, _, publisher, conn) = stalled(74, cfg);
    burst(&mut net, publisher, 50);
    net.disconnect(End::Node(0, conn));
    net.settle();
    net.advance(Duration::from_millis(300));
    assert_eq!(net.gauge(0, OWED_MESSAGES, &[]), 0.0);
    assert!(!net.nodes[0].reads_paused());
    net.assert_balance();
}

/// A subscriber that stays behind (here: never reads) pauses the node's peer reads for
/// `PEER_PRESSURE_MAX` at most: then it is demoted and counted, and the node reads its peers
/// again while the subscriber is still owed. Before, one slow subscriber could hold every
/// peer read of its node paused for as long as it kept its session.
#[test]
fn a_subscriber_that_stays_behind_stops_pausing_the_node() {
    let cfg = cfg_with(|_| {});
    let (mut net, slow, publisher, conn) = stalled(75, cfg);
    burst(&mut net, publisher, 48);
    assert!(net.nodes[0].reads_paused());
    net.advance(overlay_core::PEER_PRESSURE_MAX - Duration::from_millis(300));
    assert!(net.nodes[0].reads_paused(), "paused within the window");
    net.advance(Duration::from_millis(600));
    assert!(!net.nodes[0].reads_paused(), "demoted past the window");
    assert_eq!(net.counter(0, PEER_DEMOTIONS_TOTAL, &[]), 1);
    assert!(net.gauge(0, OWED_MESSAGES, &[]) > 0.0, "still owed");
    net.resume(End::Node(0, conn));
    net.settle();
    assert_eq!(
        net.messages(slow).len(),
        48,
        "and it gets them all once it reads"
    );
    net.assert_balance();
}
