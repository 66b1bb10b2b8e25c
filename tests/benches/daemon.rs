//! Benchmarks of the built daemon, each against a baseline measured in the same run:
//!
//! - start-to-ready: spawn → `/readyz` 200, against spawn → exit of `svc-overlay --version`;
//! - handshake latency: 1,000 loopback dials at concurrency 100, each TCP connect + HELLO +
//!   the 200 answer, against TCP connect + one 64-byte echo round trip with an in-process
//!   tokio echo server;
//! - relay throughput: publisher client → node A → node B → subscriber client for 1 KiB and
//!   64 KiB messages, against the same bytes through a chain of plain tokio TCP forwarders of
//!   the same shape.
//!
//! `cargo bench -p e2e --bench daemon` (about a minute). Prints a markdown table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use e2e::{bin, http, poll_until, Daemon};
use overlay_core::client::{Client, ClientEvent};
use overlay_core::oap::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const READY_RUNS: usize = 30;
const DIALS: usize = 1000;
const CONCURRENCY: usize = 100;

/// The spec's HELLO vector (node `n1`, role peer, corr_id 1).
const HELLO: &str = "00000070000100090000000000000000000000000000000000000000000000000000000000017b2276657273696f6e73223a5b315d2c226e6f6465223a226e31222c22726f6c65223a2270656572222c226d61785f6672616d65223a313034383537362c22746f70696373223a5b5d7d";

/// Limits raised so that they do not cap what is measured; logs at warn so that writing
/// them does not either (the `listening` line is printed at any level).
fn bench_daemon(peer: Option<SocketAddr>) -> Daemon {
    let mut b = Daemon::builder()
        .cfg("log.level", "warn")
        .cfg("overlay.handshake_rate", "1000000")
        .cfg("overlay.handshake_burst", "1000000")
        .cfg("overlay.max_conns", "4096")
        .cfg("overlay.peer.max_rps", "10000000")
        .cfg("overlay.peer.send_window_frames", "64")
        .cfg("overlay.peer.egress_queue_frames", "65536")
        .cfg("overlay.peer.egress_queue_bytes", "268435456")
        .cfg("overlay.gossip.egress_permits", "65536")
        .cfg("overlay.gossip.seen_cache_size", "1048576");
    if let Some(p) = peer {
        b = b.arg("--peer").arg(p.to_string());
    }
    b.start()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

struct Row {
    what: String,
    ours: String,
    baseline: String,
    ratio: f64,
    goal: String,
}

// ----- start to ready ---------------------------------------------------------------

fn start_to_ready() -> (Duration, Duration, Duration) {
    let mut ready = Vec::new();
    for _ in 0..READY_RUNS {
        let d = Daemon::builder().cfg("log.level", "warn").start();
        let started = d.started;
        // Tight polling: the figure is the time to the first 200.
        let at = poll_until("/readyz 200", Duration::from_secs(20), || {
            let r = http::get(d.admin, "/readyz", &[]).ok()?;
            (r.status == 200).then(Instant::now)
        });
        ready.push(at - started);
    }
    let mut version = Vec::new();
    for _ in 0..READY_RUNS {
        let t = Instant::now();
        let out = std::process::Command::new(bin())
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success());
        version.push(t.elapsed());
    }
    ready.sort();
    version.sort();
    (
        percentile(&ready, 0.5),
        percentile(&ready, 1.0),
        percentile(&version, 0.5),
    )
}

// ----- handshake latency ------------------------------------------------------------

async fn hello_once(addr: SocketAddr, hello: &[u8]) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(hello).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    s.read_exact(&mut rest).await.unwrap();
    let took = t.elapsed();
    let code = u16::from_be_bytes([rest[4], rest[5]]);
    assert_eq!(code, 200, "HELLO answered {code}");
    took
}

async fn echo_once(addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let msg = [0xabu8; 64];
    s.write_all(&msg).await.unwrap();
    let mut back = [0u8; 64];
    s.read_exact(&mut back).await.unwrap();
    let took = t.elapsed();
    assert_eq!(back, msg);
    took
}

