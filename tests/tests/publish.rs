//! `svc-overlay publish` against a daemon that refuses most of it (a low
//! `overlay.peer.max_rps`): the publisher hears every refusal, with and without acks, says so
//! in its summary and exits non-zero; a fully taken run exits 0 with the config's ttl.

use std::process::Output;
use std::time::Duration;

use e2e::{command, poll_until, Daemon};
use serde_json::Value;

const COUNT: u64 = 40;

fn publish(d: &Daemon, extra: &[&str]) -> (Output, Value) {
    let out = command()
        .args(["publish", "--to", &d.overlay.to_string(), "--topic", "t"])
        .args(extra)
        .output()
        .expect("run svc-overlay publish");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "summary is not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, summary)
}

fn limited() -> Daemon {
    Daemon::builder().cfg("overlay.peer.max_rps", "5").start()
}

#[test]
fn an_acked_publisher_counts_every_refusal_and_fails() {
    let d = limited();
    let (out, s) = publish(&d, &["--count", &COUNT.to_string()]);
    assert_eq!(out.status.code(), Some(1), "refusals fail the run: {s}");
    assert_eq!(s["sent"], COUNT);
    assert_eq!(s["acks"], true);
    let (acked, refused) = (s["acked"].as_u64().unwrap(), s["refused"].as_u64().unwrap());
    assert!(acked >= 5 && refused > 0, "{s}");
    assert_eq!(acked + refused, COUNT, "every message answered: {s}");
    assert_eq!(s["unconfirmed"], 0);
    assert_eq!(s["refused_by"]["ratelimit"], refused, "{s}");
    assert_eq!(
        d.metric("rejected_total", &[("reason", "ratelimit")]),
        refused as f64
    );
}

#[test]
fn a_publisher_without_acks_hears_refusals_in_notices() {
    let d = limited();
    let (out, s) = publish(&d, &["--count", &COUNT.to_string(), "--no-ack"]);
    assert_eq!(out.status.code(), Some(1), "refusals fail the run: {s}");
    assert_eq!(
        (s["sent"].as_u64(), s["acks"].as_bool()),
        (Some(COUNT), Some(false))
    );
    let node = d.metric("rejected_total", &[("reason", "ratelimit")]);
    assert!(node > 0.0);
    assert_eq!(s["refused_by"]["ratelimit"].as_f64(), Some(node), "{s}");
    assert_eq!(s["refused"].as_f64(), Some(node));
    assert!(d.metric("overlay_refusal_notices_total", &[("reason", "ratelimit")]) >= 1.0);
}

#[test]
fn a_fully_taken_run_exits_zero_with_the_configured_ttl() {
    let d = Daemon::start();
    let dir = std::env::temp_dir().join(format!("e2e-publish-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("client.toml");
    std::fs::write(&cfg, "[overlay.gossip]\ndefault_ttl = 3\n").unwrap();
    let sub = command()
        .args([
            "subscribe",
            "--to",
            &d.overlay.to_string(),
            "--topic",
            "t",
            "--count",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run svc-overlay subscribe");
    poll_until("the subscriber's session", Duration::from_secs(20), || {
        (d.metric("overlay_sessions_active", &[]) >= 1.0).then_some(())
    });
    let (out, s) = publish(&d, &["--config", cfg.to_str().unwrap(), "hello"]);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert_eq!(
        (s["acked"].as_u64(), s["refused"].as_u64()),
        (Some(1), Some(0))
    );
    let got = sub.wait_with_output().unwrap();
    let line: Value = serde_json::from_slice(&got.stdout).expect("one message line");
    assert_eq!(line["ttl"], 3, "ttl from overlay.gossip.default_ttl");
    assert_eq!(line["data"], "hello");
    let _ = std::fs::remove_dir_all(&dir);
}
