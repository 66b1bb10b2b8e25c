//! The broadcast tree over many nodes: every node gets every message whatever the hop
//! count, about one payload copy crosses a link per delivery once the tree has formed,
//! a partition heals by reconciliation, and a peer without the feature still works.

mod support;

use std::time::Duration;

use bytes::Bytes;
use overlay_core::oap::Role;
use overlay_core::observe::names::*;
use overlay_core::ConnId;
use support::*;

fn cfg() -> overlay_core::Config {
    let mut c = test_config();
    c.timeouts.idle = Duration::from_secs(3600);
    c
}

/// Node i peers with i+1, i+2, i+3 (mod n): the workload of the mesh benchmark.
fn ring(seed: u64, n: usize, f: impl Fn(usize) -> overlay_core::Config) -> Net {
    let mut net = Net::new(seed, n, f);
    for i in 0..n {
        for d in 1..=3 {
            net.connect(i, (i + d) % n);
        }
    }
    net.settle();
    net
}

fn publish_n(net: &mut Net, publisher: usize, first: u64, n: u64) {
    for k in first..first + n {
        net.clients[publisher]
            .client
            .publish(msg_id(k), "t", 6, &Bytes::from(vec![1u8; 256]), false)
            .unwrap();
        if k % 16 == 15 {
            net.settle();
        }
    }
    net.settle();
}

fn sum(net: &Net, name: &str, labels: &[(&str, &str)]) -> u64 {
    (0..net.nodes.len())
        .map(|i| net.counter(i, name, labels))
        .sum()
}

fn coverage(net: &Net, ids: std::ops::Range<u64>) -> Vec<(usize, u64)> {
    let mut missing = vec![];
    for (i, node) in net.nodes.iter().enumerate() {
        for k in ids.clone() {
            if !node.has_seen(&msg_id(k), net.now) {
                missing.push((i, k));
            }
        }
    }
    missing
}

/// 32 nodes in a ring of diameter 6, ttl 6: with flooding the far nodes got 27–53 %. On the
/// tree every node gets every message, and once the tree has formed about one payload copy
/// crosses the wire per delivery.
#[test]
fn every_node_gets_every_message_and_the_tree_settles_to_one_copy() {
    let n = 32;
    let mut net = ring(61, n, |_| cfg());
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    publish_n(&mut net, publisher, 0, 50);
    net.advance(Duration::from_secs(2));
    assert_eq!(coverage(&net, 0..50), vec![], "seed {}", net.seed);
    // Formed: count the copies of the next 200.
    let pushes = |net: &Net| sum(net, TREE_PUSHES_TOTAL, &[("mode", "eager")]);
    let before = pushes(&net);
    publish_n(&mut net, publisher, 1000, 200);
    net.advance(Duration::from_secs(2));
    assert_eq!(coverage(&net, 1000..1200), vec![], "seed {}", net.seed);
    let copies = (pushes(&net) - before) as f64 / (200.0 * (n - 1) as f64);
    eprintln!("copies per delivery: {copies:.3}");
    assert!(copies <= 1.2, "{copies:.3} payload copies per delivery");
    assert!(sum(&net, TREE_FRAMES_TOTAL, &[("dir", "tx"), ("op", "prune")]) > 0);
    net.assert_balance();
}

/// Links between two halves go down, both halves publish, the links come back: every node
/// ends with every message, repaired by the DIGEST exchange of the new links.
#[test]
fn a_partition_heals_by_reconciliation() {
    let n = 8;
    let mut net = Net::new(62, n, |_| cfg());
    let mut cross = vec![];
    for i in 0..n {
        for d in 1..=2 {
            let j = (i + d) % n;
            let (a, _) = net.connect(i, j);
            if (i < n / 2) != (j < n / 2) {
                cross.push((i, a));
            }
        }
    }
    let left = net.client(0, Role::Client, &[]);
    let right = net.client(n / 2, Role::Client, &[]);
    net.settle();
    for (i, conn) in &cross {
        net.disconnect(End::Node(*i, *conn));
    }
    net.settle();
    publish_n(&mut net, left, 0, 30);
    publish_n(&mut net, right, 100, 30);
    net.advance(Duration::from_secs(3));
    assert!(!coverage(&net, 0..30).is_empty(), "the partition held");
    for i in 0..n {
        let j = (i + 1) % n;
        if (i < n / 2) != (j < n / 2) {
            net.connect(i, j);
        }
    }
    net.advance(Duration::from_secs(8));
    assert_eq!(coverage(&net, 0..30), vec![], "seed {}", net.seed);
    assert_eq!(coverage(&net, 100..130), vec![], "seed {}", net.seed);
    assert!(sum(&net, RECONCILE_ROUNDS_TOTAL, &[]) > 0);
    assert!(sum(&net, TREE_PULLS_TOTAL, &[("outcome", "served")]) > 0);
    net.assert_balance();
}

