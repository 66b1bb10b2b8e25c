//! The source scan behind "no metric name or label is built at run time"
//! (docs/ARCHITECTURE.md section 7): every `metrics::counter!/gauge!/histogram!/describe_*!` call
//! must name its metric with a constant from `overlay_core::observe::names`, and every label
//! must be a key of that metric's allowlist with a value that is either a literal from the
//! allowlist or `.as_str()` of one of the closed label enums.
//!
//! A small lexer rather than a grep: comments are blanked, strings and char literals are
//! kept intact, and macro arguments are split at top-level commas, so a multi-line call or a
//! `,` inside a string cannot fool it.

use std::collections::HashMap;

use overlay_core::observe::INVENTORY;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.what)
    }
}

/// `pub const NAME: &str = "value";` in `names.rs`: constant name → metric name.
pub fn name_constants(names_rs: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in names_rs.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((ident, rest)) = rest.split_once(':') else {
            continue;
        };
        let Some((ty, value)) = rest.split_once('=') else {
            continue;
        };
        if ty.trim() != "&str" {
            continue;
        }
        let value = value.trim().trim_end_matches(';').trim();
        if let Some(v) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            out.insert(ident.trim().to_string(), v.to_string());
        }
    }
    out
}

/// Source with comments replaced by spaces (newlines kept, so line numbers hold); string
/// and char literals untouched.
fn strip_comments(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && (i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_'))
        {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(&b[i..j.min(b.len())]);
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                if b[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            let end = (j + 1).min(b.len());
            out.extend(&b[i..end]);
            i = end;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            let end = if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                j + 1
            } else if b.get(i + 2) == Some(&'\'') {
                i + 3
            } else {
                i + 1
            };
            let end = end.min(b.len());
            out.extend(&b[i..end]);
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// If a string literal (plain or raw) or a char literal starts at `i`, the index after it.
fn literal_end(c: &[char], i: usize) -> Option<usize> {
    let word_start = i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_');
    match c[i] {
        '"' => {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                if c[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            Some((j + 1).min(c.len()))
        }
        'r' if word_start && matches!(c.get(i + 1), Some('"' | '#')) => {
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                return None;
            }
            j += 1;
            while j < c.len() {
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    return Some(j + 1 + hashes);
                }
                j += 1;
            }
            Some(c.len())
        }
        '\'' if c.get(i + 1) == Some(&'\\') => {
            let mut j = i + 2;
            while j < c.len() && c[j] != '\'' {
                j += 1;
            }
            Some((j + 1).min(c.len()))
        }
        '\'' if c.get(i + 2) == Some(&'\'') => Some(i + 3),
        _ => None,
    }
}

/// The text between the bracket at `open` and its match, string-aware.
fn balanced(s: &[char], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut i = open;
    while i < s.len() {
        match s[i] {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            '"' => {
                i += 1;
                while i < s.len() && s[i] != '"' {
                    if s[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '\'' if s.get(i + 2) == Some(&'\'') => i += 2,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits at top-level commas, string- and bracket-aware.
fn split_args(s: &str) -> Vec<String> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '(' | '[' | '{' => {
                let end = balanced(&c, i).unwrap_or(c.len() - 1);
                cur.extend(&c[i..=end]);
                i = end;
            }
            '"' => {
                let start = i;
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                cur.extend(&c[start..=i.min(c.len() - 1)]);
            }
            ',' => out.push(std::mem::take(&mut cur)),
            ch => cur.push(ch),
        }
        i += 1;
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out.into_iter()
        .map(|a| a.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn string_literal(s: &str) -> Option<&str> {
    s.strip_prefix('"')?.strip_suffix('"')
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

const MACROS: &[&str] = &[
    "describe_counter",
    "describe_gauge",
    "describe_histogram",
    "counter",
    "gauge",
    "histogram",
];

/// Scans one file. `consts` maps the `names` constants to metric names; `extra_names` are
/// name expressions allowed in this file (the inventory loop's `s.name` in `handles.rs`).
pub fn scan(
    file: &str,
    src: &str,
    consts: &HashMap<String, String>,
    extra_names: &[&str],
) -> Vec<Finding> {
    let code = strip_comments(src);
    let chars: Vec<char> = code.chars().collect();
    let line_of = |idx: usize| chars[..idx].iter().filter(|c| **c == '\n').count() + 1;
    let mut out = Vec::new();
    let mut find = |idx: usize, what: String| {
        out.push(Finding {
            file: file.to_string(),
            line: line_of(idx),
            what,
        })
    };
    // Ways to build a metric key by hand, around the macros and so around the inventory.
    for needle in [
        "Key::from_name",
        "Key::from_parts",
        "Key::from_static_name",
        "Label::new",
        "register_counter(",
        "register_gauge(",
        "register_histogram(",
    ] {
        let mut from = 0;
        while let Some(pos) = code[from..].find(needle) {
            let at = code[..from + pos].chars().count();
            find(
                at,
                format!("`{needle}` builds a metric key outside the macros"),
            );
            from += pos + needle.len();
        }
    }
    let mut i = 0;
    while i < chars.len() {
        // Inside a string a macro name is just text.
        if let Some(end) = literal_end(&chars, i) {
            i = end;
            continue;
        }
        let word_start = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let Some(mac) = MACROS.iter().find(|m| {
            word_start
                && chars[i..].starts_with(&m.chars().collect::<Vec<_>>())
                && chars.get(i + m.len()) == Some(&'!')
        }) else {
            i += 1;
            continue;
        };
        let at = i;
        let mut j = i + mac.len() + 1;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        if !matches!(chars.get(j), Some('(' | '[' | '{')) {
            i = j;
            continue;
        }
        let Some(end) = balanced(&chars, j) else {
            find(at, format!("unbalanced `{mac}!` call"));
            break;
        };
        let inner: String = chars[j + 1..end].iter().collect();
        check_call(mac, &split_args(&inner), consts, extra_names, &mut |w| {
            find(at, w)
        });
        i = end + 1;
    }
    out
}

fn check_call(
    mac: &str,
    args: &[String],
    consts: &HashMap<String, String>,
    extra_names: &[&str],
    find: &mut dyn FnMut(String),
) {
    // `target:` and `level:` come before the name in the macros' full form.
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("target:") && !a.starts_with("level:"))
        .collect();
    let Some(name_arg) = args.first() else {
        return find(format!("`{mac}!` without a name"));
    };
    let name = name_arg.rsplit("::").next().unwrap_or(name_arg);
    let path_ok = match name_arg.rsplit_once("::") {
        None => true,
        Some((path, _)) => path.ends_with("names") || path.ends_with("observe"),
    };
    let metric = if is_ident(name) && path_ok && consts.contains_key(name) {
        Some(consts[name].as_str())
    } else if extra_names.contains(name_arg) {
        None
    } else if string_literal(name_arg).is_some() {
        return find(format!(
            "`{mac}!` names its metric with the literal {name_arg}: use a constant from observe::names"
        ));
    } else {
        return find(format!(
            "`{mac}!` names its metric with `{name_arg}`, not a constant from observe::names"
        ));
    };
    if mac.starts_with("describe_") {
        return;
    }
    let spec = metric.and_then(|m| INVENTORY.iter().find(|s| s.name == m));
    if metric.is_some() && spec.is_none() {
        return find(format!("`{}` is not in INVENTORY", metric.unwrap_or("")));
    }
    for label in &args[1..] {
        let Some((key, value)) = label.split_once("=>") else {
            find(format!(
                "`{mac}!` labels `{label}`: only `\"key\" => value` pairs are allowed"
            ));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let Some(key) = string_literal(key) else {
            find(format!("label key `{key}` is not a string literal"));
            continue;
        };
        let allow = spec.and_then(|s| s.labels.iter().find(|(k, _)| *k == key));
        if spec.is_some() && allow.is_none() {
            find(format!(
                "label `{key}` is not a label of `{}`",
                metric.unwrap_or("")
            ));
            continue;
        }
        if let Some(v) = string_literal(value) {
            if let Some((_, values)) = allow {
                if !values.contains(&v) {
                    find(format!(
                        "label value \"{v}\" of `{key}` is not in its allowlist"
                    ));
                }
            }
        } else if let Some(recv) = value.strip_suffix(".as_str()") {
            // `Enum::ALL[i].as_str()`, `r.as_str()`: the closed enums' own strings. A
            // receiver that builds a string (format!, to_string, String) is not one.
            if ["format!", "to_string", "String", "to_owned", "&"]
                .iter()
                .any(|bad| recv.contains(bad))
            {
                find(format!("label value `{value}` is built at run time"));
            }
        } else {
            find(format!(
                "label value `{value}` is neither a literal nor `.as_str()` of a closed enum"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consts() -> HashMap<String, String> {
        name_constants(
            r#"
pub const REJECTED_TOTAL: &str = "rejected_total";
pub const QUEUE_DEPTH: &str = "overlay_queue_depth";
pub const SIZE_BUCKETS: &[f64] = &[1.0];
"#,
        )
    }

    fn findings(src: &str) -> Vec<String> {
        scan("x.rs", src, &consts(), &[])
            .into_iter()
            .map(|f| f.what)
            .collect()
    }

    #[test]
    fn reads_the_name_constants() {
        let c = consts();
        assert_eq!(c["REJECTED_TOTAL"], "rejected_total");
        assert!(!c.contains_key("SIZE_BUCKETS"));
    }

    #[test]
    fn accepts_constants_and_closed_labels() {
        let ok = r##"
            let a = metrics::counter!(REJECTED_TOTAL, "reason" => r.as_str());
            let b = metrics::gauge!(
                names::QUEUE_DEPTH,
                "queue" => Queue::ALL[i].as_str()
            );
            let c = metrics::counter!(REJECTED_TOTAL, "reason" => "busy");
            // metrics::counter!("in a comment") is not code
            /* gauge!(format!("x")) */
            let s = "counter!(\"in a string\")";
            let raw = r#"gauge!("in a raw string")"#;
            metrics::describe_counter!(REJECTED_TOTAL, Unit::Count, "help, with a comma");
            let q = '"'; let lt: &'static str = "x";
        "##;
        assert_eq!(findings(ok), Vec::<String>::new());
    }

    #[test]
    fn flags_names_and_labels_built_at_run_time() {
        let cases = [
            r#"metrics::counter!("dyn_total");"#,
            r#"metrics::counter!(format!("x_{}", n));"#,
            r#"metrics::gauge!(name);"#,
            r#"metrics::gauge!(QUEUE_DEPTH, "queue" => name.to_string());"#,
            r#"metrics::gauge!(QUEUE_DEPTH, "queue" => format!("{q}").as_str());"#,
            r#"metrics::counter!(REJECTED_TOTAL, "peer" => "x");"#,
            r#"metrics::counter!(REJECTED_TOTAL, "reason" => "nope");"#,
            r#"metrics::counter!(REJECTED_TOTAL, &labels);"#,
            r#"metrics::counter!(REJECTED_TOTAL, key => "busy");"#,
            r#"metrics::counter!(
                   REJECTED_TOTAL,
                   "reason" => reason
               );"#,
            r#"metrics::describe_gauge!("literal", "help");"#,
            r#"let k = metrics::Key::from_parts(name, labels);"#,
        ];
        for c in cases {
            assert_eq!(findings(c).len(), 1, "{c}: {:?}", findings(c));
        }
    }

    #[test]
    fn extra_names_are_per_file() {
        let src = "metrics::describe_counter!(s.name, unit, s.help);";
        assert_eq!(scan("handles.rs", src, &consts(), &["s.name"]), vec![]);
        assert_eq!(scan("other.rs", src, &consts(), &[]).len(), 1);
    }

    #[test]
    fn line_numbers_survive_comment_stripping() {
        let src = "/* a\n b */\n// c\nmetrics::counter!(\"x\");\n";
        let f = scan("x.rs", src, &consts(), &[]);
        assert_eq!(f[0].line, 4);
    }
}
