//! SIGTERM drain against the built binary: with messages queued in the node, SIGTERM turns
//! `/readyz` 503 (`draining`), the process logs `shutdown_begin` and `shutdown_end`, exits 0
//! within the drain deadline, and every message acked 202 was either delivered to the
//! subscriber or is counted dropped in `shutdown_end`.

use std::time::{Duration, Instant};

use e2e::wire::OapClient;
use e2e::{http, poll_until, Daemon};
use overlay_core::client::ClientEvent;

const WAIT: Duration = Duration::from_secs(20);
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);
const MSG: usize = 32 << 10;

#[test]
fn sigterm_drains_in_flight_messages_and_exits_zero() {
    let mut d = Daemon::builder()
        .cfg("shutdown.drain_deadline", "15s")
        .cfg("overlay.peer.max_rps", "100000")
        .cfg("timeouts.write", "60s")
        .cfg("timeouts.idle", "60s")
        .start();
    d.wait_readyz(200, WAIT);

    // A subscriber that does not read yet, so published messages pile up in the node.
    let sub = OapClient::connect(d.overlay, "drain-sub", &["jobs"], None).unwrap();
    let mut publ = OapClient::connect(d.overlay, "drain-pub", &[], None).unwrap();
    let data = vec![7u8; MSG];
    let mut acked = 0u64;
    let mut busy = 0u64;
    // Publish until the node holds messages in its egress queue (the kernel's socket
    // buffers take the first few MiB), as its own gauge reports.
    poll_until("messages queued in the node", WAIT, || {
        for _ in 0..16 {
            publ.publish("jobs", &data, true);
        }
        for _ in 0..16 {
            match publ.next_event(WAIT) {
                Some(ClientEvent::Ack { code: 202, .. }) => acked += 1,
                Some(ClientEvent::Ack { code: 503, .. }) => busy += 1,
                other => panic!("answer to a publish: {other:?}"),
            }
        }
        let depth = d.metric("overlay_queue_depth", &[("queue", "egress")]);
        (depth >= 8.0).then_some(())
    });
    assert!(acked > 0);

    let term_at = Instant::now();
    d.signal(libc::SIGTERM);

    // Readiness goes down first, while the node is still serving the drain.
    let body = poll_until("/readyz 503 while draining", WAIT, || {
        let r = http::get(d.admin, "/readyz", &[]).ok()?;
        (r.status == 503).then(|| r.json())
    });
    let missing = body["missing"].as_array().unwrap();
    assert!(missing.iter().any(|m| m == "draining"), "{body}");
    assert!(d
        .wait_log(WAIT, |l| l["event"] == "shutdown_begin")
        .is_some());

    // The subscriber reads again and takes everything the drain still sends it.
    let reader = std::thread::spawn(move || {
        let mut sub = sub;
        let (mut got, mut goaway) = (0u64, false);
        loop {
            match sub.next_event(WAIT) {
                Some(ClientEvent::Message(m)) => {
                    assert_eq!(m.data.len(), MSG);
                    got += 1;
                }
                Some(ClientEvent::Goaway) => goaway = true,
                Some(_) => {}
                // The node closed the session once its queue was empty.
                None => return (got, goaway),
            }
        }
    });

    let status = d
        .wait_exit(DRAIN_DEADLINE + Duration::from_secs(5))
        .expect("the process exits within the drain deadline");
    let took = term_at.elapsed();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        d.all_output()
    );
    assert!(
        took <= DRAIN_DEADLINE + Duration::from_secs(2),
        "exit took {took:?}"
    );
    let (received, goaway) = reader.join().unwrap();
    assert!(goaway, "the subscriber heard GOAWAY");

    let end = d
        .wait_log(Duration::ZERO, |l| l["event"] == "shutdown_end")
        .unwrap_or_else(|| panic!("no shutdown_end line:\n{}", d.all_output()));
    let n = |k: &str| {
        end[k]
            .as_u64()
            .unwrap_or_else(|| panic!("shutdown_end lacks {k}: {end}"))
    };
    let dropped = n("rx_dropped") + n("egress_dropped");
    assert!(
        received + dropped >= acked,
        "acked {acked}, delivered {received}, counted dropped {dropped}: {end}"
    );
    assert_eq!(n("busy"), busy, "{end}");
    // Here the subscriber read everything, so the drain finished before its deadline and
    // nothing was dropped.
    assert_eq!(end["drained"], true, "{end}");
    assert_eq!(received, acked, "{end}");
    assert_eq!(dropped, 0, "{end}");
}
