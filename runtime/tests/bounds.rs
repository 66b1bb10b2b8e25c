//! Runtime bounds that come from config keys, enforced on a real node over loopback TCP:
//! `log.bus_capacity` (a lagging bus subscriber loses the oldest events and the loss is
//! counted in `bus_lagged_total`) and `admin.max_conns` (a connection past the cap evicts
//! the one that has gone longest without finishing a response; the other admin bounds are
//! in `admin_abuse.rs`). `overlay.peer.read_credit_chunks` and
//! `overlay.dial_backoff_*` are enforced by `conn::reader` and the core's `dialer`, tested in
//! their modules with values taken from the config; the backoff is also observed here, on
//! the gaps between a live node's failed dials.

mod common;

use std::time::Duration;

use common::{cfg, series, until};
use svc_overlay::bus::BusKind;
use svc_overlay::{Node, NodeOptions, TokioNet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

fn opts() -> NodeOptions {
    NodeOptions {
        fd_sampler: false,
        ..common::opts(7)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_capacity_bounds_a_lagging_subscriber_and_counts_the_loss() {
    let mut c = cfg();
    c.log.bus_capacity = 16;
    let node = Node::start(TokioNet, c, opts()).await.unwrap();
    let mut sub = node.subscribe();
    // 40 connections that open and close: at least an accept and a close event each,
    // far more than 16, while the subscriber reads nothing.
    const CONNS: usize = 40;
    for _ in 0..CONNS {
        let s = TcpStream::connect(node.overlay_addr()).await.unwrap();
        drop(s);
    }
    until("every connection to be accepted and closed", || async {
        let attempts = series(
            &node.prometheus().render(),
            "overlay_handshake_attempts_total",
        )
        .unwrap();
        let s = node.stats().await.unwrap();
        attempts >= CONNS as f64 && s.connections == 0 && s.sessions == 0
    })
    .await;
    // Every event was published by the time the driver reported no connections. The first
    // receive reports the lag (the oldest events are gone), then yields what the bus still
    // holds: no more than its capacity.
    let mut got = 0usize;
    while sub.try_recv().is_some() {
        got += 1;
    }
    assert!(
        got <= 16,
        "the bus held {got} events, more than its capacity"
    );
    let lagged = series(&node.prometheus().render(), "bus_lagged_total").unwrap();
    assert!(
        lagged >= (2 * CONNS - 16) as f64,
        "bus_lagged_total = {lagged}, expected at least {}",
        2 * CONNS - 16
    );
    node.shutdown().await.unwrap();
}

async fn get_healthz(s: &mut TcpStream) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_max_conns_caps_connections_and_evicts_the_most_stalled() {
    let mut c = cfg();
    c.admin.max_conns = 2;
    // The idle holders must keep their slots until evicted: no header timeout meanwhile.
    c.admin.header_timeout = Duration::from_secs(30);
    let node = Node::start(TokioNet, c, opts()).await.unwrap();
    let admin = node.admin_addr().unwrap();
    let active = || series(&node.prometheus().render(), "admin_connections_active");
    // Two connections that never send a request fill the plane...
    let mut oldest = TcpStream::connect(admin).await.unwrap();
    until("the first holder to be served", || async {
        active() == Some(1.0)
    })
    .await;
    let mut newer = TcpStream::connect(admin).await.unwrap();
    until("the plane to be full", || async { active() == Some(2.0) }).await;
    // ...and a probe is not queued behind them: the connection that has waited longest
    // without a request is closed to make room.
    let mut probe = TcpStream::connect(admin).await.unwrap();
    let answer = timeout(Duration::from_secs(1), get_healthz(&mut probe))
        .await
        .expect("a probe past admin.max_conns is answered at once");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut buf = [0u8; 16];
    let n = timeout(Duration::from_secs(5), oldest.read(&mut buf))
        .await
        .expect("the oldest holder is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let refused = series(
        &node.prometheus().render(),
        r#"admin_refusals_total{reason="max_conns"}"#,
    );
    assert_eq!(refused, Some(1.0));
    assert!(active().unwrap() <= 2.0);
    // The newer holder kept its slot and is still served.
    let answer = get_healthz(&mut newer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    node.shutdown().await.unwrap();
}

/// A configured peer that refuses: every failed dial is counted and redialed with backoff
/// that doubles from `overlay.dial_backoff_base` and stops at `overlay.dial_backoff_max`,
/// observed as the gaps between the node's `DialFailed` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dials_are_counted_and_retried_with_backoff() {
    const BASE: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(80);
    const FAILS: usize = 8;
    // A port that was just bound and released: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = cfg();
    c.overlay.peers = vec![closed.to_string()];
    c.overlay.dial_backoff_base = BASE;
    c.overlay.dial_backoff_max = MAX;
    let node = Node::start(TokioNet, c, opts()).await.unwrap();
    let mut sub = node.subscribe();
    let mut at = Vec::new();
    while at.len() < FAILS {
        let ev = timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("a failed dial within 10 s")
            .expect("the node is running");
        if matches!(ev.kind, BusKind::DialFailed { .. }) {
            at.push(Instant::now());
        }
    }
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (k, gap) in gaps.iter().enumerate() {
        let delay = BASE.saturating_mul(1 << k).min(MAX);
        // A sleep never ends early, so a gap is at least the delay less its jitter; the
        // 0.4 instead of 0.5 leaves room for the event being seen late before the gap.
        assert!(
            *gap >= delay.mul_f64(0.4),
            "gap {k} of {gaps:?} is shorter than the backoff of {delay:?} allows"
        );
        // The ceiling: without it the last gaps would be 640 ms and more. Generous above,
        // since a loaded machine may run the dialer late.
        assert!(
            *gap < MAX.mul_f64(1.5) + Duration::from_millis(200),
            "gap {k} of {gaps:?} is past dial_backoff_max"
        );
    }
    let failures = series(&node.prometheus().render(), "overlay_dial_failures_total").unwrap();
    assert!(failures >= FAILS as f64, "{failures} dial failures counted");
    node.shutdown().await.unwrap();
}
