//! Helpers for the end-to-end tests (and the daemon benchmark) of the built `svc-overlay`
//! binary: locating and building it, running daemons on loopback with their logs captured,
//! a small HTTP/1.1 client for the admin plane, a Prometheus text parser, and OAP/1 on raw
//! sockets.
//!
//! Everything here synchronises on real conditions (a log line, a status code, a counter)
//! through bounded polling, never on the passage of time.

pub mod daemon;
pub mod http;
pub mod prom;
pub mod scan;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use daemon::{bin, command, Daemon, DaemonBuilder};

/// Whether an external tool (`promtool`, `prometheus`, `systemd-analyze`) can be run.
/// Missing, a test that needs it prints a notice and returns, except under `CI=true`,
/// where a missing tool is a failure: CI must never pass by skipping.
pub fn have_tool(name: &str) -> bool {
    let found = std::process::Command::new(name)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is not on PATH and CI=true: install it (scripts/test.sh does, as root)"
        );
        println!("NOTICE: {name} not on PATH; skipping (scripts/test.sh installs it)");
    }
    found
}

/// The workspace root (this package lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Whether `promtool` can be run. Without it a local run skips the promtool checks with a
/// notice; under `CI=true` a missing tool panics, so CI cannot pass without running them.
pub fn promtool_available(check: &str) -> bool {
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "promtool not on PATH under CI=true: `promtool {check}` must run in CI \
         (scripts/test.sh installs Debian's `prometheus` package as root)"
    );
    println!(
        "NOTICE: promtool not on PATH; skipping `promtool {check}` (scripts/test.sh installs it)"
    );
    false
}

/// Calls `f` until it returns `Some`, for at most `timeout`; panics naming `what` after.
/// The pause between attempts only spaces out the polls: correctness never depends on it.
pub fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}
