//! The metric schema as shipped: a live scrape against `INVENTORY` (golden test), a scan of
//! the sources for names or labels built at run time, and `promtool check metrics`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::scan::{self, name_constants};
use e2e::wire::OapClient;
use e2e::{poll_until, promtool_available, workspace_root, Daemon};
use overlay_core::client::ClientEvent;
use overlay_core::observe::{
    enabled, Kind, LatencyRoute, MetricSpec, Transport, ALIASES, INVENTORY, REQUEST_LATENCY_SECONDS,
};

const WAIT: Duration = Duration::from_secs(10);

/// A daemon that has seen some traffic: a publish with an ack, a delivery, admin requests.
fn daemon_with_traffic() -> Daemon {
    let d = Daemon::start();
    d.wait_readyz(200, WAIT);
    let mut sub = OapClient::connect(d.overlay, "golden-sub", &[], None).unwrap();
    let mut publ = OapClient::connect(d.overlay, "golden-pub", &[], None).unwrap();
    publ.publish("feed", b"golden", true);
    assert!(matches!(
        publ.next_event(WAIT),
        Some(ClientEvent::Ack { code: 202, .. })
    ));
    assert!(matches!(
        sub.next_event(WAIT),
        Some(ClientEvent::Message(_))
    ));
    d.get("/healthz");
    d.get("/nope");
    d
}

fn type_name(k: Kind) -> &'static str {
    match k {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    }
}

/// Every combination of a spec's label values, as sorted (key, value) lists.
fn label_product(labels: &[(&str, &[&str])]) -> Vec<Vec<(String, String)>> {
    let mut out = vec![Vec::new()];
    for (k, values) in labels {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((k.to_string(), v.to_string()));
                    p.sort();
                    p
                })
            })
            .collect();
    }
    out
}

/// The label sets a metric exports from the first scrape: every combination of its
/// allowlists, except that the handshake's route and method of `request_latency_seconds`
/// only go together (no admin request is `tcp` or `tls`, no handshake is `GET`).
fn expected_series(spec: &MetricSpec) -> Vec<Vec<(String, String)>> {
    let transport = |c: &Vec<(String, String)>| {
        c.iter()
            .filter(|(k, v)| {
                (k == "route" && v == LatencyRoute::Handshake.as_str())
                    || (k == "method" && Transport::VALUES.contains(&v.as_str()))
            })
            .count()
    };
    label_product(spec.labels)
        .into_iter()
        .filter(|c| spec.name != REQUEST_LATENCY_SECONDS || transport(c) != 1)
        .collect()
}

