//! turmoil scenarios of a hostile host against the real runtime (see `sim::turmoil`): a
//! handshake flood, and malformed and oversize frames.
//!
//! Every scenario takes its seed from `SIM_SEED` (else a fixed default), prints it, asserts
//! through HTTP inside the simulation, and ends with the balance law checked on every node.

use std::collections::BTreeMap;

use anyhow::{anyhow, ensure};
use sim::turmoil::agents::{attack, handshake_flood, Hostile};
use sim::turmoil::checks::epilogue;
use sim::turmoil::expo::Exposition;
use sim::turmoil::steps::{
    assert_replays, expect_run, ms, names, publish_n, secs, wait_delivered, wait_sessions,
};
use sim::turmoil::{mesh, run, seed_from_env, Ctx, Setup};

const THREE: [&str; 3] = ["n1", "n2", "n3"];

/// Opens per peer node, to show that no established session was cut and redialed.
async fn opens(ctx: &Ctx) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut m = BTreeMap::new();
    for n in ctx.nodes() {
        let v = ctx
            .scrape(&n)
            .await?
            .get("overlay_sessions_open_total", &[])?;
        m.insert(n, v);
    }
    Ok(m)
}

// ----- 5. handshake flood ------------------------------------------------------------

const FLOOD: usize = 200;

fn flood_setup(seed: u64) -> Setup {
    let mut s = Setup::new(
        "handshake_flood",
        seed,
        mesh(&THREE, |n, c| {
            if n == "n1" {
                c.overlay.handshake_rate = 10;
                c.overlay.handshake_burst = 10;
            }
        }),
    );
    s.agents = names(&["evil"]);
    s
}

async fn flood(ctx: Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes();
    wait_sessions(&ctx, &nodes, 2.0, secs(5)).await?;
    let before = opens(&ctx).await?;
    let m0 = ctx.scrape("n1").await?;

    // 200 HELLOs in 0.4 s against a budget of 10 a second.
    let net = ctx.net().clone();
    let answers = ctx.spawn_on("evil", move || {
        handshake_flood(net, "n1:9444".into(), FLOOD, 10, ms(20))
    })?;
    // The mesh keeps working meanwhile, to and from the flooded node.
    let mut ids = publish_n(&ctx, "n1", 10, 200, ms(20)).await?;
    ids.extend(publish_n(&ctx, "n2", 10, 200, ms(20)).await?);
    wait_delivered(&ctx, &nodes, &ids, secs(3)).await?;
    let answers = answers.await.map_err(|_| anyhow!("flood dropped"))?;
    ctx.note(format!("flood answers {answers:?}"));
    let refused = answers.get(&429).copied().unwrap_or(0);
    let admitted = answers.get(&200).copied().unwrap_or(0);
    ensure!(
        refused + admitted == FLOOD && refused >= FLOOD - 30,
        "flood answers {answers:?}"
    );

    let m1 = ctx.scrape("n1").await?;
    let delta = |m1: &Exposition, name: &str, labels: &[(&str, &str)]| -> anyhow::Result<f64> {
        Ok(m1.get(name, labels)? - m0.get(name, labels)?)
    };
    let rl = delta(
        &m1,
        "overlay_handshake_failures_total",
        &[("reason", "ratelimit")],
    )?;
    ensure!(
        rl == refused as f64,
        "{rl} ratelimit failures counted, {refused} answered 429"
    );
    let rej = delta(&m1, "rejected_total", &[("reason", "ratelimit")])?;
    ensure!(
        rej == refused as f64,
        "rejected_total{{ratelimit}} rose by {rej}"
    );
    ensure!(
        delta(&m1, "overlay_handshake_attempts_total", &[])? == FLOOD as f64,
        "every flood connection is a handshake attempt"
    );
    ensure!(
        ctx.readyz("n1").await?.status == 200,
        "n1 not ready after the flood"
    );
    // The flood's sessions are gone; the mesh's never went.
    wait_sessions(&ctx, &nodes, 2.0, secs(3)).await?;
    let after = opens(&ctx).await?;
    for n in &nodes {
        let extra = if n == "n1" { admitted as f64 } else { 0.0 };
        ensure!(
            after[n] == before[n] + extra,
            "{n}: sessions opened {} -> {}",
            before[n],
            after[n]
        );
    }
    ctx.sleep(ms(500)).await;
    epilogue(&ctx).await?;
    Ok(())
}

