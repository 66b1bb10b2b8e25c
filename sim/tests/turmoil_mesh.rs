//! turmoil scenarios of a five-node mesh over the real runtime (see `sim::turmoil`): the
//! steady state, a partition, a crash, a graceful drain, and the determinism check.
//!
//! Every scenario takes its seed from `SIM_SEED` (else a fixed default), prints it, asserts
//! through HTTP inside the simulation, and ends with the balance law checked on every node
//! through the node's handle and through `/metrics`.

use std::collections::BTreeSet;

use anyhow::{anyhow, ensure};
use overlay_core::{CloseReason, Event, PublishError};
use sim::turmoil::checks::{epilogue, lost_in_transit};
use sim::turmoil::steps::{
    assert_replays, count_events, cut_between, expect_run, ms, names, publish_n, secs,
    wait_delivered, wait_sessions,
};
use sim::turmoil::{mesh, run, seed_from_env, Ctx, Setup};
use svc_overlay::bus::BusKind;

const FIVE: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

// ----- 1. steady mesh ----------------------------------------------------------------

fn steady_setup(seed: u64) -> Setup {
    // Keepalives off the clock of this short run: the tx/rx comparison needs a quiet
    // network, with no PING in flight while the nodes are scraped one after another.
    Setup::new(
        "steady_mesh",
        seed,
        mesh(&FIVE, |_, c| {
            c.overlay.keepalive = secs(60);
            c.timeouts.idle = secs(120);
        }),
    )
}

async fn steady(ctx: Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes();
    wait_sessions(&ctx, &nodes, 4.0, secs(5)).await?;
    let mut ids = BTreeSet::new();
    for n in &nodes {
        ids.extend(publish_n(&ctx, n, 20, 200, ms(5)).await?);
    }
    wait_delivered(&ctx, &nodes, &ids, secs(5)).await?;
    ctx.sleep(ms(500)).await;
    let m = epilogue(&ctx).await?;
    // What one node sent its peers, they received: frame by frame and byte by byte.
    for kind in ["gossip", "ctrl", "other"] {
        let of = |dir| -> f64 {
            m.values()
                .map(|e| e.sum("overlay_frames_total", &[("dir", dir), ("kind", kind)]))
                .sum()
        };
        ensure!(
            of("tx") == of("rx"),
            "{kind} frames: {} sent, {} received",
            of("tx"),
            of("rx")
        );
    }
    let (mut tx, mut rx) = (0.0, 0.0);
    for e in m.values() {
        tx += e.get("overlay_bytes_total", &[("dir", "tx")])?;
        rx += e.get("overlay_bytes_total", &[("dir", "rx")])?;
    }
    ensure!(tx == rx && tx > 0.0, "bytes: {tx} sent, {rx} received");
    for (n, e) in &m {
        ensure!(
            e.get("overlay_sessions_active", &[])? == 4.0,
            "{n}: sessions"
        );
        ensure!(
            e.get("overlay_sessions_open_total", &[])? == 4.0,
            "{n}: opens"
        );
        ensure!(
            e.sum("overlay_handshake_failures_total", &[]) == 0.0,
            "{n}: handshake failures"
        );
        // Every message reached every node; the copies beyond the first were duplicates.
        // Nothing was dropped or rejected.
        ensure!(
            e.get("overlay_rx_outcomes_total", &[("outcome", "dropped")])? == 0.0
                && e.get("overlay_rx_outcomes_total", &[("outcome", "rejected")])? == 0.0,
            "{n}: drops or rejects in a steady mesh"
        );
        ensure!(e.get("readyz_state", &[])? == 1.0, "{n}: readyz_state");
    }
    Ok(())
}

#[test]
fn steady_mesh_delivers_everywhere_and_counts_agree() {
    expect_run(run(steady_setup(seed_from_env(0x5EED_0001)), steady));
}

// ----- 2. partition and repair -------------------------------------------------------

