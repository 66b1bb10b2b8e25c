//! The large run of the many-node simulator:
//! `cargo run -p sim --release --bin many-node -- --nodes 1000 --messages 1000`.

use std::time::Duration;

use sim::des::{Sim, SimConfig};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "many-node [--nodes N] [--messages M] [--seed S] [--degree D] [--fanout F] [--ttl T]\n          [--loss P] [--churn PER_SEC] [--partition START_S:END_S] [--publish-over SECS]\n          [--graft-timeout-ms MS]"
        );
        return;
    }
    let mut cfg = SimConfig {
        nodes: arg(&args, "--nodes", 1000),
        messages: arg(&args, "--messages", 1000),
        seed: arg(
            &args,
            "--seed",
            std::env::var("SIM_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1),
        ),
        degree: arg(&args, "--degree", 6),
        fanout: arg(&args, "--fanout", 8),
        ttl: arg(&args, "--ttl", 8),
        loss: arg(&args, "--loss", 0.0),
        churn_per_sec: arg(&args, "--churn", 0.0),
        publish_over: Duration::from_secs(arg(&args, "--publish-over", 20)),
        graft_timeout: args
            .iter()
            .any(|a| a == "--graft-timeout-ms")
            .then(|| Duration::from_millis(arg(&args, "--graft-timeout-ms", 300))),
        ..SimConfig::default()
    };
    if let Some(p) = args
        .iter()
        .position(|a| a == "--partition")
        .and_then(|i| args.get(i + 1))
    {
        if let Some((a, b)) = p.split_once(':') {
            if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                cfg.partition = Some((Duration::from_secs(a), Duration::from_secs(b)));
            }
        }
    }
    println!(
        "seed {} (replay with --seed {} or SIM_SEED)",
        cfg.seed, cfg.seed
    );
    let report = Sim::new(cfg).run();
    println!("{report}");
    if !report.balance_ok || !report.readiness_ok {
        std::process::exit(1);
    }
}
