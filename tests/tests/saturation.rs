//! Induced egress saturation against the built binary: a subscriber that stops reading
//! while a publisher floods. Writes fail first (ACK_REQ answered 503 busy, counted in
//! `rejected_total{reason="busy"}`), `/readyz` turns 503 with `queues_ok` missing once the
//! queue has stayed over its watermark for `readiness.sustain`, and everything recovers —
//! with every accepted message delivered — once the subscriber reads again.

use std::time::{Duration, Instant};

use e2e::wire::OapClient;
use e2e::{http, Daemon};
use overlay_core::client::ClientEvent;

const WAIT: Duration = Duration::from_secs(20);
/// Large messages fill the kernel's socket buffers in a few hundred publishes.
const MSG: usize = 60 << 10;

#[test]
fn readyz_turns_503_under_egress_saturation_and_recovers_when_drained() {
    let d = Daemon::builder()
        .cfg("readiness.sustain", "300ms")
        // Only the queue condition: a shed rate over a trailing 10 s window would keep
        // readiness red for a while after the flood, which is not what this test is about.
        .cfg("readiness.shed_rate_max", "1.0")
        .cfg("overlay.peer.egress_queue_frames", "32")
        .cfg("overlay.peer.max_rps", "100000")
        // The stalled subscriber must neither be aborted for lack of write progress nor
        // idled out for not answering PINGs while the test looks at it.
        .cfg("timeouts.write", "60s")
        .cfg("timeouts.idle", "60s")
        .start();
    d.wait_readyz(200, WAIT);

    let sub = OapClient::connect(d.overlay, "stalled-sub", &["flood"], None).unwrap();
    let mut publ = OapClient::connect(d.overlay, "flooder", &[], None).unwrap();
    let busy_before = d.metric("rejected_total", &[("reason", "busy")]);

    // Flood in batches, reading every ack, until /readyz reports the saturation.
    let data = vec![0x5a; MSG];
    let (mut accepted, mut busy) = (0u64, 0u64);
    let deadline = Instant::now() + WAIT;
    let readyz = loop {
        assert!(
            Instant::now() < deadline,
            "no saturation within {WAIT:?} ({accepted} accepted, {busy} busy)"
        );
        // Once writes fail, one message a round keeps them failing while the sustain
        // window runs; there is no need to push more bytes through the node.
        let batch = if busy > 0 { 1 } else { 8 };
        for _ in 0..batch {
            publ.publish("flood", &data, true);
        }
        for _ in 0..batch {
            match publ.next_event(WAIT) {
                Some(ClientEvent::Ack { code: 202, .. }) => accepted += 1,
                Some(ClientEvent::Ack {
                    code: 503, error, ..
                }) => {
                    assert_eq!(error.as_deref(), Some("busy"));
                    busy += 1;
                }
                other => panic!("unexpected answer to a publish: {other:?}"),
            }
        }
        let r = http::get(d.admin, "/readyz", &[]).unwrap();
        if r.status == 503 {
            break r;
        }
    };
    let body = readyz.json();
    assert_eq!(body["ready"], false, "{body}");
    let missing: Vec<&str> = body["missing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(missing.contains(&"queues_ok"), "{body}");
    assert_eq!(readyz.header("retry-after"), Some("5"));
    assert!(
        busy > 0,
        "no publish was answered 503 busy before /readyz turned"
    );
    // Every 503 the publisher heard is one count of rejected_total{reason="busy"}.
    let busy_after = d.metric("rejected_total", &[("reason", "busy")]);
    assert_eq!(
        busy_after - busy_before,
        busy as f64,
        "busy rejections counted"
    );
    assert_eq!(d.metric("readyz_state", &[]), 2.0, "degraded");

    // The subscriber reads again: every accepted message arrives, then readiness returns.
    let reader = std::thread::spawn(move || {
        let mut sub = sub;
        let mut got = 0u64;
        let deadline = Instant::now() + WAIT;
        while got < accepted && Instant::now() < deadline {
            match sub.next_event(WAIT) {
                Some(ClientEvent::Message(m)) => {
                    assert_eq!(m.data.len(), MSG);
                    got += 1;
                }
                Some(_) => {}
                None => break,
            }
        }
        got
    });
    let body = d.wait_readyz(200, WAIT);
    assert_eq!(body, serde_json::json!({"ready": true}));
    let delivered = reader.join().unwrap();
    assert_eq!(
        delivered, accepted,
        "every message acked 202 was delivered once the subscriber read again"
    );
    // No accepted message was dropped on the way.
    let m = d.scrape();
    assert_eq!(m.sum("overlay_rx_dropped_total", &[]), 0.0);
    assert_eq!(
        m.value(
            "overlay_queue_dropped_total",
            &[("queue", "egress"), ("reason", "full")]
        ),
        Some(0.0)
    );
}
