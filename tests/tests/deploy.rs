//! What ships under `deploy/` agrees with the daemon: every PromQL expression of the
//! dashboards and rules parses (promtool) and names only metrics of core's inventory; the
//! systemd unit passes `systemd-analyze verify`; the Kubernetes manifests and the
//! Dockerfile use the daemon's probe paths, ports and config keys, and the config they
//! carry is one the daemon accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{bin, have_tool, workspace_root};
use overlay_core::observe::{Kind, INVENTORY};
use overlay_core::Config;
use serde::Deserialize;
use serde_json::Value;

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a YAML file, as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(rel))
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

const RULE_FILES: &[&str] = &["deploy/prometheus/alerts.yml", "deploy/prometheus/slo.yml"];
const DASHBOARDS: &[&str] = &["overview", "saturation", "security", "latency"];

fn dashboard(name: &str) -> Value {
    serde_json::from_str(&read(&format!("deploy/grafana/dashboards/{name}.json")))
        .unwrap_or_else(|e| panic!("{name}.json: {e}"))
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// (where, expression) for every rule and every dashboard panel query.
fn all_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in RULE_FILES {
        for doc in yaml_docs(f) {
            let mut e = Vec::new();
            collect_exprs(&doc, &mut e);
            out.extend(e.into_iter().map(|e| (f.to_string(), e)));
        }
    }
    for d in DASHBOARDS {
        let mut e = Vec::new();
        collect_exprs(&dashboard(d)["panels"], &mut e);
        assert!(!e.is_empty(), "{d}: no queries");
        out.extend(e.into_iter().map(|e| (format!("{d}.json"), e)));
    }
    out
}

/// Grafana's variables replaced by what they stand for, so that promtool can parse it.
fn expand_variables(e: &str) -> String {
    e.replace("$__rate_interval", "1m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

/// The series names a PromQL expression selects: identifiers outside strings, label
/// matchers, ranges and grouping lists that are neither functions nor keywords.
fn metric_names(e: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    ];
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_str = false;
    for ch in e.chars() {
        match ch {
            '"' => in_str = !in_str,
            _ if in_str => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            c => cleaned.push(c),
        }
        if ch == '{' || ch == '[' {
            cleaned.push(' ');
        }
    }
    let chars: Vec<char> = cleaned.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if AGGREGATIONS.contains(&word.as_str()) {
                // `sum by (le) (...)`: an operator, whatever follows it.
                skip_group = false;
            } else if KEYWORDS.contains(&word.as_str()) {
                // The label list after a grouping keyword holds label names, not metrics.
                skip_group = [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str());
            } else if next == Some(&'(') {
                skip_group = false;
            } else if !skip_group {
                names.insert(word);
            }
            continue;
        }
        if c == ')' {
            skip_group = false;
        }
        if c.is_ascii_digit() {
            // A number (0.95, 1e3): not a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names
}

#[test]
fn the_name_scanner_finds_metrics_not_labels_or_functions() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, instance) (rate(a_bucket{route="x"}[5m]))) / ignoring (le) group_left sum(b_total) > 0.5 and on() c:rec == bool 1"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b_total", "c:rec"]
    );
}

/// The names the rules record (`overlay:...`), which dashboards may use as metrics.
fn recorded() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for doc in yaml_docs("deploy/prometheus/slo.yml") {
        for g in doc["groups"].as_array().unwrap() {
            for r in g["rules"].as_array().unwrap() {
                if let Some(n) = r["record"].as_str() {
                    out.insert(n.to_string());
                }
            }
        }
    }
    out
}

/// Whether `name` is a series the daemon exports: an inventory name, or a histogram's
/// `_bucket`/`_sum`/`_count` series.
fn exported(name: &str) -> bool {
    INVENTORY.iter().any(|s| match s.kind {
        Kind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name.strip_suffix(suffix) == Some(s.name)),
        _ => s.name == name,
    })
}

