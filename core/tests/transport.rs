//! What TLS verified, as the core decides with it: the mTLS identity check at HELLO, the
//! key exchange counted per session, and TLS handshakes that failed before any session.

mod support;

use bytes::BytesMut;
use overlay_core::client::{Client, ClientEvent};
use overlay_core::config::PqModeConfig;
use overlay_core::oap::Role;
use overlay_core::observe::names::*;
use overlay_core::observe::TlsFailure;
use overlay_core::{Admission, CertName, ConnId, Link, Prepaid, TlsRefusal, TlsSession};
use support::*;

fn tls(group: &'static str, hybrid: bool, names: Option<Vec<CertName>>) -> Link {
    Link {
        opened: overlay_core::Time::ZERO,
        tls: Some(TlsSession {
            group,
            hybrid,
            peer_names: names,
        }),
        prepaid: None,
    }
}

/// HELLO as `node` on a connection accepted over `link`: the node's answer, and whether
/// it closed the connection.
fn hello_over(net: &mut Net, link: Link, node: &str) -> (Option<ClientEvent>, bool, ConnId) {
    let now = net.now;
    let conn = net.nodes[0].handle_accept_over(now, link);
    let mut c = Client::new(node, Role::Client, vec![], None);
    c.start();
    let hello = c.poll_transmit().unwrap();
    net.feed(0, conn, &hello);
    let (out, closed) = net.drain_raw(0, conn);
    let mut b = BytesMut::from(&out[..]);
    c.handle_bytes(&mut b);
    (c.poll_event(), closed, conn)
}

#[test]
fn over_mtls_the_hello_node_id_must_be_a_certificate_name() {
    let mut net = Net::new(1, 1, |_| test_config());
    let names = || {
        Some(vec![
            CertName::Dns("c1".into()),
            CertName::Uri("oap://c9".into()),
        ])
    };
    let (ev, closed, _) = hello_over(&mut net, tls("X25519", false, names()), "c2");
    assert!(
        matches!(ev, Some(ClientEvent::Refused { code: 401, .. })),
        "{ev:?}"
    );
    assert!(closed);
    assert_eq!(
        net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", "mtls")]),
        1
    );
    assert_eq!(net.counter(0, REJECTED_TOTAL, &[("reason", "unauth")]), 1);

    for claim in ["c1", "c9"] {
        let (ev, closed, _) = hello_over(&mut net, tls("X25519", false, names()), claim);
        assert!(
            matches!(ev, Some(ClientEvent::Established(_))),
            "{claim}: {ev:?}"
        );
        assert!(!closed);
    }
    // `URI:c1` is not `URI:oap://c1`, and a DNS name is not a URI.
    let odd = Some(vec![
        CertName::Uri("c1".into()),
        CertName::Dns("oap://c1".into()),
    ]);
    let (ev, _, _) = hello_over(&mut net, tls("X25519", false, odd), "c1");
    assert!(
        matches!(ev, Some(ClientEvent::Refused { code: 401, .. })),
        "{ev:?}"
    );
    // No client certificate asked for (no mTLS): any id.
    let (ev, _, _) = hello_over(&mut net, tls("X25519", false, None), "anyone");
    assert!(matches!(ev, Some(ClientEvent::Established(_))), "{ev:?}");
    // First: a snapshot of the test recorder takes the histogram's samples with it.
    let tls_latency = [("route", "handshake"), ("method", "tls")];
    assert_eq!(net.counter(0, REQUEST_LATENCY_SECONDS, &tls_latency), 3);
    assert_eq!(
        net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", "mtls")]),
        2
    );
    assert_eq!(
        net.counter(
            0,
            PQ_NEGOTIATIONS_TOTAL,
            &[("mode", "off"), ("outcome", "ok")]
        ),
        5
    );
    net.assert_balance();
}

