//! The many-node simulator over the core, small enough for every test run. The large
//! configuration is `cargo run -p sim --release --bin many-node` (docs/SIMULATION.md).

use std::time::Duration;

use sim::des::{Miss, Report, Sim, SimConfig};

fn seed() -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42)
}

fn run(cfg: SimConfig) -> Report {
    let seed = cfg.seed;
    let r = Sim::new(cfg).run();
    println!("seed {seed} (replay: SIM_SEED={seed})\n{r}");
    if std::env::var("DBG").is_ok() {
        for m in &r.missed {
            println!("{m:?}");
        }
    }
    assert!(r.balance_ok, "seed {seed}: balance law broken");
    assert!(r.readiness_ok, "seed {seed}: readiness told an untruth");
    r
}

/// Push gossip without repair misses a few deliveries whatever the fault: a node whose
/// every path from the origin is longer than the ttl, or that every relay's random fanout
/// skipped. Measured: at most 2 in 2,400 on a clean network over seeds 1..=40. Misses a
/// scenario's fault does not explain must stay within this (1 in 1,000 of the deliveries
/// possible); an epidemic broadcast tree with repair is what will make them 0.
fn within_gossip_baseline(seed: u64, r: &Report, unexplained: &[&Miss]) {
    assert!(
        unexplained.len() as u64 * 1000 <= r.up_possible,
        "seed {seed}: {} of {} deliveries missed without the fault to explain them: {unexplained:?}",
        unexplained.len(),
        r.up_possible
    );
}

fn small() -> SimConfig {
    SimConfig {
        seed: seed(),
        nodes: 60,
        messages: 40,
        publish_over: Duration::from_secs(5),
        settle: Duration::from_secs(5),
        ..SimConfig::default()
    }
}

#[test]
fn every_message_reaches_every_node_on_a_clean_network() {
    let r = run(small());
    assert_eq!(r.misses, 0, "seed {}", small().seed);
    assert_eq!(r.coverage, 1.0);
    assert!(r.hops_mean >= 1.0 && r.hops_max <= 8);
    assert!(
        r.redundancy > 1.0,
        "push gossip sends more than one frame per delivery"
    );
    assert!(r.duplicates > 0 && r.rejected == 0 && r.dropped == 0);
}

#[test]
fn the_same_seed_replays_the_same_trace() {
    // Churn, a cut and a stall too: they close and hold links, whose order must be
    // seeded as well.
    let faults = || SimConfig {
        churn_per_sec: 2.0,
        downtime: Duration::from_secs(1),
        partition: Some((Duration::from_secs(2), Duration::from_secs(3))),
        stall: Some((3, Duration::from_secs(3), Duration::from_secs(4))),
        queue_frames: 8,
        send_window: 4,
        ..small()
    };
    let (a, b) = (Sim::new(faults()).run(), Sim::new(faults()).run());
    assert_eq!(a.trace_hash, b.trace_hash, "seed {}", small().seed);
    let a = run(small());
    let b = run(small());
    assert_eq!(a.trace_hash, b.trace_hash);
    let c = run(SimConfig {
        seed: small().seed + 1,
        ..small()
    });
    assert_ne!(a.trace_hash, c.trace_hash, "the seed matters");
}

#[test]
fn loss_is_absorbed_by_redundancy_and_misses_are_counted() {
    let r = run(SimConfig {
        loss: 0.1,
        ..small()
    });
    assert!(r.coverage > 0.97, "coverage {}", r.coverage);
}

#[test]
fn churn_misses_only_at_nodes_that_went_down() {
    let r = run(SimConfig {
        churn_per_sec: 2.0,
        downtime: Duration::from_secs(1),
        ..small()
    });
    let seed = small().seed;
    assert!(
        r.down_misses > 0,
        "seed {seed}: the churn never cost a delivery"
    );
    // A node up for a message's whole life should get it; with churn that is held to the
    // push-gossip baseline (a node left with few sessions by its peers' crashes is skipped
    // more easily). Messages published by a restarted node before any session of its was
    // up reach no one: counted apart (`origin_alone`), not yet refused by `publish`.
    let unexplained: Vec<_> = r
        .missed
        .iter()
        .filter(|m| !m.down && !m.origin_alone)
        .collect();
    assert_eq!(unexplained.len() as u64, r.up_misses);
    within_gossip_baseline(seed, &r, &unexplained);
}

#[test]
fn a_partition_is_repaired_and_accounted() {
    let (cut, heal) = (Duration::from_secs(2), Duration::from_secs(4));
    let cfg = SimConfig {
        partition: Some((cut, heal)),
        ..small()
    };
    let (seed, half) = (cfg.seed, cfg.nodes / 2);
    let r = run(cfg);
    assert!(r.misses > 0, "seed {seed}: the cut hid nothing");
    // A miss the cut explains: a message still spreading when the cut came (at any node:
    // its path may have crossed), or one published during the cut, at a node across it.
    // Nothing re-sends those after the repair (no anti-entropy yet): they stay missed.
    let explained = |m: &Miss| {
        let spreading = m.published < cut && m.spread_until >= cut;
        let during = m.published >= cut && m.published < heal;
        spreading || (during && (m.node < half) != (m.origin < half))
    };
    let unexplained: Vec<_> = r.missed.iter().filter(|m| !explained(m)).collect();
    within_gossip_baseline(seed, &r, &unexplained);
    // The repair: messages published after it reach every node.
    let after = r.published_at.iter().filter(|t| **t >= heal).count();
    assert!(
        after > 0,
        "seed {seed}: nothing was published after the repair"
    );
}

/// Three nodes stop reading for three seconds: their peers' queues toward them fill, stay
/// over the watermark past `readiness.sustain`, and readiness must say so, then recover.
#[test]
fn a_stalled_reader_turns_readiness_degraded_with_cause_and_it_recovers() {
    let (from, to) = (Duration::from_secs(2), Duration::from_secs(5));
    let cfg = SimConfig {
        stall: Some((3, from, to)),
        queue_frames: 8,
        send_window: 4,
        messages: 200,
        // The shed rate is measured over a trailing 10 s: long enough to let it clear.
        settle: Duration::from_secs(10),
        ..small()
    };
    let seed = cfg.seed;
    // `run` asserts the readiness truth both ways: red only with a queue over the
    // watermark, green never once one has been over it for longer than the sustain.
    let r = run(cfg);
    assert!(
        r.queues_degraded > 0,
        "seed {seed}: the stall never turned queues_ok false"
    );
    // Relayed traffic toward a stalled peer is shed; nothing re-sends it once the reader
    // resumes, so those stay missed. Any other miss is held to the push-gossip baseline.
    let unexplained: Vec<_> = r
        .missed
        .iter()
        .filter(|m| !(m.node < 3 && m.published >= from && m.published < to))
        .collect();
    within_gossip_baseline(seed, &r, &unexplained);
}
