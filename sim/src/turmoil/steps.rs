//! Steps scenarios share: waiting for a mesh, publishing, waiting for delivery.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use overlay_core::oap::MsgId;

use svc_overlay::bus::BusKind;

use super::harness::Ctx;

pub const TOPIC: &str = "t";

/// A payload that differs per message, so traces show which one went where.
pub fn payload(tag: u64, size: usize) -> Bytes {
    let mut v = vec![0u8; size];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (tag as u8).wrapping_add(i as u8);
    }
    Bytes::from(v)
}

/// Waits until each of `nodes` serves `/readyz` 200 and has `sessions` established
/// sessions (`overlay_sessions_active`, read over HTTP).
pub async fn wait_sessions(
    ctx: &Ctx,
    nodes: &[String],
    sessions: f64,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let what = format!("{nodes:?} ready with {sessions} sessions");
    ctx.until(&what, limit, Duration::from_millis(100), || {
        let ctx = ctx.clone();
        let nodes = nodes.to_vec();
        async move {
            for n in &nodes {
                if ctx.readyz(n).await?.status != 200 {
                    return Ok(false);
                }
                if ctx.scrape(n).await?.get("overlay_sessions_active", &[])? != sessions {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await
}

/// Publishes `count` messages at `node`, `every` apart; every one must be accepted.
pub async fn publish_n(
    ctx: &Ctx,
    node: &str,
    count: u64,
    size: usize,
    every: Duration,
) -> anyhow::Result<BTreeSet<MsgId>> {
    let mut ids = BTreeSet::new();
    for i in 0..count {
        let id = ctx
            .publish(node, TOPIC, payload(i, size))
            .await?
            .map_err(|e| anyhow!("publish {i} at {node}: {e}"))?;
        ids.insert(id);
        if !every.is_zero() {
            ctx.sleep(every).await;
        }
    }
    Ok(ids)
}

/// Waits until every one of `ids` is delivered on every one of `nodes`.
pub async fn wait_delivered(
    ctx: &Ctx,
    nodes: &[String],
    ids: &BTreeSet<MsgId>,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let what = format!("{} messages delivered on {nodes:?}", ids.len());
    let r = ctx
        .until(&what, limit, Duration::from_millis(50), || {
            let ok = nodes.iter().all(|n| ids.is_subset(&ctx.delivered(n)));
            async move { Ok(ok) }
        })
        .await;
    if r.is_err() {
        for n in nodes {
            let missing = ids.difference(&ctx.delivered(n)).count();
            ctx.note(format!("{n} misses {missing} of {}", ids.len()));
        }
    }
    r
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Cuts (or, with `cut` false, repairs) every link between the hosts of side `a` and those
/// of side `b`, both directions.
pub fn cut_between(a: &[&str], b: &[&str], cut: bool) {
    for x in a {
        for y in b {
            if cut {
                ::turmoil::partition(*x, *y);
            } else {
                ::turmoil::repair(*x, *y);
            }
        }
    }
}

pub fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The node's recorded bus events (messages aside) that `pred` picks.
pub fn count_events(ctx: &Ctx, node: &str, pred: impl Fn(&BusKind) -> bool) -> usize {
    ctx.events(node)
        .iter()
        .filter(|r| pred(&r.event.kind))
        .count()
}

/// Sum of one series over several nodes' scrapes.
pub async fn sum_over(
    ctx: &Ctx,
    nodes: &[String],
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for n in nodes {
        total += ctx.scrape(n).await?.sum(name, labels);
    }
    Ok(total)
}

/// A scenario's result, or a panic with everything the run said about its failure.
pub fn expect_run(r: anyhow::Result<super::Outcome>) -> super::Outcome {
    match r {
        Ok(o) => {
            println!(
                "{} trace lines, {:?} simulated, {} connections, trace hash {:#018x}",
                o.trace.lines().len(),
                o.simulated,
                o.connections,
                o.trace.hash()
            );
            o
        }
        Err(e) => panic!("{e:#}"),
    }
}

/// Runs a scenario twice with one seed and requires one trace (events with their
/// simulated times, correlation ids and peers, then the final metric values); names the
/// first line where the runs part if they do.
pub fn assert_replays<S, F, Fut>(setup: S, script: F, seed: u64) -> super::Outcome
where
    S: Fn(u64) -> super::Setup,
    F: FnOnce(Ctx) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + 'static,
{
    let a = expect_run(super::run(setup(seed), script.clone()));
    let b = expect_run(super::run(setup(seed), script));
    if let Some((i, x, y)) = a.trace.first_difference(&b.trace) {
        panic!("SIM_SEED={seed:#x}: runs part at trace line {i}:\n first: {x:?}\nsecond: {y:?}");
    }
    assert_eq!(a.trace.hash(), b.trace.hash());
    a
}
