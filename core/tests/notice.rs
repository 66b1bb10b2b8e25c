//! Refusal notices: a writer hears about every message the node refused, whether it asked
//! for acks or not, and even when its control queue had no room for the answers.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use overlay_core::client::{Client, ClientEvent};
use overlay_core::oap::{Decoder, Flags, Frame, Role};
use overlay_core::observe::names::*;
use overlay_core::Config;
use support::*;

fn with_rps(rps: u32) -> impl Fn(usize) -> Config {
    move |_| {
        let mut c = test_config();
        c.overlay.peer.max_rps = rps;
        c
    }
}

fn publish(net: &mut Net, c: usize, first: u64, n: u64, ack: bool) {
    for k in first..first + n {
        net.clients[c]
            .client
            .publish(msg_id(k), "t", 3, &Bytes::from_static(b"x"), ack)
            .unwrap();
    }
}

fn refused_in_notices(net: &Net, c: usize) -> u64 {
    net.notices(c).iter().map(|(_, n)| n).sum()
}

#[test]
fn a_writer_without_acks_hears_every_ratelimit_refusal() {
    let mut net = Net::new(1, 1, with_rps(10));
    let c = net.client(0, Role::Client, &[]);
    net.settle();
    publish(&mut net, c, 0, 100, false);
    net.settle();
    // The first refusal is told at once; the rest wait for the window.
    assert_eq!(net.notices(c), vec![("ratelimit".to_string(), 1)]);
    net.advance(Duration::from_millis(1500));
    let refused = net.counter(0, REJECTED_TOTAL, &[("reason", "ratelimit")]);
    assert_eq!(refused, 90, "burst of one second at 10 rps");
    assert_eq!(refused_in_notices(&net, c), refused);
    let notices = net.notices(c).len() as u64;
    assert_eq!(notices, 2, "one at once, one for the rest of the burst");
    assert_eq!(
        net.counter(0, REFUSAL_NOTICES_TOTAL, &[("reason", "ratelimit")]),
        notices
    );
    net.assert_balance();
}

#[test]
fn notices_come_at_most_once_per_interval() {
    let mut net = Net::new(2, 1, with_rps(10));
    let c = net.client(0, Role::Client, &[]);
    net.settle();
    let mut heard_at = Vec::new();
    let mut seen = 0;
    // 50 messages a second for 5 s against 10 rps: refusals all the time.
    for tick in 0..100u64 {
        publish(&mut net, c, tick * 10, 5, false);
        net.advance(Duration::from_millis(100));
        let n = net.notices(c).len();
        for _ in seen..n {
            heard_at.push(net.now);
        }
        seen = n;
    }
    net.advance(Duration::from_secs(2));
    assert!(heard_at.len() >= 5, "{heard_at:?}");
    for w in heard_at.windows(2) {
        // Notices are heard within 100 ms steps; the node spaces them by 1 s.
        assert!(
            w[1].saturating_since(w[0]) >= Duration::from_millis(900),
            "{heard_at:?}"
        );
    }
    assert_eq!(
        refused_in_notices(&net, c),
        net.counter(0, REJECTED_TOTAL, &[("reason", "ratelimit")])
    );
    net.assert_balance();
}

#[test]
fn acks_and_notices_add_up_when_the_control_queue_is_full() {
    let mut net = Net::new(3, 1, |_| {
        let mut c = test_config();
        c.overlay.peer.max_rps = 4;
        c.overlay.peer.egress_queue_frames = 8;
        c.overlay.gossip.egress_permits = 8;
        c
    });
    let c = net.client(0, Role::Client, &[]);
    net.settle();
    let node_end = End::Node(0, net.clients[c].conn);
    // The publisher stops reading: its answers pile up in flight, then in its control
    // queue, until there is no room for more.
    net.stall(node_end, true);
    const SENT: u64 = 200;
    publish(&mut net, c, 0, SENT, true);
    net.settle();
    let busy = net.counter(0, REJECTED_TOTAL, &[("reason", "busy")]);
    assert!(busy > 0, "answers found no room");
    assert_eq!(
        net.counter(
            0,
            QUEUE_DROPPED_TOTAL,
            &[("queue", "egress"), ("reason", "full")]
        ),
        0,
        "no answer is dropped"
    );
    net.resume(node_end);
    net.advance(Duration::from_secs(3));
    let acks = net.acks(c);
    let accepted = acks.iter().filter(|a| **a == 202).count() as u64;
    let answered_refusals = acks.iter().filter(|a| **a != 202).count() as u64;
    assert!(answered_refusals > 0, "some 429s found room: {acks:?}");
    assert_eq!(
        accepted + answered_refusals + refused_in_notices(&net, c),
        SENT,
        "acks {acks:?} notices {:?}",
        net.notices(c)
    );
    assert_eq!(accepted, net.nodes[0].stats().accepted_messages);
    net.assert_balance();
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The hex between the `notice-vector` markers of docs/OAP1.md.
fn doc_vector() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OAP1.md"))
        .expect("docs/OAP1.md");
    let start = doc
        .find("<!-- notice-vector:start -->")
        .expect("start marker");
    let end = doc.find("<!-- notice-vector:end -->").expect("end marker");
    doc[start..end]
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("```"))
        .flat_map(|l| l.split_whitespace())
        .collect()
}

#[test]
fn the_notice_vector_in_the_doc_is_what_the_node_sends() {
    let mut net = Net::new(4, 1, with_rps(1));
    let conn = net.raw(0);
    let mut cl = Client::new("w", Role::Client, vec![], None);
    cl.start();
    net.feed(0, conn, &cl.poll_transmit().unwrap());
    net.drain_raw(0, conn);
    // Burst of one: the second message is refused, and told at once.
    for k in 0..2 {
        cl.publish(msg_id(k), "t", 3, &Bytes::from_static(b"x"), false)
            .unwrap();
    }
    net.feed(0, conn, &cl.poll_transmit().unwrap());
    let (out, _) = net.drain_raw(0, conn);
    let mut d = Decoder::default();
    let mut b = BytesMut::from(&out[..]);
    let mut notice = None;
    let mut at = 0;
    while let Ok(Some(f)) = d.decode(&mut b) {
        let f: Frame = f;
        if f.corr_id == 0 && f.flags == Flags::RESP && f.app_proto == 1 {
            notice = Some(out[at..at + f.wire_len as usize].to_vec());
        }
        at += f.wire_len as usize;
    }
    let notice = notice.expect("a notice was sent");
    assert_eq!(hex_of(&notice), doc_vector(), "docs/OAP1.md's vector");
    // And the client reads it as a notice, not as an ack.
    let mut rx = BytesMut::from(&notice[..]);
    let mut cl = Client::new("w", Role::Client, vec![], None);
    cl.start();
    cl.handle_bytes(&mut BytesMut::from(
        &Frame::resp(0, 1, 200, Bytes::from_static(br#"{"version":1}"#))
            .to_bytes(u32::MAX)
            .unwrap()[..],
    ));
    cl.handle_bytes(&mut rx);
    let events: Vec<_> = std::iter::from_fn(|| cl.poll_event()).collect();
    assert!(
        events.contains(&ClientEvent::Notice {
            code: 429,
            error: "ratelimit".into(),
            refused: 1,
            retry_after: 1
        }),
        "{events:?}"
    );
}