async fn run_dials<F, Fut>(f: F) -> Vec<Duration>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Duration> + Send,
{
    run_dials_at(f, DIALS, CONCURRENCY).await
}

async fn run_dials_at<F, Fut>(f: F, dials: usize, concurrency: usize) -> Vec<Duration>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Duration> + Send,
{
    let f = Arc::new(f);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(dials);
    for _ in 0..dials {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let d = f().await;
            drop(permit);
            d
        }));
    }
    let mut out = Vec::with_capacity(dials);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.sort();
    out
}

/// Dials one at a time: the cost of one handshake without queueing behind others.
const SERIAL_DIALS: usize = 200;

struct Handshakes {
    ours: Vec<Duration>,
    base: Vec<Duration>,
    ours_serial: Vec<Duration>,
    base_serial: Vec<Duration>,
}

async fn handshakes() -> Handshakes {
    let d = bench_daemon(None);
    d.wait_readyz(200, Duration::from_secs(20));
    let hello: Bytes = e2e::wire::unhex(HELLO).into();
    let addr = d.overlay;
    // Warm-up: the first connections pay for lazy allocations on both sides.
    for _ in 0..20 {
        hello_once(addr, &hello).await;
    }
    let h = hello.clone();
    let ours = run_dials(move || {
        let hello = h.clone();
        async move { hello_once(addr, &hello).await }
    })
    .await;
    let ours_serial = run_dials_at(
        move || {
            let hello = hello.clone();
            async move { hello_once(addr, &hello).await }
        },
        SERIAL_DIALS,
        1,
    )
    .await;

    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 64];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
            });
        }
    });
    for _ in 0..20 {
        echo_once(echo_addr).await;
    }
    let base = run_dials(move || echo_once(echo_addr)).await;
    let base_serial = run_dials_at(move || echo_once(echo_addr), SERIAL_DIALS, 1).await;
    server.abort();
    Handshakes {
        ours,
        base,
        ours_serial,
        base_serial,
    }
}

// ----- relay throughput -------------------------------------------------------------

/// A client over tokio TCP: core's `Client` with the HELLO done.
struct AsyncClient {
    client: Client,
    rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    buf: BytesMut,
}

impl AsyncClient {
    async fn connect(addr: SocketAddr, name: &str, topics: &[&str]) -> AsyncClient {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (rd, wr) = s.into_split();
        let topics = topics.iter().map(|t| t.to_string()).collect();
        let mut c = AsyncClient {
            client: Client::new(name, Role::Client, topics, None),
            rd,
            wr,
            buf: BytesMut::with_capacity(1 << 20),
        };
        c.client.start();
        c.flush().await;
        match c.next().await {
            Some(ClientEvent::Established(_)) => c,
            other => panic!("HELLO: {other:?}"),
        }
    }

    async fn flush(&mut self) {
        while let Some(b) = self.client.poll_transmit() {
            self.wr.write_all(&b).await.unwrap();
        }
    }

    async fn next(&mut self) -> Option<ClientEvent> {
        loop {
            if let Some(ev) = self.client.poll_event() {
                return Some(ev);
            }
            if self.rd.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
            self.client.handle_bytes(&mut self.buf);
        }
    }
}

