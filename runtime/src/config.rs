//! Config layering: CLI flags over `SVC_OVERLAY_` environment over a TOML file over the
//! schema's defaults, validated fail-closed with the offending key named.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use overlay_core::Config;
use serde_json::Value;

pub const ENV_PREFIX: &str = "SVC_OVERLAY_";

/// Values given on the command line; they win over every other source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin: Option<String>,
    /// When non-empty, replaces `overlay.peers` (a list is not merged across sources).
    pub peers: Vec<String>,
    pub node_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {}: {err}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    /// The message always starts with the dotted key, so operators and scripts find it.
    #[error("invalid config `{key}`: {why}")]
    Invalid { key: String, why: String },
}

impl LoadError {
    pub fn key(&self) -> Option<&str> {
        match self {
            LoadError::Invalid { key, .. } => Some(key),
            LoadError::Read { .. } => None,
        }
    }
}

/// Loads and validates the effective config. `file` is optional: without it the defaults,
/// environment and flags still apply.
pub fn load(file: Option<&Path>, ov: &Overrides) -> Result<Config, LoadError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        // Read it ourselves: figment treats a missing file as empty, and a config file
        // that was named but is missing must fail closed.
        let text = std::fs::read_to_string(path).map_err(|err| LoadError::Read {
            path: path.to_path_buf(),
            err,
        })?;
        fig = fig.merge(Toml::string(&text));
    }
    fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__"));
    if let Some(v) = &ov.listen {
        fig = fig.merge(Serialized::default("overlay.listen", v));
    }
    if let Some(v) = &ov.admin {
        fig = fig.merge(Serialized::default("admin.listen", v));
    }
    if !ov.peers.is_empty() {
        fig = fig.merge(Serialized::default("overlay.peers", &ov.peers));
    }
    if let Some(v) = &ov.node_id {
        fig = fig.merge(Serialized::default("overlay.node_id", v));
    }
    let cfg: Config = fig.extract().map_err(from_figment)?;
    cfg.validate().map_err(|e| LoadError::Invalid {
        key: e.key.to_string(),
        why: e.why,
    })?;
    Ok(cfg)
}

fn from_figment(e: figment::Error) -> LoadError {
    let Some(e) = e.into_iter().next() else {
        return LoadError::Invalid {
            key: "<unknown>".into(),
            why: "config could not be read".into(),
        };
    };
    let mut key = e.path.join(".");
    if let figment::error::Kind::UnknownField(field, _) = &e.kind {
        // Some providers put the unknown field in the path already, some do not.
        if e.path.last() != Some(field) {
            key = if key.is_empty() {
                field.clone()
            } else {
                format!("{key}.{field}")
            };
        }
    }
    if key.is_empty() {
        key = "<root>".into();
    }
    let from = e
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    LoadError::Invalid {
        key,
        why: format!("{}{from}", e.kind),
    }
}

/// The effective config as TOML: what `check-config` prints. No key holds a secret (tokens
/// and the minting key are files the config only names), so nothing is redacted.
pub fn to_toml(cfg: &Config) -> String {
    toml::to_string_pretty(cfg).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// One changed key: dotted path and old and new values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}

/// What changed between two configs.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let flat = |c: &Config| flatten(&serde_json::to_value(c).unwrap_or(Value::Null));
    let (a, b) = (flat(old), flat(new));
    let mut out = Vec::new();
    for (k, va) in &a {
        if let Some(vb) = b.get(k).filter(|vb| *vb != va) {
            out.push(Change {
                key: k.clone(),
                old: va.to_string(),
                new: vb.to_string(),
            });
        }
    }
    out
}

