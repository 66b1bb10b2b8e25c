//! A connection flood on the TLS listener: the built daemon (a separate process, so its
//! resident set is read from `/proc`), default configuration plus a TLS listener with an
//! rcgen certificate. One publisher and one subscriber session (plain listener) measure
//! delivery latency at a paced rate, first on a quiet node, then while raw TCP clients open
//! connections at `--rate` a second, each writing a canned TLS ClientHello and closing with
//! a RST (SO_LINGER 0, source addresses spread over 127.0.0.0/8, so the flooder runs out of
//! neither ephemeral ports nor TIME_WAIT slots).
//!
//! ```text
//! cargo bench -p e2e --bench flood        # 3 rounds of 5 s quiet then 5 s at 10,000/s
//! cargo bench -p e2e --bench flood -- --rate 5000 --quiet 5 --flood 8 --rounds 2 --msgs 200
//! cargo bench -p e2e --bench flood -- --nice 10   # the flooder at a lower CPU priority
//! cargo bench -p e2e --bench flood -- --flooder-cpu 0   # the flooder's thread on CPU 0 only
//! cargo bench -p e2e --bench flood -- --cfg overlay.handshake_rate=50   # config overrides
//! ```
//!
//! Quiet and flood phases alternate (`--rounds`), so that load from outside the bench weighs
//! on both sides of the ratio alike.
//!
//! Prints attempts/s achieved, what the node refused before TLS and what it started TLS
//! for (from its exposition), peak RSS quiet vs flood, `/readyz` during the flood, and
//! delivery latency p50/p99 quiet vs flood with their ratio (goal ≤ 2×).
//! `docs/PERFORMANCE.md` ("TLS listener under a connection flood") records a run.

#[path = "mesh/procfs.rs"]
mod procfs;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::wire::OapClient;
use e2e::{http, Daemon};
use overlay_core::client::ClientEvent;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

const TOPIC: &str = "bench";
const SIZE: usize = 256;

struct Opts {
    rate: u64,
    quiet: Duration,
    flood: Duration,
    msgs: u64,
    concurrency: usize,
    rounds: usize,
    nice: i32,
    /// The one CPU the flooder's thread may run on (`--flooder-cpu`), so that its connects
    /// and the kernel's loopback work for them stay off the other core.
    flooder_cpu: Option<usize>,
    /// `key=value` config overrides on top of the defaults.
    cfg: Vec<(String, String)>,
}

fn opts() -> Opts {
    let mut o = Opts {
        rate: 10_000,
        quiet: Duration::from_secs(5),
        flood: Duration::from_secs(5),
        msgs: 500,
        concurrency: 256,
        rounds: 3,
        nice: 0,
        flooder_cpu: None,
        cfg: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--rate" => o.rate = val().parse().expect("--rate"),
            "--quiet" => o.quiet = Duration::from_secs_f64(val().parse().expect("--quiet")),
            "--flood" => o.flood = Duration::from_secs_f64(val().parse().expect("--flood")),
            "--msgs" => o.msgs = val().parse().expect("--msgs"),
            "--concurrency" => o.concurrency = val().parse().expect("--concurrency"),
            "--rounds" => o.rounds = val().parse().expect("--rounds"),
            "--nice" => o.nice = val().parse().expect("--nice"),
            "--flooder-cpu" => o.flooder_cpu = Some(val().parse().expect("--flooder-cpu")),
            "--cfg" => {
                let kv = val();
                let (k, v) = kv.split_once('=').expect("--cfg key=value");
                o.cfg.push((k.to_string(), v.to_string()));
            }
            other => panic!("unknown flag {other:?}; see the header of tests/benches/flood.rs"),
        }
    }
    o
}

/// A certificate for `n1` and its key, written where the daemon reads them.
struct Pki {
    dir: PathBuf,
    root: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("svc-overlay-flood-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["n1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("n1.pem"), cert.pem()).unwrap();
        let key_path = dir.join("n1.key");
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Pki {
            dir,
            root: cert.der().clone(),
        }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_string_lossy().into_owned()
    }

    /// What a rustls client sends first: replayed by every flood connection.
    fn client_hello(&self) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"oap/1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("n1").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Delivery latencies, by when each message was published (ns since `base`).
