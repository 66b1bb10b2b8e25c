//! The spec's malformed frames, each on its own connection, against the built binary: the
//! node answers with a RESP carrying the spec's status and `{"error":"<reason>"}`, closes,
//! counts the reason in `rejected_total{reason}`, and established clients carry on.

use std::io::Write;
use std::time::Duration;

use e2e::wire::{
    self, closes_within, hello_json, read_frame, unhex, OapClient, RawFrame, COMP, END, EVENT, REQ,
    RESP, START,
};
use e2e::Daemon;
use overlay_core::client::ClientEvent;

const WAIT: Duration = Duration::from_secs(10);

/// One bad input on a fresh connection: the answer's status, app_proto, corr_id and error,
/// then the close.
fn expect_reject(d: &Daemon, what: &str, bytes: &[u8], code: u16, reason: &str, corr: u64) {
    let mut s = wire::connect(d.overlay);
    s.write_all(bytes).unwrap();
    let f = read_frame(&mut s, WAIT)
        .unwrap_or_else(|e| panic!("{what}: no answer: {e}"))
        .unwrap_or_else(|| panic!("{what}: closed without an answer"));
    assert!(
        f.flags.bits() & RESP != 0,
        "{what}: answer is not a RESP: {f:?}"
    );
    assert_eq!(f.code, code, "{what}: status");
    assert_eq!(f.corr_id, corr, "{what}: corr_id");
    assert_eq!(wire::json(&f)["error"], reason, "{what}: error");
    assert!(closes_within(&mut s, WAIT), "{what}: not closed after");
}

#[test]
fn malformed_frames_are_answered_counted_and_closed_while_clients_carry_on() {
    let d = Daemon::builder()
        // The publisher below must not be rate limited.
        .cfg("overlay.peer.max_rps", "10000")
        .start();
    d.wait_readyz(200, WAIT);

    // Established before the abuse, and still working after it.
    let mut sub = OapClient::connect(d.overlay, "e2e-sub", &["feed"], None).unwrap();
    let mut publ = OapClient::connect(d.overlay, "e2e-pub", &[], None).unwrap();

    let before = d.scrape();
    let count = |m: &e2e::prom::Exposition, r: &str| {
        m.value("rejected_total", &[("reason", r)]).unwrap_or(0.0)
    };

    // Spec section 5: the three prefixes, decided from four bytes; answered with
    // app_proto 0 and corr_id 0.
    expect_reject(&d, "prefix 00000025", &unhex("00000025"), 400, "proto", 0);
    expect_reject(
        &d,
        "prefix 00100001",
        &unhex("00100001"),
        413,
        "oversize",
        0,
    );
    expect_reject(&d, "prefix 00000000", &unhex("00000000"), 400, "proto", 0);

    let hello = hello_json("e2e-bad", "client", &[]);
    let mut bad_version = RawFrame::new(0, REQ | START, 11, &hello);
    bad_version.ver = 2;
    expect_reject(&d, "version 2", &bad_version.bytes(), 400, "proto", 11);

    let unknown_flags = RawFrame::new(0, REQ | START | 0x0100, 12, &hello);
    expect_reject(
        &d,
        "flag bit 0x0100",
        &unknown_flags.bytes(),
        400,
        "proto",
        12,
    );

    let mut cap_no_start = RawFrame::new(0, REQ, 13, &hello);
    cap_no_start.cap = b"cap:feed:write".to_vec();
    expect_reject(
        &d,
        "cap without START",
        &cap_no_start.bytes(),
        400,
        "proto",
        13,
    );

    // The spec's PING vector as the first frame: not a HELLO.
    let ping = unhex("0000002f0001000400000002000000000000000000000000000000000000000000000000000901000000000000002a");
    expect_reject(&d, "PING before HELLO", &ping, 400, "proto", 9);

    // A zstd bomb: 64 MiB of zeros in a few KiB, on an established session, as a COMP
    // gossip frame. The encoder streams without declaring the content size, so the node
    // must stop inflating at its limit rather than trust a header.
    let mut bomb_client = OapClient::connect(d.overlay, "e2e-bomb", &[], None).unwrap();
    let bomb = {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap()
    };
    assert!(bomb.len() < 64 << 10, "compressed to {} bytes", bomb.len());
    let f = RawFrame::new(1, EVENT | START | END | COMP, 21, &bomb);
    bomb_client.send_raw(&f.bytes());
    match bomb_client.next_event(WAIT) {
        Some(ClientEvent::Refused { code, error, .. }) => {
            assert_eq!((code, error.as_str()), (400, "ratio_cap"));
        }
        other => panic!("zstd bomb: expected a 400 ratio_cap answer, got {other:?}"),
    }
    assert!(closes_within(&mut bomb_client.stream, WAIT), "bomb: closed");

    // Each reason counted exactly as often as it was sent.
    let after = d.scrape();
    for (reason, n) in [("proto", 6.0), ("oversize", 1.0), ("ratio_cap", 1.0)] {
        assert_eq!(
            count(&after, reason) - count(&before, reason),
            n,
            "rejected_total{{reason=\"{reason}\"}}"
        );
    }
    for reason in ["busy", "unauth", "ratelimit", "not_ready", "timeout"] {
        assert_eq!(
            count(&after, reason),
            count(&before, reason),
            "rejected_total{{reason=\"{reason}\"}} moved"
        );
    }

    // The established clients never noticed.
    let corr = publ.publish("feed", b"still here", true);
    match publ.next_event(WAIT) {
        Some(ClientEvent::Ack { corr_id, code, .. }) => {
            assert_eq!((corr_id, code), (corr, 202));
        }
        other => panic!("publish after the abuse: {other:?}"),
    }
    match sub.next_event(WAIT) {
        Some(ClientEvent::Message(m)) => assert_eq!(&m.data[..], b"still here"),
        other => panic!("delivery after the abuse: {other:?}"),
    }
    // And the process is still healthy.
    assert_eq!(d.get("/healthz").status, 200);
}
