//! A parser for the Prometheus text exposition format (0.0.4): `# HELP` and `# TYPE` lines
//! and samples with labels. Exposition order is not deterministic, so tests look series up
//! by name and label set rather than comparing text.

use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub help: HashMap<String, String>,
    /// Family name → `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The family a sample belongs to: histogram and summary series carry suffixes.
    pub fn family_of<'a>(&self, sample_name: &'a str) -> &'a str {
        if self.types.contains_key(sample_name) {
            return sample_name;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample_name.strip_suffix(suffix) {
                if matches!(
                    self.types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                ) {
                    return base;
                }
            }
        }
        sample_name
    }

    /// The value of the series with exactly this name and label set.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// The sum over every series of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// Parses a whole scrape; any line that is not a comment, blank or a well-formed sample is
/// an error (the exporter must not emit one).
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            e.help.insert(name.to_string(), help.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest
                .split_once(' ')
                .ok_or_else(|| format!("line {}: TYPE without a type", n + 1))?;
            if !matches!(
                ty,
                "counter" | "gauge" | "histogram" | "summary" | "untyped"
            ) {
                return Err(format!("line {}: unknown type {ty:?}", n + 1));
            }
            if e.types.insert(name.to_string(), ty.to_string()).is_some() {
                return Err(format!("line {}: second TYPE for {name}", n + 1));
            }
        } else if line.starts_with('#') {
            continue;
        } else {
            e.samples
                .push(sample(line).map_err(|why| format!("line {}: {why}: {line}", n + 1))?);
        }
    }
    Ok(e)
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| "no value".to_string())?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let key = rest[..eq].trim();
            if !valid_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("bad escape in label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            rest = &rest[end + 1..];
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
        }
    }
    let mut parts = rest.split_whitespace();
    let v = parts.next().ok_or("no value")?;
    let value = match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = parts.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if parts.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_families_labels_and_values() {
        let text = r#"# HELP rejected_total Frames refused.
# TYPE rejected_total counter
rejected_total{reason="busy"} 3
rejected_total{reason="proto"} 0
# TYPE lat histogram
lat_bucket{route="/x",le="0.5"} 1
lat_bucket{route="/x",le="+Inf"} 2
lat_sum{route="/x"} 0.75
lat_count{route="/x"} 2
up 1 1700000000
odd{v="a\"b\\c\nd"} NaN
"#;
        let e = parse(text).unwrap();
        assert_eq!(e.types["rejected_total"], "counter");
        assert_eq!(e.help["rejected_total"], "Frames refused.");
        assert_eq!(e.value("rejected_total", &[("reason", "busy")]), Some(3.0));
        assert_eq!(e.sum("rejected_total", &[]), 3.0);
        assert_eq!(
            e.value("lat_bucket", &[("route", "/x"), ("le", "+Inf")]),
            Some(2.0)
        );
        assert_eq!(e.family_of("lat_count"), "lat");
        assert_eq!(e.family_of("up"), "up");
        let odd = e.samples.iter().find(|s| s.name == "odd").unwrap();
        assert_eq!(odd.labels["v"], "a\"b\\c\nd");
        assert!(odd.value.is_nan());
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "1x 2",
            "x",
            "x{a=\"1\",a=\"2\"} 1",
            "x 1 2 3",
            "# TYPE x countr",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
