//! Capability tokens against the built binary: with `auth.required`, a HELLO without a
//! token or with an unknown one hears 401, a good one is established, and no token — good
//! or bad — ever appears in what the process prints (stdout or stderr), even at DEBUG.

use std::time::Duration;

use e2e::wire::OapClient;
use e2e::Daemon;

const GOOD: &str = "capGOODtoken7f3a9e1";
const BAD: &str = "capBADtoken19c2e55";
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn tokens_never_reach_the_logs_and_a_missing_token_gets_401() {
    let mut d = Daemon::builder()
        .cfg("auth.required", "true")
        .cfg("auth.tokens", format!("[{GOOD}]"))
        // Everything the daemon can say, so the check covers the chattiest paths too.
        .cfg("log.level", "debug")
        .cfg("log.max_lines_per_sec", "1000000")
        .start();
    d.wait_readyz(200, WAIT);

    let good = OapClient::connect(d.overlay, "auth-good", &[], Some(GOOD.as_bytes()));
    assert!(
        good.is_ok(),
        "the configured token was refused: {:?}",
        good.err()
    );

    let bad = OapClient::connect(d.overlay, "auth-bad", &[], Some(BAD.as_bytes()));
    let (code, error) = bad.err().expect("an unknown token is refused");
    assert_eq!((code, error.as_str()), (401, "unauth"));

    let none = OapClient::connect(d.overlay, "auth-none", &[], None);
    let (code, error) = none.err().expect("a missing token is refused");
    assert_eq!((code, error.as_str()), (401, "unauth"));

    assert_eq!(d.metric("rejected_total", &[("reason", "unauth")]), 2.0);
    assert_eq!(
        d.metric("auth_failures_total", &[("reason", "unauth")]),
        2.0
    );
    assert_eq!(
        d.metric("overlay_handshake_failures_total", &[("reason", "proto")]),
        0.0,
        "a refused capability is not a protocol failure"
    );

    // Stop the process so that every line it will ever print is in.
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(WAIT).expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}");

    let out = d.all_output();
    // The handshakes were logged (so the check below looked at real lines)...
    let lines = d.log_lines();
    let fails = lines
        .iter()
        .filter(|l| l["event"] == "handshake_fail")
        .count();
    assert_eq!(fails, 2, "{out}");
    // The log gives the same reason as the metrics: `unauth`, not a protocol error.
    for l in lines.iter().filter(|l| l["event"] == "handshake_fail") {
        assert_eq!(l["reason"], "unauth", "{l}");
    }
    assert!(lines.iter().any(|l| l["event"] == "handshake_ok"), "{out}");
    // ...and neither token, nor any recognisable piece of one, is anywhere.
    for token in [GOOD, BAD] {
        assert!(!out.contains(token), "token {token} leaked into the output");
        assert!(
            !out.contains(&token[3..12]),
            "part of {token} leaked into the output"
        );
    }
}
