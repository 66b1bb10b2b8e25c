//! With the `otel` feature, the `svc.overlay.*` spans reach an OpenTelemetry exporter.
#![cfg(feature = "otel")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use opentelemetry_sdk::export::trace::{ExportResult, SpanData, SpanExporter};
use overlay_core::Config;
use svc_overlay::peer::{self, PublishArgs};
use svc_overlay::{Node, NodeOptions, TokioNet};
use tracing_subscriber::layer::SubscriberExt;

/// An in-memory span exporter (the SDK's own sits behind its `testing` feature, which
/// drags in async-std).
#[derive(Clone, Debug, Default)]
struct Captured(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Captured {
    fn export(&mut self, batch: Vec<SpanData>) -> BoxFuture<'static, ExportResult> {
        self.0.lock().unwrap().extend(batch);
        Box::pin(std::future::ready(Ok(())))
    }
}

fn cfg() -> Config {
    let mut c = Config::default();
    c.overlay.listen = "127.0.0.1:0".into();
    c.admin.listen = "127.0.0.1:0".into();
    c
}

// Current-thread runtime: the thread-local subscriber then covers every task.
#[tokio::test]
async fn overlay_spans_are_exported() {
    let captured = Captured::default();
    let provider = svc_overlay::otel::provider_with(captured.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::TRACE)
        .with(svc_overlay::otel::layer(&provider));
    let _guard = tracing::subscriber::set_default(subscriber);

    let opts = |seed| NodeOptions {
        seed,
        log_events: false,
        ..NodeOptions::default()
    };
    let a = Node::start(TokioNet, cfg(), opts(1)).await.unwrap();
    let mut cb = cfg();
    cb.overlay.peers = vec![a.overlay_addr().to_string()];
    let b = Node::start(TokioNet, cb, opts(2)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.stats().await.unwrap().peers == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no peering");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = peer::publish(&PublishArgs {
        count: 2,
        size: 32,
        data: None,
        ..PublishArgs::new(a.overlay_addr().to_string(), "t")
    })
    .await
    .unwrap();
    assert_eq!(s.acked, 2);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    for r in provider.force_flush() {
        r.unwrap();
    }

    let spans = captured.0.lock().unwrap();
    let names: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    for want in [
        "svc.overlay.accept",
        "svc.overlay.handshake",
        "svc.overlay.session",
        "svc.overlay.gossip.ingress",
        "svc.overlay.gossip.egress",
    ] {
        assert!(names.contains(want), "{want} not exported; got {names:?}");
    }
    let session = spans
        .iter()
        .find(|s| s.name == "svc.overlay.session")
        .unwrap();
    let keys: Vec<&str> = session
        .attributes
        .iter()
        .map(|kv| kv.key.as_str())
        .collect();
    assert!(keys.contains(&"corr_id"), "{keys:?}");
    assert!(keys.contains(&"pq_mode"), "{keys:?}");
}
