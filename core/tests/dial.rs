//! The node keeps its configured peers dialed and decides every dial: the backoff grows with
//! bounded jitter and resets once a session reaches its handshake, a session's end brings a
//! redial, nothing is dialed while draining, and the same seed gives the same dials. The
//! drain deadline is a timer of the same table, and fires at its instant.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use overlay_core::dialer::DIAL_JITTER;
use overlay_core::observe::names::DIAL_FAILURES_TOTAL;
use overlay_core::{ConnId, Dial, Overlay, Time};
use support::*;

const BASE: Duration = Duration::from_millis(200);
const MAX: Duration = Duration::from_secs(30);

/// The dial of `peer` at `addr`, as the node hands it out.
fn dial(peer: &str, addr: &str) -> Dial {
    Dial {
        peer: peer.into(),
        addr: addr.into(),
    }
}

fn p() -> Dial {
    dial("p", "192.0.2.1:7000")
}

fn net(seed: u64) -> Net {
    Net::new(seed, 2, |_| test_config())
}

/// Runs `node`'s timers from `now`, exactly at each instant `poll_timeout` names, until it
/// hands out a dial; returns when, and to which address.
fn next_dial(node: &mut Overlay, mut now: Time) -> (Time, String) {
    for _ in 0..100_000 {
        if let Some(d) = node.poll_dial() {
            return (now, d.addr);
        }
        // An overdue deadline runs now.
        now = now.max(
            node.poll_timeout()
                .expect("a node always has a next deadline"),
        );
        node.handle_timeout(now);
        while node.poll_transmit(now).is_some() {}
        while node.poll_event().is_some() {}
    }
    panic!("no dial came");
}

/// The delays between `fails` failed dials in a row to one peer.
fn failure_gaps(node: &mut Overlay, fails: usize) -> Vec<Duration> {
    let mut now = Time::ZERO;
    node.set_peer_addrs(now, "p", vec!["192.0.2.1:7000".into()]);
    let (at, addr) = next_dial(node, now);
    assert_eq!(
        (at, addr.as_str()),
        (now, "192.0.2.1:7000"),
        "a new peer is dialed at once"
    );
    let mut gaps = Vec::new();
    for k in 0..fails {
        assert_eq!(node.handle_dial_failed(now, &p()), Some(k as u32 + 1));
        let (at, _) = next_dial(node, now);
        gaps.push(at.saturating_since(now));
        now = at;
    }
    gaps
}

fn within_jitter(gap: Duration, delay: Duration) -> bool {
    gap >= delay.mul_f64(1.0 - DIAL_JITTER) && gap <= delay.mul_f64(1.0 + DIAL_JITTER)
}

#[test]
fn the_backoff_doubles_to_its_ceiling_with_bounded_jitter_and_every_failure_is_counted() {
    let mut net = net(1);
    let gaps = failure_gaps(&mut net.nodes[0], 12);
    for (k, gap) in gaps.iter().enumerate() {
        let delay = BASE.saturating_mul(1 << k).min(MAX);
        assert!(
            within_jitter(*gap, delay),
            "gap {k} of {gaps:?} vs {delay:?}"
        );
    }
    // The jitter is real: not every gap is its nominal delay.
    let nominal = (0..12).filter(|k| gaps[*k] == BASE.saturating_mul(1 << k).min(MAX));
    assert!(nominal.count() < 2, "{gaps:?}");
    assert_eq!(net.counter(0, DIAL_FAILURES_TOTAL, &[]), 12);
}

/// The delays are `overlay.dial_backoff_base` and `_max`, at start and after a reload.
#[test]
fn the_backoff_follows_its_config_keys_and_a_reload() {
    let (base, max) = (Duration::from_millis(10), Duration::from_millis(50));
    let mut net = Net::new(2, 1, |_| {
        let mut c = test_config();
        c.overlay.dial_backoff_base = base;
        c.overlay.dial_backoff_max = max;
        c
    });
    let gaps = failure_gaps(&mut net.nodes[0], 6);
    for (k, gap) in gaps.iter().enumerate() {
        let delay = base.saturating_mul(1 << k).min(max);
        assert!(
            within_jitter(*gap, delay),
            "gap {k} of {gaps:?} vs {delay:?}"
        );
    }
    let node = &mut net.nodes[0];
    let mut cfg = node.config().clone();
    cfg.overlay.dial_backoff_base = Duration::from_secs(2);
    cfg.overlay.dial_backoff_max = Duration::from_secs(4);
    let now = Time::ZERO + gaps.iter().sum::<Duration>();
    node.reconfigure(now, cfg);
    node.handle_dial_failed(now, &p());
    let (at, _) = next_dial(node, now);
    // Seven delays taken: the doubling is past the new ceiling.
    assert!(within_jitter(
        at.saturating_since(now),
        Duration::from_secs(4)
    ));
}

