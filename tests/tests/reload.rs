//! SIGHUP reloads and readiness: a reload that fails leaves `cfg_loaded` false (the node
//! runs on a config the operator no longer has) until a reload succeeds.

use std::time::Duration;

use e2e::Daemon;

#[test]
fn cfg_loaded_follows_the_last_reload() {
    let path = std::env::temp_dir().join(format!("svc-overlay-reload-{}.toml", std::process::id()));
    std::fs::write(&path, "[overlay.peer]\nmax_rps = 300\n").unwrap();
    let d = Daemon::builder()
        .arg("--config")
        .arg(path.to_string_lossy())
        .start();
    d.wait_readyz(200, Duration::from_secs(10));

    std::fs::write(&path, "[overlay.peer]\nmax_rps = 0\n").unwrap();
    d.signal(libc::SIGHUP);
    let body = d.wait_readyz(503, Duration::from_secs(10));
    assert_eq!(body["missing"], serde_json::json!(["cfg_loaded"]), "{body}");

    std::fs::write(&path, "[overlay.peer]\nmax_rps = 400\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_readyz(200, Duration::from_secs(10));
    let _ = std::fs::remove_file(&path);
}
