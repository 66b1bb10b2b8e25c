//! Capability tokens against the built binary: keys from `token keygen`, tokens from
//! `token mint` and `token attenuate`, presented by `publish`/`subscribe --token-file`.
//! A HELLO is admitted or refused 401 with its auth reason (`unauth`, `expired`,
//! `invalid_caveat`), every write is authorised from the session's capability (403), any
//! of several verification keys is accepted, and no token ever reaches the output.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use e2e::wire::OapClient;
use e2e::{command, poll_until, Daemon};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A directory of keys and tokens for one test, removed at the end.
struct Vault {
    dir: PathBuf,
}

impl Vault {
    fn new(test: &str) -> Vault {
        let dir = std::env::temp_dir().join(format!("e2e-auth-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Vault { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `token keygen`: the private key's path; its public key is at `<name>.pub`.
    fn keygen(&self, name: &str) -> PathBuf {
        let key = self.path(name);
        let out = run(&["token", "keygen", "--out", key.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        key
    }

    /// `token mint --key KEY ARGS --out NAME`: the token file.
    fn mint(&self, key: &Path, name: &str, args: &[&str]) -> PathBuf {
        let file = self.path(name);
        let mut a = vec!["token", "mint", "--key", key.to_str().unwrap()];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--out", file.to_str().unwrap()]);
        let out = run(&a);
        assert!(out.status.success(), "{}", text(&out));
        file
    }

    fn token(&self, file: &Path) -> String {
        std::fs::read_to_string(file).unwrap().trim().to_string()
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(args: &[&str]) -> Output {
    command().args(args).output().expect("run svc-overlay")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn pubkey(key: &Path) -> String {
    key.with_extension("pub").to_str().unwrap().to_string()
}

/// A daemon requiring tokens verified by `keys` (files or inline keys), tenant `acme`.
fn node(keys: &[String]) -> Daemon {
    let list = keys
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let d = Daemon::builder()
        .cfg("auth.required", "true")
        .cfg("auth.verify_keys", format!("[{list}]"))
        .cfg("auth.tenant", "acme")
        .cfg("log.max_lines_per_sec", "1000000")
        .start();
    d.wait_readyz(200, WAIT);
    d
}

fn publish(d: &Daemon, token: &Path, topic: &str) -> (Output, Value) {
    let to = d.overlay.to_string();
    let out = run(&[
        "publish",
        "--to",
        &to,
        "--topic",
        topic,
        "--token-file",
        token.to_str().unwrap(),
        "hello",
    ]);
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, summary)
}

fn subscribe(d: &Daemon, token: &Path, topic: &str) -> Child {
    command()
        .args([
            "subscribe",
            "--to",
            &d.overlay.to_string(),
            "--topic",
            topic,
        ])
        .args(["--count", "1", "--token-file", token.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn svc-overlay subscribe")
}

/// Waits for `n` sessions on `d`; a subscriber that gave up fails at once, with its output.
fn await_sessions(d: &Daemon, n: f64, sub: &mut Child) {
    poll_until("the subscriber's session", WAIT, || {
        if let Ok(Some(status)) = sub.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(sub.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the subscriber exited {status}: {err}");
        }
        (d.metric("overlay_sessions_active", &[]) == n).then_some(())
    });
}

fn auth_failures(d: &Daemon, reason: &str) -> f64 {
    d.metric("auth_failures_total", &[("reason", reason)])
}

#[test]
fn a_minted_token_subscribes_and_a_subscribe_only_token_cannot_publish() {
    let v = Vault::new("roles");
    let root = v.keygen("root");
    let reader = v.mint(
        &root,
        "reader",
        &["--tenant", "acme", "--subscribe", "feed"],
    );
    let writer = v.mint(&root, "writer", &["--tenant", "acme", "--publish", "feed"]);
    let mut d = node(&[pubkey(&root)]);

    let mut sub = subscribe(&d, &reader, "feed");
    await_sessions(&d, 1.0, &mut sub);
    let (out, s) = publish(&d, &writer, "feed");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s["acked"], 1, "{s}");
    let got = sub.wait_with_output().unwrap();
    assert!(got.status.success(), "{}", text(&got));
    let line: Value = serde_json::from_slice(&got.stdout).expect("one message line");
    assert_eq!(line["topic"], "feed", "{line}");

    // The reader's token grants no publish: its write hears 403 and is counted.
    let (out, s) = publish(&d, &reader, "feed");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(s["refused_by"]["forbidden"], 1, "{s}");
    assert_eq!(d.metric("rejected_total", &[("reason", "forbidden")]), 1.0);
    assert_eq!(auth_failures(&d, "invalid_caveat"), 1.0);

    // The session's lines carry the token's class, never the token.
    d.signal(libc::SIGTERM);
    d.wait_exit(WAIT).expect("exit after SIGTERM");
    let lines = d.log_lines();
    assert!(
        lines.iter().any(|l| l["event"] == "plain_auth"),
        "a node requiring tokens over plain TCP says they travel in clear"
    );
    let classes: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "handshake_ok")
        .filter_map(|l| l["cap_id"].as_str())
        .collect();
    assert!(classes.contains(&"cap:feed:read"), "{classes:?}");
    assert!(classes.contains(&"cap:feed:write"), "{classes:?}");
    let rejected = lines
        .iter()
        .find(|l| l["event"] == "reject")
        .expect("a reject line");
    assert_eq!(rejected["cap_id"], "cap:feed:read", "{rejected}");
    let all = d.all_output();
    for t in [&reader, &writer] {
        let token = v.token(t);
        assert!(
            !all.contains(&token[10..40]),
            "a token leaked into the output"
        );
    }
}

#[test]
fn a_missing_or_foreign_token_is_unauth_and_an_expired_one_expired() {
    let v = Vault::new("refusals");
    let root = v.keygen("root");
    let stranger = v.keygen("stranger");
    let foreign = v.mint(
        &stranger,
        "foreign",
        &["--tenant", "acme", "--subscribe", "feed"],
    );
    let expired = v.mint(
        &root,
        "expired",
        &[
            "--tenant",
            "acme",
            "--subscribe",
            "feed",
            "--expires-at",
            "2020-01-01T00:00:00Z",
        ],
    );
    let d = node(&[pubkey(&root)]);

    let none = OapClient::connect(d.overlay, "auth-none", &["feed"], None);
    assert_eq!(none.err(), Some((401, "unauth".to_string())));
    let bad = OapClient::connect(
        d.overlay,
        "auth-bad",
        &["feed"],
        Some(v.token(&foreign).as_bytes()),
    );
    assert_eq!(bad.err(), Some((401, "unauth".to_string())));
    assert_eq!(auth_failures(&d, "unauth"), 2.0);

    let out = subscribe(&d, &expired, "feed").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401 expired"),
        "{}",
        text(&out)
    );
    assert_eq!(auth_failures(&d, "expired"), 1.0);
    assert_eq!(d.metric("rejected_total", &[("reason", "unauth")]), 3.0);
    assert_eq!(
        d.metric("overlay_handshake_failures_total", &[("reason", "proto")]),
        0.0,
        "a refused capability is not a protocol failure"
    );
}

#[test]
fn an_attenuated_token_is_refused_for_a_topic_it_gave_up() {
    let v = Vault::new("attenuate");
    let root = v.keygen("root");
    let both = v.mint(
        &root,
        "both",
        &[
            "--tenant",
            "acme",
            "--subscribe",
            "feed",
            "--subscribe",
            "news",
        ],
    );
    let news = v.path("news");
    let out = run(&[
        "token",
        "attenuate",
        "--token-file",
        both.to_str().unwrap(),
        "--topic",
        "news",
        "--out",
        news.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let inspect = run(&[
        "token",
        "inspect",
        "--token-file",
        news.to_str().unwrap(),
        "--verify-key",
        &pubkey(&root),
    ]);
    let shown = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        shown.contains("block 1") && shown.contains("signature: valid"),
        "{}",
        text(&inspect)
    );

    let d = node(&[pubkey(&root)]);
    let out = subscribe(&d, &news, "feed").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401 invalid_caveat"),
        "{}",
        text(&out)
    );
    assert_eq!(auth_failures(&d, "invalid_caveat"), 1.0);
    // What it kept still works.
    let ok = OapClient::connect(
        d.overlay,
        "news",
        &["news"],
        Some(v.token(&news).as_bytes()),
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn during_a_key_rotation_tokens_of_both_keys_are_accepted() {
    let v = Vault::new("rotation");
    let old = v.keygen("old");
    let new = v.keygen("new");
    let gone = v.keygen("gone");
    let args = ["--tenant", "acme", "--publish", "feed"];
    let (t_old, t_new, t_gone) = (
        v.mint(&old, "t-old", &args),
        v.mint(&new, "t-new", &args),
        v.mint(&gone, "t-gone", &args),
    );
    // One key as a file, the other inline: both forms are accepted.
    let inline = std::fs::read_to_string(new.with_extension("pub")).unwrap();
    let d = node(&[pubkey(&old), inline.trim().to_string()]);
    for t in [&t_old, &t_new] {
        let (out, s) = publish(&d, t, "feed");
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(s["acked"], 1, "{s}");
    }
    let (out, _) = publish(&d, &t_gone, "feed");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401 unauth"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_reload_rereads_the_key_files() {
    let v = Vault::new("reload");
    let old = v.keygen("old");
    let new = v.keygen("new");
    let args = ["--tenant", "acme", "--publish", "feed"];
    let (t_old, t_new) = (v.mint(&old, "t-old", &args), v.mint(&new, "t-new", &args));
    let current = v.path("current.pub");
    std::fs::copy(old.with_extension("pub"), &current).unwrap();
    let cfg = v.path("node.toml");
    let toml = format!(
        "[auth]\nrequired = true\ntenant = \"acme\"\nverify_keys = [{:?}]\n",
        current.to_str().unwrap()
    );
    std::fs::write(&cfg, toml).unwrap();
    let d = Daemon::builder()
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .start();
    d.wait_readyz(200, WAIT);
    assert!(publish(&d, &t_old, "feed").0.status.success());
    assert_eq!(publish(&d, &t_new, "feed").0.status.code(), Some(1));

    // The same config, the key file rotated under it: SIGHUP re-reads it.
    std::fs::copy(new.with_extension("pub"), &current).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log(WAIT, |l| {
        l["event"] == "config_reload" && l["changes"] == 0 && l["diff"].is_string()
    })
    .expect("a reload that re-read the key file");
    let (out, s) = publish(&d, &t_new, "feed");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s["acked"], 1, "{s}");
    assert_eq!(publish(&d, &t_old, "feed").0.status.code(), Some(1));
}

#[test]
fn peers_present_their_own_token_when_they_dial() {
    let v = Vault::new("peers");
    let root = v.keygen("root");
    let peer = v.mint(&root, "peer", &["--tenant", "acme", "--role", "peer"]);
    let reader = v.mint(
        &root,
        "reader",
        &["--tenant", "acme", "--subscribe", "feed"],
    );
    let writer = v.mint(&root, "writer", &["--tenant", "acme", "--publish", "feed"]);
    let a = node(&[pubkey(&root)]);
    let b = Daemon::builder()
        .arg("--peer")
        .arg(a.overlay.to_string())
        .cfg("auth.required", "true")
        .cfg("auth.verify_keys", format!("[\"{}\"]", pubkey(&root)))
        .cfg("auth.tenant", "acme")
        .cfg("auth.token_file", peer.to_str().unwrap())
        .start();
    poll_until("b's peer session on a", WAIT, || {
        (a.metric("overlay_sessions_active", &[]) == 1.0).then_some(())
    });
    assert_eq!(
        a.metric("auth_failures_total", &[("reason", "unauth")]),
        0.0
    );

    let mut sub = subscribe(&a, &reader, "feed");
    await_sessions(&a, 2.0, &mut sub);
    let (out, _) = publish(&b, &writer, "feed");
    assert!(out.status.success(), "{}", text(&out));
    let got = sub.wait_with_output().unwrap();
    assert!(got.status.success(), "{}", text(&got));
}