#[test]
fn the_same_seed_dials_at_the_same_instants_and_another_seed_does_not() {
    let a = failure_gaps(&mut net(7).nodes[0], 8);
    assert_eq!(a, failure_gaps(&mut net(7).nodes[0], 8));
    assert_ne!(a, failure_gaps(&mut net(8).nodes[0], 8));
}

/// Moves bytes between node 0's `a` and node 1's `b` until neither has more to send.
fn pump(net: &mut Net, now: Time, a: ConnId, b: ConnId) {
    loop {
        let mut moved = false;
        for (from, conn, to, peer) in [(0, a, 1, b), (1, b, 0, a)] {
            while let Some(t) = net.nodes[from].poll_transmit(now) {
                moved = true;
                if t.is_empty() {
                    continue;
                }
                let mut buf = BytesMut::from(&t.head[..]);
                buf.extend_from_slice(&t.body);
                net.nodes[to].handle_bytes(now, peer, &mut buf);
                net.nodes[from].handle_written(now, conn, 1);
            }
            while net.nodes[from].poll_event().is_some() {}
        }
        if !moved {
            return;
        }
    }
}

/// After three failures node 0 connects to node 1; the session ends `after` the handshake
/// (or before it); returns the delay to the redial that follows.
fn redial_after_session(established: bool) -> Duration {
    let mut net = net(3);
    let gaps = failure_gaps(&mut net.nodes[0], 3);
    let mut now = Time::ZERO + gaps.iter().sum::<Duration>();
    let a = net.nodes[0]
        .handle_dialed(now, &p())
        .expect("a dial was out");
    if established {
        let b = net.nodes[1].handle_accept(now);
        pump(&mut net, now, a, b);
        assert_eq!(net.nodes[0].established(), 1);
    }
    now = now + Duration::from_secs(1);
    net.nodes[0].handle_closed(now, a);
    let (at, _) = next_dial(&mut net.nodes[0], now);
    at.saturating_since(now)
}

#[test]
fn a_session_that_ends_is_redialed_from_the_base_once_it_had_reached_its_handshake() {
    let gap = redial_after_session(true);
    assert!(within_jitter(gap, BASE), "{gap:?}");
    // A session that never finished its handshake does not count as a success: the
    // doubling goes on (three failures, so the fourth delay).
    let gap = redial_after_session(false);
    assert!(within_jitter(gap, BASE * 8), "{gap:?}");
}

#[test]
fn a_peer_removed_from_the_set_is_not_redialed() {
    let mut net = net(4);
    let node = &mut net.nodes[0];
    node.set_peer_addrs(Time::ZERO, "p", vec!["192.0.2.1:7000".into()]);
    assert!(node.poll_dial().is_some());
    let conn = node.handle_dialed(Time::ZERO, &p()).unwrap();
    node.retain_peers(|_| false);
    node.handle_closed(Time::ZERO, conn);
    assert_eq!(node.dial_peers().count(), 0);
    let end = Time::ZERO + MAX * 2;
    while let Some(t) = node.poll_timeout().filter(|t| *t < end) {
        node.handle_timeout(t);
        assert!(
            node.poll_dial().is_none(),
            "redialed a removed peer at {t:?}"
        );
    }
}

