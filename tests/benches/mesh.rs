//! The mesh benchmark: N `svc-overlay run` processes (release build, default configuration)
//! on loopback, node i dialing nodes i+1, i+2, i+3 (mod N), one publishing client on node 0
//! and one subscribing client on every other node: the workload of the libp2p gossipsub
//! anchor in `../shared/peers/libp2p-gossip`, with the same payload layout and definitions
//! (`wall_s` from the first publish to the last delivery, every (node, seq) counted once).
//!
//! ```text
//! cargo bench -p e2e --bench mesh                       # cases A, B, C
//! cargo bench -p e2e --bench mesh -- --case A           # one case (A, B, C; comma list)
//! cargo bench -p e2e --bench mesh -- --case A --rate 860  # paced: offered msgs/s
//! cargo bench -p e2e --bench mesh -- --case A --no-backoff
//! cargo bench -p e2e --bench mesh -- --nodes 4 --messages 1000 --size 512
//! ```
//!
//! Other flags: `--window W` (outstanding acks, default 64), `--timeout S` (seconds after
//! the first publish, default 60). One JSON line per run on stdout, then a markdown table.
//! `MESH_DUMP=dir` writes, after each run, every node's exposition (`<case>-node<i>.prom`)
//! and every subscriber's deliveries as `seq latency_us` lines (`<case>-lat<i>.txt`).
//! `docs/PERFORMANCE.md` ("Mesh") says how every figure is derived.

#[path = "mesh/payload.rs"]
mod payload;
#[path = "mesh/procfs.rs"]
mod procfs;
#[path = "mesh/publisher.rs"]
mod publisher;
#[path = "mesh/subscriber.rs"]
mod subscriber;
#[path = "mesh/topology.rs"]
mod topology;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::wire::OapClient;
use serde_json::{json, Value};

use publisher::Plan;
use subscriber::Shared;
use topology::Mesh;

const TOPIC: &str = "bench";
/// The publisher's own subscription: a topic nobody publishes on, so that node 0 does not
/// hand it the flood it is writing.
const PUBLISHER_TOPIC: &str = "bench.none";
/// A run whose publisher has finished ends once deliveries stop for this long: what has
/// not arrived by then was lost, and waiting out the full timeout would only hide that
/// behind a longer run (wall_s ends at the last delivery either way).
const STALL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct Case {
    name: String,
    nodes: usize,
    messages: u64,
    size: usize,
}

struct Opts {
    cases: Vec<Case>,
    window: usize,
    rate: Option<f64>,
    no_backoff: bool,
    timeout: Duration,
}

fn named(name: &str) -> Case {
    let (nodes, messages, size) = match name {
        "A" => (10, 20_000, 1024),
        "B" => (10, 2_000, 65_536),
        "C" => (32, 5_000, 1024),
        other => panic!("unknown case {other:?} (A, B or C)"),
    };
    Case {
        name: name.to_string(),
        nodes,
        messages,
        size,
    }
}

fn opts() -> Opts {
    let mut o = Opts {
        cases: Vec::new(),
        window: 64,
        rate: None,
        no_backoff: false,
        timeout: Duration::from_secs(60),
    };
    let mut custom = Case {
        name: "custom".into(),
        nodes: 10,
        messages: 20_000,
        size: 1024,
    };
    let mut is_custom = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            // cargo bench passes it to every harness = false target.
            "--bench" => {}
            "--case" => o.cases.extend(val().split(',').map(|c| named(c.trim()))),
            "--nodes" => (custom.nodes, is_custom) = (val().parse().expect("--nodes"), true),
            "--messages" => {
                (custom.messages, is_custom) = (val().parse().expect("--messages"), true)
            }
            "--size" => (custom.size, is_custom) = (val().parse().expect("--size"), true),
            "--window" => o.window = val().parse().expect("--window"),
            "--rate" => o.rate = Some(val().parse().expect("--rate")),
            "--timeout" => o.timeout = Duration::from_secs_f64(val().parse().expect("--timeout")),
            "--no-backoff" => o.no_backoff = true,
            other => panic!("unknown flag {other:?}; see the header of tests/benches/mesh.rs"),
        }
    }
    assert!(custom.nodes >= 2, "--nodes must be >= 2");
    assert!(o.window >= 1, "--window must be >= 1");
    if is_custom {
        o.cases.push(custom);
    }
    if o.cases.is_empty() {
        o.cases = ["A", "B", "C"].into_iter().map(named).collect();
    }
    o
}

fn percentile_ms(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx] as f64 / 1000.0)
}

fn cpu_sum(pids: &[i32]) -> f64 {
    pids.iter().filter_map(|&p| procfs::cpu_s(p)).sum()
}

fn round(x: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (x * k).round() / k
}

