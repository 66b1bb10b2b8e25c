//! What a newcomer meets first: the README quick start pasted as one block, a mistyped
//! peer port that must stay visible in the logs, and a peer given by name.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{bin, workspace_root, Daemon};
use serde_json::Value;

/// The `sh` blocks of README.md's "Quick start", in order, as one script.
fn quick_start() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let start = readme
        .find("## Quick start")
        .expect("a Quick start section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut script = String::new();
    let mut inside = false;
    for line in section.lines() {
        match (inside, line.trim_end()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

/// The quick start with the binary of this build: the build step is dropped and `PATH` points
/// at the binary's directory instead of `target/release`.
fn as_pasted_with_this_build() -> String {
    let dir = bin().parent().unwrap().display().to_string();
    let mut out = String::new();
    let mut path_set = false;
    for line in quick_start().lines() {
        if line.starts_with("cargo build") {
            continue;
        }
        if line.starts_with("export PATH=") {
            out.push_str(&format!("export PATH=\"{dir}:$PATH\"\n"));
            path_set = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(path_set, "the quick start puts the binary on PATH:\n{out}");
    out
}

/// Runs `script` in a fresh bash in its own process group; the nodes it leaves in the
/// background are stopped when it is done. Returns (exit status of the script, stdout).
fn run_pasted(script: &str) -> (Option<i32>, String) {
    let wrapped = format!("trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{script}");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&wrapped)
        .current_dir(std::env::temp_dir())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(std::env::vars().filter(|(k, _)| !k.starts_with("SVC_OVERLAY_")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("bash");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > deadline {
            // Our own process group, by its id.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap())
}

#[test]
fn the_readme_quick_start_works_as_pasted_five_times_in_five() {
    let script = as_pasted_with_this_build();
    for run in 1..=5 {
        let (status, out) = run_pasted(&script);
        let lines: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let summary = lines.iter().find(|l| l.get("sent").is_some());
        let messages = lines.iter().filter(|l| l["topic"] == "feed").count();
        assert!(
            status == Some(0)
                && summary.is_some_and(|s| s["acked"] == 3 && s["refused"] == 0)
                && messages == 3,
            "run {run}: exit {status:?}, summary {summary:?}, {messages} messages\n{script}\n{out}"
        );
        let first = lines
            .iter()
            .find(|l| l.get("node").is_some_and(|n| n == "a"));
        assert_eq!(
            first.map(|l| l["event"].clone()),
            Some(Value::from("listening")),
            "run {run}: a node's first line says where it listens"
        );
    }
}

#[test]
fn a_mistyped_peer_port_stays_visible_in_the_logs() {
    // Nothing listens on port 1 of loopback: every dial fails at once.
    let d = Daemon::builder()
        .arg("--peer")
        .arg("127.0.0.1:1")
        .cfg("overlay.dial_backoff_base", "20ms")
        .cfg("overlay.dial_backoff_max", "50ms")
        .start();
    let line = d
        .wait_log(Duration::from_secs(20), |l| {
            l["event"] == "dial_fail" && l["failures"].as_u64().is_some_and(|n| n >= 20)
        })
        .unwrap_or_else(|| panic!("dial failures not logged as they go on\n{}", d.all_output()));
    assert_eq!(line["reason"], "connect");
    let logged = d
        .log_lines()
        .iter()
        .filter(|l| l["event"] == "dial_fail")
        .count();
    assert!(logged >= 10, "{logged} dial_fail lines for 20 failures");
    assert!(d.metric("overlay_dial_failures_total", &[]) >= 20.0);
}

#[test]
fn a_peer_given_as_localhost_is_resolved_and_dialed() {
    let a = Daemon::start();
    let b = Daemon::builder()
        .arg("--peer")
        .arg(format!("localhost:{}", a.overlay.port()))
        .start();
    let line = b
        .wait_log(Duration::from_secs(20), |l| l["event"] == "peer_resolved")
        .unwrap_or_else(|| panic!("the name's answer not logged\n{}", b.all_output()));
    assert_eq!(line["peer_name"], format!("localhost:{}", a.overlay.port()));
    e2e::poll_until("a session over the name", Duration::from_secs(20), || {
        (a.metric("overlay_sessions_active", &[]) == 1.0
            && b.metric("overlay_sessions_active", &[]) >= 1.0)
            .then_some(())
    });
    assert!(b.metric("overlay_peer_resolve_total", &[("outcome", "ok")]) >= 1.0);
}

/// An address of this node's own among its peers (a headless Service's name answers every
/// pod, its asker too): the node says so once, is not its own peer, and does not redial it
/// every backoff.
#[test]
fn a_peer_address_that_is_the_node_itself_is_named_and_not_redialed() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (overlay, admin) = (free(), free());
    let d = Daemon::builder()
        .listen(overlay, admin)
        .arg("--peer")
        .arg(overlay.to_string())
        .cfg("overlay.dial_backoff_base", "50ms")
        .cfg("overlay.dial_backoff_max", "100ms")
        .start();
    let line = d
        .wait_log(Duration::from_secs(20), |l| {
            l["event"] == "handshake_fail"
                && l["detail"]
                    .as_str()
                    .is_some_and(|s| s.contains("reaches this node itself"))
        })
        .unwrap_or_else(|| panic!("the self dial not logged\n{}", d.all_output()));
    assert_eq!(line["level"], "WARN", "{line}");
    // Twenty backoffs' worth: a node that redials itself would have opened many sessions.
    let attempts = d.metric("overlay_handshake_attempts_total", &[]);
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        assert_eq!(
            d.metric("overlay_sessions_active", &[]),
            0.0,
            "its own peer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        d.metric("overlay_handshake_attempts_total", &[]),
        attempts,
        "the node redialed itself"
    );
}
