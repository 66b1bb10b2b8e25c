//! Things written once. Each count the balance needs is kept in `Stats` and exported as a
//! series; the two must be the same numbers. The test checks this on a workload that reaches
//! every outcome and reason, and it checks that no file besides the accounting module
//! touches those series. It also checks that the gossip frame overhead and the GOAWAY frame
//! each have one definition.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use overlay_core::oap::{AppProto, Flags, Frame, Role};
use overlay_core::observe::{DropReason, Outcome, RxDrop};
use overlay_core::{Config, RejectReason, Stats};
use support::*;

fn config(_: usize) -> Config {
    let mut c = test_config();
    c.overlay.max_conns = 12;
    c.overlay.peer.max_rps = 60;
    c.overlay.peer.egress_queue_frames = 8;
    // A few owed, the rest past the bound dropped (`full`): both paths count.
    c.overlay.peer.owed_messages = 4;
    c
}

fn publish(net: &mut Net, c: usize, first: u64, n: u64, ack: bool) {
    for k in first..first + n {
        let data = Bytes::from(vec![k as u8; 64]);
        let _ = net.clients[c].client.publish(msg_id(k), "t", 3, &data, ack);
    }
}

fn frame(app_proto: u16, flags: Flags) -> Vec<u8> {
    Frame::new(app_proto, flags, 5, Bytes::from_static(b"??"))
        .to_bytes(1 << 20)
        .unwrap()
        .to_vec()
}

