//! Metric names are API (docs/OBSERVABILITY.md, "Names are API"): a name that has shipped never
//! disappears without an alias, every alias is in the CHANGELOG, and the observability
//! review date in docs/OBSERVABILITY.md is kept within 90 days of the last change to the
//! inventory.

use std::collections::BTreeSet;
use std::process::Command;

use e2e::workspace_root;
use overlay_core::observe::{ALIASES, INVENTORY};

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const RELEASED: &str = "core/src/observe/released_names.txt";

/// Every shipped name with whether it was withdrawn (`name removed`).
fn shipped() -> Vec<(String, bool)> {
    read(RELEASED)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(' ') {
            Some((name, "removed")) => (name.to_string(), true),
            Some(_) => panic!("{RELEASED}: `{l}` is neither a name nor `name removed`"),
            None => (l.to_string(), false),
        })
        .collect()
}

/// The shipped names still exported (directly or as an alias).
fn released() -> BTreeSet<String> {
    shipped()
        .into_iter()
        .filter(|(_, removed)| !removed)
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn a_removed_name_is_gone_and_announced() {
    let inventory: BTreeSet<&str> = INVENTORY.iter().map(|s| s.name).collect();
    let changelog = read("CHANGELOG.md");
    let removed_section = changelog
        .split("### Removed")
        .skip(1)
        .map(|s| s.split("\n## ").next().unwrap_or(s))
        .collect::<String>();
    for (name, removed) in shipped() {
        if !removed {
            continue;
        }
        assert!(
            !inventory.contains(name.as_str()),
            "{name} is marked removed in {RELEASED} but is in the inventory: a withdrawn name \
             is not reused"
        );
        assert!(
            removed_section.contains(&name),
            "{name} is marked removed in {RELEASED}: CHANGELOG.md must say so under ### Removed"
        );
    }
}

#[test]
fn no_shipped_metric_name_leaves_without_an_alias() {
    let inventory: BTreeSet<&str> = INVENTORY.iter().map(|s| s.name).collect();
    for name in released() {
        if inventory.contains(name.as_str()) {
            continue;
        }
        let alias = ALIASES.iter().find(|a| a.old == name).unwrap_or_else(|| {
            panic!(
                "{name} has shipped but is no longer in core's inventory: export it under its \
                 old name too (an ALIASES entry in core/src/observe/names.rs, for at least one \
                 minor version) and say so in CHANGELOG.md"
            )
        });
        assert!(
            inventory.contains(alias.new),
            "{name} is an alias of {}, which is not in the inventory",
            alias.new
        );
    }
}

#[test]
fn every_inventory_name_is_recorded_as_shipped() {
    let released = released();
    for s in INVENTORY {
        assert!(
            released.contains(s.name),
            "{} is not in {RELEASED} (or is marked removed there): add it (and an `Added` line \
             to CHANGELOG.md)",
            s.name
        );
    }
}

#[test]
fn every_alias_is_in_the_changelog_with_its_end() {
    let changelog = read("CHANGELOG.md");
    assert!(
        changelog.contains("## [Unreleased]") && changelog.contains("keepachangelog.com"),
        "CHANGELOG.md follows Keep a Changelog"
    );
    for a in ALIASES {
        assert!(
            changelog.contains(a.old) && changelog.contains(a.new) && changelog.contains(a.until),
            "CHANGELOG.md does not announce the rename {} -> {} (alias until {})",
            a.old,
            a.new,
            a.until
        );
    }
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (the proleptic Gregorian calendar).
fn days(date: &str) -> i64 {
    let p: Vec<i64> = date
        .trim()
        .split('-')
        .map(|x| {
            x.parse()
                .unwrap_or_else(|_| panic!("{date:?} is not YYYY-MM-DD"))
        })
        .collect();
    let (y, m, d) = (p[0] - i64::from(p[1] <= 2), p[1], p[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[test]
fn days_count_calendar_days() {
    assert_eq!(days("1970-01-01"), 0);
    assert_eq!(days("2000-03-01") - days("2000-02-28"), 2);
    assert_eq!(days("2026-12-01") - days("2026-09-02"), 90);
}

#[test]
fn the_observability_review_is_recent_for_the_inventory() {
    let doc = read("docs/OBSERVABILITY.md");
    let reviewed = doc
        .lines()
        .find_map(|l| l.strip_prefix("Reviewed: "))
        .expect("docs/OBSERVABILITY.md has a `Reviewed: YYYY-MM-DD` line");
    let out = Command::new("git")
        .current_dir(workspace_root())
        .args(["log", "-1", "--format=%cs", "--"])
        .args(["core/src/observe/names.rs", "core/src/observe/handles.rs"])
        .output();
    let changed = match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => {
            String::from_utf8(o.stdout).unwrap().trim().to_string()
        }
        _ => {
            // A source tarball has no history: nothing to compare with.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no git history under CI=true"
            );
            println!("NOTICE: no git history; skipping the review date check");
            return;
        }
    };
    let age = days(&changed) - days(reviewed);
    assert!(
        age < 90,
        "the inventory changed on {changed}, {age} days after the observability review of \
         {reviewed}: review docs/OBSERVABILITY.md against the spec and bump its date"
    );
}
