//! Nodes started in-process on 127.0.0.1:0, driven through real TCP.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{cfg, opts, series, until};
use svc_overlay::net::{Listener, Net};
use svc_overlay::peer::{self, PublishArgs};
use svc_overlay::{Node, TokioNet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::timeout;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_through_one_node_arrives_on_the_other() {
    let a = Node::start(TokioNet, cfg(), opts(1)).await.unwrap();
    let mut cb = cfg();
    cb.overlay.peers = vec![a.overlay_addr().to_string()];
    let b = Node::start(TokioNet, cb, opts(2)).await.unwrap();
    assert_ne!(a.node_id(), b.node_id());

    until("the two nodes to peer", || async {
        a.stats().await.unwrap().peers == 1 && b.stats().await.unwrap().peers == 1
    })
    .await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let to = b.overlay_addr().to_string();
    let sub = tokio::spawn(async move {
        peer::subscribe(
            &to,
            vec!["feed".into()],
            Some(3),
            Duration::from_secs(10),
            None,
            move |m| {
                let _ = tx.send(peer::MessageLine::new(m));
            },
        )
        .await
    });
    until("the subscriber's session", || async {
        b.stats().await.unwrap().established == 2
    })
    .await;

    let summary = peer::publish(&PublishArgs {
        count: 3,
        size: 0,
        data: Some("hello".into()),
        ..PublishArgs::new(a.overlay_addr().to_string(), "feed")
    })
    .await
    .unwrap();
    assert_eq!(
        (summary.sent, summary.acked, summary.unconfirmed),
        (3, 3, 0)
    );
    assert!(summary.p50_ms.is_some());

    for _ in 0..3 {
        let m = timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("message relayed to the other node")
            .unwrap();
        assert_eq!(m.topic, "feed");
        assert_eq!(m.data, "hello");
        // Published with ttl 6 over a tree link, which does not spend the ttl.
        assert_eq!(m.ttl, 6);
    }
    assert_eq!(sub.await.unwrap().unwrap(), 3);

    let text = a.prometheus().render();
    assert_eq!(series(&text, "overlay_sessions_open_total"), Some(2.0));
    assert!(series(&text, r#"overlay_frames_total{dir="rx",kind="gossip"}"#).unwrap() >= 3.0);
    let text = b.prometheus().render();
    assert!(series(&text, r#"overlay_rx_outcomes_total{outcome="delivered"}"#).unwrap() >= 3.0);

    let ra = a.shutdown().await.unwrap();
    let rb = b.shutdown().await.unwrap();
    assert!(ra.drained && rb.drained, "{ra:?} {rb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_plane_over_tcp_and_drain_flips_readyz() {
    let mut c = cfg();
    c.shutdown.drain_deadline = Duration::from_millis(500);
    let a = Node::start(TokioNet, c, opts(3)).await.unwrap();
    let admin = a.admin_addr().unwrap();
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, r#"{"ready":true}"#));
    let (code, _) = http_get(admin, "/healthz").await;
    assert_eq!(code, 200);
    let (code, body) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE readyz_state gauge"));
    assert_eq!(series(&body, "readyz_state"), Some(1.0));

    // A client session keeps the node from draining at once, so /readyz can be seen.
    let mut s = tokio::net::TcpStream::connect(a.overlay_addr())
        .await
        .unwrap();
    let mut client =
        overlay_core::client::Client::new("t", overlay_core::oap::Role::Client, vec![], None);
    client.start();
    s.write_all(&client.poll_transmit().unwrap()).await.unwrap();

    a.begin_shutdown().await;
    // Nothing is queued, so the drain ends at once; the last snapshot shows the flip.
    until("readyz to flip", || async { a.ready().status == 503 }).await;
    assert!(a.ready().body.contains("draining"), "{}", a.ready().body);
    let r = a.wait().await.unwrap();
    assert!(r.drained);
    assert_eq!(r.left_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_reports_restart_keys_and_applies_live_ones() {
    let a = Node::start(TokioNet, cfg(), opts(4)).await.unwrap();
    let mut c = cfg();
    c.overlay.listen = "127.0.0.1:1".into();
    c.overlay.max_conns = 1;
    let restart = a.reconfigure(c.clone()).await.unwrap();
    assert_eq!(restart, vec!["overlay.listen"]);
    // The live key is applied: with `overlay.max_conns = 1`, a second connection while the
    // first is still in its handshake is refused `busy` (the default of 1024 would take it).
    let busy = || series(&a.prometheus().render(), r#"rejected_total{reason="busy"}"#);
    assert_eq!(busy(), Some(0.0));
    // The restart-only key is not: the node still listens where it started.
    let _first = tokio::net::TcpStream::connect(a.overlay_addr())
        .await
        .unwrap();
    until("the first connection to be accepted", || async {
        a.stats().await.unwrap().sessions == 1
    })
    .await;
    let _second = tokio::net::TcpStream::connect(a.overlay_addr())
        .await
        .unwrap();
    until("the second connection to be refused busy", || async {
        busy() == Some(1.0)
    })
    .await;
    // An unchanged config (empty node id, as at start) needs nothing.
    c.overlay.listen = "127.0.0.1:0".into();
    assert!(a.reconfigure(c).await.unwrap().is_empty());
    let mut bad = cfg();
    bad.overlay.max_conns = 0;
    assert!(a.reconfigure(bad).await.is_err());
    a.shutdown().await.unwrap();
}

// ----- a network whose streams panic on a magic byte sequence -----------------------

#[derive(Clone)]
struct PanicNet;

struct PanicStream(tokio::net::TcpStream);

impl AsyncRead for PanicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if buf.filled()[before..].windows(6).any(|w| w == b"PANIC!") {
            panic!("injected reader panic");
        }
        r
    }
}

impl AsyncWrite for PanicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

struct PanicListener(<TokioNet as Net>::Listener);

impl Listener for PanicListener {
    type Stream = PanicStream;
    async fn accept(&mut self) -> std::io::Result<(PanicStream, std::net::SocketAddr)> {
        let (s, a) = self.0.accept().await?;
        Ok((PanicStream(s), a))
    }
    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}

impl Net for PanicNet {
    type Stream = PanicStream;
    type Listener = PanicListener;
    async fn bind(&self, addr: &str) -> std::io::Result<PanicListener> {
        TokioNet.bind(addr).await.map(PanicListener)
    }
    async fn connect(&self, addr: &str) -> std::io::Result<PanicStream> {
        TokioNet.connect(addr).await.map(PanicStream)
    }
    async fn resolve(&self, host_port: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
        TokioNet.resolve(host_port).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_connection_task_is_contained_and_counted() {
    let a = Node::start(PanicNet, cfg(), opts(5)).await.unwrap();
    let mut bad = tokio::net::TcpStream::connect(a.overlay_addr())
        .await
        .unwrap();
    bad.write_all(b"PANIC!").await.unwrap();
    until("the panic to be counted", || async {
        series(&a.prometheus().render(), "service_restarts_total") == Some(1.0)
    })
    .await;
    // The connection is gone...
    let mut buf = [0u8; 64];
    let n = timeout(Duration::from_secs(5), bad.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    // ...and the node keeps serving.
    let summary = peer::publish(&PublishArgs {
        count: 2,
        size: 16,
        data: None,
        ..PublishArgs::new(a.overlay_addr().to_string(), "t")
    })
    .await
    .unwrap();
    assert_eq!(summary.acked, 2);
    assert_eq!(a.ready().status, 200);
    a.shutdown().await.unwrap();
}
