//! Capabilities in the core: a HELLO is admitted from what the verifier found, and every
//! write of a client session is authorised from the capability it holds, on the core's
//! clock. The verifier here reads a toy token format (the runtime's is biscuit); what is
//! under test is what the core decides with its answer.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use overlay_core::cap::{Action, CapVerifier, Grant, Verified};
use overlay_core::client::ClientEvent;
use overlay_core::oap::Role;
use overlay_core::observe::names::*;
use overlay_core::observe::AuthFailure;
use support::*;

/// `grant:<topic>:<p|s|ps>[:ttl_secs]`, `expired`, or anything else (unauth).
struct Toy;

impl CapVerifier for Toy {
    fn verify(&self, token: &[u8]) -> Result<Verified, AuthFailure> {
        let t = std::str::from_utf8(token).map_err(|_| AuthFailure::Unauth)?;
        if t == "expired" {
            return Err(AuthFailure::Expired);
        }
        let parts: Vec<&str> = t.split(':').collect();
        let ["grant", topic, acts, rest @ ..] = parts.as_slice() else {
            return Err(AuthFailure::Unauth);
        };
        let grants = acts
            .chars()
            .map(|c| Grant {
                topic: topic.to_string(),
                action: if c == 'p' {
                    Action::Publish
                } else {
                    Action::Subscribe
                },
            })
            .collect();
        Ok(Verified {
            class: format!("cap:{topic}:{acts}"),
            role: Role::Client,
            tenant: "default".into(),
            grants,
            valid_for: rest
                .first()
                .map(|s| Duration::from_secs(s.parse().unwrap())),
        })
    }
}

fn net() -> Net {
    let mut net = Net::new(7, 1, |_| {
        let mut c = test_config();
        c.auth.required = true;
        c.auth.verify_keys = vec!["ed25519/unused-by-the-toy".into()];
        c.auth.max_token_bytes = 64;
        c
    });
    net.nodes[0].set_auth(Some(Arc::new(Toy)), Bytes::new());
    net
}

fn refused(net: &Net, c: usize) -> Option<(u16, String)> {
    net.clients[c].events.iter().find_map(|e| match e {
        ClientEvent::Refused { code, error, .. } => Some((*code, error.clone())),
        _ => None,
    })
}

fn auth_failures(net: &Net, reason: &str) -> u64 {
    net.counter(0, AUTH_FAILURES_TOTAL, &[("reason", reason)])
}

/// A HELLO's token, its topics, and the reason it is refused for.
type Case<'a> = (Option<&'a [u8]>, &'a [&'a str], &'a str);

#[test]
fn a_hello_is_refused_with_its_auth_reason() {
    let mut net = net();
    let long = format!("grant:{}:s", "x".repeat(64));
    let cases: [Case; 5] = [
        (None, &[], "unauth"),
        (Some(b"nonsense"), &[], "unauth"),
        (Some(long.as_bytes()), &[], "unauth"),
        (Some(b"expired"), &[], "expired"),
        (Some(b"grant:feed:s"), &["news"], "invalid_caveat"),
    ];
    let clients: Vec<usize> = cases
        .iter()
        .map(|(cap, topics, _)| net.client_with_cap(0, Role::Client, topics, *cap))
        .collect();
    // Not `settle`: it stops at the close, before the answers in flight have arrived.
    net.advance(Duration::from_millis(10));
    for (c, (_, _, reason)) in clients.into_iter().zip(cases) {
        assert_eq!(
            refused(&net, c),
            Some((401, reason.to_string())),
            "{reason}"
        );
    }
    assert_eq!(auth_failures(&net, "unauth"), 3);
    assert_eq!(auth_failures(&net, "expired"), 1);
    assert_eq!(auth_failures(&net, "invalid_caveat"), 1);
    assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", "unauth")]), 5);
    net.assert_balance();
}

#[test]
fn a_write_needs_publish_on_its_topic_and_a_reader_gets_only_its_topics() {
    let mut net = net();
    let reader = net.client_with_cap(0, Role::Client, &[], Some(b"grant:feed:s"));
    let writer = net.client_with_cap(0, Role::Client, &[], Some(b"grant:feed:ps"));
    let other = net.client_with_cap(0, Role::Client, &[], Some(b"grant:news:p"));
    net.settle();
    for c in [reader, writer, other] {
        assert!(
            net.clients[c].client.is_established(),
            "{:?}",
            refused(&net, c)
        );
    }
    let data = Bytes::from_static(b"x");
    let send = |net: &mut Net, c: usize, k: u64, topic: &str| {
        net.clients[c]
            .client
            .publish(msg_id(k), topic, 3, &data, true)
            .unwrap();
        net.settle();
    };
    send(&mut net, writer, 1, "feed");
    send(&mut net, reader, 2, "feed");
    send(&mut net, other, 3, "news");
    assert_eq!(net.acks(writer), vec![202]);
    assert_eq!(
        net.acks(reader),
        vec![403],
        "a subscribe-only token cannot publish"
    );
    assert_eq!(net.acks(other), vec![202]);
    assert_eq!(
        net.counter(0, REJECTED_TOTAL, &[("reason", "forbidden")]),
        1
    );
    assert_eq!(auth_failures(&net, "invalid_caveat"), 1);
    // Naming no topic, a client gets what its token may read: feed, not news.
    let topics = |net: &Net, c| -> Vec<Vec<u8>> {
        net.messages(c)
            .iter()
            .map(|m| m.header.topic.to_vec())
            .collect()
    };
    assert_eq!(topics(&net, reader), vec![b"feed".to_vec()]);
    assert!(topics(&net, other).is_empty());
    net.assert_balance();
}

#[test]
fn a_session_ends_when_its_token_expires() {
    let mut net = net();
    let reader = net.client_with_cap(0, Role::Client, &[], Some(b"grant:feed:s:3"));
    let writer = net.client_with_cap(0, Role::Client, &[], Some(b"grant:feed:p"));
    net.settle();
    let data = Bytes::from_static(b"x");
    net.clients[writer]
        .client
        .publish(msg_id(1), "feed", 3, &data, true)
        .unwrap();
    net.settle();
    assert_eq!(net.messages(reader).len(), 1);
    // Within a tick (250 ms) of the expiry.
    net.advance(Duration::from_millis(3300));
    assert!(
        net.clients[reader].closed,
        "the reader's token expired: its session ended"
    );
    assert_eq!(auth_failures(&net, "expired"), 1);
    net.clients[writer]
        .client
        .publish(msg_id(2), "feed", 3, &data, true)
        .unwrap();
    net.settle();
    assert_eq!(
        net.messages(reader).len(),
        1,
        "nothing more after the expiry"
    );
    net.assert_balance();
}