/// A peer's addresses (a name's answer) are each kept dialed with their own backoff; one
/// that leaves them is not redialed, and its open session stays without a second dial when
/// it comes back.
#[test]
fn every_address_of_a_peer_is_dialed_and_one_that_leaves_is_not_redialed() {
    let mut net = net(5);
    let node = &mut net.nodes[0];
    let (a1, a2, a3) = ("192.0.2.1:7000", "192.0.2.2:7000", "192.0.2.3:7000");
    node.set_peer_addrs(Time::ZERO, "p", vec![a1.into()]);
    assert_eq!(node.poll_dial(), Some(dial("p", a1)));
    let conn = node.handle_dialed(Time::ZERO, &dial("p", a1)).unwrap();
    node.set_peer_addrs(Time::ZERO, "p", vec![a2.into(), a3.into()]);
    let mut out: Vec<String> = std::iter::from_fn(|| node.poll_dial().map(|d| d.addr)).collect();
    out.sort();
    assert_eq!(out, [a2, a3], "every new address is dialed at once");
    assert_eq!(node.handle_dial_failed(Time::ZERO, &dial("p", a2)), Some(1));
    // a1 comes back while its session is open: no second dial.
    node.set_peer_addrs(Time::ZERO, "p", vec![a1.into(), a3.into()]);
    assert_eq!(node.poll_dial(), None, "a1 dialed twice or a2 redialed");
    // Out again, and its session ends: a1 is not redialed, nor a2, gone too.
    node.set_peer_addrs(Time::ZERO, "p", vec![a3.into()]);
    node.handle_closed(Time::ZERO, conn);
    let end = Time::ZERO + MAX * 2;
    while let Some(t) = node.poll_timeout().filter(|t| *t < end) {
        node.handle_timeout(t);
        while node.poll_transmit(t).is_some() {}
        assert_eq!(
            node.poll_dial(),
            None,
            "an address gone was redialed at {t:?}"
        );
    }
}

#[test]
fn nothing_is_dialed_while_draining() {
    let mut net = net(6);
    let node = &mut net.nodes[0];
    node.set_peer_addrs(Time::ZERO, "p", vec!["192.0.2.1:7000".into()]);
    assert!(node.poll_dial().is_some());
    let conn = node.handle_dialed(Time::ZERO, &p()).unwrap();
    node.set_peer_addrs(Time::ZERO, "q", vec!["192.0.2.2:7000".into()]);
    node.begin_drain(Time::ZERO);
    // q's dial was queued before the drain: it is not handed out.
    assert!(node.poll_dial().is_none());
    node.set_peer_addrs(Time::ZERO, "r", vec!["192.0.2.3:7000".into()]);
    node.handle_closed(Time::ZERO, conn);
    assert_eq!(
        node.handle_dial_failed(Time::ZERO, &dial("q", "192.0.2.2:7000")),
        None
    );
    assert_eq!(
        node.handle_dialed(Time::ZERO, &dial("q", "192.0.2.2:7000")),
        None
    );
    let end = Time::ZERO + Duration::from_secs(10);
    while let Some(t) = node.poll_timeout().filter(|t| *t < end) {
        node.handle_timeout(t);
        while node.poll_transmit(t).is_some() {}
        assert!(node.poll_dial().is_none(), "dialed while draining at {t:?}");
    }
}

/// A drain that cannot finish (a write handed out and never reported) ends exactly at
/// `shutdown.drain_deadline`, reached by following `poll_timeout`, and the report says so.
#[test]
fn the_drain_deadline_fires_at_its_instant_and_the_report_tells_what_it_cost() {
    let mut net = net(9);
    let (a, b) = (
        net.nodes[0].handle_connected(Time::ZERO),
        net.nodes[1].handle_accept(Time::ZERO),
    );
    pump(&mut net, Time::ZERO, a, b);
    let node = &mut net.nodes[0];
    assert_eq!(node.established(), 1);
    let start = Time::ZERO + Duration::from_millis(1_234);
    let deadline = start + node.config().shutdown.drain_deadline;
    node.begin_drain(start);
    // The GOAWAY goes to a writer that never reports it written.
    let goaway = node.poll_transmit(start).expect("GOAWAY");
    assert!(!goaway.is_empty());
    let mut now = start;
    while !node.drain_ended() {
        let t = node.poll_timeout().unwrap();
        assert!(
            t <= deadline,
            "poll_timeout skipped the drain deadline: {t:?}"
        );
        now = t;
        node.handle_timeout(now);
        while node.poll_transmit(now).is_some() {}
        while node.poll_event().is_some() {}
    }
    assert_eq!(now, deadline);
    let r = node.shutdown_report(now);
    assert!(!r.drained);
    assert_eq!(r.left_open, 1);
    // The GOAWAY and what the shutdown's close handed out after it; nothing was queued.
    assert!(r.unwritten >= 1, "{r:?}");
    assert_eq!(r.egress_dropped, r.unwritten);
    assert_eq!(r.drain_time, node.config().shutdown.drain_deadline);
}

