//! The built daemon's TLS listener against `openssl s_client`, with certificates made by
//! the `openssl` commands of docs/OPERATIONS.md "Security": TLS 1.3 and ALPN `oap/1`
//! negotiated, TLS 1.2 and another ALPN refused and counted, rotation by SIGHUP, and a key
//! others can read refused at start.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{bin, have_tool, poll_until, Daemon};

const WAIT: Duration = Duration::from_secs(20);

struct Pki(PathBuf);

impl Pki {
    fn new(name: &str) -> Pki {
        let d =
            std::env::temp_dir().join(format!("svc-overlay-e2e-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Pki(d)
    }

    fn path(&self, f: &str) -> String {
        self.0.join(f).to_string_lossy().into_owned()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA `ca` (ca.pem, ca.key), as the Security section makes it.
    fn ca(&self, ca: &str) {
        let (pem, key) = (format!("{ca}.pem"), format!("{ca}.key"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &key,
            "-out",
            &pem,
        ]);
    }

    /// A node certificate `n.pem`/`n.key` signed by `ca`, SAN naming the node id.
    fn leaf(&self, ca: &str, n: &str) {
        let ext = format!("{n}.ext");
        std::fs::write(
            self.0.join(&ext),
            format!("subjectAltName=DNS:{n},URI:oap://{n},DNS:localhost\n"),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={n}"),
            "-keyout",
            &format!("{n}.key"),
            "-out",
            &format!("{n}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{n}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &format!("{n}.pem"),
        ]);
        chmod(&self.path(&format!("{n}.key")), 0o600);
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chmod(p: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `openssl s_client` to `addr` with `extra` arguments, stdin closed so that it ends after
/// the handshake; its stdout and stderr together.
fn s_client(addr: std::net::SocketAddr, dir: &Path, extra: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "n1",
        ])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    poll_until("s_client to end", WAIT, || child.try_wait().unwrap());
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn daemon(pki: &Pki) -> Daemon {
    Daemon::builder()
        .cfg("overlay.tls_listen", "127.0.0.1:0")
        .cfg("overlay.node_id", "n1")
        .cfg("tls.cert_file", pki.path("n1.pem"))
        .cfg("tls.key_file", pki.path("n1.key"))
        .start()
}

#[test]
fn s_client_negotiates_tls13_with_alpn_and_bad_clients_are_counted() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Pki::new("s_client");
    pki.ca("ca");
    pki.leaf("ca", "n1");
    let d = daemon(&pki);
    let addr = d.tls.expect("a TLS listener in the listening line");

    let ok = s_client(
        addr,
        &pki.0,
        &["-tls1_3", "-alpn", "oap/1", "-CAfile", "ca.pem"],
    );
    assert!(ok.contains("ALPN protocol: oap/1"), "{ok}");
    assert!(ok.contains("Verify return code: 0 (ok)"), "{ok}");
    assert!(ok.contains("TLSv1.3"), "{ok}");

    let old = s_client(addr, &pki.0, &["-tls1_2", "-alpn", "oap/1"]);
    assert!(!old.contains("ALPN protocol: oap/1"), "{old}");
    let h2 = s_client(addr, &pki.0, &["-tls1_3", "-alpn", "h2"]);
    assert!(!h2.contains("ALPN protocol"), "{h2}");
    poll_until("the failures to be counted", WAIT, || {
        let s = d.scrape();
        let version = s.value("tls_handshake_failures_total", &[("reason", "version")]);
        let alpn = s.value("tls_handshake_failures_total", &[("reason", "alpn")]);
        let tls = s.value("overlay_handshake_failures_total", &[("reason", "tls")]);
        (version == Some(1.0) && alpn == Some(1.0) && tls == Some(2.0)).then_some(())
    });
    let line = d
        .wait_log(WAIT, |l| {
            l["event"] == "handshake_fail" && l["tls_reason"] == "version"
        })
        .expect("a handshake_fail line for the TLS 1.2 client");
    assert_eq!(line["reason"], "tls", "{line}");
}

#[test]
fn sighup_rotates_the_certificate_and_a_bad_key_keeps_the_old_one() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Pki::new("rotate");
    pki.ca("old");
    pki.leaf("old", "n1");
    let d = daemon(&pki);
    let addr = d.tls.unwrap();
    let before = s_client(
        addr,
        &pki.0,
        &["-tls1_3", "-alpn", "oap/1", "-CAfile", "old.pem"],
    );
    assert!(before.contains("Verify return code: 0 (ok)"), "{before}");

    pki.ca("new");
    pki.leaf("new", "n1");
    d.signal(libc::SIGHUP);
    d.wait_log(WAIT, |l| {
        l["event"] == "tls_reload" && l["reason"].is_null()
    })
    .expect("a tls_reload line");
    let after = s_client(
        addr,
        &pki.0,
        &["-tls1_3", "-alpn", "oap/1", "-CAfile", "new.pem"],
    );
    assert!(after.contains("Verify return code: 0 (ok)"), "{after}");

    std::fs::write(pki.path("n1.key"), "not a key").unwrap();
    d.signal(libc::SIGHUP);
    let bad = d
        .wait_log(WAIT, |l| {
            l["event"] == "tls_reload" && l["reason"] == "invalid"
        })
        .expect("a failed tls_reload line");
    assert_eq!(bad["file"], pki.path("n1.key"), "{bad}");
    let still = s_client(
        addr,
        &pki.0,
        &["-tls1_3", "-alpn", "oap/1", "-CAfile", "new.pem"],
    );
    assert!(still.contains("Verify return code: 0 (ok)"), "{still}");
}

#[test]
fn a_key_readable_by_others_stops_the_start_naming_the_file() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Pki::new("perm");
    pki.ca("ca");
    pki.leaf("ca", "n1");
    chmod(&pki.path("n1.key"), 0o644);
    let out = Command::new(bin())
        .args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("SVC_OVERLAY_OVERLAY__TLS_LISTEN", "127.0.0.1:0")
        .env("SVC_OVERLAY_TLS__CERT_FILE", pki.path("n1.pem"))
        .env("SVC_OVERLAY_TLS__KEY_FILE", pki.path("n1.key"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains(&pki.path("n1.key")) && all.contains("readable by group or others"),
        "{all}"
    );
}

#[test]
fn auth_on_the_plain_listener_warns_that_tokens_travel_in_clear() {
    // auth.required needs a key to verify capability tokens with.
    let keys = Pki::new("plain_auth_key");
    let key = PathBuf::from(keys.path("root.key"));
    let out = Command::new(bin())
        .args(["token", "keygen", "--out", key.to_str().unwrap()])
        .output()
        .expect("run svc-overlay token keygen");
    assert!(out.status.success(), "{out:?}");
    let verify_keys = format!("[\"{}\"]", key.with_extension("pub").display());
    let d = Daemon::builder()
        .cfg("auth.required", "true")
        .cfg("auth.verify_keys", &verify_keys)
        .start();
    let w = d
        .wait_log(WAIT, |l| l["event"] == "plain_auth")
        .unwrap_or_else(|| panic!("no plain_auth warning\n{}", d.all_output()));
    assert_eq!(w["level"], "WARN", "{w}");

    if !have_tool("openssl") {
        return;
    }
    // TLS only: nothing travels in clear, nothing to warn about.
    let pki = Pki::new("plain_auth");
    pki.ca("ca");
    pki.leaf("ca", "n1");
    let d = Daemon::builder()
        .tls_only()
        .cfg("overlay.tls_listen", "127.0.0.1:0")
        .cfg("tls.cert_file", pki.path("n1.pem"))
        .cfg("tls.key_file", pki.path("n1.key"))
        .cfg("auth.required", "true")
        .cfg("auth.verify_keys", &verify_keys)
        .start();
    d.wait_readyz(200, WAIT);
    assert!(
        !d.log_lines().iter().any(|l| l["event"] == "plain_auth"),
        "{}",
        d.all_output()
    );
}