/// Publishes `count` messages of `size` bytes through A → B with at most `WINDOW` acks
/// outstanding (acks are the publisher's flow control: a 503 busy costs a retry, never a
/// loss); returns the time from the first ack to the last delivery at the subscriber.
async fn relay(a: SocketAddr, b: SocketAddr, size: usize, count: u64, tag: u8) -> Duration {
    const WINDOW: u64 = 256;
    let mut sub = AsyncClient::connect(b, "bench-sub", &["bench"]).await;
    let mut publ = AsyncClient::connect(a, "bench-pub", &[]).await;
    let data = Bytes::from(vec![tag; size]);
    // The subscriber counts deliveries on its own task; it reports when it has them all.
    let receiver = tokio::spawn(async move {
        let mut got = 0u64;
        let mut first_at = None;
        while got < count + 1 {
            match sub.next().await {
                Some(ClientEvent::Message(m)) => {
                    if got == 0 {
                        first_at = Some(Instant::now());
                    }
                    assert_eq!(m.data.len(), size);
                    got += 1;
                }
                Some(_) => {}
                None => panic!("the subscriber lost its node after {got} messages"),
            }
        }
        first_at.unwrap()
    });
    let mut next_id = 0u64;
    let mut publish = |publ: &mut AsyncClient| {
        next_id += 1;
        let mut id = [tag; 16];
        id[..8].copy_from_slice(&next_id.to_be_bytes());
        publ.client
            .publish(id, "bench", 4, &data, true)
            .expect("encode");
    };
    // One warm-up message proves the path A → B → subscriber before the clock starts.
    publish(&mut publ);
    publ.flush().await;
    let (mut accepted, mut outstanding) = (0u64, 1u64);
    let mut started = None;
    while accepted < count + 1 {
        // Refill in bursts (one write for half a window), as a client with many messages
        // to send would: one write per message would measure the publisher's syscalls.
        if accepted > 0 && outstanding <= WINDOW / 2 {
            while outstanding < WINDOW && accepted + outstanding < count + 1 {
                publish(&mut publ);
                outstanding += 1;
            }
            publ.flush().await;
        }
        match publ.next().await {
            Some(ClientEvent::Ack { code: 202, .. }) => {
                accepted += 1;
                outstanding -= 1;
                if accepted == 1 {
                    started = Some(Instant::now());
                }
            }
            // Busy: the window shrinks by one; the message is simply not counted.
            Some(ClientEvent::Ack { .. }) => outstanding -= 1,
            Some(_) => {}
            None => panic!("the publisher lost its node"),
        }
    }
    let _first_delivery = receiver.await.unwrap();
    started.unwrap().elapsed()
}

/// The same bytes through client → forwarder → forwarder → sink, each hop a plain tokio
/// TCP copy: the cost of moving the bytes across the same number of sockets.
async fn forward_chain(wire: Bytes, total: usize) -> Duration {
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let done = tokio::spawn(async move {
        let (mut s, _) = sink.accept().await.unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0;
        while n < total {
            let r = s.read(&mut buf).await.unwrap();
            assert!(r > 0, "chain closed early");
            n += r;
        }
    });
    async fn forwarder(to: SocketAddr) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (inbound, _) = l.accept().await.unwrap();
            let mut out = TcpStream::connect(to).await.unwrap();
            let _ = inbound.set_nodelay(true);
            let _ = out.set_nodelay(true);
            // A 256 KiB buffer rather than `io::copy`'s 8 KiB: the baseline should move
            // bytes as cheaply as a forwarder can, not be held back by small reads.
            let mut rd = tokio::io::BufReader::with_capacity(256 << 10, inbound);
            let _ = tokio::io::copy_buf(&mut rd, &mut out).await;
        });
        addr
    }
    let b = forwarder(sink_addr).await;
    let a = forwarder(b).await;
    let mut c = TcpStream::connect(a).await.unwrap();
    c.set_nodelay(true).unwrap();
    let t = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = wire.len().min(total - sent);
        c.write_all(&wire[..n]).await.unwrap();
        sent += n;
    }
    done.await.unwrap();
    t.elapsed()
}

/// The bytes one message of `size` takes on the publisher's wire, as core's client frames
/// it (gossip header, chunking, ACK_REQ on the last frame).
fn wire_bytes(size: usize) -> Bytes {
    let mut c = Client::new("frame", Role::Client, vec![], None);
    // Established state is not needed to encode: publish only frames the message.
    let id = [1u8; 16];
    c.publish(id, "bench", 4, &Bytes::from(vec![0u8; size]), true)
        .unwrap();
    c.poll_transmit().unwrap()
}

