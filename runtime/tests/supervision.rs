//! Supervision of the node's singleton tasks: a panic in the acceptor or the admin plane
//! is counted in `service_restarts_total` only because the task restarts with the same
//! listener, and the probe it upholds (`listeners_bound`, `metrics_bound`) reads false
//! until it runs again.

mod common;

use std::time::Duration;

use common::{cfg, series, until};
use overlay_core::Event;
use svc_overlay::bus::{BusKind, Subscription};
use svc_overlay::net::{Listener, Net};
use svc_overlay::peer::{self, PublishArgs};
use svc_overlay::{Node, NodeOptions, TokioNet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// TCP whose listeners panic in their first `accept` (after the kernel accepted, so the
/// connection is lost with the panic), then work.
#[derive(Clone)]
struct PanicOnceNet;

struct PanicOnceListener {
    inner: <TokioNet as Net>::Listener,
    armed: bool,
}

impl Listener for PanicOnceListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Stream, std::net::SocketAddr)> {
        let r = self.inner.accept().await?;
        if std::mem::take(&mut self.armed) {
            panic!("injected accept panic");
        }
        Ok(r)
    }
    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

impl Net for PanicOnceNet {
    type Stream = tokio::net::TcpStream;
    type Listener = PanicOnceListener;
    async fn bind(&self, addr: &str) -> std::io::Result<PanicOnceListener> {
        let inner = TokioNet.bind(addr).await?;
        Ok(PanicOnceListener { inner, armed: true })
    }
    async fn connect(&self, addr: &str) -> std::io::Result<tokio::net::TcpStream> {
        TokioNet.connect(addr).await
    }
    async fn resolve(&self, host_port: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
        TokioNet.resolve(host_port).await
    }
}

/// Waits for a readiness change whose `missing` satisfies `pred`.
async fn readiness(sub: &mut Subscription, pred: impl Fn(&[&str]) -> bool) {
    timeout(Duration::from_secs(10), async {
        loop {
            let ev = sub.recv().await.expect("bus open");
            if let BusKind::Overlay(Event::ReadinessChanged { missing, .. }) = &ev.kind {
                if pred(missing) {
                    return;
                }
            }
        }
    })
    .await
    .expect("readiness change");
}

fn restarts(node: &Node) -> f64 {
    series(&node.prometheus().render(), "service_restarts_total").unwrap_or(0.0)
}

async fn healthz(node: &Node) -> String {
    let mut s = tokio::net::TcpStream::connect(node.admin_addr().unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_acceptor_and_admin_plane_restart_and_readiness_follows() {
    let opts = NodeOptions {
        fd_sampler: false,
        ..common::opts(21)
    };
    let node = Node::start(PanicOnceNet, cfg(), opts).await.unwrap();
    let mut sub = node.subscribe();
    until("ready", || async { node.ready().status == 200 }).await;

    // The acceptor panics on the first connection...
    drop(
        tokio::net::TcpStream::connect(node.overlay_addr())
            .await
            .unwrap(),
    );
    readiness(&mut sub, |m| m.contains(&"listeners_bound")).await;
    // ...is restarted with its listener, and readiness comes back.
    readiness(&mut sub, |m| m.is_empty()).await;
    assert_eq!(restarts(&node), 1.0);
    let summary = peer::publish(&PublishArgs {
        count: 1,
        size: 16,
        ..PublishArgs::new(node.overlay_addr().to_string(), "t")
    })
    .await
    .unwrap();
    assert_eq!(summary.acked, 1, "the restarted acceptor serves");

    // The admin plane panics on its first connection, and /metrics is down meanwhile.
    assert_eq!(
        healthz(&node).await,
        "",
        "the panicking accept drops the connection"
    );
    readiness(&mut sub, |m| m.contains(&"metrics_bound")).await;
    readiness(&mut sub, |m| m.is_empty()).await;
    assert_eq!(restarts(&node), 2.0);
    let answer = healthz(&node).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(node.ready().status, 200);
    node.shutdown().await.unwrap();
}
