//! File descriptors: under a low `RLIMIT_NOFILE`, more clients than descriptors. The
//! acceptor stops taking connections while headroom is below `readiness.fd_reserve`
//! (they wait in the backlog), `/readyz` says `fd_headroom` is missing, the admin plane
//! keeps answering from the reserve, and everything recovers once the clients leave.

use std::net::TcpStream;
use std::time::Duration;

use e2e::wire::OapClient;
use e2e::Daemon;

const LIMIT: u64 = 256;
const CLIENTS: usize = 300;

#[test]
fn the_acceptor_keeps_the_fd_reserve_and_readiness_says_so() {
    let d = Daemon::builder()
        .nofile(LIMIT)
        // Accepted clients that never say HELLO must hold their descriptor for the test.
        .cfg("overlay.handshake_timeout", "60s")
        .start();
    d.wait_readyz(200, Duration::from_secs(10));

    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| TcpStream::connect(d.overlay).unwrap_or_else(|e| panic!("client {i}: {e}")))
        .collect();
    let body = d.wait_readyz(503, Duration::from_secs(10));
    let missing = body["missing"].as_array().unwrap();
    assert!(
        missing.iter().any(|m| m == "fd_headroom"),
        "missing: {missing:?}"
    );
    // The admin plane still answers (this scrape included), from the reserve.
    assert_eq!(d.get("/healthz").status, 200);
    let paused = d.metric("overlay_accept_paused_total", &[("reason", "fd_headroom")]);
    assert!(paused >= 1.0, "overlay_accept_paused_total = {paused}");
    // Not every client was taken: the rest wait in the backlog.
    let accepted = d.metric("overlay_handshake_attempts_total", &[]);
    assert!(
        accepted < (LIMIT - 64) as f64,
        "{accepted} connections accepted under a limit of {LIMIT} with a reserve of 64"
    );
    // The acceptor pauses instead of failing accept(2) in a loop.
    let errors = d
        .log_lines()
        .iter()
        .filter(|l| l["event"] == "accept_error")
        .count();
    assert!(errors <= 2, "{errors} accept_error lines");

    drop(clients);
    d.wait_readyz(200, Duration::from_secs(20));
    assert_eq!(d.get("/healthz").status, 200);
}

/// At `overlay.max_conns` sessions every new connection is refused `503 busy`: `/readyz`
/// says so (`conns_ok` missing) while the admin plane keeps answering, and is ready again
/// as soon as a session ends.
#[test]
fn readiness_says_when_the_node_is_at_max_conns_and_recovers() {
    const MAX: usize = 8;
    let d = Daemon::builder()
        .cfg("overlay.max_conns", MAX.to_string())
        .start();
    d.wait_readyz(200, Duration::from_secs(10));
    let mut clients: Vec<OapClient> = (0..MAX)
        .map(|i| OapClient::connect(d.overlay, &format!("c{i}"), &["t"], None).unwrap())
        .collect();
    let body = d.wait_readyz(503, Duration::from_secs(10));
    assert_eq!(body["missing"], serde_json::json!(["conns_ok"]), "{body}");
    assert_eq!(d.get("/healthz").status, 200);
    assert!(
        OapClient::connect(d.overlay, "one-too-many", &[], None).is_err(),
        "refused while /readyz says so"
    );
    clients.pop();
    d.wait_readyz(200, Duration::from_secs(10));
    assert!(OapClient::connect(d.overlay, "room-again", &[], None).is_ok());
}