#[test]
fn every_count_in_stats_is_the_series_exported_for_it() {
    let mut net = Net::new(9, 3, config);
    net.connect(0, 1);
    net.connect(1, 2);
    net.connect(2, 0);
    for n in 0..3 {
        net.client(n, Role::Client, &[]);
    }
    let slow = net.client(0, Role::Client, &["t"]);
    let publisher = net.client(0, Role::Client, &[]);
    let rude = net.client(1, Role::Client, &[]);
    let asker = net.client(2, Role::Client, &[]);
    net.settle();

    // A subscriber that stops reading: its queue fills (egress `full`), its watermark makes
    // acked writes busy, and a burst past `max_rps` is refused `ratelimit`.
    net.stall(End::Node(0, net.clients[slow].conn), true);
    // In small batches, so the queue fills rather than meeting its bound in one read.
    for k in 0..8 {
        publish(&mut net, publisher, k * 4, 4, k >= 6);
        net.settle();
    }
    publish(&mut net, publisher, 1000, 40, false);
    net.settle();
    // An unknown application protocol (`unroutable`) and a bad CTRL frame (`proto`).
    let conn = net.clients[asker].conn;
    net.feed(2, conn, &frame(77, Flags::REQ));
    let conn = net.clients[rude].conn;
    net.feed(1, conn, &frame(AppProto::CTRL, Flags::REQ));
    // Local publishes: accepted, then refused while draining (`not_ready`).
    let now = net.now;
    net.nodes[2]
        .publish(now, "t", Bytes::from_static(b"local"), None)
        .unwrap();
    net.settle();
    // Connections that never say HELLO: past `max_conns` one is refused `busy`, and the
    // rest time out in the handshake.
    for _ in 0..10 {
        net.raw(2);
    }
    net.settle();
    net.advance(Duration::from_secs(4));
    let now = net.now;
    net.nodes[1].begin_drain(now);
    assert!(net.nodes[1]
        .publish(now, "t", Bytes::from_static(b"late"), None)
        .is_err());
    // The end: what is still queued for the stalled subscriber is dropped (`timeout`).
    net.nodes[0].shutdown(now);
    net.settle();

    net.assert_counts_exported();
    net.assert_balance();

    // The workload reached each kind compared above, so a count bumped on one side only
    // would have shown.
    let total = |f: &dyn Fn(&Stats) -> u64| net.nodes.iter().map(|n| f(n.stats())).sum::<u64>();
    let reached = [
        ("delivered", total(&|s| s.outcome(Outcome::Delivered))),
        ("relayed", total(&|s| s.outcome(Outcome::Relayed))),
        ("duplicate", total(&|s| s.outcome(Outcome::Duplicate))),
        (
            "dropped unroutable",
            total(&|s| s.dropped(RxDrop::Unroutable)),
        ),
        (
            "rejected proto",
            total(&|s| s.rejected(RejectReason::Proto)),
        ),
        (
            "rejected ratelimit",
            total(&|s| s.rejected(RejectReason::Ratelimit)),
        ),
        ("rejected busy", total(&|s| s.rejected(RejectReason::Busy))),
        (
            "refused busy",
            total(&|s| s.refused[RejectReason::Busy.index()]),
        ),
        (
            "refused timeout",
            total(&|s| s.refused[RejectReason::Timeout.index()]),
        ),
        (
            "refused not_ready",
            total(&|s| s.refused[RejectReason::NotReady.index()]),
        ),
        (
            "egress full",
            total(&|s| s.egress_dropped[DropReason::Full.index()]),
        ),
        (
            "egress timeout",
            total(&|s| s.egress_dropped[DropReason::Timeout.index()]),
        ),
        ("writes busy", total(&|s| s.writes_busy)),
        ("writes accepted", total(&|s| s.writes_accepted)),
        ("published", total(&|s| s.published)),
    ];
    let missed: Vec<_> = reached.iter().filter(|(_, n)| *n == 0).collect();
    assert!(missed.is_empty(), "the workload never reached {missed:?}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, as (path from the repository root, text).
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let root = repo();
    let mut out = Vec::new();
    walk(&root, &root.join(dir), &mut out);
    out
}

/// The files among `dirs` whose code (comments aside) contains `needle`.
fn files_with(dirs: &[&str], needle: &str) -> Vec<String> {
    let mut hits: Vec<String> = dirs
        .iter()
        .flat_map(|d| sources(d))
        .filter(|(_, text)| {
            text.lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .any(|code| code.contains(needle))
        })
        .map(|(name, _)| name)
        .collect();
    hits.sort();
    hits
}

#[test]
fn the_series_stats_mirrors_are_touched_only_by_the_accounting() {
    // `Counted` holds them: defined in handles.rs, bumped in accounting.rs, nowhere else.
    let dirs = ["core/src", "runtime/src", "sim/src"];
    assert_eq!(
        files_with(&dirs, "Counted"),
        [
            "core/src/node/accounting.rs",
            "core/src/observe/handles.rs",
            "core/src/observe/mod.rs",
        ]
    );
    assert_eq!(
        files_with(&dirs, ".counted"),
        ["core/src/node/accounting.rs"]
    );
    // And the series are registered only there, so no other handle can reach them.
    for name in [
        "RX_OUTCOMES_TOTAL",
        "RX_DROPPED_TOTAL",
        "REJECTED_TOTAL",
        "QUEUE_DROPPED_TOTAL",
        "WRITES_TOTAL",
        "FRAMES_TOTAL",
    ] {
        let hits = files_with(
            &["core/src", "runtime/src", "sim/src"],
            &format!("counter!({name}"),
        );
        assert_eq!(hits, ["core/src/observe/handles.rs"], "{name}");
    }
}

#[test]
fn the_gossip_frame_overhead_and_goaway_are_defined_once() {
    let dirs = ["core/src", "runtime/src", "sim/src"];
    assert!(files_with(&dirs, "HEADER_LEN + 18").is_empty());
    assert_eq!(
        files_with(&dirs, "HEADER_LEN + GOSSIP_HEADER_FIXED"),
        ["core/src/oap/gossip.rs"]
    );
    assert_eq!(
        files_with(&dirs, "Ctrl::Goaway.to_"),
        ["core/src/oap/ctrl.rs"]
    );
}
