//! turmoil scenarios of pressure over the real runtime (see `sim::turmoil`): a consumer
//! that stops reading, and link latency spikes.
//!
//! Every scenario takes its seed from `SIM_SEED` (else a fixed default), prints it, asserts
//! through HTTP inside the simulation, and ends with the balance law checked on every node.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, ensure};
use overlay_core::oap::MsgId;
use overlay_core::{Event, ReadyState};
use sim::turmoil::agents::{publisher, subscriber, Inbox, PubCmd, Sent};
use sim::turmoil::checks::epilogue;
use sim::turmoil::steps::{
    assert_replays, expect_run, ms, names, publish_n, secs, sum_over, wait_delivered,
    wait_sessions, TOPIC,
};
use sim::turmoil::{mesh, run, seed_from_env, Ctx, Setup};
use svc_overlay::bus::BusKind;
use tokio::sync::{mpsc, oneshot};

// ----- 3. slow consumer --------------------------------------------------------------

const SUSTAIN: Duration = Duration::from_secs(2);
/// How often the publisher probes with ACK_REQ while waiting for `busy`.
const PROBE_EVERY: Duration = Duration::from_millis(100);

fn slow_setup(seed: u64) -> Setup {
    let mut s = Setup::new(
        "slow_consumer",
        seed,
        mesh(&["n1", "n2", "n3"], |n, c| {
            c.readiness.sustain = SUSTAIN;
            if n == "n1" {
                // A short egress queue fills fast; write and idle timeouts far beyond the
                // run, so the stuck session is never cut: only readiness reacts.
                c.overlay.peer.egress_queue_frames = 64;
                c.timeouts.write = secs(60);
                c.timeouts.idle = secs(60);
            }
        }),
    );
    s.agents = names(&["slow", "pub"]);
    s
}

async fn probe(cmds: &mpsc::UnboundedSender<PubCmd>) -> anyhow::Result<(u16, Option<String>)> {
    let (tx, rx) = oneshot::channel();
    cmds.send(PubCmd::Probe(tx))
        .map_err(|_| anyhow!("publisher stopped"))?;
    rx.await.map_err(|_| anyhow!("publisher stopped"))?
}

fn streamed_between(sent: &RefCell<Sent>, from: Duration, to: Duration) -> BTreeSet<MsgId> {
    sent.borrow()
        .streamed
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, id)| *id)
        .collect()
}

/// `/readyz` (just polled into `state`) follows the core's last readiness change within a
/// poll and a request: the admin plane serves what the node decided, not a tick later.
fn served_promptly(ctx: &Ctx, state: ReadyState) -> anyhow::Result<()> {
    let changed = ctx
        .events("n1")
        .iter()
        .rev()
        .find_map(|r| match &r.event.kind {
            BusKind::Overlay(Event::ReadinessChanged { state: s, .. }) if *s == state => Some(r.at),
            _ => None,
        })
        .ok_or_else(|| anyhow!("no readiness change to {state:?} on the bus"))?;
    let lag = ctx.now() - changed;
    ensure!(
        lag < ms(100),
        "/readyz served {state:?} {lag:?} after the node changed to it"
    );
    Ok(())
}