#[test]
fn every_query_names_only_inventory_metrics() {
    let recorded = recorded();
    let mut used = BTreeSet::new();
    for (at, e) in all_exprs() {
        let names = metric_names(&expand_variables(&e));
        assert!(!names.is_empty(), "{at}: no metric in {e}");
        for n in names {
            assert!(
                exported(&n) || recorded.contains(&n),
                "{at}: {n} is neither in core's inventory (histograms by _bucket/_sum/_count) \
                 nor recorded by deploy/prometheus/slo.yml\n  in: {e}"
            );
            used.insert(n);
        }
    }
    // The starter pack of dashboards (docs/OBSERVABILITY.md, row 8) shows these metrics.
    for n in [
        "readyz_state",
        "overlay_sessions_active",
        "overlay_frames_total",
        "overlay_bytes_total",
        "overlay_queue_depth",
        "rejected_total",
        "overlay_backpressure_events_total",
        "overlay_egress_permits",
        "auth_failures_total",
        "tls_handshake_failures_total",
        "overlay_pq_negotiations_total",
        "request_latency_seconds_bucket",
        "overlay_frame_size_bytes_bucket",
        "overlay:handshake_latency_seconds:p95_5m",
    ] {
        assert!(used.contains(n), "no dashboard or rule shows {n}");
    }
}

#[test]
fn every_query_parses() {
    if !have_tool("promtool") {
        return;
    }
    // promtool parses expressions in rule files: one recording rule per query.
    let mut rules = String::from("groups:\n  - name: queries\n    rules:\n");
    for (i, (_, e)) in all_exprs().iter().enumerate() {
        let e = expand_variables(e);
        rules.push_str(&format!(
            "      - record: check:query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = scratch("queries");
    let path = dir.join("queries.yml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "a dashboard or rule query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_dashboard_picks_its_datasource_and_instances() {
    for d in DASHBOARDS {
        let v = dashboard(d);
        assert!(
            v["title"].as_str().unwrap().to_lowercase().contains(d),
            "{d}: title"
        );
        let vars: Vec<&Value> = v["templating"]["list"].as_array().unwrap().iter().collect();
        let ds = vars
            .iter()
            .find(|x| x["type"] == "datasource")
            .unwrap_or_else(|| panic!("{d}: no datasource variable"));
        assert_eq!(ds["query"], "prometheus", "{d}");
        let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
        for name in ["job", "instance"] {
            assert!(
                vars.iter().any(|x| x["name"] == name),
                "{d}: no {name} variable"
            );
        }
        for p in v["panels"].as_array().unwrap() {
            assert_eq!(
                p["datasource"]["uid"],
                ds_ref.as_str(),
                "{d}: {}",
                p["title"]
            );
            for t in p["targets"].as_array().unwrap() {
                let e = t["expr"].as_str().unwrap();
                assert!(
                    e.contains("instance=~\"$instance\""),
                    "{d}: {} does not follow the instance variable: {e}",
                    p["title"]
                );
            }
        }
    }
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("svc-overlay-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr}: no port"))
}

/// `svc-overlay check-config` accepts `toml`; the effective config it prints, parsed.
fn accepted_config(toml: &str, what: &str) -> Config {
    let dir = scratch(what);
    let path = dir.join("node.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&path)
        .env_remove("SVC_OVERLAY_OVERLAY__LISTEN")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{what}: svc-overlay check-config refuses it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same file through the same schema (unknown keys are an error there too).
    toml_config(toml)
}

fn toml_config(toml: &str) -> Config {
    let dflt = serde_json::to_value(Config::default()).unwrap();
    let mut v = dflt.clone();
    merge(&mut v, &toml_to_json(toml));
    serde_json::from_value(v).unwrap()
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// The TOML the deploy files carry is simple (tables, strings, integers, string lists),
/// and YAML reads all of it once tables become nesting.
fn toml_to_json(toml: &str) -> Value {
    let mut root = serde_json::Map::new();
    let mut table: Vec<String> = Vec::new();
    for line in toml.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = t.split('.').map(str::to_string).collect();
            continue;
        }
        let (k, v) = line.split_once('=').expect("key = value");
        let v: Value = serde_yaml::from_str(v.trim()).unwrap();
        let mut at = &mut root;
        for t in &table {
            at = at
                .entry(t.clone())
                .or_insert_with(|| Value::Object(Default::default()))
                .as_object_mut()
                .unwrap();
        }
        at.insert(k.trim().to_string(), v);
    }
    Value::Object(root)
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = read("deploy/systemd/svc-overlay.service");
    let has = |kv: &str| unit.lines().any(|l| l.trim() == kv);
    for kv in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "StateDirectory=svc-overlay",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/svc-overlay run --config /etc/svc-overlay/node.toml",
    ] {
        assert!(has(kv), "svc-overlay.service lacks {kv}");
    }
    assert!(!unit.lines().any(|l| l.trim().starts_with("User=root")));
    let cfg = accepted_config(&read("deploy/systemd/node.toml"), "systemd");
    assert!(!cfg.overlay.peers.is_empty(), "the example node peers");

    if !have_tool("systemd-analyze") {
        return;
    }
    // verify checks that ExecStart exists: point it at the binary of this build.
    let dir = scratch("systemd");
    let path = dir.join("svc-overlay.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/svc-overlay", &bin().display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("svc-overlay.service"),
        "systemd-analyze verify:\n{stderr}"
    );
}

fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k} in deploy/k8s/svc-overlay.yaml"))
}

#[test]
fn the_kubernetes_manifests_match_the_daemon() {
    let docs = yaml_docs("deploy/k8s/svc-overlay.yaml");
    let cm = kind(&docs, "ConfigMap");
    let cfg = accepted_config(cm["data"]["node.toml"].as_str().unwrap(), "k8s");
    let overlay_port = port_of(&cfg.overlay.listen);
    let admin_port = port_of(&cfg.admin.listen);
    assert!(
        cfg.overlay.listen.starts_with("0.0.0.0:") && cfg.admin.listen.starts_with("0.0.0.0:"),
        "a pod must listen on its own interface"
    );

    let sts = kind(&docs, "StatefulSet");
    let pod = &sts["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(port("overlay"), overlay_port);
    assert_eq!(port("admin"), admin_port);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    // The config file the daemon is pointed at is the ConfigMap's key.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let file = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(
        Path::new(mount).join("node.toml"),
        Path::new(file),
        "--config names the ConfigMap's file"
    );
    // Environment overrides name real config keys.
    let keys = config_keys();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let key = name
            .strip_prefix("SVC_OVERLAY_")
            .unwrap_or_else(|| panic!("{name}"))
            .to_lowercase()
            .replace("__", ".");
        assert!(keys.contains(&key), "{name}: no config key {key}");
    }
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/port"], admin_port.to_string().as_str());
    assert_eq!(ann["prometheus.io/path"], "/metrics");

    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    assert_eq!(sts["spec"]["serviceName"], svc["metadata"]["name"]);
    assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(overlay_port));
    let pdb = kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["selector"], sts["spec"]["selector"]);
    let pm = kind(&docs, "PodMonitor");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "admin");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    // The grace period covers the drain.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(grace > cfg.shutdown.drain_deadline.as_secs() + 1);
}