#[test]
fn every_inventory_metric_is_exported_with_its_type_and_allowed_labels() {
    let d = daemon_with_traffic();
    let version = d.get("/version").json();
    let features: Vec<&str> = version["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    let m = d.scrape();

    for spec in INVENTORY {
        let on = enabled(spec, &features);
        let ty = m.types.get(spec.name);
        if !on {
            assert!(
                ty.is_none(),
                "{} is exported but its feature {:?} is not in /version",
                spec.name,
                spec.feature
            );
            continue;
        }
        assert_eq!(
            ty.map(String::as_str),
            Some(type_name(spec.kind)),
            "TYPE of {}",
            spec.name
        );
        assert!(
            m.help.get(spec.name).is_some_and(|h| !h.is_empty()),
            "HELP of {}",
            spec.name
        );
        // Every series of the closed label sets exists from the first scrape.
        let series_name = match spec.kind {
            Kind::Histogram => format!("{}_count", spec.name),
            _ => spec.name.to_string(),
        };
        let have: BTreeSet<Vec<(String, String)>> = m
            .samples
            .iter()
            .filter(|s| s.name == series_name)
            .map(|s| {
                s.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .collect();
        for combo in expected_series(spec) {
            assert!(
                have.contains(&combo),
                "{series_name} lacks the series {combo:?}"
            );
        }
    }

    // A renamed metric is exported under its old name too, with the same type.
    for a in ALIASES {
        let new = INVENTORY.iter().find(|s| s.name == a.new).unwrap();
        assert_eq!(
            m.types.get(a.old).map(String::as_str),
            Some(type_name(new.kind)),
            "{} (alias of {} until {}) is not exported",
            a.old,
            a.new,
            a.until
        );
    }

    // Nothing outside the inventory, and no label outside its allowlist.
    for s in &m.samples {
        let family = m.family_of(&s.name);
        let family = ALIASES
            .iter()
            .find(|a| a.old == family)
            .map_or(family, |a| a.new);
        let spec = INVENTORY
            .iter()
            .find(|sp| sp.name == family)
            .unwrap_or_else(|| panic!("{} is exported but not in INVENTORY", s.name));
        for (k, v) in &s.labels {
            if k == "le" && spec.kind == Kind::Histogram && s.name.ends_with("_bucket") {
                continue;
            }
            let allowed = spec
                .labels
                .iter()
                .find(|(lk, _)| lk == k)
                .unwrap_or_else(|| panic!("{}: label {k} not in the inventory", s.name));
            assert!(
                allowed.1.contains(&v.as_str()),
                "{}: {k}=\"{v}\" not in the allowlist {:?}",
                s.name,
                allowed.1
            );
        }
    }

    // The traffic shows (the scrape is of this node, not a fresh recorder).
    assert!(m.sum("overlay_frames_total", &[("dir", "rx"), ("kind", "gossip")]) >= 1.0);
    assert!(m.sum("overlay_sessions_open_total", &[]) >= 2.0);
    assert!(
        m.value(
            "http_requests_total",
            &[("route", "other"), ("method", "GET"), ("status", "404")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(m.value("readyz_state", &[]), Some(1.0));
    // Two clients and their handshakes timed; the acked publish counted as a write.
    assert!(
        m.value(
            "request_latency_seconds_count",
            &[
                ("route", LatencyRoute::Handshake.as_str()),
                ("method", Transport::Tcp.as_str())
            ]
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        m.value("overlay_writes_total", &[("outcome", "accepted")])
            .unwrap_or(0.0)
            >= 1.0
    );
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_metric_name_or_label_is_built_at_run_time() {
    let root = workspace_root();
    let names = std::fs::read_to_string(root.join("core/src/observe/names.rs")).unwrap();
    let consts = name_constants(&names);
    // The constants are the inventory's names: a constant that drifted from INVENTORY would
    // let a call pass the scan with an unlisted name.
    let inventory: BTreeSet<&str> = INVENTORY.iter().map(|s| s.name).collect();
    for v in consts.values() {
        assert!(inventory.contains(v.as_str()), "{v} is not in INVENTORY");
    }
    let mut files = Vec::new();
    rust_files(&root.join("runtime/src"), &mut files);
    rust_files(&root.join("core/src"), &mut files);
    let mut calls = 0;
    let mut findings = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        let rel = f.strip_prefix(&root).unwrap().display().to_string();
        // `describe()` walks INVENTORY itself: `s.name` is an inventory name.
        let extra: &[&str] = if rel.ends_with("observe/handles.rs") && src.contains("in INVENTORY")
        {
            &["s.name"]
        } else {
            &[]
        };
        calls += ["counter!", "gauge!", "histogram!"]
            .iter()
            .map(|m| src.matches(m).count())
            .sum::<usize>();
        findings.extend(scan::scan(&rel, &src, &consts, extra));
    }
    assert!(
        calls >= INVENTORY.len() - 2,
        "only {calls} metric macro calls found: is the scan looking at the right files?"
    );
    assert!(
        findings.is_empty(),
        "metric names or labels built at run time:\n{}",
        findings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn promtool_accepts_a_live_scrape() {
    if !promtool_available("check metrics") {
        return;
    }
    let d = daemon_with_traffic();
    let body = d.get("/metrics").body;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = poll_until("promtool to finish", WAIT, || child.try_wait().unwrap());
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .ok();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .ok();
    assert!(
        out.success(),
        "promtool check metrics failed:\n{stdout}\n{stderr}"
    );
}