async fn slow_consumer(ctx: Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes();
    let peers = names(&["n2", "n3"]);
    wait_sessions(&ctx, &nodes, 2.0, secs(5)).await?;

    let inbox: Rc<RefCell<Inbox>> = Rc::default();
    let (net, i2) = (ctx.net().clone(), inbox.clone());
    ctx.spawn_on("slow", move || {
        subscriber(net, "n1:9444".into(), "slow".into(), vec![TOPIC.into()], i2)
    })?;
    let sent: Rc<RefCell<Sent>> = Rc::default();
    let (cmds, rx) = mpsc::unbounded_channel();
    let (net, s2, rng) = (ctx.net().clone(), sent.clone(), ctx.rng(1));
    let publishing = ctx.spawn_on("pub", move || {
        publisher(net, "n1:9444".into(), 1024, rng, rx, s2)
    })?;
    ctx.until("subscriber up", secs(2), ms(10), || {
        let up = inbox.borrow().established;
        async move { Ok(up) }
    })
    .await?;

    // Steady: 100 messages a second reach the subscriber and both peers; acks are 202.
    cmds.send(PubCmd::Stream(Some(ms(10))))?;
    ctx.sleep(ms(500)).await;
    ensure!(probe(&cmds).await?.0 == 202, "ack before the stall");
    ensure!(!inbox.borrow().got.is_empty(), "subscriber got nothing");

    // The subscriber's link stalls: n1's writer fills the TCP window, then its egress queue.
    ::turmoil::hold("n1", "slow");
    let held_at = ctx.now();
    ctx.note("hold n1 <-> slow");
    let mut busy_at = None;
    while busy_at.is_none() {
        ensure!(
            ctx.now() - held_at < secs(10),
            "no 503 busy within 10 s of the stall"
        );
        let (code, error) = probe(&cmds).await?;
        match code {
            202 => ctx.sleep(PROBE_EVERY).await,
            503 => {
                ensure!(error.as_deref() == Some("busy"), "503 for {error:?}");
                busy_at = Some(ctx.now());
            }
            other => anyhow::bail!("ack {other} while the queue filled"),
        }
    }
    let busy_at = busy_at.unwrap_or_default();
    ctx.note("writes fail first: 503 busy");
    // The queue went over its watermark at most one probe before the 503; readiness must
    // hold until the watermark has held for `readiness.sustain`.
    ctx.sleep(secs(1)).await;
    let r = ctx.readyz("n1").await?;
    ensure!(
        r.status == 200,
        "n1 not ready 1 s into the stall: {}",
        r.body
    );
    let red = ctx
        .until("n1 /readyz 503", secs(5), ms(20), || {
            let ctx = ctx.clone();
            async move { Ok(ctx.readyz("n1").await?.status == 503) }
        })
        .await?;
    served_promptly(&ctx, ReadyState::Degraded)?;
    let red_after = ctx.now() - busy_at;
    ensure!(
        red_after + PROBE_EVERY + overlay_core::TICK >= SUSTAIN,
        "readiness went red {red_after:?} after the watermark: before the sustain window"
    );
    let r = ctx.readyz("n1").await?;
    ensure!(
        r.status == 503 && r.missing == ["queues_ok"],
        "n1 degraded with {:?} ({}), expected queues_ok alone after {red:?}",
        r.missing,
        r.body
    );
    let m = ctx.scrape("n1").await?;
    ensure!(
        m.get("readyz_state", &[])? == 2.0,
        "readyz_state of a degraded node"
    );
    let fill = m.get("overlay_egress_fill_ratio", &[])?;
    ensure!(
        fill >= 0.9,
        "fullest egress queue {fill} full while degraded"
    );
    // Still writes-fail-first: a second acked publish is refused too.
    ensure!(probe(&cmds).await?.0 == 503, "ack while degraded");
    ensure!(
        m.get("rejected_total", &[("reason", "busy")])? >= 1.0,
        "busy refusals are counted"
    );
    // What did not fit is owed, not dropped: it waits in the store for the subscriber.
    ensure!(
        m.get("overlay_owed_messages", &[])? > 0.0
            && m.get(
                "overlay_queue_dropped_total",
                &[("queue", "egress"), ("reason", "full")]
            )? == 0.0,
        "the subscriber's overflow is owed, not dropped"
    );
    // The peers were never stalled: what the publisher sent during the stall reached them.
    let stalled = streamed_between(&sent, held_at, ctx.now());
    ensure!(
        stalled.len() > 100,
        "only {} messages during the stall",
        stalled.len()
    );
    wait_delivered(&ctx, &peers, &stalled, secs(2)).await?;

    let before = inbox.borrow().got.len();
    ::turmoil::release("n1", "slow");
    ctx.note("release n1 <-> slow");
    let released_at = ctx.now();
    cmds.send(PubCmd::Stream(None))?;
    ctx.until("n1 /readyz 200", secs(5), ms(20), || {
        let ctx = ctx.clone();
        async move { Ok(ctx.readyz("n1").await?.status == 200) }
    })
    .await?;
    served_promptly(&ctx, ReadyState::Ready)?;
    ensure!(probe(&cmds).await?.0 == 202, "ack after the stall");
    let fill = ctx
        .scrape("n1")
        .await?
        .get("overlay_egress_fill_ratio", &[])?;
    ensure!(fill < 0.9, "egress still {fill} full after the release");
    // The subscriber reads again: the backlog n1 kept for it arrives, every message.
    let streamed: Vec<MsgId> = sent.borrow().streamed.iter().map(|(_, id)| *id).collect();
    ctx.until("subscriber catches up", secs(5), ms(50), || {
        let i = inbox.borrow();
        let r = match &i.ended {
            Some(why) => Err(anyhow!("subscriber ended: {why}")),
            None => {
                let got: BTreeSet<&MsgId> = i.got.iter().collect();
                Ok(i.got.len() > before && streamed.iter().all(|id| got.contains(id)))
            }
        };
        async move { r }
    })
    .await?;
    ensure!(
        inbox.borrow().ended.is_none(),
        "subscriber cut off: {:?}",
        inbox.borrow().ended
    );
    ctx.note(format!(
        "subscriber got {} messages, {} after the release at {:?}",
        inbox.borrow().got.len(),
        inbox.borrow().got.len() - before,
        released_at
    ));
    drop(cmds);
    publishing
        .await
        .map_err(|_| anyhow!("publisher dropped"))??;
    ctx.sleep(ms(500)).await;
    epilogue(&ctx).await?;
    Ok(())
}