struct Samples {
    base: Instant,
    stop: AtomicBool,
    got: Mutex<Vec<(u64, u64)>>,
}

impl Samples {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

fn publisher(mut c: OapClient, every: Duration, s: Arc<Samples>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut next = Instant::now();
        while !s.stop.load(Ordering::Relaxed) {
            let mut data = vec![0u8; SIZE];
            data[..8].copy_from_slice(&s.now_ns().to_be_bytes());
            c.publish(TOPIC, &data, false);
            sent += 1;
            next += every;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        sent
    })
}

fn subscriber(mut c: OapClient, s: Arc<Samples>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !s.stop.load(Ordering::Relaxed) {
            if let Some(ClientEvent::Message(m)) = c.next_event(Duration::from_millis(200)) {
                let sent = u64::from_be_bytes(m.data[..8].try_into().unwrap());
                let lat = s.now_ns().saturating_sub(sent);
                s.got.lock().unwrap().push((sent, lat));
            }
        }
    })
}

/// Counts of the flooder: connections opened (each wrote its ClientHello) and connects
/// that failed or timed out.
#[derive(Default)]
struct FloodCount {
    opened: AtomicU64,
    failed: AtomicU64,
}

/// Opens connections at `rate` a second for `dur` on a thread of its own with a one-thread
/// runtime (so the flooder takes at most one of the machine's cores; with `--nice`, at a
/// lower priority, as an attacker on other hardware would), `concurrency` in flight at most.
fn flood(addr: SocketAddr, hello: Vec<u8>, o: &Opts, count: Arc<FloodCount>) {
    let (rate, dur, concurrency, nice) = (o.rate, o.flood, o.concurrency, o.nice);
    let cpu = o.flooder_cpu;
    std::thread::spawn(move || {
        if let Some(cpu) = cpu {
            // SAFETY: a zeroed cpu_set_t is the empty set; pid 0 is this thread.
            let r = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            assert_eq!(
                r,
                0,
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            );
        }
        if nice != 0 {
            // SAFETY: plain syscalls on this thread's own id.
            let r = unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, nice)
            };
            assert_eq!(r, 0, "setpriority: {}", std::io::Error::last_os_error());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(flood_at(addr, hello, rate, dur, concurrency, count));
    })
    .join()
    .expect("flooder thread");
}

