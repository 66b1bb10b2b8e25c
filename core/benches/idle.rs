//! The cost of an idle node: 10,000 established client sessions that send nothing, driven
//! through 10 minutes of virtual time by calling `handle_timeout` whenever `poll_timeout`
//! asks. Prints wake-ups, wall time per virtual minute, and the same figures for a node with
//! no sessions measured in the same run (the baseline: what housekeeping costs with nothing
//! to keep).
//!
//! `cargo bench -p overlay-core --bench idle` (`IDLE_BENCH_SESSIONS`, default 10000).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use overlay_core::client::Client;
use overlay_core::oap::Role;
use overlay_core::observe::Metrics;
use overlay_core::{Config, Overlay, Time};

fn node(sessions: usize) -> Overlay {
    let mut cfg = Config::default();
    cfg.overlay.max_conns = sessions + 1;
    cfg.overlay.handshake_rate = u32::MAX;
    cfg.overlay.handshake_burst = u32::MAX;
    // Idle, not dead: nothing times out during the run (keepalive PINGs still go out).
    cfg.timeouts.idle = Duration::from_secs(24 * 3600);
    let now = Time::ZERO;
    let mut node = Overlay::new(cfg, Metrics::noop(), 1, now);
    for i in 0..sessions {
        let conn = node.handle_accept(now);
        let mut c = Client::new(&format!("c{i}"), Role::Client, vec![], None);
        c.start();
        let mut b = BytesMut::from(&c.poll_transmit().unwrap()[..]);
        node.handle_bytes(now, conn, &mut b);
    }
    drain(&mut node, now);
    node
}

fn drain(node: &mut Overlay, now: Time) {
    while let Some(t) = node.poll_transmit(now) {
        node.handle_written(now, t.conn, 1);
    }
    while node.poll_event().is_some() {}
}

/// (wake-ups, wall seconds) for `virtual_secs` of idle time.
fn run(sessions: usize, virtual_secs: u64) -> (u64, f64) {
    let mut n = node(sessions);
    let end = Time::from_duration(Duration::from_secs(virtual_secs));
    let mut wakeups = 0;
    let start = Instant::now();
    while let Some(t) = n.poll_timeout() {
        if t > end {
            break;
        }
        n.handle_timeout(t);
        drain(&mut n, t);
        wakeups += 1;
    }
    (wakeups, start.elapsed().as_secs_f64())
}

fn main() {
    let sessions: usize = std::env::var("IDLE_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let minutes = 10;
    let (w0, s0) = run(0, minutes * 60);
    let (w, s) = run(sessions, minutes * 60);
    println!("idle node, {minutes} virtual minutes");
    println!("{:<28}{:>12}{:>20}", "", "wake-ups", "wall ms per minute");
    println!(
        "{:<28}{:>12}{:>20.3}",
        "baseline: 0 sessions",
        w0,
        s0 * 1e3 / minutes as f64
    );
    println!(
        "{:<28}{:>12}{:>20.3}",
        format!("{sessions} idle sessions"),
        w,
        s * 1e3 / minutes as f64
    );
    println!(
        "ratio sessions/baseline (wall): {:.1}x; CPU share of one core: {:.4} %",
        s / s0.max(1e-9),
        s / (minutes as f64 * 60.0) * 100.0
    );
}
