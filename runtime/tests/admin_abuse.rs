//! The admin plane under hostile clients, over loopback TCP: probes stay answered within a
//! kubelet's 1 s timeout while 200 hostile connections are held, and each of the plane's
//! guards (header deadline, header size, pipeline bound, write deadline, eviction at
//! `admin.max_conns`) closes what it must and counts it in `admin_refusals_total`.
//!
//! Hostile clients are blocking std sockets on their own threads, so they do not share
//! the node's runtime and cannot slow it down other than through the sockets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cfg, series, until};
use overlay_core::Config;
use svc_overlay::{Node, NodeOptions, TokioNet};

fn opts() -> NodeOptions {
    NodeOptions {
        fd_sampler: false,
        ..common::opts(11)
    }
}

fn refusals(node: &Node, reason: &str) -> f64 {
    let text = node.prometheus().render();
    series(
        &text,
        &format!("admin_refusals_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A kubelet-style probe: a new connection, one request, at most 1 s for everything.
/// `Ok((status, elapsed))`, or the error that a kubelet would count as a failure.
fn probe(addr: SocketAddr, path: &str) -> Result<(u16, Duration), String> {
    const LIMIT: Duration = Duration::from_secs(1);
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, LIMIT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: kubelet\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let elapsed = t.elapsed();
    if elapsed > LIMIT {
        return Err(format!("answered after {elapsed:?}"));
    }
    let text = String::from_utf8_lossy(&out);
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    Ok((status, elapsed))
}

const PIPELINED: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

/// Opens a hostile connection: a slowloris (a request head begun, never finished) or a
/// pipeliner (as many `GET /metrics` as the socket takes, never reading an answer).
fn hostile(addr: SocketAddr, slowloris: bool) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_nonblocking(true).ok()?;
    if slowloris {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .ok()?;
    } else {
        let burst = PIPELINED.repeat(256);
        let _ = s.write(&burst);
    }
    Some(s)
}

/// Keeps `n` hostile connections open until `stop`: every 100 ms each slowloris sends one
/// more byte, each pipeliner more requests, and any connection the node closed is opened
/// again, so the node faces all `n` for the whole test.
fn attack(addr: SocketAddr, n: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let slow = |i: usize| i % 2 == 0;
        let mut conns: Vec<Option<TcpStream>> = (0..n).map(|i| hostile(addr, slow(i))).collect();
        let mut reopened = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (i, c) in conns.iter_mut().enumerate() {
                let alive = match c {
                    Some(s) if slow(i) => match s.write(b"a") {
                        Ok(_) => true,
                        Err(e) => e.kind() == ErrorKind::WouldBlock,
                    },
                    Some(s) => match s.write(PIPELINED) {
                        Ok(_) => true,
                        Err(e) => e.kind() == ErrorKind::WouldBlock,
                    },
                    None => false,
                };
                if !alive {
                    *c = hostile(addr, slow(i));
                    reopened += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        reopened
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_within_a_second_while_200_hostile_connections_are_held() {
    let node = Node::start(TokioNet, cfg(), opts()).await.unwrap();
    let admin = node.admin_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = attack(admin, 200, stop.clone());
    // The attack is under way once the plane has had to evict for it.
    until("the plane to be full of hostile connections", || async {
        refusals(&node, "max_conns") >= 1.0
    })
    .await;

    let times = tokio::task::spawn_blocking(move || {
        let mut times = Vec::new();
        for i in 0..20 {
            let path = if i % 2 == 0 { "/healthz" } else { "/readyz" };
            match probe(admin, path) {
                Ok((200, t)) => times.push(t),
                Ok((code, _)) => panic!("probe {i} {path}: status {code}"),
                Err(e) => panic!("probe {i} {path} failed as a kubelet would see it: {e}"),
            }
            // Spread over 3 s, so the probes meet the plane's deadlines firing on the
            // hostile connections and the attacker reopening them.
            std::thread::sleep(Duration::from_millis(150));
        }
        times
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let reopened = tokio::task::spawn_blocking(move || attacker.join().unwrap())
        .await
        .unwrap();

    let mut sorted = times.clone();
    sorted.sort();
    let max = *sorted.last().unwrap();
    eprintln!(
        "20/20 probes answered under 200 hostile connections: median {:?}, p95 {:?}, max {max:?}; \
         the attacker reopened {reopened} connections the plane closed",
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 95 / 100],
    );
    let text = node.prometheus().render();
    for l in text
        .lines()
        .filter(|l| l.starts_with("admin_refusals_total{"))
    {
        eprintln!("{l}");
    }
    assert!(max < Duration::from_secs(1));
    assert!(refusals(&node, "max_conns") >= 1.0);
    let active = series(&node.prometheus().render(), "admin_connections_active").unwrap();
    assert!(active <= 64.0, "admin_connections_active = {active}");
    node.shutdown().await.unwrap();
}

async fn started(c: Config) -> Node {
    Node::start(TokioNet, c, opts()).await.unwrap()
}

/// Reads until the node closes the connection (or 10 s pass); returns what arrived.
fn read_to_close(s: &mut TcpStream) -> String {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off_at_the_header_timeout() {
    let mut c = cfg();
    c.admin.header_timeout = Duration::from_millis(300);
    let node = started(c).await;
    let admin = node.admin_addr().unwrap();
    let t = tokio::task::spawn_blocking(move || {
        let mut s = hostile(admin, true).unwrap();
        let t = Instant::now();
        let got = read_to_close(&mut s);
        assert!(got.is_empty() || got.contains(" 408 "), "{got}");
        t.elapsed()
    })
    .await
    .unwrap();
    assert!(t < Duration::from_secs(5), "closed after {t:?}");
    until("the header timeout to be counted", || async {
        refusals(&node, "header_timeout") == 1.0
    })
    .await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_answered_431_and_counted() {
    let node = started(cfg()).await;
    let admin = node.admin_addr().unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(admin).unwrap();
        let big = "a".repeat(20 << 10);
        // The node may close before reading all of it; the answer is what matters.
        let _ = write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
        );
        read_to_close(&mut s)
    })
    .await
    .unwrap();
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    until("the 431 to be counted", || async {
        refusals(&node, "headers_too_large") == 1.0
    })
    .await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_pipelined_close_the_connection() {
    let mut c = cfg();
    c.admin.max_pipelined = 4;
    let node = started(c).await;
    let admin = node.admin_addr().unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(admin).unwrap();
        // One write, so the node finds all ten waiting before it answers the first.
        s.write_all(&b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10))
            .unwrap();
        read_to_close(&mut s)
    })
    .await
    .unwrap();
    assert_eq!(got.matches("HTTP/1.1 200").count(), 4, "{got}");
    until("the pipeline refusal to be counted", || async {
        refusals(&node, "pipeline") == 1.0
    })
    .await;
    // A client that reads each answer before asking again is never ahead, however many
    // requests it makes on one connection.
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for _ in 0..10 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        }
    })
    .await;
    got.unwrap();
    assert_eq!(refusals(&node, "pipeline"), 1.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_at_the_write_timeout() {
    let mut c = cfg();
    c.admin.write_timeout = Duration::from_millis(300);
    c.admin.max_pipelined = 100_000;
    let node = started(c).await;
    let admin = node.admin_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // Scrapes that are never read: the answers fill the socket buffers, then a write stalls.
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_nonblocking(true).unwrap();
        while !stop2.load(Ordering::Relaxed) {
            match s.write(&PIPELINED.repeat(64)) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    until("the write timeout to be counted", || async {
        refusals(&node, "write_timeout") == 1.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_http_is_answered_400_and_counted() {
    let node = started(cfg()).await;
    let admin = node.admin_addr().unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(admin).unwrap();
        s.write_all(b"\x16\x03\x01 not http\r\n\r\n").unwrap();
        read_to_close(&mut s)
    })
    .await
    .unwrap();
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    until("the malformed request to be counted", || async {
        refusals(&node, "malformed") == 1.0
    })
    .await;
    node.shutdown().await.unwrap();
}
