//! The runtime's layout, checked: `src/` is in folders by concern whose dependencies (every
//! `crate::` path) point one way, down the layers below, and no file grows past
//! `MAX_LINES` without saying why at its top. The layers are the picture in
//! runtime/README.md and docs/ARCHITECTURE.md, so a new dependency against them fails here
//! before the picture goes stale.
//!
//! The tree checked is `$CARGO_MANIFEST_DIR/src`, read at run time, so the same binary can
//! be pointed at another checkout of the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top to bottom: a module may use only modules of the layers below its own.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["node"],
    &["driver"],
    &["admin"],
    &["io"],
    &["telemetry"],
    &["bounds", "config", "token"],
];

const MAX_LINES: usize = 400;
const LONG_REASON: &str = "//! Long because:";

fn src() -> PathBuf {
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&root).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
}

/// The modules `lib.rs` declares: the folders and top-level files.
fn top_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l
                .strip_prefix("pub ")
                .or_else(|| l.strip_prefix("pub(crate) "))
                .unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of every `crate::` path in `code` (comments left out), `crate::{a, b}`
/// groups included.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut refs = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let macro_crate = rest[..at].ends_with('$');
        let after = &rest[at + "crate::".len()..];
        if !macro_crate {
            if let Some(group) = after.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let name = ident(item.trim());
                    if !name.is_empty() && name != "self" {
                        refs.insert(name.to_string());
                    }
                }
            } else {
                refs.insert(ident(after).to_string());
            }
        }
        rest = after;
    }
    refs
}

/// Module-level edges: for each top module, the other top modules its files name.
fn graph(src: &Path) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let top = top_modules(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let code = fs::read_to_string(&file).unwrap();
        for used in crate_refs(&code) {
            if !top.contains(&used) {
                problems.push(format!(
                    "{}: crate::{used} is not a module of lib.rs (name the canonical path, \
                     not a re-export)",
                    rel.display()
                ));
            } else if used != module {
                edges.entry(module.clone()).or_default().insert(used);
            }
        }
        edges.entry(module).or_default();
    }
    (edges, problems)
}

/// A cycle in `edges`, as the path that closes it, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut done, &mut Vec::new()))
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn module_dependencies_form_no_cycle() {
    let (edges, _) = graph(&src());
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn paths_name_modules_not_re_exports() {
    // A path through a lib.rs re-export would hide the edge from the checks above.
    let (_, problems) = graph(&src());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn dependencies_point_down_the_layers() {
    let (edges, _) = graph(&src());
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        let Some(lf) = layer(from) else {
            wrong.push(format!(
                "{from} is in no layer: add it to LAYERS and the picture"
            ));
            continue;
        };
        for to in tos {
            if layer(to).map_or(true, |lt| lt <= lf) {
                wrong.push(format!("{from} uses {to}, which is not below it"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\nedges: {edges:#?}");
}

#[test]
fn long_files_say_why() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = fs::read_to_string(f).unwrap();
            let lines = text.lines().count();
            let reason = text.lines().any(|l| l.starts_with(LONG_REASON));
            (lines > MAX_LINES && !reason).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines without a `{LONG_REASON}` line at the top: {long:#?}"
    );
}

#[test]
fn the_checker_sees_paths_and_cycles() {
    let refs = crate_refs(
        "use crate::io::net::Net;\n// crate::cli in a comment\nuse crate::{bounds, config::{self}};\n\
         let x = crate::telemetry::logging::truncate(s); $crate::x",
    );
    let want: BTreeSet<String> = ["io", "bounds", "config", "telemetry"]
        .map(String::from)
        .into();
    assert_eq!(refs, want);
    // The shape the runtime had: driver took dial_loop from dial, dial took Control back.
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges
        .entry("driver".into())
        .or_default()
        .insert("dial".into());
    edges.entry("dial".into()).or_default().insert("net".into());
    edges.entry("net".into()).or_default();
    assert_eq!(find_cycle(&edges), None);
    edges.get_mut("dial").unwrap().insert("driver".into());
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["dial".into(), "driver".into(), "dial".into()])
    );
}