/// A node without the tree feature in the middle: its links use the spec's eager push,
/// and messages still cross it both ways.
#[test]
fn a_peer_without_the_feature_still_relays() {
    let mut net = Net::new(63, 3, |i| {
        let mut c = cfg();
        c.overlay.gossip.tree = i != 1;
        c
    });
    net.connect(0, 1);
    net.connect(1, 2);
    let a = net.client(0, Role::Client, &[]);
    let b = net.client(2, Role::Client, &[]);
    net.settle();
    assert_eq!(net.gauge(0, TREE_PEERS, &[("mode", "eager")]), 0.0);
    publish_n(&mut net, a, 0, 10);
    publish_n(&mut net, b, 100, 10);
    assert_eq!(net.messages(b).len(), 10);
    assert_eq!(net.messages(a).len(), 10);
    net.assert_balance();
}

/// Peer links are not rate limited: a burst far over `max_rps` relayed by a peer arrives
/// whole (clients stay limited).
#[test]
fn peer_links_are_not_rate_limited() {
    let mut net = Net::new(64, 2, |_| {
        let mut c = cfg();
        c.overlay.peer.max_rps = 5;
        c
    });
    net.connect(0, 1);
    let sub = net.client(1, Role::Client, &[]);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    for k in 0..200 {
        net.clients[publisher]
            .client
            .publish(msg_id(k), "t", 3, &Bytes::from_static(b"x"), false)
            .unwrap();
    }
    net.settle();
    let limited = net.counter(0, REJECTED_TOTAL, &[("reason", "ratelimit")]);
    assert!(limited > 0, "the client is limited at node 0");
    assert_eq!(
        net.messages(sub).len() as u64,
        200 - limited,
        "everything node 0 accepted crossed the peer link"
    );
    assert_eq!(
        net.counter(1, REJECTED_TOTAL, &[("reason", "ratelimit")]),
        0
    );
    net.assert_balance();
}

/// Publishes `2 * half` messages of 256 bytes from a client of node 0, one every `spacing`,
/// lets the mesh settle for `settle`, checks that every node got every one, and returns the
/// pulls and the payload copies per delivery of the second half: the tree as it runs once
/// the first half has formed it.
fn steady_figures(net: &mut Net, half: u64, spacing: Duration, settle: Duration) -> (f64, f64) {
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    let publish = |net: &mut Net, k: u64| {
        net.clients[publisher]
            .client
            .publish(msg_id(k), "t", 6, &Bytes::from(vec![1u8; 256]), false)
            .unwrap();
        net.advance(spacing);
    };
    for k in 0..half {
        publish(net, k);
    }
    let pulls = |net: &Net| sum(net, TREE_PULLS_TOTAL, &[("outcome", "requested")]);
    let pushes = |net: &Net| sum(net, TREE_PUSHES_TOTAL, &[("mode", "eager")]);
    let (pulls0, pushes0) = (pulls(net), pushes(net));
    for k in half..2 * half {
        publish(net, k);
    }
    net.advance(settle);
    assert_eq!(coverage(net, 0..2 * half), vec![], "seed {}", net.seed);
    let deliveries = (half * (net.nodes.len() as u64 - 1)) as f64;
    let pulled = (pulls(net) - pulls0) as f64 / deliveries;
    let copies = (pushes(net) - pushes0 + pulls(net) - pulls0) as f64 / deliveries;
    (pulled, copies)
}

