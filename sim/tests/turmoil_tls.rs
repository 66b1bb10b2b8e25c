//! The mesh over TLS on turmoil's simulated streams: three nodes serving TLS only with
//! mTLS, dialing each other as `tls://<id>@<host>:<port>`; a partition and its repair; the
//! handshake metrics of every TLS session asserted.
//!
//! Not in the determinism check: TLS draws its randomness from the OS, so handshake bytes
//! differ run to run (what is delivered and counted does not).

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::ensure;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use sim::turmoil::checks::epilogue;
use sim::turmoil::steps::{
    cut_between, expect_run, ms, names, publish_n, secs, wait_delivered, wait_sessions,
};
use sim::turmoil::{mesh, run, seed_from_env, Ctx, Setup};

const THREE: [&str; 3] = ["n1", "n2", "n3"];
const SIDE_A: [&str; 1] = ["n1"];
const SIDE_B: [&str; 2] = ["n2", "n3"];

/// A CA and one certificate per node naming its id, in a directory of this run's own.
fn pki() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("svc-overlay-sim-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for n in THREE {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![n.to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join(format!("{n}.pem")), cert.pem()).unwrap();
        let kf = dir.join(format!("{n}.key"));
        std::fs::write(&kf, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

fn tls_setup(seed: u64, dir: &std::path::Path) -> Setup {
    let file = |f: &str| dir.join(f).to_string_lossy().into_owned();
    Setup::new(
        "tls_mesh",
        seed,
        mesh(&THREE, |n, c| {
            c.overlay.keepalive = ms(500);
            c.timeouts.idle = secs(2);
            c.overlay.tls_listen = std::mem::take(&mut c.overlay.listen);
            c.overlay.peers = c
                .overlay
                .peers
                .iter()
                .map(|p| {
                    let host = p.split(':').next().unwrap_or(p);
                    format!("tls://{host}@{p}")
                })
                .collect();
            c.tls.cert_file = file(&format!("{n}.pem"));
            c.tls.key_file = file(&format!("{n}.key"));
            c.tls.client_ca_file = file("ca.pem");
            c.tls.ca_file = file("ca.pem");
        }),
    )
}

async fn tls_mesh(ctx: Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes();
    let (a, b) = (names(&SIDE_A), names(&SIDE_B));
    wait_sessions(&ctx, &nodes, 2.0, secs(5)).await?;
    let warm = publish_n(&ctx, "n1", 5, 200, ms(10)).await?;
    wait_delivered(&ctx, &nodes, &warm, secs(3)).await?;

    ctx.note("partition");
    cut_between(&SIDE_A, &SIDE_B, true);
    let mut during = BTreeSet::new();
    for _ in 0..10 {
        during.extend(publish_n(&ctx, "n1", 1, 200, ms(0)).await?);
        during.extend(publish_n(&ctx, "n3", 1, 200, ms(0)).await?);
        ctx.sleep(ms(100)).await;
    }
    wait_sessions(&ctx, &a, 0.0, secs(6)).await?;
    wait_sessions(&ctx, &b, 1.0, secs(6)).await?;

    ctx.note("repair");
    cut_between(&SIDE_A, &SIDE_B, false);
    // Redialed over TLS, with mTLS and the name checks, and repaired by DIGEST.
    wait_sessions(&ctx, &nodes, 2.0, secs(10)).await?;
    wait_delivered(&ctx, &nodes, &during, secs(10)).await?;

    for n in &nodes {
        let m = ctx.scrape(n).await?;
        let opened = m.get("overlay_sessions_open_total", &[])?;
        let ok = m.get(
            "overlay_pq_negotiations_total",
            &[("mode", "off"), ("outcome", "ok")],
        )?;
        let tls = m.get(
            "request_latency_seconds_count",
            &[("route", "handshake"), ("method", "tls")],
        )?;
        let tcp = m.get(
            "request_latency_seconds_count",
            &[("route", "handshake"), ("method", "tcp")],
        )?;
        let cross = if a.contains(n) { b.len() } else { a.len() };
        ensure!(
            opened >= (2 + cross) as f64,
            "{n}: {opened} sessions opened"
        );
        // Every session was a TLS one, with the handshake counted and timed as such.
        ensure!(
            ok == opened && tls == opened && tcp == 0.0,
            "{n}: {ok} TLS ok, {tls} timed over tls, {tcp} over tcp, {opened} sessions"
        );
        let failed = m.sum("tls_handshake_failures_total", &[]);
        ensure!(failed == 0.0, "{n}: {failed} TLS handshakes failed");
    }
    ctx.note(format!(
        "{} partition-time messages at all nodes after the repair",
        during.len()
    ));
    epilogue(&ctx).await?;
    Ok(())
}

/// Removes the certificates when the test ends, passed or not.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_tls_mesh_survives_a_partition_and_repairs() {
    let dir = Cleanup(pki());
    expect_run(run(tls_setup(seed_from_env(0x5EED_0715), &dir.0), tls_mesh));
}