const SIDE_A: [&str; 2] = ["n1", "n2"];
const SIDE_B: [&str; 3] = ["n3", "n4", "n5"];

fn partition_setup(seed: u64) -> Setup {
    // Quick keepalives and idle timeout: a session across the cut is found dead in ~2 s.
    Setup::new(
        "partition",
        seed,
        mesh(&FIVE, |_, c| {
            c.overlay.keepalive = ms(500);
            c.timeouts.idle = secs(2);
        }),
    )
}

fn set_partition(ctx: &Ctx, cut: bool) {
    ctx.note(if cut { "partition" } else { "repair" });
    cut_between(&SIDE_A, &SIDE_B, cut);
}

async fn partition(ctx: Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes();
    let (a, b) = (names(&SIDE_A), names(&SIDE_B));
    wait_sessions(&ctx, &nodes, 4.0, secs(5)).await?;
    let warm = publish_n(&ctx, "n1", 5, 200, ms(10)).await?;
    wait_delivered(&ctx, &nodes, &warm, secs(3)).await?;

    set_partition(&ctx, true);
    // Both sides publish while the cut is not yet noticed, and after.
    let mut during_a = BTreeSet::new();
    let mut during_b = BTreeSet::new();
    for _ in 0..10 {
        during_a.extend(publish_n(&ctx, "n1", 1, 200, ms(0)).await?);
        during_b.extend(publish_n(&ctx, "n4", 1, 200, ms(0)).await?);
        ctx.sleep(ms(100)).await;
    }
    // Each side still reaches its own nodes.
    wait_delivered(&ctx, &a, &during_a, secs(2)).await?;
    wait_delivered(&ctx, &b, &during_b, secs(2)).await?;
    // Sessions across the cut are found dead (idle timeout) and closed on both sides.
    wait_sessions(&ctx, &a, 1.0, secs(6)).await?;
    wait_sessions(&ctx, &b, 2.0, secs(6)).await?;
    for n in &nodes {
        let idle = count_events(&ctx, n, |k| {
            matches!(
                k,
                BusKind::Overlay(Event::Closed {
                    reason: CloseReason::IdleTimeout,
                    ..
                })
            )
        });
        let cross = if a.contains(n) { b.len() } else { a.len() };
        ensure!(
            idle >= cross,
            "{n}: {idle} idle closes for {cross} peers across the cut"
        );
    }

    set_partition(&ctx, false);
    // Dialers redial across the healed cut; readiness is whole everywhere.
    wait_sessions(&ctx, &nodes, 4.0, secs(10)).await?;
    for n in &nodes {
        let m = ctx.scrape(n).await?;
        let opens = m.get("overlay_sessions_open_total", &[])?;
        let cross = if a.contains(n) { b.len() } else { a.len() };
        ensure!(opens >= (4 + cross) as f64, "{n}: {opens} sessions opened");
    }
    let after = publish_n(&ctx, "n3", 5, 200, ms(10)).await?;
    wait_delivered(&ctx, &nodes, &after, secs(3)).await?;

    // The cut really swallowed messages on their way across...
    let lost = lost_in_transit(&ctx)?;
    let crossing = lost
        .iter()
        .filter(|l| during_a.contains(&l.msg_id) || during_b.contains(&l.msg_id))
        .count();
    ensure!(crossing > 0, "a partition that lost nothing tested nothing");
    // ...and the repair brings every one of them to every node: the first DIGEST of each
    // new link names what the other side lacks, and it is pulled from the store.
    let mut all = during_a.clone();
    all.extend(during_b.iter().copied());
    wait_delivered(&ctx, &nodes, &all, secs(10)).await?;
    let mut rounds = 0.0;
    let mut pulled = 0.0;
    for n in &nodes {
        let m = ctx.scrape(n).await?;
        rounds += m.sum("overlay_reconcile_rounds_total", &[]);
        pulled += m.sum("overlay_tree_pulls_total", &[("outcome", "served")]);
    }
    ensure!(
        rounds > 0.0 && pulled > 0.0,
        "repaired without a digest or a pull?"
    );
    ctx.note(format!(
        "{crossing} frames of partition-time messages lost in transit; all {} messages at \
         all {} nodes after the repair ({pulled} pulls served, {rounds} digests)",
        all.len(),
        nodes.len()
    ));
    epilogue(&ctx).await?;
    Ok(())
}