/// Links that are now and then slower than the graft timeout (jitter), as loaded links
/// are: some eager copies arrive after the pull they provoked. A pull asks the announcer to
/// push to the puller, and a duplicate stops only the direction it came over. Were a pull to
/// make the puller push back too, and a duplicate stop both directions, the puller's own
/// pushes would get the announcer's push to it pruned, the puller would pull again, and
/// the tree would keep pulling: a pull per delivery at a slow node, and its latency.
#[test]
fn slow_eager_copies_do_not_keep_the_tree_pulling() {
    let n = 10;
    let mut net = ring(65, n, |_| cfg());
    net.model = LinkModel {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(250),
        loss: 0.0,
    };
    let (pulled, copies) = steady_figures(
        &mut net,
        400,
        Duration::from_millis(5),
        Duration::from_secs(5),
    );
    eprintln!("pulls per delivery {pulled:.3}, copies per delivery {copies:.3}");
    // Before: 0.45 pulls and 2.27 copies per delivery; after: 0.16 and 1.43; with a parent
    // kept (`a_first_burst_leaves_every_node_a_parent`) 0.02 and 1.23. What is left is the
    // eager copies that really are later than the timeout.
    assert!(pulled <= 0.3, "{pulled:.3} pulls per delivery");
    assert!(copies <= 1.8, "{copies:.3} payload copies per delivery");
    let delays: Vec<f64> = (0..n).map(|i| net.gauge(i, TREE_PULL_DELAY, &[])).collect();
    // Late arrivals raised the pull delay at some nodes, never past 1.5 graft timeouts.
    assert!(
        delays.iter().all(|d| (0.3..=0.45).contains(d)),
        "{delays:?}"
    );
    assert!(delays.iter().any(|d| *d > 0.3), "{delays:?}");
    net.assert_balance();
}

/// Nodes 0, 1 and 2, each linked to the other two, and a publishing client on node 0;
/// returns node 0's connection to node 2 and the publisher.
fn triangle(seed: u64) -> (Net, ConnId, usize) {
    let mut net = Net::new(seed, 3, |_| cfg());
    let (c02, _) = net.connect(0, 2);
    net.connect(0, 1);
    net.connect(1, 2);
    let publisher = net.client(0, Role::Client, &[]);
    (net, c02, publisher)
}

/// A pulled copy that arrives after the eager copy it was pulled in place of is a slow
/// answer to this node's own GRAFT, not a sign that the announcer's pushes are redundant: it
/// must not PRUNE the announcer (which, asked to push by that very GRAFT, would stop again).
#[test]
fn a_late_answer_to_a_pull_prunes_nothing() {
    let (mut net, c02, publisher) = triangle(66);
    net.settle();
    // The first message forms the tree: 0 pushes to 1 and 2, whose pushes to each other
    // cross and are pruned both ways, so 1 announces to 2 from then on.
    publish_n(&mut net, publisher, 0, 1);
    net.advance(Duration::from_secs(1));
    let prunes = |net: &Net| net.counter(2, TREE_FRAMES_TOTAL, &[("dir", "tx"), ("op", "prune")]);
    let grafts = |net: &Net| net.counter(2, TREE_FRAMES_TOTAL, &[("dir", "tx"), ("op", "graft")]);
    let (prunes0, grafts0) = (prunes(&net), grafts(&net));
    // Node 0's copy toward 2 is held up: 2 hears of it from 1 and pulls it from 1.
    net.stall(End::Node(0, c02), true);
    publish_n(&mut net, publisher, 1, 1);
    for _ in 0..4000 {
        if grafts(&net) > grafts0 {
            break;
        }
        net.advance(Duration::from_micros(250));
    }
    assert!(grafts(&net) > grafts0, "node 2 pulled from node 1");
    // The eager copy arrives first after all; 1's answer to the pull comes second.
    net.resume(End::Node(0, c02));
    net.advance(Duration::from_secs(1));
    assert_eq!(coverage(&net, 0..2), vec![]);
    assert_eq!(prunes(&net), prunes0, "the late pulled copy pruned node 1");
    assert!(net.counter(2, RX_OUTCOMES_TOTAL, &[("outcome", "duplicate")]) > 0);
    net.assert_balance();
}

