//! The admin plane's four endpoints and the spec's HELLO vector, against the built binary.

use std::time::Duration;

use e2e::wire::{self, read_frame, unhex, RESP, START};
use e2e::{http, Daemon};

#[test]
fn the_four_endpoints_answer_with_their_status_and_content_type() {
    let d = Daemon::start();

    // /readyz: 200 {"ready":true} once ready (the node may take a moment after `listening`).
    let body = d.wait_readyz(200, Duration::from_secs(10));
    assert_eq!(body, serde_json::json!({"ready": true}));
    let r = d.get("/readyz");
    assert_eq!(r.header("content-type"), Some("application/json"));

    let r = d.get("/healthz");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["alive"], true);

    let r = d.get("/version");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    for key in ["version", "git", "build"] {
        let s = v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing: {v}"));
        assert!(!s.is_empty(), "{key} empty: {v}");
    }
    assert!(v["features"].is_array(), "{v}");

    let r = d.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4"),
        "Prometheus text format 0.0.4"
    );
    assert!(r.body.contains("# TYPE rejected_total counter"));

    let r = d.get("/no/such/route");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));

    // X-Corr-ID: echoed when the caller sends an acceptable one, minted otherwise.
    let r = http::get(d.admin, "/healthz", &[("X-Corr-ID", "e2e-corr-42")]).unwrap();
    assert_eq!(r.header("x-corr-id"), Some("e2e-corr-42"));
    let r = http::get(d.admin, "/nope", &[("X-Corr-ID", "e2e-corr-43")]).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-corr-id"), Some("e2e-corr-43"), "on a 404 too");
    let minted = d.get("/healthz");
    let id = minted.header("x-corr-id").expect("a minted X-Corr-ID");
    assert!(!id.is_empty());

    // The requests above were counted by route, method and status.
    let m = d.scrape();
    let n = |route: &str, status: &str| {
        m.value(
            "http_requests_total",
            &[("route", route), ("method", "GET"), ("status", status)],
        )
        .unwrap_or(0.0)
    };
    assert!(n("/version", "200") >= 1.0);
    assert!(n("other", "404") >= 2.0);
    assert!(n("/healthz", "200") >= 3.0);
}

/// Spec section 5: the HELLO vector from `n1`, byte for byte, gets a 200 whose JSON carries
/// version 1, max_frame 1048576 and chunk 65536.
#[test]
fn the_spec_hello_vector_gets_a_200_answer() {
    const HELLO: &str = "00000070000100090000000000000000000000000000000000000000000000000000000000017b2276657273696f6e73223a5b315d2c226e6f6465223a226e31222c22726f6c65223a2270656572222c226d61785f6672616d65223a313034383537362c22746f70696373223a5b5d7d";
    let d = Daemon::start();
    let mut s = wire::connect(d.overlay);
    std::io::Write::write_all(&mut s, &unhex(HELLO)).unwrap();
    let f = read_frame(&mut s, Duration::from_secs(10))
        .unwrap()
        .expect("an answer before the node closes");
    assert_eq!(f.code, 200);
    assert_eq!(f.app_proto, 0, "HELLO answer");
    assert_eq!(f.corr_id, 1, "same corr_id as the HELLO");
    assert!(f
        .flags
        .contains(overlay_core::oap::Flags::from_bits(RESP | START)));
    let v = wire::json(&f);
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["max_frame"], 1_048_576, "{v}");
    assert_eq!(v["chunk"], 65_536, "{v}");
    assert_eq!(v["node"].as_str(), Some(d.node_id.as_str()), "{v}");
}
