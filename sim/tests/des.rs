//! The many-node simulator over the core, small enough for every test run. The large
//! configuration is `cargo run -p sim --release --bin many-node` (docs/SIMULATION.md).

use std::time::Duration;

use sim::des::{Report, Sim, SimConfig};

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
    assert!(r.balance_ok, "seed {seed}: balance law broken");
    assert!(r.readiness_ok, "seed {seed}: readiness told an untruth");
    r
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
    assert!(r.coverage > 0.98, "coverage {}", r.coverage);
}

#[test]
fn a_partition_is_repaired_and_accounted() {
    let r = run(SimConfig {
        partition: Some((Duration::from_secs(2), Duration::from_secs(4))),
        ..small()
    });
    // Messages published inside a half during the cut reach only that half: each miss is
    // counted, none is silent, and the balance law holds on every node.
    assert!(r.misses > 0, "the cut hid messages from the other half");
    assert!(r.coverage > 0.5);
}