/// A first burst over links that all start eager, each slower than the burst's spacing:
/// every node gets each early message over every link and prunes the peers whose copies
/// came second, while pushes sent before its PRUNEs landed still beat its parent's copies.
/// Were those late pushes taken as a reason to prune the parent too, every node would end
/// with every peer pruned, no eager tree left, and every message pulled (a graft timeout
/// and a tick late each). Each node keeps a parent, and the run is paid at push latency.
#[test]
fn a_first_burst_leaves_every_node_a_parent() {
    let n = 10;
    let mut net = ring(67, n, |_| cfg());
    net.model = LinkModel {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(60),
        loss: 0.0,
    };
    let (pulled, copies) = steady_figures(
        &mut net,
        600,
        Duration::from_millis(1),
        Duration::from_secs(3),
    );
    // Every node but the origin needs a peer pushing to it: at least n - 1 eager
    // directions over the mesh.
    let eager: f64 = (0..n)
        .map(|i| net.gauge(i, TREE_PEERS, &[("mode", "eager")]))
        .sum();
    eprintln!("pulls per delivery {pulled:.3}, copies per delivery {copies:.3}, eager {eager}");
    assert!(eager >= (n - 1) as f64, "{eager} eager directions");
    assert!(pulled <= 0.05, "{pulled:.3} pulls per delivery");
    assert!(copies <= 1.2, "{copies:.3} payload copies per delivery");
    net.assert_balance();
}

/// The triangle with its tree formed (2's parent is 0; 1 announces to 2), node 0's pushes
/// to 2 held up, and a subscriber on node 2; returns the net, the link, the publisher and
/// the subscriber.
fn cut_off(seed: u64) -> (Net, ConnId, usize, usize) {
    let (mut net, c02, publisher) = triangle(seed);
    let sub = net.client(2, Role::Client, &["t"]);
    net.settle();
    publish_n(&mut net, publisher, 0, 1);
    net.advance(Duration::from_secs(1));
    net.stall(End::Node(0, c02), true);
    (net, c02, publisher, sub)
}

/// Publishes messages `ids` at once, without settling: each burst reaches node 1 in one go.
fn burst(net: &mut Net, publisher: usize, ids: std::ops::Range<u64>) {
    for k in ids {
        net.clients[publisher]
            .client
            .publish(msg_id(k), "t", 6, &Bytes::from_static(b"m"), false)
            .unwrap();
    }
}

/// Advances until node 2's subscriber has messages 0..n (the tree's first and the bursts'),
/// at most 2 s; how long it took.
fn until_delivered(net: &mut Net, sub: usize, n: u64) -> Duration {
    let start = net.now;
    let limit = Duration::from_secs(2);
    while (net.messages(sub).len() as u64) < n && net.now.saturating_since(start) < limit {
        net.advance(Duration::from_millis(1));
    }
    let took = net.now.saturating_since(start);
    eprintln!("node 2 had the burst {took:?} after its last publish");
    assert_eq!(net.messages(sub).len() as u64, n, "node 2 got the burst");
    took
}

/// Node 0's pushes to 2 resume: every node ends with messages 0..n, and the balance holds.
fn heal(net: &mut Net, c02: ConnId, n: u64) {
    net.resume(End::Node(0, c02));
    net.advance(Duration::from_secs(2));
    assert_eq!(coverage(net, 0..n), vec![]);
    net.assert_balance();
}

/// A node whose only parent stops delivering (in the mesh benchmark: two nodes left each
/// other's only parent by a first burst, a cycle with no way in from the source) while a
/// lazy peer announces what it lacks. It pulls after a quarter graft timeout of silence,
/// not the graft timeout and a tick: before, node 2 had none of the burst 300 ms on.
#[test]
fn a_node_cut_off_from_its_parents_pulls_without_waiting_the_graft_timeout() {
    let (mut net, c02, publisher, sub) = cut_off(68);
    // A full announcement batch: node 1 sends it to node 2 at once.
    let n = overlay_core::oap::MAX_IDS as u64;
    burst(&mut net, publisher, 1..1 + n);
    let took = until_delivered(&mut net, sub, 1 + n);
    assert!(took <= Duration::from_millis(150), "{took:?}");
    assert_eq!(net.counter(2, TREE_RESCUES_TOTAL, &[]), 1);
    heal(&mut net, c02, 1 + n);
}