fn flatten(v: &Value) -> std::collections::BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut std::collections::BTreeMap<String, Value>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// Gives the node a stable id when the config leaves it empty: the core would derive one
/// from `overlay.listen`, which for `:0` would be the same for every node in a process.
pub fn fill_node_id(cfg: &mut Config, bound: std::net::SocketAddr) {
    if cfg.overlay.node_id.is_empty() {
        cfg.overlay.node_id = format!("node-{bound}");
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its own error type
mod tests {
    use super::*;
    use figment::Jail;

    fn invalid_key(r: Result<Config, LoadError>) -> String {
        match r {
            Err(LoadError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_without_sources() {
        Jail::expect_with(|_| {
            let cfg = load(None, &Overrides::default()).unwrap();
            assert_eq!(cfg, Config::default());
            Ok(())
        });
    }

    #[test]
    fn cli_beats_env_beats_file_beats_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "o.toml",
                r#"
                [overlay]
                listen = "127.0.0.1:7000"
                max_conns = 7
                handshake_timeout = "2s"
                peers = ["10.0.0.1:1"]
                [log]
                max_lines_per_sec = 3
                "#,
            )?;
            jail.set_env("SVC_OVERLAY_OVERLAY__MAX_CONNS", "10");
            jail.set_env("SVC_OVERLAY_TIMEOUTS__IDLE", "20s");
            jail.set_env("SVC_OVERLAY_OVERLAY__LISTEN", "127.0.0.1:7001");
            let ov = Overrides {
                listen: Some("127.0.0.1:7002".into()),
                peers: vec!["10.0.0.2:2".into(), "10.0.0.3:3".into()],
                ..Overrides::default()
            };
            let cfg = load(Some(Path::new("o.toml")), &ov).unwrap();
            assert_eq!(cfg.overlay.listen, "127.0.0.1:7002", "CLI wins");
            assert_eq!(cfg.overlay.max_conns, 10, "env beats file");
            assert_eq!(
                cfg.overlay.handshake_timeout.as_secs(),
                2,
                "file beats default"
            );
            assert_eq!(cfg.log.max_lines_per_sec, 3);
            assert_eq!(cfg.overlay.peers, vec!["10.0.0.2:2", "10.0.0.3:3"]);
            assert_eq!(cfg.admin.listen, "127.0.0.1:9600", "default");
            let no_cli = load(Some(Path::new("o.toml")), &Overrides::default()).unwrap();
            assert_eq!(no_cli.overlay.listen, "127.0.0.1:7001", "env beats file");
            assert_eq!(no_cli.overlay.peers, vec!["10.0.0.1:1"]);
            assert_eq!(no_cli.timeouts.idle.as_secs(), 20, "durations from env");
            jail.set_env("SVC_OVERLAY_OVERLAY__PEERS", "[10.0.0.9:9, 10.0.0.8:8]");
            let env_peers = load(Some(Path::new("o.toml")), &Overrides::default()).unwrap();
            assert_eq!(env_peers.overlay.peers, vec!["10.0.0.9:9", "10.0.0.8:8"]);
            // A key with an underscore in its last segment: only `__` nests.
            jail.set_env("SVC_OVERLAY_OVERLAY__PEERS", "[seed.example:9444]");
            jail.set_env("SVC_OVERLAY_OVERLAY__PEER_RESOLVE_INTERVAL", "5s");
            let named = load(Some(Path::new("o.toml")), &Overrides::default()).unwrap();
            assert_eq!(named.overlay.peers, vec!["seed.example:9444"]);
            assert_eq!(named.overlay.peer_resolve_interval.as_secs(), 5);
            Ok(())
        });
    }

    #[test]
    fn validation_fails_closed_naming_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[overlay]\nmax_conns = 0\n")?;
            let e = load(Some(Path::new("bad.toml")), &Overrides::default());
            assert_eq!(invalid_key(e), "overlay.max_conns");

            jail.create_file("typo.toml", "[overlay]\nmax_connz = 3\n")?;
            let e = load(Some(Path::new("typo.toml")), &Overrides::default());
            assert_eq!(invalid_key(e), "overlay.max_connz");

            jail.create_file("type.toml", "[timeouts]\nread = 5\n")?;
            let e = load(Some(Path::new("type.toml")), &Overrides::default());
            assert_eq!(invalid_key(e), "timeouts.read");

            let e = load(
                None,
                &Overrides {
                    admin: Some("nowhere".into()),
                    ..Overrides::default()
                },
            );
            assert_eq!(invalid_key(e), "admin.listen");
            Ok(())
        });
    }

    #[test]
    fn env_errors_name_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("SVC_OVERLAY_OVERLAY__MAX_CONNS", "lots");
            let e = load(None, &Overrides::default());
            let msg = e.as_ref().unwrap_err().to_string();
            assert_eq!(invalid_key(e), "overlay.max_conns");
            assert!(msg.contains("SVC_OVERLAY_"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_fails() {
        Jail::expect_with(|_| {
            let e = load(Some(Path::new("absent.toml")), &Overrides::default());
            assert!(matches!(e, Err(LoadError::Read { .. })));
            Ok(())
        });
    }

    #[test]
    fn toml_output_round_trips() {
        let mut cfg = Config::default();
        cfg.auth.required = true;
        cfg.auth.verify_keys = vec!["keys/root.pub".into()];
        let text = to_toml(&cfg);
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn diff_names_every_changed_key() {
        let mut a = Config::default();
        a.auth.verify_keys = vec!["old.pub".into()];
        let mut b = a.clone();
        b.auth.verify_keys = vec!["old.pub".into(), "new.pub".into()];
        b.overlay.max_conns = 5;
        let d = diff(&a, &b);
        let text = d
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains("overlay.max_conns: 1024 -> 5"), "{text}");
        assert!(text.contains("auth.verify_keys"), "{text}");
        assert!(diff(&a, &a).is_empty());
    }
}
