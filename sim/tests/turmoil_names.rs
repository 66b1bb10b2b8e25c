//! Peers by name over the simulated network, with the name's answers set by the script
//! (`SimNet::set_name`): n1 is given the name `seed`, which first answers n2, then n3,
//! then fails. The real runtime must follow the answer without cutting the sessions it
//! has, stop redialing an address that left it, and keep the last good answer through the
//! failures.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use sim::turmoil::checks::epilogue;
use sim::turmoil::harness::OVERLAY_PORT;
use sim::turmoil::steps::{assert_replays, ms, names, secs, wait_sessions};
use sim::turmoil::{node_config, seed_from_env, Ctx, Setup};

const NAME: &str = "seed:9444";
const INTERVAL: Duration = Duration::from_millis(500);

fn addr_of(host: &str) -> SocketAddr {
    SocketAddr::new(::turmoil::lookup(host), OVERLAY_PORT)
}

fn n1_config(peers: &[&str]) -> overlay_core::Config {
    let mut c = node_config("n1", &[]);
    c.overlay.peers = peers.iter().map(|p| p.to_string()).collect();
    c.overlay.peer_resolve_interval = INTERVAL;
    c
}

fn setup(seed: u64) -> Setup {
    let nodes = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            let c = if *n == "n1" {
                n1_config(&[])
            } else {
                node_config(n, &[])
            };
            (n.to_string(), c)
        })
        .collect();
    Setup::new("peer_names", seed, nodes)
}

async fn resolves(ctx: &Ctx, outcome: &str) -> anyhow::Result<f64> {
    ctx.scrape("n1")
        .await?
        .get("overlay_peer_resolve_total", &[("outcome", outcome)])
}

async fn dial_failures(ctx: &Ctx) -> anyhow::Result<f64> {
    ctx.scrape("n1")
        .await?
        .get("overlay_dial_failures_total", &[])
}

/// Waits for `n` more lookups of `outcome` than now.
async fn lookups(ctx: &Ctx, outcome: &str, n: f64) -> anyhow::Result<()> {
    let from = resolves(ctx, outcome).await?;
    let what = format!("{n} more {outcome} lookups");
    ctx.until(&what, secs(10), ms(50), || {
        let ctx = ctx.clone();
        async move { Ok(resolves(&ctx, outcome).await? >= from + n) }
    })
    .await?;
    Ok(())
}

async fn script(ctx: Ctx) -> anyhow::Result<()> {
    // The name exists before n1 is told about it (a reload), so its first lookup answers.
    ctx.net().set_name(NAME, Some(vec![addr_of("n2")]));
    ctx.control("n1")?.reconfigure(n1_config(&[NAME])).await?;
    wait_sessions(&ctx, &names(&["n1", "n2"]), 1.0, secs(5)).await?;

    ctx.net().set_name(NAME, Some(vec![addr_of("n3")]));
    // n3 is dialed after the next lookup, and the session with n2 stays.
    let took = wait_sessions(&ctx, &names(&["n3"]), 1.0, secs(5)).await?;
    ensure!(took <= INTERVAL + secs(1), "n3 dialed only after {took:?}");
    wait_sessions(&ctx, &names(&["n1"]), 2.0, secs(1)).await?;

    // n2 has left the answer: once its session ends, n1 does not redial it. A redial of a
    // crashed host would time out and be counted as a failed dial.
    ctx.crash("n2").await;
    wait_sessions(&ctx, &names(&["n1"]), 1.0, secs(3)).await?;
    lookups(&ctx, "ok", 4.0).await?;
    let failed = dial_failures(&ctx).await?;
    ensure!(
        failed == 0.0,
        "n1 redialed n2, gone from the answer: {failed} failures"
    );

    // The name fails: the last good answer (n3) is still what n1 dials.
    ctx.net().set_name(NAME, None);
    lookups(&ctx, "error", 2.0).await?;
    let ok = resolves(&ctx, "ok").await?;
    ctx.bounce("n3").await;
    wait_sessions(&ctx, &names(&["n1", "n3"]), 1.0, secs(10)).await?;
    ensure!(ctx.incarnation("n3")? == 2, "n3 restarted once");
    ensure!(
        resolves(&ctx, "ok").await? == ok,
        "a failed lookup counted as ok"
    );
    ensure!(resolves(&ctx, "error").await? >= 2.0);

    // n2 back up is still not in any answer: nobody dials it.
    ctx.bounce("n2").await;
    lookups(&ctx, "error", 2.0).await?;
    let n2 = ctx.scrape("n2").await?;
    ensure!(
        n2.get("overlay_sessions_active", &[])? == 0.0,
        "n2 was redialed"
    );
    ensure!(dial_failures(&ctx).await? == 0.0);
    epilogue(&ctx).await?;
    Ok(())
}

// Twice, with one trace: lookups and their answers are as repeatable as the rest.
#[test]
fn a_peer_name_is_followed_and_its_last_good_answer_kept() {
    assert_replays(setup, script, seed_from_env(0x5EED_0012));
}
