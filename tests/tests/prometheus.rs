//! A real Prometheus (Debian's `prometheus` binary) scraping a three-node mesh with the
//! shipped rules loaded: saturation on one node (a subscriber that stops reading under a
//! flood) takes `OverlayReadyDegraded` through pending and firing, and it resolves once
//! the subscriber reads again, while every target stays `up` and the SLO recording rules
//! evaluate on the real series.
//!
//! The alert expressions are the shipped ones; only their `for:` is shortened, and the
//! node's `readiness.sustain`, the scrape and the evaluation intervals are a second, so the
//! whole timeline takes seconds. The timeline is printed and written to
//! `target/prometheus-timeline.txt` (scripts/test.sh shows it). Without `prometheus` on
//! PATH the test is skipped, except under `CI=true`, where that is a failure.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::wire::OapClient;
use e2e::{have_tool, http, poll_until, workspace_root, Daemon, DaemonBuilder};
use overlay_core::client::ClientEvent;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const MSG: usize = 60 << 10;
/// The `for:` of every alert in the test's copy of the rules.
const FOR: &str = "4s";

/// A Prometheus server on loopback with its own directory; dropping it stops the process
/// (by its PID, SIGTERM then SIGKILL) and removes the directory.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("svc-overlay-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let root = workspace_root();
        let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
        let fast = shorten_for(&alerts, FOR);
        assert_ne!(fast, alerts, "no `for:` found to shorten");
        std::fs::write(dir.join("alerts.yml"), fast).unwrap();
        std::fs::copy(root.join("deploy/prometheus/slo.yml"), dir.join("slo.yml")).unwrap();
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 rule_files: [alerts.yml, slo.yml]\n\
                 scrape_configs:\n  - job_name: overlay\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .unwrap();
        // A free loopback port: Prometheus does not report the port it bound for `:0`.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, dir, addr };
        poll_until("prometheus /-/ready", WAIT, || {
            http::get(p.addr, "/-/ready", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
        p
    }

    fn api(&mut self, path: &str) -> Value {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
        let r = http::get(self.addr, path, &[]).unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }

    /// The state of `alert` for `instance` (`pending`, `firing`), or `None` when inactive.
    fn alert_state(&mut self, alert: &str, instance: SocketAddr) -> Option<String> {
        let data = self.api("/api/v1/alerts");
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == alert
                    && a["labels"]["instance"] == instance.to_string().as_str()
            })
            .map(|a| a["state"].as_str().unwrap().to_string())
    }

    /// An instant query's vector as (instance, value) pairs.
    fn query(&mut self, q: &str) -> Vec<(String, String)> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(q)));
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                    s["value"][1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Every target is `up`, from Prometheus's own view (targets API and the `up` series).
    fn assert_all_up(&mut self, n: usize) {
        let up = self.query("up");
        assert_eq!(up.len(), n, "up: {up:?}");
        assert!(up.iter().all(|(_, v)| v == "1"), "a target is down: {up:?}");
        let targets = self.api("/api/v1/targets");
        let active = targets["activeTargets"].as_array().unwrap();
        assert_eq!(active.len(), n);
        for t in active {
            assert_eq!(t["health"], "up", "{t}");
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The rules with every `for:` set to `d`.
fn shorten_for(rules: &str, d: &str) -> String {
    rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: {d}", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn node() -> DaemonBuilder {
    Daemon::builder()
        .cfg("readiness.sustain", "1s")
        // Only the queue condition decides readiness here: the shed rate over its trailing
        // 10 s window would hold it red for a while after the flood.
        .cfg("readiness.shed_rate_max", "1.0")
        .cfg("overlay.peer.egress_queue_frames", "32")
        // The flood is relayed to the peers: they must take it, not rate limit it.
        .cfg("overlay.peer.max_rps", "100000")
        // The stalled subscriber is neither aborted nor idled out while Prometheus watches.
        .cfg("timeouts.write", "120s")
        .cfg("timeouts.idle", "120s")
}

struct Timeline {
    start: Instant,
    lines: Vec<String>,
}

impl Timeline {
    fn mark(&mut self, what: &str) {
        let line = format!("{:>6.1}s  {what}", self.start.elapsed().as_secs_f64());
        println!("{line}");
        self.lines.push(line);
    }
}

fn write_timeline(path: &Path, t: &Timeline) {
    let _ = std::fs::write(path, t.lines.join("\n") + "\n");
}

#[test]
fn a_real_prometheus_sees_readiness_degrade_fire_and_resolve() {
    if !have_tool("prometheus") {
        return;
    }
    let a = node().arg("--node-id").arg("a").start();
    let b = node()
        .arg("--node-id")
        .arg("b")
        .arg("--peer")
        .arg(a.overlay.to_string())
        .start();
    let c = node()
        .arg("--node-id")
        .arg("c")
        .arg("--peer")
        .arg(a.overlay.to_string())
        .start();
    for d in [&a, &b, &c] {
        d.wait_readyz(200, WAIT);
    }
    poll_until("a mesh of three", WAIT, || {
        (a.metric("overlay_sessions_active", &[]) >= 2.0).then_some(())
    });
    let mut prom = Prometheus::start(&[a.admin, b.admin, c.admin]);
    poll_until("a first scrape of every target", WAIT, || {
        let up = prom.query("up");
        (up.len() == 3 && up.iter().all(|(_, v)| v == "1")).then_some(())
    });
    prom.assert_all_up(3);
    assert_eq!(prom.alert_state("OverlayReadyDegraded", a.admin), None);

    let mut t = Timeline {
        start: Instant::now(),
        lines: vec![format!(
            "prometheus {} scraping a={} b={} c={} every 1s, rules evaluated every 1s, for: {FOR}, readiness.sustain 1s",
            prom.addr, a.admin, b.admin, c.admin
        )],
    };
    t.mark("flood starts on a; its subscriber stops reading");
    let sub = OapClient::connect(a.overlay, "stalled-sub", &["flood"], None).unwrap();
    let mut publ = OapClient::connect(a.overlay, "flooder", &[], None).unwrap();
    let data = vec![0x5a; MSG];
    let (mut accepted, mut busy) = (0u64, 0u64);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no saturation within {WAIT:?}");
        let batch = if busy > 0 { 1 } else { 8 };
        for _ in 0..batch {
            publ.publish("flood", &data, true);
        }
        for _ in 0..batch {
            match publ.next_event(WAIT) {
                Some(ClientEvent::Ack { code: 202, .. }) => accepted += 1,
                Some(ClientEvent::Ack { code: 503, .. }) => busy += 1,
                other => panic!("unexpected answer to a publish: {other:?}"),
            }
        }
        if http::get(a.admin, "/readyz", &[]).unwrap().status == 503 {
            break;
        }
    }
    t.mark(&format!(
        "a: /readyz 503 ({accepted} writes accepted, {busy} answered busy)"
    ));

    let seen = |prom: &mut Prometheus, t: &mut Timeline, want: Option<&str>, what: &str| {
        poll_until(what, WAIT, || {
            (prom.alert_state("OverlayReadyDegraded", a.admin).as_deref() == want).then_some(())
        });
        t.mark(what);
    };
    seen(
        &mut prom,
        &mut t,
        Some("pending"),
        "OverlayReadyDegraded{a} pending",
    );
    seen(
        &mut prom,
        &mut t,
        Some("firing"),
        "OverlayReadyDegraded{a} firing",
    );
    prom.assert_all_up(3);
    // The writes counter reaches the busy SLO: a refused some, the others none.
    let busy_ratio = prom.query("overlay:busy_ratio:rate5m > 0");
    assert_eq!(
        busy_ratio
            .iter()
            .map(|(i, _)| i.as_str())
            .collect::<Vec<_>>(),
        [a.admin.to_string()],
        "busy ratio"
    );
    assert_eq!(prom.query("overlay:ready == 0").len(), 1);
    // Every node exports the handshake series; a has timed handshakes (its two clients')
    // since the first scrape, so its p95 is a number (the others' is NaN: no handshake
    // in the window).
    assert_eq!(
        prom.query("overlay:handshake_latency_seconds:p95_5m").len(),
        3
    );
    let p95 = prom.query("overlay:handshake_latency_seconds:p95_5m >= 0");
    assert_eq!(p95.len(), 1, "handshake p95: {p95:?}");
    assert_eq!(p95[0].0, a.admin.to_string());

    t.mark("a's subscriber reads again");
    let reader = std::thread::spawn(move || {
        let mut sub = sub;
        let mut got = 0u64;
        while got < accepted {
            match sub.next_event(WAIT) {
                Some(ClientEvent::Message(_)) => got += 1,
                Some(_) => {}
                None => break,
            }
        }
        got
    });
    a.wait_readyz(200, WAIT);
    t.mark("a: /readyz 200");
    seen(&mut prom, &mut t, None, "OverlayReadyDegraded{a} resolved");
    assert_eq!(
        reader.join().unwrap(),
        accepted,
        "every accepted write delivered"
    );
    prom.assert_all_up(3);
    for name in ["OverlayReadyDegraded", "OverlaySustainedShedding"] {
        for d in [&b, &c] {
            assert_eq!(
                prom.alert_state(name, d.admin),
                None,
                "{name} on a healthy node"
            );
        }
    }
    write_timeline(&workspace_root().join("target/prometheus-timeline.txt"), &t);
}