async fn throughput() -> Vec<(usize, u64, Duration, Duration)> {
    let a = bench_daemon(None);
    let b = bench_daemon(Some(a.overlay));
    // The two nodes have peered when each counts an established session.
    poll_until("A and B to peer", Duration::from_secs(20), || {
        let sa = a.metric("overlay_sessions_active", &[]);
        let sb = b.metric("overlay_sessions_active", &[]);
        (sa >= 1.0 && sb >= 1.0).then_some(())
    });
    let mut out = Vec::new();
    for (i, (size, count)) in [(1usize << 10, 200_000u64), (64 << 10, 6_000)]
        .into_iter()
        .enumerate()
    {
        let ours = relay(a.overlay, b.overlay, size, count, i as u8 + 1).await;
        let wire = wire_bytes(size);
        let per_msg = wire.len();
        let base = forward_chain(wire.repeat(64).into(), per_msg * count as usize).await;
        out.push((size, count, ours, base));
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_else(|| "unknown CPU".into())
    );
    println!("binary: {}", bin().display());
    println!("machine: {machine}");
    let t0 = Instant::now();
    let mut rows = Vec::new();

    let (ready_p50, ready_max, version_p50) = start_to_ready();
    rows.push(Row {
        what: format!(
            "start → /readyz 200 (median of {READY_RUNS}; max {})",
            ms(ready_max)
        ),
        ours: ms(ready_p50),
        baseline: format!("{} (`--version`)", ms(version_p50)),
        ratio: ready_p50.as_secs_f64() / version_p50.as_secs_f64(),
        goal: format!(
            "< 200 ms: {}",
            if ready_p50 < Duration::from_millis(200) {
                "met"
            } else {
                "**not met**"
            }
        ),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(handshakes());
    for (p, label) in [(0.5, "p50"), (0.99, "p99")] {
        let (o, b) = (percentile(&h.ours, p), percentile(&h.base, p));
        rows.push(Row {
            what: format!("handshake {label} ({DIALS} dials, concurrency {CONCURRENCY})"),
            ours: ms(o),
            baseline: format!("{} (connect + 64 B echo)", ms(b)),
            ratio: o.as_secs_f64() / b.as_secs_f64(),
            goal: if label == "p99" {
                format!(
                    "< 1 ms: {}",
                    if o < Duration::from_millis(1) {
                        "met"
                    } else {
                        "**not met**"
                    }
                )
            } else {
                String::new()
            },
        });
    }

    for (p, label) in [(0.5, "p50"), (0.99, "p99")] {
        let (o, b) = (percentile(&h.ours_serial, p), percentile(&h.base_serial, p));
        rows.push(Row {
            what: format!("handshake {label} ({SERIAL_DIALS} dials, one at a time)"),
            ours: ms(o),
            baseline: format!("{} (connect + 64 B echo)", ms(b)),
            ratio: o.as_secs_f64() / b.as_secs_f64(),
            goal: String::new(),
        });
    }

    for (size, count, ours, base) in rt.block_on(throughput()) {
        let bytes = (size as u64 * count) as f64;
        let o = bytes / ours.as_secs_f64() / 1e6;
        let b = bytes / base.as_secs_f64() / 1e6;
        rows.push(Row {
            what: format!(
                "relay A→B {} KiB × {count} ({:.0} msg/s)",
                size >> 10,
                count as f64 / ours.as_secs_f64()
            ),
            ours: format!("{o:.1} MB/s"),
            baseline: format!("{b:.1} MB/s (forwarder chain)"),
            ratio: o / b,
            goal: String::new(),
        });
    }

    println!();
    println!("| measure | ours | baseline | ours/baseline | goal |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.2}x | {} |",
            r.what, r.ours, r.baseline, r.ratio, r.goal
        );
    }
    println!();
    println!("bench run took {:.1} s", t0.elapsed().as_secs_f64());
}
