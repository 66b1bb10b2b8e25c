//! The Prometheus text exposition, parsed into (name, labels) -> value. Series order in
//! the text is not deterministic, so scenarios compare parsed values, never strings.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{anyhow, bail};

/// A series: metric name and its labels, sorted by label name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (k, v)) in self.labels.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{k}={v:?}")?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// One scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    pub series: BTreeMap<Series, f64>,
}

impl Exposition {
    pub fn parse(text: &str) -> anyhow::Result<Exposition> {
        let mut series = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (s, v) = parse_line(line).map_err(|e| anyhow!("line {}: {e}: {line:?}", n + 1))?;
            if series.insert(s.clone(), v).is_some() {
                bail!("series {s} appears twice");
            }
        }
        Ok(Exposition { series })
    }

    /// The value of the series with exactly these labels, if exported.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = Series {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.series.get(&key).copied()
    }

    /// The value of the series with exactly these labels; 0 when absent would hide a
    /// missing inventory entry, so absence is an error.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        self.value(name, labels).ok_or_else(|| {
            anyhow!(
                "no series {name}{labels:?} (the inventory exports every series from the \
                 first scrape)"
            )
        })
    }

    /// Sum over the series of `name` whose labels include all of `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(s, _)| {
                s.name == name
                    && filter
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// Whether any series of `name` is exported.
    pub fn has(&self, name: &str) -> bool {
        self.series.keys().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> anyhow::Result<(Series, f64)> {
    let (name_end, rest) = match line.find(['{', ' ']) {
        Some(i) => (i, &line[i..]),
        None => bail!("no value"),
    };
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    {
        bail!("bad metric name {name:?}");
    }
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches([' ', ',']);
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let eq = r.find('=').ok_or_else(|| anyhow!("label without '='"))?;
            let key = r[..eq].trim().to_string();
            let (value, after) = parse_quoted(&r[eq + 1..])?;
            if labels.insert(key.clone(), value).is_some() {
                bail!("label {key} twice");
            }
            r = after;
        }
    } else {
        rest
    };
    // A value, then optionally a timestamp.
    let mut fields = rest.split_whitespace();
    let v = fields.next().ok_or_else(|| anyhow!("no value"))?;
    let value = match v {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| anyhow!("bad value {v:?}"))?,
    };
    Ok((
        Series {
            name: name.to_string(),
            labels,
        },
        value,
    ))
}

/// A double-quoted label value with `\\`, `\"` and `\n` escapes; returns it and the rest.
fn parse_quoted(s: &str) -> anyhow::Result<(String, &str)> {
    let s = s
        .trim_start()
        .strip_prefix('"')
        .ok_or_else(|| anyhow!("label value not quoted"))?;
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, c)) => out.push(c),
                None => bail!("dangling escape"),
            },
            c => out.push(c),
        }
    }
    bail!("unterminated label value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_specials() {
        let text = "# HELP x y\n# TYPE a counter\n\
            a 3\n\
            b{dir=\"rx\",kind=\"gossip\"} 7\n\
            b{kind=\"ctrl\",dir=\"rx\"} 1.5\n\
            c{l=\"q\\\"uo\\\\te\\n\"} +Inf\n\
            d_bucket{le=\"0.5\"} 2 1700000000\n";
        let e = Exposition::parse(text).unwrap();
        assert_eq!(e.get("a", &[]).unwrap(), 3.0);
        assert_eq!(e.get("b", &[("kind", "ctrl"), ("dir", "rx")]).unwrap(), 1.5);
        assert_eq!(e.sum("b", &[("dir", "rx")]), 8.5);
        assert_eq!(e.get("c", &[("l", "q\"uo\\te\n")]).unwrap(), f64::INFINITY);
        assert_eq!(e.get("d_bucket", &[("le", "0.5")]).unwrap(), 2.0);
        assert!(e.get("b", &[("dir", "tx")]).is_err());
        assert!(Exposition::parse("a 1\na 2\n").is_err());
        assert!(Exposition::parse("a{x=1} 2\n").is_err());
    }
}
