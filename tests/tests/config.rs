//! Config values the daemon cannot honour are refused before it starts: `check-config` and
//! `run` exit 2 with the same message, naming the key and saying why.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e::{bin, poll_until};

const WAIT: Duration = Duration::from_secs(20);

/// Ports 0, so a config that wrongly passed validation would start without a clash.
const BASE: &str = "[overlay]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";

fn write(name: &str, extra: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("svc-overlay-e2e-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    // `extra` may add keys to [overlay] (first) or open tables of its own.
    std::fs::write(
        &path,
        BASE.replacen("[admin]", &format!("{extra}\n[admin]"), 1),
    )
    .unwrap();
    path
}

/// Runs the binary to completion; a process still running after `WAIT` (a daemon that
/// accepted the config) is killed and reported.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_until(
            &format!("`svc-overlay {}` to exit", args.join(" ")),
            WAIT,
            || child.try_wait().unwrap(),
        )
    }));
    if exited.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        exited.is_ok(),
        "`svc-overlay {}` kept running: the config was accepted\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Both commands refuse `extra` with exit code 2 and a message holding every `needle`.
fn refused(name: &str, extra: &str, needles: &[&str]) {
    let path = write(name, extra);
    let file = path.to_str().unwrap();
    for args in [vec!["check-config", file], vec!["run", "--config", file]] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: `svc-overlay {}` exit status {:?}, stderr: {stderr}",
            args.join(" "),
            out.status
        );
        for n in needles {
            assert!(
                stderr.contains(n),
                "{name}: `svc-overlay {}` stderr lacks {n:?}: {stderr}",
                args.join(" ")
            );
        }
    }
}

#[test]
fn hybrid_pq_is_refused_without_a_tls_listener() {
    refused(
        "hybrid",
        "pq_mode = \"hybrid\"",
        &[
            "invalid config `overlay.pq_mode`",
            "X25519MLKEM768",
            "overlay.tls_listen",
        ],
    );
}

#[test]
fn peers_without_a_host_and_a_port_are_refused() {
    for (name, peer) in [
        ("notaport", "host:notaport"),
        ("colon", ":"),
        ("port0", "host:0"),
    ] {
        refused(
            name,
            &format!("peers = [\"{peer}\"]"),
            &["invalid config `overlay.peers`", peer, "not host:port"],
        );
    }
}

#[test]
fn huge_durations_are_refused_instead_of_panicking() {
    for (name, extra, key) in [
        (
            "backoff",
            "dial_backoff_max = \"500000000000years\"",
            "overlay.dial_backoff_max",
        ),
        (
            "drain",
            "[shutdown]\ndrain_deadline = \"500000000000years\"",
            "shutdown.drain_deadline",
        ),
    ] {
        refused(
            name,
            extra,
            &[&format!("invalid config `{key}`"), "at most 24h"],
        );
    }
}

#[test]
fn a_valid_config_still_passes() {
    let path = write(
        "valid",
        "peers = [\"10.0.0.2:9444\", \"peer.example:9444\"]",
    );
    let out = run(&["check-config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("peer.example:9444"));
}