fn run(case: &Case, o: &Opts) -> Value {
    let n = case.nodes;
    let mesh = Mesh::start(n);
    let pids = mesh.pids();
    let shared = Arc::new(Shared {
        base: Instant::now(),
        delivered: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
        first_publish_ns: AtomicU64::new(u64::MAX),
        stop_publisher: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let subs: Vec<OapClient> = (1..n)
        .map(|i| {
            OapClient::connect(mesh.nodes[i].overlay, &format!("sub{i}"), &[TOPIC], None)
                .unwrap_or_else(|e| panic!("subscriber on node {i} refused: {e:?}"))
        })
        .collect();
    let publisher = OapClient::connect(mesh.nodes[0].overlay, "pub", &[PUBLISHER_TOPIC], None)
        .unwrap_or_else(|e| panic!("publisher refused: {e:?}"));
    let before = mesh.counters();
    let subs: Vec<_> = subs
        .into_iter()
        .map(|c| subscriber::spawn(c, case.messages, shared.clone()))
        .collect();
    let cpu0 = cpu_sum(&pids);
    let self_cpu0 = procfs::cpu_s(procfs::self_pid()).unwrap_or(0.0);
    let plan = Plan {
        messages: case.messages,
        size: case.size,
        topic: TOPIC.into(),
        // What the daemon gives messages it originates: the default configuration.
        ttl: overlay_core::Config::default().overlay.gossip.default_ttl,
        window: o.window,
        rate: o.rate,
        no_backoff: o.no_backoff,
        timeout: o.timeout,
    };
    let pub_thread = publisher::spawn(publisher, plan, shared.clone());
    let expected = case.messages * (n as u64 - 1);
    // Ends at: every delivery in; the timeout after the first publish; or, once the
    // publisher has finished, deliveries stalled for STALL.
    let mut last_progress = (0u64, Instant::now());
    loop {
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let now = Instant::now();
        if delivered != last_progress.0 {
            last_progress = (delivered, now);
        }
        let first = shared.first_publish_ns.load(Ordering::Relaxed);
        let since_first = (first != u64::MAX)
            .then(|| Duration::from_nanos(shared.now_ns().saturating_sub(first)));
        if delivered >= expected
            || since_first.is_some_and(|d| d >= o.timeout)
            || (pub_thread.is_finished() && now - last_progress.1 >= STALL)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu_s = cpu_sum(&pids) - cpu0;
    let harness_cpu_s = procfs::cpu_s(procfs::self_pid()).unwrap_or(0.0) - self_cpu0;
    shared.stop_publisher.store(true, Ordering::Relaxed);
    let p = pub_thread.join().expect("publisher thread");
    let after = mesh.settled_counters();
    if let Ok(dir) = std::env::var("MESH_DUMP") {
        // Every node's exposition after the run, to place a loss (debugging aid).
        for (i, d) in mesh.nodes.iter().enumerate() {
            let body = d.get("/metrics").body;
            let _ = std::fs::write(format!("{dir}/{}-node{i}.prom", case.name), body);
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::with_capacity(expected as usize);
    let (mut client_msgs, mut client_frames, mut sub_dups, mut sub_errors) = (0, 0, 0, Vec::new());
    // Per node, so a loss can be placed in the ring (distance from node 0).
    let mut by_node = Vec::with_capacity(n - 1);
    for (i, h) in subs.into_iter().enumerate() {
        let r = h.join().expect("subscriber thread");
        by_node.push(r.latencies_us.len());
        if let Ok(dir) = std::env::var("MESH_DUMP") {
            // "seq latency_us" per delivery: which messages were late places a tail in time.
            let lines: String = r
                .seqs
                .iter()
                .zip(&r.latencies_us)
                .map(|(s, l)| format!("{s} {l}\n"))
                .collect();
            let _ = std::fs::write(format!("{dir}/{}-lat{}.txt", case.name, i + 1), lines);
        }
        latencies.extend_from_slice(&r.latencies_us);
        client_msgs += r.messages;
        client_frames += r.frames;
        sub_dups += r.duplicates;
        if let Some(e) = r.error {
            sub_errors.push(format!("node {}: {e}", i + 1));
        }
    }
    let rss: Vec<f64> = pids
        .iter()
        .filter_map(|&p| procfs::peak_rss_mib(p))
        .collect();
    let ready_s = mesh.ready_s;
    // What the daemon says it is, from its `listening` line.
    let build = mesh.nodes[0]
        .log_lines()
        .into_iter()
        .find(|l| l["event"] == "listening")
        .map(|l| {
            format!(
                "{} ({})",
                l["version"].as_str().unwrap_or("?"),
                l["git"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_default();
    drop(mesh);

    let delivered = latencies.len() as u64;
    latencies.sort_unstable();
    let first = p.first_publish_ns.unwrap_or(0);
    let last = shared.last_recv_ns.load(Ordering::Relaxed);
    let wall_s = if delivered > 0 && last > first {
        (last - first) as f64 / 1e9
    } else {
        o.timeout.as_secs_f64()
    };
    let d = after - before;
    // Gossip frames the nodes wrote to one another: every gossip tx frame, less those that
    // went to the subscribing clients (counted by the clients) and the acks the publisher
    // read. In messages: divided by the frames one message takes on the wire.
    let frames_per_msg = if client_msgs > 0 {
        client_frames as f64 / client_msgs as f64
    } else {
        1.0
    };
    let peer_frames = d.gossip_tx_frames - client_frames as f64 - p.resp_frames as f64;
    let copies = (delivered > 0).then(|| peer_frames / frames_per_msg / delivered as f64);
    let told = if o.no_backoff {
        p.told_refused + p.notice_refused
    } else {
        p.notice_refused
    };
    // Deliveries of messages node 0 answered 202 that never arrived.
    let silently_lost = (p.accepted * (n as u64 - 1)).saturating_sub(delivered);
    json!({
        "impl": "svc-overlay",
        "version": build,
        "case": case.name,
        "nodes": n,
        "messages": case.messages,
        "size": case.size,
        "mode": if o.no_backoff { "no-backoff" } else { "acked-window" },
        "window": if o.no_backoff { Value::Null } else { json!(o.window) },
        "rate_offered": o.rate,
        "wall_s": round(wall_s, 3),
        "delivered": delivered,
        "expected": expected,
        "delivered_pct": round(delivered as f64 * 100.0 / expected as f64, 2),
        "complete": delivered == expected,
        "deliveries_per_s": round(delivered as f64 / wall_s, 0),
        "payload_MBps": round(delivered as f64 * case.size as f64 / wall_s / 1e6, 2),
        "lat_p50_ms": percentile_ms(&latencies, 0.50),
        "lat_p99_ms": percentile_ms(&latencies, 0.99),
        "lat_max_ms": percentile_ms(&latencies, 1.0),
        "copies_per_delivery": copies.map(|c| round(c, 3)),
        "peer_gossip_frames": peer_frames,
        "client_gossip_frames": client_frames,
        "frames_per_msg": round(frames_per_msg, 3),
        "duplicate_frames": d.duplicate_frames,
        "rejected_ratelimit": d.rejected_ratelimit,
        "rejected_busy": d.rejected_busy,
        "queue_dropped": d.queue_dropped,
        "rx_dropped": d.rx_dropped,
        "client_duplicates": sub_dups,
        "publisher": {
            "published": p.published,
            "accepted": p.accepted,
            "ratelimited_429": p.ratelimited,
            "busy_503": p.busy,
            "other_refused": p.other_refused,
            "retries": p.retries,
            "unanswered": p.unanswered,
            "notices": p.notices,
            "notice_refused": p.notice_refused,
            "publish_s": round(p.last_publish_ns.saturating_sub(first) as f64 / 1e9, 3),
            "error": p.error,
        },
        "told_refused": told,
        "silently_lost_deliveries": silently_lost,
        "peak_rss_mib_max": round(rss.iter().cloned().fold(0.0, f64::max), 1),
        "peak_rss_mib_sum": round(rss.iter().sum::<f64>(), 1),
        "cpu_s": round(cpu_s, 2),
        "harness_cpu_s": round(harness_cpu_s, 2),
        "mesh_ready_s": round(ready_s, 2),
        "delivered_by_node": by_node,
        "subscriber_errors": sub_errors,
    })
}

fn cell(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "–".into(),
    }
}

fn main() {
    let o = opts();
    // Build (or find) the release daemon before anything is timed.
    eprintln!("daemon: {}", e2e::bin().display());
    let mut rows = Vec::new();
    for case in &o.cases {
        let v = run(case, &o);
        println!("{v}");
        rows.push(v);
    }
    println!();
    println!("| case | N | M | S | mode | rate | delivered | wall_s | deliveries/s | MB/s | p50 ms | p99 ms | max ms | copies/delivery | 429 / 503 / retries | peak RSS MiB max (sum) | CPU s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for v in &rows {
        let p = &v["publisher"];
        println!(
            "| {} | {} | {} | {} | {} | {} | {}/{} ({}%) | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} ({}) | {} |",
            v["case"].as_str().unwrap_or(""),
            v["nodes"],
            v["messages"],
            v["size"],
            v["mode"].as_str().unwrap_or(""),
            cell(&v["rate_offered"], 0),
            v["delivered"],
            v["expected"],
            v["delivered_pct"],
            cell(&v["wall_s"], 2),
            cell(&v["deliveries_per_s"], 0),
            cell(&v["payload_MBps"], 1),
            cell(&v["lat_p50_ms"], 2),
            cell(&v["lat_p99_ms"], 1),
            cell(&v["lat_max_ms"], 0),
            cell(&v["copies_per_delivery"], 2),
            p["ratelimited_429"],
            p["busy_503"],
            p["retries"],
            cell(&v["peak_rss_mib_max"], 0),
            cell(&v["peak_rss_mib_sum"], 0),
            cell(&v["cpu_s"], 1),
        );
    }
}
