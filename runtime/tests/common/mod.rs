//! Helpers shared by the in-process tests.

#![allow(dead_code)]

use std::time::Duration;

use overlay_core::Config;
use svc_overlay::NodeOptions;
use tokio::time::{sleep, Instant};

/// Defaults on ephemeral loopback ports.
pub fn cfg() -> Config {
    let mut c = Config::default();
    c.overlay.listen = "127.0.0.1:0".into();
    c.admin.listen = "127.0.0.1:0".into();
    c
}

pub fn opts(seed: u64) -> NodeOptions {
    NodeOptions {
        seed,
        log_events: false,
        ..NodeOptions::default()
    }
}

/// Polls `f` until it holds, for at most 10 s.
pub async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// The value of one series in a Prometheus text scrape.
pub fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