#[test]
fn slow_consumer_degrades_readiness_only_after_sustain() {
    expect_run(run(slow_setup(seed_from_env(0x5EED_0003)), slow_consumer));
}

// ----- 7. link latency spikes --------------------------------------------------------

const SPIKE: Duration = Duration::from_millis(1500);

fn latency_setup(seed: u64) -> Setup {
    Setup::new(
        "latency_spikes",
        seed,
        mesh(&["n1", "n2", "n3", "n4", "n5"], |n, c| {
            if n == "n5" {
                // n5 waits out a slow connect (its connect timeout is its handshake
                // timeout); the others give a handshake 1 s, less than the spike.
                c.overlay.handshake_timeout = secs(10);
            }
        }),
    )
}

async fn latency(ctx: Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes();
    let four = names(&["n1", "n2", "n3", "n4"]);
    wait_sessions(&ctx, &nodes, 4.0, secs(5)).await?;

    // An established session rides out a spike: slower, nothing lost.
    ctx.set_latency("n1", "n2", Some(ms(300))).await;
    let slow = publish_n(&ctx, "n1", 5, 200, ms(20)).await?;
    wait_delivered(&ctx, &nodes, &slow, secs(3)).await?;

    // n5 restarts behind links slower than its peers' handshake timeout: they accept its
    // connections, its HELLO arrives too late, they count the timeout and close.
    for x in ["n1", "n2", "n3", "n4"] {
        ctx.set_latency("n5", x, Some(SPIKE)).await;
    }
    ctx.bounce("n5").await;
    let timeouts = ctx
        .until("handshake timeouts counted", secs(10), ms(100), || {
            let ctx = ctx.clone();
            let four = four.clone();
            async move {
                let t = sum_over(
                    &ctx,
                    &four,
                    "overlay_handshake_failures_total",
                    &[("reason", "timeout")],
                )
                .await?;
                Ok(t >= 4.0)
            }
        })
        .await;
    timeouts?;
    // The rest of the mesh is untouched by it.
    let during = publish_n(&ctx, "n3", 5, 200, ms(20)).await?;
    wait_delivered(&ctx, &four, &during, secs(3)).await?;
    for n in &four {
        ensure!(
            ctx.readyz(n).await?.status == 200,
            "{n} not ready during the spike"
        );
    }

    for x in ["n1", "n2", "n3", "n4"] {
        ctx.set_latency("n5", x, None).await;
    }
    ctx.set_latency("n1", "n2", None).await;
    wait_sessions(&ctx, &nodes, 4.0, secs(15)).await?;
    let after = publish_n(&ctx, "n5", 5, 200, ms(20)).await?;
    wait_delivered(&ctx, &nodes, &after, secs(3)).await?;
    let total = sum_over(
        &ctx,
        &four,
        "overlay_handshake_failures_total",
        &[("reason", "timeout")],
    )
    .await?;
    let rejected = sum_over(&ctx, &four, "rejected_total", &[("reason", "timeout")]).await?;
    ctx.note(format!(
        "{total} handshake timeouts, rejected_total{{timeout}} {rejected}"
    ));
    ensure!(rejected >= total, "handshake timeouts are refusals too");
    ctx.sleep(ms(500)).await;
    epilogue(&ctx).await?;
    Ok(())
}

#[test]
fn latency_spikes_count_handshake_timeouts_and_keep_the_balance() {
    expect_run(run(latency_setup(seed_from_env(0x5EED_0007)), latency));
}

// ----- determinism -------------------------------------------------------------------

/// One seed, two runs of the slow consumer, one trace (agents, held links and the script's
/// own RNG included).
#[test]
fn same_seed_same_trace() {
    assert_replays(slow_setup, slow_consumer, seed_from_env(0x5EED_00D3));
}