#[test]
fn handshake_flood_is_rate_limited_and_sessions_survive() {
    expect_run(run(flood_setup(seed_from_env(0x5EED_0005)), flood));
}

// ----- 6. malformed and oversize frames ----------------------------------------------

fn malformed_setup(seed: u64) -> Setup {
    let mut s = Setup::new(
        "malformed_frames",
        seed,
        mesh(&THREE, |n, c| {
            if n == "n1" {
                // A frame begun must finish within this; the stalled one does not.
                c.timeouts.read = secs(1);
            }
        }),
    );
    s.agents = names(&["evil"]);
    s
}

/// What each attack must be answered with, and the `rejected_total` reason it counts.
fn expected(h: Hostile) -> (Option<u16>, &'static str) {
    match h {
        Hostile::Oversize => (Some(413), "oversize"),
        Hostile::BadVersion | Hostile::GarbageHello => (Some(400), "proto"),
        Hostile::Bomb => (Some(400), "ratio_cap"),
        // Cut off without an answer: the frame never arrived to be answered.
        Hostile::Stall => (None, "timeout"),
    }
}

async fn malformed(ctx: Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes();
    wait_sessions(&ctx, &nodes, 2.0, secs(5)).await?;
    let before = opens(&ctx).await?;
    let m0 = ctx.scrape("n1").await?;

    for h in Hostile::ALL {
        let net = ctx.net().clone();
        let answer = ctx.spawn_on("evil", move || attack(net, "n1:9444".into(), h))?;
        // Traffic between the nodes goes on while each attack lands.
        let ids = publish_n(&ctx, "n2", 3, 200, ms(20)).await?;
        wait_delivered(&ctx, &nodes, &ids, secs(3)).await?;
        let answer = answer.await.map_err(|_| anyhow!("attack dropped"))??;
        ctx.note(format!("{h:?} answered {answer:?}"));
        let (code, reason) = expected(h);
        match (code, &answer) {
            (Some(c), Some((got, error))) => ensure!(
                *got == c && error == reason,
                "{h:?} answered {got} {error}, expected {c} {reason}"
            ),
            (None, _) => {}
            (Some(c), None) => anyhow::bail!("{h:?} closed without the {c} answer"),
        }
    }
    // Sessions of the attacks are closed; nothing else was disturbed.
    wait_sessions(&ctx, &nodes, 2.0, secs(3)).await?;
    let m1 = ctx.scrape("n1").await?;
    let mut want: BTreeMap<&str, f64> = BTreeMap::new();
    for h in Hostile::ALL {
        *want.entry(expected(h).1).or_default() += 1.0;
    }
    for reason in [
        "oversize",
        "ratio_cap",
        "proto",
        "timeout",
        "busy",
        "unauth",
        "ratelimit",
    ] {
        let d = m1.get("rejected_total", &[("reason", reason)])?
            - m0.get("rejected_total", &[("reason", reason)])?;
        let w = want.get(reason).copied().unwrap_or(0.0);
        ensure!(
            d == w,
            "rejected_total{{reason={reason:?}}} rose by {d}, expected {w}"
        );
    }
    let hs = |m: &Exposition| m.get("overlay_handshake_failures_total", &[("reason", "proto")]);
    ensure!(
        hs(&m1)? - hs(&m0)? == 1.0,
        "only the garbage before HELLO is a handshake failure"
    );
    ensure!(
        ctx.readyz("n1").await?.status == 200,
        "n1 not ready after the attacks"
    );
    for n in ["n2", "n3"] {
        ensure!(
            ctx.scrape(n).await?.sum("rejected_total", &[]) == 0.0,
            "{n} rejected something"
        );
    }
    let after = opens(&ctx).await?;
    for n in &nodes {
        // Four attacks came after a proper HELLO: four client sessions on n1.
        let extra = if n == "n1" { 4.0 } else { 0.0 };
        ensure!(after[n] == before[n] + extra, "{n}: sessions opened");
    }
    ctx.sleep(ms(500)).await;
    epilogue(&ctx).await?;
    Ok(())
}

#[test]
fn malformed_and_oversize_frames_are_rejected_with_their_reason() {
    expect_run(run(malformed_setup(seed_from_env(0x5EED_0006)), malformed));
}

// ----- determinism -------------------------------------------------------------------

/// One seed, two runs of the handshake flood, one trace (agents, held links and the script's
/// own RNG included).
#[test]
fn same_seed_same_trace() {
    assert_replays(flood_setup, flood, seed_from_env(0x5EED_00D5));
}
