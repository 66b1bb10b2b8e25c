//! Docs kept true by tests: the config and metric tables of `docs/OPERATIONS.md` against
//! `Config::default()` and `INVENTORY`, the alert rules in `deploy/prometheus/alerts.yml`
//! (promtool: syntax and the unit tests of `deploy/prometheus/tests/`) and their runbook
//! links against the anchors of `docs/RUNBOOK.md`, and the README's first lines.
//!
//! When a table is out of date the failure prints the table as it should read; paste it
//! between the markers.

use std::collections::BTreeMap;
use std::process::Command;

use e2e::{have_tool, workspace_root};
use overlay_core::observe::{Kind, INVENTORY};
use overlay_core::Config;
use serde_json::Value;

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The lines between `<!-- NAME:start -->` and `<!-- NAME:end -->`.
fn section<'a>(doc: &'a str, name: &str) -> Vec<&'a str> {
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let from = doc
        .find(&start)
        .unwrap_or_else(|| panic!("no {start} marker"));
    let to = doc.find(&end).unwrap_or_else(|| panic!("no {end} marker"));
    doc[from + start.len()..to]
        .lines()
        .filter(|l| l.starts_with('|'))
        .collect()
}

/// The cells of a table row, trimmed, with surrounding backticks removed.
fn cells(row: &str) -> Vec<String> {
    row.trim()
        .trim_matches('|')
        .split(" | ")
        .map(|c| c.trim().trim_matches('`').to_string())
        .collect()
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) if s.is_empty() => {
            out.insert(prefix.to_string(), "\"\"".into());
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Every config key and its default, as the table writes them.
fn config_defaults() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    flatten(
        "",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut out,
    );
    out
}

#[test]
fn the_config_table_lists_every_key_with_its_default() {
    let doc = read("docs/OPERATIONS.md");
    let want = config_defaults();
    let mut have = BTreeMap::new();
    for row in section(&doc, "config-table").into_iter().skip(2) {
        let c = cells(row);
        assert_eq!(c.len(), 3, "config row with {} cells: {row}", c.len());
        assert!(!c[2].is_empty(), "{}: no meaning given", c[0]);
        have.insert(c[0].clone(), c[1].clone());
    }
    if have != want {
        let mut table = String::from("| key | default | meaning |\n| --- | --- | --- |\n");
        for (k, v) in &want {
            table.push_str(&format!("| `{k}` | `{v}` | ... |\n"));
        }
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(v))
            .collect();
        let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(*k)).collect();
        panic!(
            "docs/OPERATIONS.md config table is out of date.\nwrong or missing: {missing:?}\nnot in Config: {extra:?}\nkeys and defaults:\n{table}"
        );
    }
}

fn metric_rows() -> Vec<String> {
    INVENTORY
        .iter()
        .map(|s| {
            let kind = match s.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let labels = if s.labels.is_empty() {
                "-".to_string()
            } else {
                s.labels
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            format!(
                "| `{}` | {kind} | {labels} | {} | {} |",
                s.name,
                s.feature.unwrap_or("-"),
                s.help
            )
        })
        .collect()
}

#[test]
fn the_metric_table_is_the_inventory() {
    let doc = read("docs/OPERATIONS.md");
    let have: Vec<String> = section(&doc, "metrics-table")
        .into_iter()
        .skip(2)
        .map(|r| r.trim().to_string())
        .collect();
    let want = metric_rows();
    if have != want {
        panic!(
            "docs/OPERATIONS.md metric table is out of date; it should read:\n\
             | metric | type | labels (allowlist) | feature | help |\n\
             | --- | --- | --- | --- | --- |\n{}",
            want.join("\n")
        );
    }
}

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_links_to_a_runbook_anchor_that_exists() {
    let rules = read(ALERTS);
    let runbook = read("docs/RUNBOOK.md");
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|l| {
            l.trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| l.starts_with('#'))
        })
        .map(anchor)
        .collect();
    let alerts = rules.matches("- alert:").count();
    assert!(
        alerts >= 4,
        "the shipped rules have the four alerts docs/OPERATIONS.md lists"
    );
    let links: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(|l| l.trim().trim_matches('"'))
        .collect();
    assert_eq!(links.len(), alerts, "one runbook_url per alert");
    for link in links {
        let (file, frag) = link
            .split_once('#')
            .unwrap_or_else(|| panic!("{link}: no anchor"));
        assert!(file.ends_with("docs/RUNBOOK.md"), "{link}");
        assert!(
            anchors.iter().any(|a| a == frag),
            "{link}: no heading with anchor #{frag} in RUNBOOK.md (have {anchors:?})"
        );
    }
    // Every metric an alert uses is in the inventory (a renamed metric breaks alerts).
    for name in [
        "overlay_handshake_attempts_total",
        "overlay_handshake_failures_total",
        "rejected_total",
        "overlay_egress_fill_ratio",
        "readyz_state",
    ] {
        assert!(rules.contains(name), "{ALERTS} does not use {name}");
        assert!(INVENTORY.iter().any(|s| s.name == name));
    }
}

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const SLO: &str = "deploy/prometheus/slo.yml";

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .current_dir(workspace_root())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {}:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules() {
    if have_tool("promtool") {
        promtool(&["check", "rules", ALERTS, SLO]);
        promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    }
}

/// Every alert fires on trouble, stays silent on health and spikes, and resolves; every
/// recording rule gives its known value (the cases are in the test files).
#[test]
fn the_rules_pass_their_promtool_unit_tests() {
    if have_tool("promtool") {
        promtool(&[
            "test",
            "rules",
            "deploy/prometheus/tests/alerts_test.yml",
            "deploy/prometheus/tests/slo_test.yml",
        ]);
    }
}

#[test]
fn the_readme_starts_with_the_two_commands() {
    let readme = read("README.md");
    let first: Vec<&str> = readme.lines().take(4).collect();
    assert_eq!(
        first,
        [
            "```",
            "cargo run --release -p svc-overlay",
            "bash scripts/test.sh",
            "```"
        ],
        "README.md must open with the two commands in one code block"
    );
    for link in [
        "docs/ARCHITECTURE.md",
        "docs/OAP1.md",
        "docs/PERFORMANCE.md",
        "docs/OPERATIONS.md",
        "runtime/README.md",
    ] {
        assert!(readme.contains(link), "README.md does not link {link}");
        assert!(
            workspace_root().join(link).exists(),
            "{link} does not exist"
        );
    }
}