/// The rescue's GRAFT reaches node 1 with ids it had not yet announced to node 2 (those past
/// the full batch it flushed): it announces them at once, and node 2, just rescued, pulls
/// them at once. Before, they waited for node 1's next tick, then a pull delay at node 2: in
/// the mesh benchmark, a run of ~500 seqs just after the rescued ones, 600 ms late at every
/// rescued node.
#[test]
fn a_graft_brings_what_was_still_to_be_announced_at_once() {
    let (mut net, c02, publisher, sub) = cut_off(69);
    let n = overlay_core::oap::MAX_IDS as u64 + 100;
    burst(&mut net, publisher, 1..1 + n);
    let took = until_delivered(&mut net, sub, 1 + n);
    assert!(took <= Duration::from_millis(150), "{took:?}");
    heal(&mut net, c02, 1 + n);
    // Node 1 sent each message on to node 2 once, whole or by id, and counted it once.
    let sent: u64 = ["eager", "lazy"]
        .iter()
        .map(|m| net.counter(1, TREE_PUSHES_TOTAL, &[("mode", m)]))
        .sum();
    assert_eq!(sent, 1 + n);
}

/// A second batch announced just after the first, both while node 2 is cut off: the rescue
/// pulls both. Before, it pulled only what had waited a quarter graft timeout: the second
/// batch, already announced (so not pushed after the GRAFT either), waited for the next
/// silence, or in the mesh benchmark (where pulled copies keep the node fed) its pull delay.
#[test]
fn a_rescue_pulls_what_was_announced_a_moment_ago_too() {
    let (mut net, c02, publisher, sub) = cut_off(70);
    let n = overlay_core::oap::MAX_IDS as u64;
    burst(&mut net, publisher, 1..1 + n);
    net.advance(Duration::from_millis(50));
    burst(&mut net, publisher, 1 + n..1 + 2 * n);
    let took = until_delivered(&mut net, sub, 1 + 2 * n);
    // Pulled with the first at a quarter graft timeout (75 ms) after the first batch;
    // before, at the next look, a quarter graft timeout later still.
    assert!(took <= Duration::from_millis(60), "{took:?}");
    heal(&mut net, c02, 1 + 2 * n);
}

/// A lazy peer that stops reading: once node 1's control queue toward it is full, node 1's
/// announcements wait in its announce queue, bounded by `overlay.gossip.announce_queue`,
/// and what that bound drops is counted by id. Before, each IHAVE past the full control
/// queue was dropped and counted only as a frame, and `overlay_announce_dropped_total`
/// could never move (the queue is sent whenever it holds a batch).
#[test]
fn announcements_to_a_peer_that_does_not_read_are_bounded_and_counted() {
    let batch = overlay_core::oap::MAX_IDS;
    let mut net = Net::new(71, 3, |i| {
        let mut c = cfg();
        if i == 1 {
            c.overlay.peer.egress_queue_frames = 2;
            c.overlay.gossip.announce_queue = batch;
        }
        c
    });
    net.connect(0, 2);
    net.connect(0, 1);
    let (c12, _) = net.connect(1, 2);
    let publisher = net.client(0, Role::Client, &[]);
    net.settle();
    // The tree forms: 2's parent is 0, and 1 announces to 2.
    publish_n(&mut net, publisher, 0, 1);
    net.advance(Duration::from_secs(1));
    net.stall(End::Node(1, c12), true);
    let n = 5 * batch as u64;
    burst(&mut net, publisher, 1..1 + n);
    net.advance(Duration::from_secs(1));
    let dropped = net.counter(1, ANNOUNCE_DROPPED_TOTAL, &[]);
    let sent: u64 = ["eager", "lazy"]
        .iter()
        .map(|m| net.counter(1, TREE_PUSHES_TOTAL, &[("mode", m)]))
        .sum();
    eprintln!("node 1 dropped {dropped} announcements, sent {sent} messages on");
    assert!(dropped > 0);
    // Each message sent on, dropped by id, or still waiting in the bounded queue.
    assert!(sent + dropped <= 1 + n && 1 + n - sent - dropped <= batch as u64);
    net.resume(End::Node(1, c12));
    net.advance(Duration::from_secs(2));
    assert_eq!(coverage(&net, 0..1 + n), vec![]);
    net.assert_balance();
}