#[test]
fn a_drain_that_empties_ends_before_its_deadline_and_reports_drained() {
    let mut net = net(10);
    let (a, b) = (
        net.nodes[0].handle_connected(Time::ZERO),
        net.nodes[1].handle_accept(Time::ZERO),
    );
    pump(&mut net, Time::ZERO, a, b);
    net.nodes[0].begin_drain(Time::ZERO);
    pump(&mut net, Time::ZERO, a, b);
    let node = &mut net.nodes[0];
    assert!(node.drain_ended());
    let at = Time::ZERO + Duration::from_millis(10);
    node.shutdown(at);
    let r = node.shutdown_report(at);
    assert!(r.drained);
    assert_eq!((r.egress_dropped, r.unwritten), (0, 0));
    assert_eq!(r.drain_time, Duration::from_millis(10));
}

/// What a node accepts while it has no peer link (cut off, its peers not redialed yet) is
/// kept, so the first DIGEST of the link that comes back carries it. Before, a node with no
/// tree link stored nothing, and such a message never left its origin.
#[test]
fn a_message_published_while_cut_off_reaches_the_peer_once_the_link_is_back() {
    let mut net = net(12);
    let now = net.now;
    let id = net.nodes[0]
        .publish(now, "t", bytes::Bytes::from_static(b"alone"), None)
        .expect("a node alone may publish");
    net.connect(0, 1);
    net.advance(Duration::from_secs(3));
    assert!(net.nodes[1].has_seen(&id, net.now));
}

/// Moves bytes both ways between two sessions of the same node (a connection to itself)
/// until neither has more to send; a session that closes is reported closed.
fn pump_self(node: &mut Overlay, now: Time, a: ConnId, b: ConnId) {
    loop {
        let mut moved = false;
        while let Some(t) = node.poll_transmit(now) {
            moved = true;
            if t.is_empty() {
                continue;
            }
            let to = if t.conn == a { b } else { a };
            let mut buf = BytesMut::from(&t.head[..]);
            buf.extend_from_slice(&t.body);
            node.handle_bytes(now, to, &mut buf);
            node.handle_written(now, t.conn, 1);
        }
        while node.poll_event().is_some() {}
        if !moved {
            return;
        }
    }
}

/// A name that answers every member of a group (a headless Service) answers the node that
/// asks too: the node recognizes its own HELLO, is never its own peer, and does not redial
/// that address, while it keeps dialing the group's other addresses.
#[test]
fn an_address_that_reaches_the_node_itself_is_refused_and_parked() {
    let mut net = net(5);
    let node = &mut net.nodes[0];
    let mut now = Time::ZERO;
    let own = "10.0.0.1:9444".to_string();
    let other = "10.0.0.2:9444".to_string();
    node.set_peer_addrs(now, "group", vec![own.clone(), other.clone()]);
    let mut out = Vec::new();
    while let Some(d) = node.poll_dial() {
        out.push(d.addr);
    }
    out.sort();
    assert_eq!(out, [own.clone(), other.clone()]);
    assert_eq!(
        node.handle_dial_failed(now, &dial("group", &other)),
        Some(1)
    );
    let a = node.handle_dialed(now, &dial("group", &own)).unwrap();
    let b = node.handle_accept(now);
    pump_self(node, now, a, b);
    assert_eq!(node.established(), 0, "the node is not its own peer");
    for c in [a, b] {
        node.handle_closed(now, c);
    }
    // Names resolved anew give the same answer: the parked address stays parked.
    node.set_peer_addrs(now, "group", vec![own.clone(), other.clone()]);
    let end = now + MAX * 4;
    let mut redials = Vec::new();
    while now < end {
        let (at, addr) = next_dial(node, now);
        now = at;
        if now >= end {
            break;
        }
        redials.push(addr.clone());
        node.handle_dial_failed(now, &dial("group", &addr));
    }
    assert!(!redials.is_empty(), "the other address is still dialed");
    assert!(
        redials.iter().all(|r| *r == other),
        "the node redialed itself: {redials:?}"
    );
    assert_eq!(
        net.counter(
            0,
            overlay_core::observe::names::REJECTED_TOTAL,
            &[("reason", "proto")]
        ),
        1,
        "its own HELLO is refused once, and counted"
    );
    // The address left the answer and came back (a new pod behind it): dialed again.
    let node = &mut net.nodes[0];
    node.set_peer_addrs(now, "group", vec![other.clone()]);
    node.set_peer_addrs(now, "group", vec![own.clone(), other.clone()]);
    let mut fresh = Vec::new();
    while let Some(d) = node.poll_dial() {
        fresh.push(d.addr);
    }
    assert!(fresh.contains(&own), "{fresh:?}");
}