#[test]
fn under_hybrid_a_session_without_the_hybrid_group_is_closed_and_counted_fail() {
    let mut net = Net::new(2, 1, |_| {
        let mut c = test_config();
        c.overlay.pq_mode = PqModeConfig::Hybrid;
        c.overlay.tls_listen = "127.0.0.1:0".into();
        c.tls.cert_file = "n.pem".into();
        c.tls.key_file = "n.key".into();
        c
    });
    let (ev, closed, conn) = hello_over(&mut net, tls("X25519", false, None), "c1");
    assert!(closed && ev.is_none(), "{ev:?}");
    assert!(!net.nodes[0].has_session(conn));
    assert_eq!(
        net.counter(
            0,
            PQ_NEGOTIATIONS_TOTAL,
            &[("mode", "hybrid"), ("outcome", "fail")]
        ),
        1
    );
    assert_eq!(
        net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", "pq_neg_fail")]),
        1
    );
    let (ev, _, _) = hello_over(&mut net, tls("X25519MLKEM768", true, None), "c2");
    assert!(matches!(ev, Some(ClientEvent::Established(_))), "{ev:?}");
    assert_eq!(
        net.counter(
            0,
            PQ_NEGOTIATIONS_TOTAL,
            &[("mode", "hybrid"), ("outcome", "ok")]
        ),
        1
    );
}

#[test]
fn failed_tls_handshakes_count_one_attempt_and_one_reason_each() {
    let mut net = Net::new(3, 1, |_| test_config());
    let now = net.now;
    let cases = [
        (TlsRefusal::Tls(TlsFailure::Version), "tls", Some("version")),
        (TlsRefusal::Tls(TlsFailure::Alpn), "tls", Some("alpn")),
        (TlsRefusal::ClientCert, "mtls", Some("cert")),
        (TlsRefusal::PqIncompatible, "pq_neg_fail", Some("cipher")),
        (TlsRefusal::Timeout, "timeout", None),
        (TlsRefusal::Malformed, "proto", None),
    ];
    for (r, _, _) in cases {
        net.nodes[0].handle_tls_failed(now, r);
    }
    assert_eq!(net.counter(0, HANDSHAKE_ATTEMPTS_TOTAL, &[]), 6);
    assert_eq!(net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[]), 6);
    assert_eq!(net.counter(0, TLS_HANDSHAKE_FAILURES_TOTAL, &[]), 4);
    for (_, hs, tls) in cases {
        assert!(
            net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", hs)]) >= 1,
            "{hs}"
        );
        if let Some(t) = tls {
            assert_eq!(
                net.counter(0, TLS_HANDSHAKE_FAILURES_TOTAL, &[("reason", t)]),
                1,
                "{t}"
            );
        }
    }
    assert_eq!(
        net.counter(
            0,
            PQ_NEGOTIATIONS_TOTAL,
            &[("mode", "off"), ("outcome", "incompatible")]
        ),
        1
    );
    assert_eq!(net.nodes[0].session_count(), 0);
}

#[test]
fn incoming_tls_connections_are_charged_once_before_any_crypto() {
    let mut net = Net::new(4, 1, |_| {
        let mut c = test_config();
        c.overlay.handshake_rate = 1;
        c.overlay.handshake_burst = 2;
        c
    });
    let now = net.now;
    let decisions: Vec<Admission> = (0..5).map(|_| net.nodes[0].handle_incoming(now)).collect();
    let admitted: Vec<Prepaid> = decisions
        .iter()
        .filter_map(|d| match d {
            Admission::Admit(p) => Some(p.clone()),
            Admission::Refuse => None,
        })
        .collect();
    assert_eq!(admitted.len(), 2, "{decisions:?}");
    assert_eq!(
        net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", "ratelimit")]),
        3
    );
    assert_eq!(
        net.counter(0, REJECTED_TOTAL, &[("reason", "ratelimit")]),
        3
    );
    assert_eq!(net.counter(0, HANDSHAKE_ATTEMPTS_TOTAL, &[]), 3);
    // Refused before any session: nothing to hold, nothing in the frame balance.
    assert_eq!(net.nodes[0].session_count(), 0);

    // The bucket is empty now, yet the two admitted ones are not charged again at HELLO.
    for (i, p) in admitted.into_iter().enumerate() {
        let link = Link {
            prepaid: Some(p),
            ..tls("X25519", false, None)
        };
        let (ev, closed, _) = hello_over(&mut net, link, &format!("c{i}"));
        assert!(matches!(ev, Some(ClientEvent::Established(_))), "{ev:?}");
        assert!(!closed);
    }
    // One that did not ask (the plain listener) still pays at HELLO, and hears the 429.
    let (ev, closed, _) = hello_over(&mut net, tls("X25519", false, None), "c9");
    assert!(
        matches!(ev, Some(ClientEvent::Refused { code: 429, .. })),
        "{ev:?}"
    );
    assert!(closed);
    assert_eq!(
        net.counter(0, HANDSHAKE_FAILURES_TOTAL, &[("reason", "ratelimit")]),
        4
    );
    net.assert_balance();
}
