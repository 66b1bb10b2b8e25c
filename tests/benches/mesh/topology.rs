//! N `svc-overlay run` processes on loopback, node i dialing nodes i+1, i+2, i+3 (mod N),
//! each with the default configuration: only its addresses, node id and peers are given.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use e2e::{poll_until, Daemon};
use overlay_core::observe::names::{
    FRAMES_TOTAL, QUEUE_DROPPED_TOTAL, REJECTED_TOTAL, RX_DROPPED_TOTAL, RX_OUTCOMES_TOTAL,
    SESSIONS_ACTIVE,
};

/// How many following nodes each node dials (the anchor's `--degree` default).
pub const DEGREE: usize = 3;

/// The daemons; dropping the mesh kills every one of them by its own child handle (also
/// when the harness panics), never anything else.
pub struct Mesh {
    pub nodes: Vec<Daemon>,
    pub ready_s: f64,
}

/// The sessions every node has once the mesh is up: one per dial it makes and one per dial
/// it receives (in a small ring two nodes may dial each other: two sessions).
pub fn sessions_per_node(n: usize) -> usize {
    2 * (1..=DEGREE).filter(|d| d % n != 0).count()
}

/// Free loopback ports, found by binding `:0` and letting go. Every node must know its
/// peers' addresses before any of them starts, since the dial graph has cycles; the short
/// window in which another process could take a port only makes a start fail loudly.
fn free_addrs(k: usize) -> Vec<SocketAddr> {
    let held: Vec<TcpListener> = (0..k)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

impl Mesh {
    /// Starts `n` daemons and waits until every node has a session with each neighbour.
    pub fn start(n: usize) -> Mesh {
        let addrs = free_addrs(2 * n);
        let (overlay, admin) = addrs.split_at(n);
        let t = Instant::now();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut b = Daemon::builder()
                .listen(overlay[i], admin[i])
                .arg("--node-id")
                .arg(format!("n{i}"));
            for d in 1..=DEGREE {
                let j = (i + d) % n;
                if j != i {
                    b = b.arg("--peer").arg(overlay[j].to_string());
                }
            }
            nodes.push(b.start());
        }
        let want = sessions_per_node(n) as f64;
        for (i, d) in nodes.iter().enumerate() {
            poll_until(
                &format!("node {i} with {want} peer sessions"),
                Duration::from_secs(30),
                || (d.metric(SESSIONS_ACTIVE, &[]) >= want).then_some(()),
            );
        }
        Mesh {
            nodes,
            ready_s: t.elapsed().as_secs_f64(),
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        self.nodes.iter().map(Daemon::pid).collect()
    }

    /// The counters the run is judged by, summed over every node.
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for d in &self.nodes {
            let e = d.scrape();
            c.gossip_tx_frames += e.sum(FRAMES_TOTAL, &[("dir", "tx"), ("kind", "gossip")]);
            c.gossip_rx_frames += e.sum(FRAMES_TOTAL, &[("dir", "rx"), ("kind", "gossip")]);
            c.duplicate_frames += e.sum(RX_OUTCOMES_TOTAL, &[("outcome", "duplicate")]);
            c.rejected_ratelimit += e.sum(REJECTED_TOTAL, &[("reason", "ratelimit")]);
            c.rejected_busy += e.sum(REJECTED_TOTAL, &[("reason", "busy")]);
            c.queue_dropped += e.sum(QUEUE_DROPPED_TOTAL, &[]);
            c.rx_dropped += e.sum(RX_DROPPED_TOTAL, &[]);
        }
        c
    }

    /// The counters once gossip has stopped moving: a frame counts as sent when its writer
    /// reports it written, so redundant copies may still be in flight after the last
    /// delivery. Settled = the same gossip tx total in two scrapes in a row.
    pub fn settled_counters(&self) -> Counters {
        let mut last = self.counters();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Spaces the scrapes so that "unchanged" means something; the condition decides.
            std::thread::sleep(Duration::from_millis(200));
            let now = self.counters();
            if now.gossip_tx_frames == last.gossip_tx_frames || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

/// Sums over all nodes of the series in `Mesh::counters`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub gossip_tx_frames: f64,
    pub gossip_rx_frames: f64,
    pub duplicate_frames: f64,
    pub rejected_ratelimit: f64,
    pub rejected_busy: f64,
    pub queue_dropped: f64,
    pub rx_dropped: f64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            gossip_tx_frames: self.gossip_tx_frames - o.gossip_tx_frames,
            gossip_rx_frames: self.gossip_rx_frames - o.gossip_rx_frames,
            duplicate_frames: self.duplicate_frames - o.duplicate_frames,
            rejected_ratelimit: self.rejected_ratelimit - o.rejected_ratelimit,
            rejected_busy: self.rejected_busy - o.rejected_busy,
            queue_dropped: self.queue_dropped - o.queue_dropped,
            rx_dropped: self.rx_dropped - o.rx_dropped,
        }
    }
}