async fn flood_at(
    addr: SocketAddr,
    hello: Vec<u8>,
    rate: u64,
    dur: Duration,
    concurrency: usize,
    count: Arc<FloodCount>,
) {
    {
        let hello: Arc<[u8]> = hello.into();
        let slots = Arc::new(Semaphore::new(concurrency));
        let start = tokio::time::Instant::now();
        let mut issued = 0u64;
        let mut src = 0u32;
        while start.elapsed() < dur {
            // Catch up to the schedule every millisecond: the rate holds even where the
            // timer is coarser than one connection's share of a second.
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while issued < due {
                let permit = slots.clone().acquire_owned().await.unwrap();
                issued += 1;
                src = src.wrapping_add(1);
                // 65,000 source addresses from 127.0.0.2, each with its own ephemeral ports.
                let ip = Ipv4Addr::from(0x7f00_0002 + (src % 65_000));
                let (hello, count) = (hello.clone(), count.clone());
                tokio::spawn(async move {
                    let ok = attempt(addr, ip, &hello).await.is_ok();
                    let c = if ok { &count.opened } else { &count.failed };
                    c.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = slots.acquire_many(concurrency as u32).await;
    }
}

async fn attempt(addr: SocketAddr, src: Ipv4Addr, hello: &[u8]) -> std::io::Result<()> {
    let s = TcpSocket::new_v4()?;
    // Closed with a RST: no TIME_WAIT left behind on the flooder's side.
    s.set_zero_linger()?;
    s.bind(SocketAddr::from((src, 0)))?;
    let mut c = tokio::time::timeout(Duration::from_secs(1), s.connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    c.write_all(hello).await?;
    Ok(())
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1e6
}

/// The handshake counters the figures come from.
fn counters(d: &Daemon) -> BTreeMap<&'static str, f64> {
    let e = d.scrape();
    let mut m = BTreeMap::new();
    m.insert("attempts", e.sum("overlay_handshake_attempts_total", &[]));
    m.insert("failures", e.sum("overlay_handshake_failures_total", &[]));
    let rl = [("reason", "ratelimit")];
    m.insert("ratelimit", e.sum("overlay_handshake_failures_total", &rl));
    m.insert("rejected", e.sum("rejected_total", &rl));
    m.insert("tls_failures", e.sum("tls_handshake_failures_total", &[]));
    m
}

/// `VmRSS` (resident set now) of `pid` in MiB.
fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok());
    kb.map_or(f64::NAN, |kb| kb / 1024.0)
}

fn self_cpu() -> f64 {
    procfs::cpu_s(procfs::self_pid()).unwrap_or(0.0)
}

fn main() {
    let o = opts();
    let pki = Pki::new();
    let mut b = Daemon::builder()
        .cfg("overlay.tls_listen", "127.0.0.1:0")
        .cfg("overlay.node_id", "n1")
        .cfg("tls.cert_file", pki.path("n1.pem"))
        .cfg("tls.key_file", pki.path("n1.key"));
    for (k, v) in &o.cfg {
        b = b.cfg(k, v.clone());
    }
    let d = b.start();
    d.wait_readyz(200, Duration::from_secs(20));
    let tls = d.tls.expect("a TLS listener");
    let pid = d.pid();
    let samples = Arc::new(Samples {
        base: Instant::now(),
        stop: AtomicBool::new(false),
        got: Mutex::new(Vec::new()),
    });
    let sub = OapClient::connect(d.overlay, "sub", &[TOPIC], None).expect("subscriber");
    let publ = OapClient::connect(d.overlay, "pub", &["bench.none"], None).expect("publisher");
    let sub = subscriber(sub, samples.clone());
    let every = Duration::from_secs_f64(1.0 / o.msgs as f64);
    let publ = publisher(publ, every, samples.clone());

    let before = counters(&d);
    let lines0 = d.log_lines().len();
    // /readyz, polled through the floods.
    let flooding = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (admin, flooding, watching) = (d.admin, flooding.clone(), watching.clone());
        std::thread::spawn(move || {
            let mut seen: BTreeMap<u16, u64> = BTreeMap::new();
            while watching.load(Ordering::Relaxed) {
                if flooding.load(Ordering::Relaxed) {
                    let status = http::get(admin, "/readyz", &[]).map_or(0, |r| r.status);
                    *seen.entry(status).or_default() += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        })
    };
    // Quiet and flood alternate, so that whatever else the machine runs weighs on both.
    let (mut quiet_windows, mut flood_windows) = (Vec::new(), Vec::new());
    let (mut rss_quiet, mut flood_s, mut cpu_flood, mut harness_cpu) = (0f64, 0f64, 0f64, 0f64);
    let count = Arc::new(FloodCount::default());
    let hello = pki.client_hello();
    // The resident set after each flood: what a flood leaves held, round after round.
    let mut rss_after = Vec::new();
    for round in 0..o.rounds {
        let q = samples.now_ns();
        std::thread::sleep(o.quiet);
        quiet_windows.push(q..samples.now_ns());
        if round == 0 {
            // The peak before any flood (later quiet phases come after one).
            rss_quiet = procfs::peak_rss_mib(pid).unwrap_or(f64::NAN);
        }
        let (c0, h0, f) = (
            procfs::cpu_s(pid).unwrap_or(0.0),
            self_cpu(),
            samples.now_ns(),
        );
        flooding.store(true, Ordering::Relaxed);
        let t = Instant::now();
        flood(tls, hello.clone(), &o, count.clone());
        flood_s += t.elapsed().as_secs_f64();
        flooding.store(false, Ordering::Relaxed);
        flood_windows.push(f..samples.now_ns());
        cpu_flood += procfs::cpu_s(pid).unwrap_or(0.0) - c0;
        harness_cpu += self_cpu() - h0;
        rss_after.push(rss_mib(pid));
    }
    let rss_flood = procfs::peak_rss_mib(pid).unwrap_or(f64::NAN);
    watching.store(false, Ordering::Relaxed);
    let readyz = watcher.join().unwrap();
    samples.stop.store(true, Ordering::Relaxed);
    let sent = publ.join().unwrap();
    sub.join().unwrap();
    // The node counts a handshake when it ends: let the last admitted ones finish.
    std::thread::sleep(Duration::from_secs(1));
    let after = counters(&d);
    let lines = d.log_lines();
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    for l in &lines[lines0..] {
        if l["event"] == "readyz_change" {
            eprintln!("{l}");
        }
        *events
            .entry(l["event"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let delta = |k: &str| after[k] - before[k];

    let got = samples.got.lock().unwrap();
    let within = |w: &[std::ops::Range<u64>]| -> Vec<u64> {
        got.iter()
            .filter(|(s, _)| w.iter().any(|r| r.contains(s)))
            .map(|&(_, l)| l)
            .collect()
    };
    let (mut quiet, mut flooded) = (within(&quiet_windows), within(&flood_windows));
    if std::env::var_os("FLOOD_SLOW").is_some() {
        for (s, l) in got.iter().filter(|(_, l)| *l > 2_000_000) {
            let w = flood_windows.iter().find(|r| r.contains(s));
            let q = quiet_windows.iter().find(|r| r.contains(s));
            eprintln!(
                "slow {:.1} ms: flood+{:?} quiet+{:?}",
                *l as f64 / 1e6,
                w.map(|r| (s - r.start) / 1_000_000),
                q.map(|r| (s - r.start) / 1_000_000)
            );
        }
    }
    quiet.sort_unstable();
    flooded.sort_unstable();
    let opened = count.opened.load(Ordering::Relaxed);
    let refused = delta("ratelimit");
    let started = delta("attempts") - refused;
    let (q50, q99) = (percentile_ms(&quiet, 0.5), percentile_ms(&quiet, 0.99));
    let (f50, f99) = (percentile_ms(&flooded, 0.5), percentile_ms(&flooded, 0.99));
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| flood attempts | {opened} opened in {flood_s:.1} s of flood ({} rounds) = {:.0}/s (target {}/s), {} connects failed |",
        o.rounds,
        opened as f64 / flood_s,
        o.rate,
        count.failed.load(Ordering::Relaxed)
    );
    println!(
        "| refused before TLS | {refused} (`overlay_handshake_failures_total{{reason=\"ratelimit\"}}`; `rejected_total{{reason=\"ratelimit\"}}` {}) |",
        delta("rejected")
    );
    println!(
        "| TLS handshakes started | {started} (failed {}, of them `tls_handshake_failures_total` {}) |",
        delta("failures") - refused,
        delta("tls_failures")
    );
    println!(
        "| CPU during the flood: daemon / harness (flooder, clients) | {:.2} s / {:.2} s of {flood_s:.1} s ({:.0} % / {:.0} % of one core) |",
        cpu_flood,
        harness_cpu,
        100.0 * cpu_flood / flood_s,
        100.0 * harness_cpu / flood_s
    );
    println!("| peak RSS quiet / flood | {rss_quiet:.1} MiB / {rss_flood:.1} MiB |");
    let rounds: Vec<String> = rss_after.iter().map(|r| format!("{r:.1}")).collect();
    println!("| RSS after each flood | {} MiB |", rounds.join(", "));
    println!(
        "| log lines during the flood | {} {events:?} |",
        lines.len() - lines0
    );
    println!("| /readyz during the flood | {readyz:?} (status: polls) |");
    println!(
        "| delivery p50 quiet / flood | {q50:.3} ms / {f50:.3} ms ({:.2}×) |",
        f50 / q50
    );
    println!(
        "| delivery p99 quiet / flood | {q99:.3} ms / {f99:.3} ms ({:.2}×, goal ≤ 2×) |",
        f99 / q99
    );
    println!(
        "| messages | {sent} sent at {}/s, {} quiet + {} flood samples, {} delivered |",
        o.msgs,
        quiet.len(),
        flooded.len(),
        got.len()
    );
}
