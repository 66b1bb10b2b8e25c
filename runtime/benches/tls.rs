//! `cargo bench -p svc-overlay --bench tls`: a node with a plain and a TLS listener, and one
//! with `pq_mode = "hybrid"`, in the same run:
//! - handshake latency (TCP connect to HELLO answered, TLS included) p50/p99 at 1 and 100
//!   concurrent clients, plain, TLS and TLS with the hybrid group;
//! - relay throughput of 64 KiB messages, publisher to node to subscriber, plain and TLS.
//!
//! Certificates are made here (rcgen); everything runs on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use overlay_core::client::{Client, ClientEvent};
use overlay_core::oap::Role;
use overlay_core::Config;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use svc_overlay::{Node, NodeOptions, TokioNet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const MSG: usize = 64 << 10;
const MESSAGES: u64 = 1024;
const WINDOW: u64 = 16;

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

#[derive(Clone)]
struct Target {
    plain: SocketAddr,
    tls: SocketAddr,
    client: Arc<ClientConfig>,
}

impl Target {
    async fn open(&self, tls: bool) -> Box<dyn Io> {
        if !tls {
            let s = TcpStream::connect(self.plain).await.unwrap();
            s.set_nodelay(true).unwrap();
            return Box::new(s);
        }
        let s = TcpStream::connect(self.tls).await.unwrap();
        s.set_nodelay(true).unwrap();
        let name = ServerName::try_from("bench").unwrap();
        Box::new(
            TlsConnector::from(self.client.clone())
                .connect(name, s)
                .await
                .unwrap(),
        )
    }
}

/// Runs `c` until its next event, writing what it has and reading what comes.
async fn next_event(c: &mut Client, s: &mut Box<dyn Io>, buf: &mut BytesMut) -> ClientEvent {
    loop {
        while let Some(b) = c.poll_transmit() {
            s.write_all(&b).await.unwrap();
        }
        if let Some(ev) = c.poll_event() {
            return ev;
        }
        if s.read_buf(buf).await.unwrap() == 0 {
            return ClientEvent::Broken("closed".into());
        }
        c.handle_bytes(buf);
    }
}

async fn session(t: &Target, tls: bool, role: Role, topics: &[&str]) -> (Client, Box<dyn Io>) {
    let mut s = t.open(tls).await;
    let mut c = Client::new(
        "bench-client",
        role,
        topics.iter().map(|t| t.to_string()).collect(),
        None,
    );
    c.start();
    let mut buf = BytesMut::new();
    match next_event(&mut c, &mut s, &mut buf).await {
        ClientEvent::Established(_) => {}
        other => panic!("handshake: {other:?}"),
    }
    (c, s)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn handshakes(t: &Target, tls: bool, concurrency: usize, total: usize) -> (f64, f64) {
    let per = total / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::with_capacity(per);
            for _ in 0..per {
                let t0 = Instant::now();
                let (_c, s) = session(&t, tls, Role::Client, &[]).await;
                v.push(t0.elapsed());
                drop(s);
            }
            v
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    (pct(&all, 0.5), pct(&all, 0.99))
}

/// Publisher to node to subscriber; acked, at most `WINDOW` unanswered. MiB/s delivered.
async fn relay(t: &Target, tls: bool) -> f64 {
    let (mut sub, mut sub_s) = session(t, tls, Role::Client, &["bench"]).await;
    let (mut publ, mut pub_s) = session(t, tls, Role::Client, &[]).await;
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(1 << 20);
        let mut got = 0u64;
        while got < MESSAGES {
            match next_event(&mut sub, &mut sub_s, &mut buf).await {
                ClientEvent::Message(_) => got += 1,
                ClientEvent::Broken(e) => panic!("subscriber: {e}"),
                _ => {}
            }
        }
        Instant::now()
    });
    let data = Bytes::from(vec![7u8; MSG]);
    let mut buf = BytesMut::with_capacity(1 << 16);
    let t0 = Instant::now();
    let (mut sent, mut answered) = (0u64, 0u64);
    while answered < MESSAGES {
        while sent < MESSAGES && sent - answered < WINDOW {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(sent + 1 + (tls as u64) * 1_000_000).to_be_bytes());
            publ.publish(id, "bench", 1, &data, true).unwrap();
            sent += 1;
        }
        match next_event(&mut publ, &mut pub_s, &mut buf).await {
            ClientEvent::Ack { code, .. } => {
                assert_eq!(code, 202, "a write was refused; lower WINDOW");
                answered += 1;
            }
            ClientEvent::Broken(e) => panic!("publisher: {e}"),
            _ => {}
        }
    }
    let end = reader.await.unwrap();
    let secs = end.duration_since(t0).as_secs_f64();
    (MESSAGES as usize * MSG) as f64 / secs / (1 << 20) as f64
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("svc-overlay-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["bench".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let (cf, kf) = (dir.join("bench.pem"), dir.join("bench.key"));
        std::fs::write(&cf, cert.pem()).unwrap();
        std::fs::write(&kf, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).unwrap();

        let mut c = Config::default();
        c.overlay.listen = "127.0.0.1:0".into();
        c.overlay.tls_listen = "127.0.0.1:0".into();
        c.admin.listen = "127.0.0.1:0".into();
        c.tls.cert_file = cf.to_string_lossy().into_owned();
        c.tls.key_file = kf.to_string_lossy().into_owned();
        // The bench measures handshakes, not the handshake rate limit.
        c.overlay.handshake_rate = 1_000_000;
        c.overlay.handshake_burst = 1_000_000;
        let opts = NodeOptions {
            seed: 1,
            log_events: false,
            ..NodeOptions::default()
        };
        let node = Node::start(TokioNet, c.clone(), opts.clone()).await.unwrap();
        // The same with pq_mode = "hybrid" (its plain listener is not measured).
        c.overlay.pq_mode = overlay_core::config::PqModeConfig::Hybrid;
        let pq_node = Node::start(TokioNet, c, opts).await.unwrap();
        let client = |groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>| {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der().clone()).unwrap();
            let mut p = rustls::crypto::aws_lc_rs::default_provider();
            // One group each, so no handshake pays a HelloRetryRequest for a key share
            // the node does not take.
            p.kx_groups = groups;
            let mut cc = ClientConfig::builder_with_provider(Arc::new(p))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            cc.alpn_protocols = vec![b"oap/1".to_vec()];
            Arc::new(cc)
        };
        use rustls::crypto::aws_lc_rs::kx_group;
        let t = Target {
            plain: node.overlay_addr(),
            tls: node.tls_addr().unwrap(),
            client: client(vec![kx_group::X25519]),
        };
        let pq = Target {
            plain: pq_node.overlay_addr(),
            tls: pq_node.tls_addr().unwrap(),
            client: client(vec![kx_group::X25519MLKEM768]),
        };

        println!("handshake: TCP connect to HELLO answered (TLS included), loopback, 2 workers");
        for (conc, total) in [(1, 200), (100, 1000)] {
            for (name, target, tls) in [("plain", &t, false), ("tls", &t, true), ("tls-pq", &pq, true)] {
                let (p50, p99) = handshakes(target, tls, conc, total).await;
                println!(
                    "  {name:6} concurrency {conc:3}: p50 {p50:7.2} ms  p99 {p99:7.2} ms  ({total} handshakes)"
                );
            }
        }
        pq_node.shutdown().await.unwrap();
        println!("relay: {MESSAGES} x 64 KiB, publisher -> node -> subscriber, acked, window {WINDOW}");
        for tls in [false, true] {
            let mib = relay(&t, tls).await;
            println!("  {:5}: {mib:8.1} MiB/s", if tls { "tls" } else { "plain" });
        }
        node.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    });
}