#[test]
fn partition_and_repair_deliver_everything_everywhere() {
    expect_run(run(partition_setup(seed_from_env(0x5EED_0002)), partition));
}

// ----- 4. crash and bounce -----------------------------------------------------------

fn crash_setup(seed: u64) -> Setup {
    Setup::new("crash_bounce", seed, mesh(&FIVE, |_, _| {}))
}

async fn crash(ctx: Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes();
    let others = names(&["n1", "n2", "n4", "n5"]);
    wait_sessions(&ctx, &nodes, 4.0, secs(5)).await?;
    let warm = publish_n(&ctx, "n1", 5, 200, ms(10)).await?;
    wait_delivered(&ctx, &nodes, &warm, secs(3)).await?;
    let mut opens = Vec::new();
    for n in &others {
        opens.push(
            ctx.scrape(n)
                .await?
                .get("overlay_sessions_open_total", &[])?,
        );
    }

    ctx.crash("n3").await;
    // Peers notice (the closes arrive, sessions drop) and keep serving each other.
    wait_sessions(&ctx, &others, 3.0, secs(3)).await?;
    let down = publish_n(&ctx, "n2", 5, 200, ms(20)).await?;
    wait_delivered(&ctx, &others, &down, secs(3)).await?;
    // n4 and n5 dial n3. A crashed host answers nothing, so their redials time out
    // (`overlay.handshake_timeout` bounds a connect) and are counted; n1 and n2, which n3
    // dialed, have nothing to redial.
    ctx.until("failed redials of n3 counted", secs(3), ms(100), || {
        let ctx = ctx.clone();
        async move {
            for n in ["n4", "n5"] {
                if ctx
                    .scrape(n)
                    .await?
                    .get("overlay_dial_failures_total", &[])?
                    < 1.0
                {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await?;
    // Peers are named: n4 and n5 dial the address the name n3 resolved to.
    let n3 = format!("{}:", ::turmoil::lookup("n3"));
    for n in ["n4", "n5"] {
        let failed = count_events(
            &ctx,
            n,
            |k| matches!(k, BusKind::DialFailed { addr, .. } if addr.starts_with(&n3)),
        );
        ensure!(failed >= 1, "{n}: the failed dials were not of n3");
    }
    for n in ["n1", "n2"] {
        let f = ctx
            .scrape(n)
            .await?
            .get("overlay_dial_failures_total", &[])?;
        ensure!(f == 0.0, "{n}: {f} dial failures, but it dials nobody");
    }
    ctx.bounce("n3").await;
    wait_sessions(&ctx, &nodes, 4.0, secs(10)).await?;
    ensure!(ctx.incarnation("n3")? == 2, "n3 restarted once");
    let mut back = publish_n(&ctx, "n3", 5, 200, ms(10)).await?;
    back.extend(publish_n(&ctx, "n5", 5, 200, ms(10)).await?);
    wait_delivered(&ctx, &nodes, &back, secs(3)).await?;
    // Every peer opened a new session with the restarted node and counted it.
    for (n, before) in others.iter().zip(opens) {
        let now = ctx
            .scrape(n)
            .await?
            .get("overlay_sessions_open_total", &[])?;
        ensure!(
            now == before + 1.0,
            "{n}: sessions opened {before} -> {now}"
        );
    }
    epilogue(&ctx).await?;
    Ok(())
}

#[test]
fn crash_and_bounce_peers_notice_and_redial() {
    expect_run(run(crash_setup(seed_from_env(0x5EED_0004)), crash));
}

// ----- 8. graceful drain -------------------------------------------------------------

fn drain_setup(seed: u64) -> Setup {
    Setup::new(
        "drain",
        seed,
        mesh(&FIVE, |n, c| {
            if n == "n5" {
                c.shutdown.drain_deadline = secs(10);
            }
        }),
    )
}

async fn drain(ctx: Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes();
    let rest = names(&["n1", "n2", "n3", "n4"]);
    wait_sessions(&ctx, &nodes, 4.0, secs(5)).await?;

    // n5 has more for n1 than the link takes while it is held: the drain must wait for it.
    ::turmoil::hold("n5", "n1");
    let backlog = publish_n(&ctx, "n5", 100, 1024, ms(0)).await?;
    wait_delivered(&ctx, &names(&["n2", "n3", "n4"]), &backlog, secs(3)).await?;

    ctx.control("n5")?.begin_shutdown().await;
    let r = ctx.readyz("n5").await?;
    ensure!(
        r.status == 503 && r.missing.iter().any(|m| m == "draining"),
        "n5 draining but /readyz says {} {}",
        r.status,
        r.body
    );
    ensure!(
        ctx.scrape("n5").await?.get("readyz_state", &[])? == 0.0,
        "readyz_state of a draining node"
    );
    ensure!(
        ctx.publish("n5", "t", bytes::Bytes::from_static(b"late"))
            .await?
            == Err(PublishError::NotReady),
        "a draining node takes no new writes"
    );
    // The rest of the mesh goes on meanwhile.
    let during = publish_n(&ctx, "n2", 5, 200, ms(20)).await?;
    wait_delivered(&ctx, &rest, &during, secs(3)).await?;
    for n in ["n2", "n3", "n4"] {
        let told = count_events(&ctx, n, |k| {
            matches!(k, BusKind::Overlay(Event::PeerDraining { .. }))
        });
        ensure!(told == 1, "{n}: {told} GOAWAYs from the draining n5");
    }

    ::turmoil::release("n5", "n1");
    ctx.until("n5 stopped", secs(10), ms(50), || {
        let stopped = !ctx.running().contains(&"n5".to_string());
        async move { Ok(stopped) }
    })
    .await?;
    let report = ctx
        .reports("n5")
        .pop()
        .ok_or_else(|| anyhow!("n5 stopped without a report"))?;
    ensure!(
        report.drained && report.left_open == 0 && report.egress_dropped == 0,
        "n5 did not drain cleanly: {report:?}"
    );
    // Everything n5 had queued reached n1 before it left.
    wait_delivered(&ctx, &names(&["n1"]), &backlog, secs(1)).await?;
    wait_sessions(&ctx, &rest, 3.0, secs(3)).await?;
    // A host whose software ended takes no packets: the connect is refused or never
    // answered, either way no admin plane answers for n5 any more.
    let gone = tokio::time::timeout(secs(1), ctx.get("n5", "/readyz")).await;
    ensure!(
        !matches!(gone, Ok(Ok(_))),
        "n5's admin plane outlived the node"
    );
    epilogue(&ctx).await?;
    Ok(())
}

#[test]
fn graceful_drain_delivers_its_backlog_and_leaves() {
    expect_run(run(drain_setup(seed_from_env(0x5EED_0008)), drain));
}

// ----- determinism -------------------------------------------------------------------

/// One seed, two runs, one trace: events (with simulated times, correlation ids, peers)
/// and final metric values hash the same. The partition exercises the most randomness
/// (link latencies, timeouts, dial backoff jitter, redials), the crash a node's restart.
#[test]
fn same_seed_same_trace() {
    let seed = seed_from_env(0x5EED_00DD);
    let a = assert_replays(partition_setup, partition, seed);
    let other = expect_run(run(partition_setup(seed ^ 1), partition));
    assert_ne!(
        a.trace.hash(),
        other.trace.hash(),
        "another seed gave the same trace: the hash covers too little"
    );
    assert_replays(crash_setup, crash, seed);
}