/// Every config key, dotted.
fn config_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
        if let Value::Object(m) = v {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&key, v, out);
            }
        } else {
            out.insert(prefix.to_string());
        }
    }
    let mut out = BTreeSet::new();
    walk(
        "",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut out,
    );
    out
}

#[test]
fn the_dockerfile_builds_small_and_runs_as_non_root() {
    let f = read("deploy/docker/Dockerfile");
    let from = f.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(from >= 2, "a multi-stage build");
    let user = f
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "USER {user}"
    );
    let exposed: BTreeSet<u64> = f
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse().unwrap()))
        .collect();
    let d = Config::default();
    // The image's listen addresses come from its ENV: the same ports as the defaults.
    assert!(f.contains(&format!(
        "SVC_OVERLAY_OVERLAY__LISTEN=0.0.0.0:{}",
        port_of(&d.overlay.listen)
    )));
    assert!(f.contains(&format!(
        "SVC_OVERLAY_ADMIN__LISTEN=0.0.0.0:{}",
        port_of(&d.admin.listen)
    )));
    assert_eq!(
        exposed,
        BTreeSet::from([port_of(&d.overlay.listen), port_of(&d.admin.listen)])
    );
    assert!(f.contains(r#"ENTRYPOINT ["/usr/local/bin/svc-overlay"]"#));
}
