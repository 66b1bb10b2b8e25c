//! The TLS listener and `tls://` dials against real rustls clients and certificates made
//! in the test (rcgen): each failure reason of spec section 7 reached and counted, mTLS
//! identity, PQ hybrid, key file permissions and reload, and a connection flood refused
//! before any TLS work.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{cfg, opts, series, until};
use overlay_core::client::{Client, ClientEvent};
use overlay_core::config::PqModeConfig;
use overlay_core::oap::Role;
use overlay_core::Config;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use svc_overlay::{Node, TokioNet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A test CA that signs node certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, as PEM and as rustls wants them.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    fn leaf(&self, dns: &[&str], uris: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut r = RootCertStore::empty();
        r.add(self.cert.der().clone()).unwrap();
        r
    }
}

impl Leaf {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect()
    }
    fn key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

/// A directory of its own for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("svc-overlay-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node serving TLS only, as `node_id`, with a certificate for it from `ca`.
fn tls_cfg(dir: &Dir, ca: &Ca, node_id: &str) -> Config {
    let leaf = ca.leaf(&[node_id], &[]);
    let mut c = cfg();
    c.overlay.listen = String::new();
    c.overlay.tls_listen = "127.0.0.1:0".into();
    c.overlay.node_id = node_id.into();
    c.tls.cert_file = dir.write(&format!("{node_id}.pem"), &leaf.cert_pem, 0o644);
    c.tls.key_file = dir.write(&format!("{node_id}.key"), &leaf.key_pem, 0o600);
    c
}

fn provider(groups: Vec<&'static dyn SupportedKxGroup>) -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = groups;
    Arc::new(p)
}

fn classical() -> Arc<CryptoProvider> {
    provider(vec![
        aws_lc_rs::kx_group::X25519,
        aws_lc_rs::kx_group::SECP256R1,
    ])
}

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A client config as a well-behaved peer would have it, before a test breaks one part.
struct ClientSpec {
    provider: Arc<CryptoProvider>,
    versions: &'static [&'static SupportedProtocolVersion],
    alpn: Vec<Vec<u8>>,
    roots: RootCertStore,
    identity: Option<Leaf>,
}

impl ClientSpec {
    fn new(ca: &Ca) -> ClientSpec {
        ClientSpec {
            provider: classical(),
            versions: TLS13_ONLY,
            alpn: vec![b"oap/1".to_vec()],
            roots: ca.roots(),
            identity: None,
        }
    }

    fn build(self) -> ClientConfig {
        let b = ClientConfig::builder_with_provider(self.provider)
            .with_protocol_versions(self.versions)
            .unwrap()
            .with_root_certificates(self.roots);
        let mut c = match self.identity {
            Some(l) => b.with_client_auth_cert(l.chain(), l.key()).unwrap(),
            None => b.with_no_client_auth(),
        };
        c.alpn_protocols = self.alpn;
        c
    }
}

async fn connect(
    addr: SocketAddr,
    spec: ClientSpec,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut s = TlsConnector::from(Arc::new(spec.build()))
        .connect(name, tcp)
        .await?;
    // A TLS 1.3 server's refusal of our certificate comes after the client's handshake
    // is done; a round trip shows it.
    s.flush().await?;
    Ok(s)
}

/// Sends HELLO as `node` and returns the node's answer.
async fn hello(s: &mut TlsStream<TcpStream>, node: &str) -> ClientEvent {
    let mut c = Client::new(node, Role::Client, vec![], None);
    c.start();
    while let Some(b) = c.poll_transmit() {
        s.write_all(&b).await.unwrap();
    }
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some(ev) = c.poll_event() {
            return ev;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf))
            .await
            .expect("an answer to HELLO")
            .unwrap_or(0);
        if n == 0 {
            return ClientEvent::Broken("closed".into());
        }
        c.handle_bytes(&mut buf);
    }
}

fn metric(node: &Node, series_name: &str) -> f64 {
    series(&node.prometheus().render(), series_name).unwrap_or(0.0)
}

async fn until_metric(node: &Node, series_name: &str, want: f64) {
    until(series_name, || async { metric(node, series_name) == want }).await;
}

fn tls_addr(n: &Node) -> SocketAddr {
    n.tls_addr().expect("a TLS listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_gets_a_session_and_the_handshake_is_counted_as_tls() {
    let dir = Dir::new("ok");
    let ca = Ca::new();
    let node = Node::start(TokioNet, tls_cfg(&dir, &ca, "n1"), opts(1))
        .await
        .unwrap();
    let mut s = connect(tls_addr(&node), ClientSpec::new(&ca), "n1")
        .await
        .unwrap();
    assert!(matches!(
        hello(&mut s, "c1").await,
        ClientEvent::Established(_)
    ));
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"oap/1"[..]));
    assert_eq!(
        metric(
            &node,
            r#"overlay_pq_negotiations_total{mode="off",outcome="ok"}"#
        ),
        1.0
    );
    let count = r#"request_latency_seconds_count{route="handshake",method="tls"}"#;
    assert_eq!(metric(&node, count), 1.0);
    assert_eq!(
        metric(
            &node,
            r#"request_latency_seconds_count{route="handshake",method="tcp"}"#
        ),
        0.0
    );
    node.shutdown().await.unwrap();
}

/// One client broken one way; the node counts the spec's reason and a `tls` failure.
async fn refused(node: &Node, ca: &Ca, tls_reason: &str, how: fn(&mut ClientSpec)) {
    let before = metric(node, r#"overlay_handshake_failures_total{reason="tls"}"#);
    let mut spec = ClientSpec::new(ca);
    how(&mut spec);
    let r = connect(tls_addr(node), spec, "n1").await;
    if let Ok(mut s) = r {
        // Completed on the client's side (no ALPN offered): the node closes at once.
        assert!(matches!(hello(&mut s, "c1").await, ClientEvent::Broken(_)));
    }
    let name = format!("tls_handshake_failures_total{{reason=\"{tls_reason}\"}}");
    until_metric(node, &name, 1.0).await;
    until_metric(
        node,
        r#"overlay_handshake_failures_total{reason="tls"}"#,
        before + 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_alpn_and_cipher_failures_are_counted_by_reason() {
    let dir = Dir::new("reasons");
    let ca = Ca::new();
    let node = Node::start(TokioNet, tls_cfg(&dir, &ca, "n1"), opts(2))
        .await
        .unwrap();
    refused(&node, &ca, "version", |s| {
        s.versions = TLS12_ONLY;
    })
    .await;
    refused(&node, &ca, "alpn", |s| s.alpn = vec![b"h2".to_vec()]).await;
    refused(&node, &ca, "cipher", |s| {
        s.provider = provider(vec![aws_lc_rs::kx_group::SECP384R1]);
    })
    .await;
    // No ALPN at all: rustls would let it through; the node must not.
    let before = metric(&node, r#"tls_handshake_failures_total{reason="alpn"}"#);
    let mut spec = ClientSpec::new(&ca);
    spec.alpn = vec![];
    let mut s = connect(tls_addr(&node), spec, "n1").await.unwrap();
    assert!(matches!(hello(&mut s, "c1").await, ClientEvent::Broken(_)));
    until_metric(
        &node,
        r#"tls_handshake_failures_total{reason="alpn"}"#,
        before + 1.0,
    )
    .await;
    assert_eq!(metric(&node, "overlay_sessions_open_total"), 0.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_certificate_that_names_the_hello_node_id() {
    let dir = Dir::new("mtls");
    let ca = Ca::new();
    let mut c = tls_cfg(&dir, &ca, "n1");
    c.tls.client_ca_file = dir.write("ca.pem", &ca.cert.pem(), 0o644);
    let node = Node::start(TokioNet, c, opts(3)).await.unwrap();
    let mtls = r#"overlay_handshake_failures_total{reason="mtls"}"#;

    // No client certificate: refused by TLS, counted as the client's certificate.
    let r = connect(tls_addr(&node), ClientSpec::new(&ca), "n1").await;
    if let Ok(mut s) = r {
        assert!(matches!(hello(&mut s, "c1").await, ClientEvent::Broken(_)));
    }
    until_metric(&node, mtls, 1.0).await;
    assert_eq!(
        metric(&node, r#"tls_handshake_failures_total{reason="cert"}"#),
        1.0
    );

    // A certificate from another CA: the same.
    let mut spec = ClientSpec::new(&ca);
    spec.identity = Some(Ca::new().leaf(&["c1"], &[]));
    if let Ok(mut s) = connect(tls_addr(&node), spec, "n1").await {
        assert!(matches!(hello(&mut s, "c1").await, ClientEvent::Broken(_)));
    }
    until_metric(&node, mtls, 2.0).await;
    assert_eq!(
        metric(&node, r#"tls_handshake_failures_total{reason="cert"}"#),
        2.0
    );

    // A good certificate for c1 claiming to be c2 in HELLO: 401, decided by the core.
    let mut spec = ClientSpec::new(&ca);
    spec.identity = Some(ca.leaf(&["c1"], &[]));
    let mut s = connect(tls_addr(&node), spec, "n1").await.unwrap();
    match hello(&mut s, "c2").await {
        ClientEvent::Refused { code, .. } => assert_eq!(code, 401),
        other => panic!("expected 401, got {other:?}"),
    }
    until_metric(&node, mtls, 3.0).await;
    assert_eq!(
        metric(&node, r#"tls_handshake_failures_total{reason="cert"}"#),
        2.0
    );

    // The id as DNS SAN, and as URI SAN oap://<id>: both accepted.
    for leaf in [ca.leaf(&["c1"], &[]), ca.leaf(&[], &["oap://c1"])] {
        let mut spec = ClientSpec::new(&ca);
        spec.identity = Some(leaf);
        let mut s = connect(tls_addr(&node), spec, "n1").await.unwrap();
        assert!(matches!(
            hello(&mut s, "c1").await,
            ClientEvent::Established(_)
        ));
    }
    assert_eq!(metric(&node, mtls), 3.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_peer_over_mtls_and_a_dial_to_the_wrong_name_fails_on_cert() {
    let dir = Dir::new("mesh");
    let ca = Ca::new();
    let ca_file = dir.write("ca.pem", &ca.cert.pem(), 0o644);
    let mut ca_cfg = tls_cfg(&dir, &ca, "a");
    ca_cfg.tls.client_ca_file = ca_file.clone();
    let a = Node::start(TokioNet, ca_cfg, opts(4)).await.unwrap();
    let mut cb = tls_cfg(&dir, &ca, "b");
    cb.tls.ca_file = ca_file.clone();
    cb.overlay.peers = vec![format!("tls://a@{}", tls_addr(&a))];
    let b = Node::start(TokioNet, cb, opts(5)).await.unwrap();
    until("the two nodes to peer over mTLS", || async {
        a.stats().await.unwrap().peers == 1 && b.stats().await.unwrap().peers == 1
    })
    .await;
    assert_eq!(
        metric(
            &b,
            r#"request_latency_seconds_count{route="handshake",method="tls"}"#
        ),
        1.0
    );

    // c expects a node named z at a's address: a's certificate does not name it.
    let mut cc = tls_cfg(&dir, &ca, "c");
    cc.tls.ca_file = ca_file;
    cc.overlay.peers = vec![format!("tls://z@{}", tls_addr(&a))];
    let c = Node::start(TokioNet, cc, opts(6)).await.unwrap();
    until_metric(&c, r#"tls_handshake_failures_total{reason="cert"}"#, 1.0).await;
    assert!(metric(&c, r#"overlay_handshake_failures_total{reason="tls"}"#) >= 1.0);
    assert_eq!(c.stats().await.unwrap().peers, 0);
    for n in [c, b, a] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_accepts_only_x25519mlkem768_and_reports_pq_ready() {
    let dir = Dir::new("pq");
    let ca = Ca::new();
    let mut c = tls_cfg(&dir, &ca, "n1");
    c.overlay.pq_mode = PqModeConfig::Hybrid;
    let node = Node::start(TokioNet, c, opts(7)).await.unwrap();
    // pq_ready is set at start; the driver publishes readiness once it runs.
    until("readiness with pq_ready", || async {
        node.ready().status == 200
    })
    .await;
    assert!(!node.ready().body.contains("pq_ready"));

    // A classical-only client.
    assert!(connect(tls_addr(&node), ClientSpec::new(&ca), "n1")
        .await
        .is_err());
    until_metric(
        &node,
        r#"overlay_pq_negotiations_total{mode="hybrid",outcome="incompatible"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &node,
            r#"overlay_handshake_failures_total{reason="pq_neg_fail"}"#
        ),
        1.0
    );

    let mut spec = ClientSpec::new(&ca);
    spec.provider = provider(vec![aws_lc_rs::kx_group::X25519MLKEM768]);
    let mut s = connect(tls_addr(&node), spec, "n1").await.unwrap();
    assert!(matches!(
        hello(&mut s, "c1").await,
        ClientEvent::Established(_)
    ));
    assert_eq!(
        s.get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    assert_eq!(
        metric(
            &node,
            r#"overlay_pq_negotiations_total{mode="hybrid",outcome="ok"}"#
        ),
        1.0
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_others_can_read_is_refused_at_start() {
    let dir = Dir::new("perm");
    let ca = Ca::new();
    let c = tls_cfg(&dir, &ca, "n1");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&c.tls.key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = Node::start(TokioNet, c.clone(), opts(8))
        .await
        .err()
        .expect("a group-readable key is refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&c.tls.key_file) && msg.contains("readable"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_certificates_for_new_handshakes_and_keeps_sessions() {
    let dir = Dir::new("reload");
    let (old_ca, new_ca) = (Ca::new(), Ca::new());
    let c = tls_cfg(&dir, &old_ca, "n1");
    let node = Node::start(TokioNet, c.clone(), opts(9)).await.unwrap();
    let mut old = connect(tls_addr(&node), ClientSpec::new(&old_ca), "n1")
        .await
        .unwrap();
    assert!(matches!(
        hello(&mut old, "c1").await,
        ClientEvent::Established(_)
    ));

    // Rotation: new files under the same paths.
    let leaf = new_ca.leaf(&["n1"], &[]);
    dir.write("n1.pem", &leaf.cert_pem, 0o644);
    dir.write("n1.key", &leaf.key_pem, 0o600);
    assert!(node.reload_tls(&c).unwrap());
    let mut s = connect(tls_addr(&node), ClientSpec::new(&new_ca), "n1")
        .await
        .unwrap();
    assert!(matches!(
        hello(&mut s, "c2").await,
        ClientEvent::Established(_)
    ));
    assert!(connect(tls_addr(&node), ClientSpec::new(&old_ca), "n1")
        .await
        .is_err());

    // A bad new key: refused, naming the file; the rotated pair stays in use.
    dir.write("n1.key", "not a key", 0o600);
    let e = node.reload_tls(&c).unwrap_err();
    assert!(e.to_string().contains(&c.tls.key_file), "{e}");
    let mut s = connect(tls_addr(&node), ClientSpec::new(&new_ca), "n1")
        .await
        .unwrap();
    assert!(matches!(
        hello(&mut s, "c3").await,
        ClientEvent::Established(_)
    ));

    // The session from before the rotation is still served.
    assert_eq!(node.stats().await.unwrap().established, 3);
    old.write_all(b"").await.unwrap();
    node.shutdown().await.unwrap();
}

/// Two clients that connect and never send a ClientHello, on a node whose TLS listener
/// allows two handshakes at once within 500 ms: a good client waits in the backlog until a
/// stalled handshake times out, then is served.
async fn two_stalled_handshakes_hold_the_listener(node: &Node, ca: &Ca) {
    let t0 = std::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(TcpStream::connect(tls_addr(node)).await.unwrap());
    }
    let paused = r#"overlay_accept_paused_total{reason="tls_handshakes"}"#;
    until_metric(node, paused, 1.0).await;
    let mut s = connect(tls_addr(node), ClientSpec::new(ca), "n1")
        .await
        .unwrap();
    assert!(matches!(
        hello(&mut s, "c1").await,
        ClientEvent::Established(_)
    ));
    // Not before a slot was free: a stalled handshake had to time out first.
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    until_metric(
        node,
        r#"overlay_handshake_failures_total{reason="timeout"}"#,
        2.0,
    )
    .await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_hold_at_most_max_conns_slots_until_their_timeout() {
    let dir = Dir::new("stall");
    let ca = Ca::new();
    let mut c = tls_cfg(&dir, &ca, "n1");
    c.overlay.max_conns = 2;
    c.overlay.handshake_timeout = Duration::from_millis(500);
    let node = Node::start(TokioNet, c, opts(10)).await.unwrap();
    two_stalled_handshakes_hold_the_listener(&node, &ca).await;
    node.shutdown().await.unwrap();
}

/// The same bound reached by a reload from a looser one: before, the listener kept the
/// slots and deadline it started with (8 slots: the good client was served at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_resizes_the_tls_handshake_bound_and_deadline() {
    let dir = Dir::new("restall");
    let ca = Ca::new();
    let mut c = tls_cfg(&dir, &ca, "n1");
    c.overlay.max_conns = 8;
    c.overlay.handshake_timeout = Duration::from_secs(30);
    let node = Node::start(TokioNet, c.clone(), opts(13)).await.unwrap();
    c.overlay.max_conns = 2;
    c.overlay.handshake_timeout = Duration::from_millis(500);
    node.reconfigure(c).await.unwrap();
    two_stalled_handshakes_hold_the_listener(&node, &ca).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_can_add_trust_roots_and_a_tls_peer_to_a_node_started_without_tls() {
    let dir = Dir::new("add");
    let ca = Ca::new();
    let a = Node::start(TokioNet, tls_cfg(&dir, &ca, "a"), opts(11))
        .await
        .unwrap();
    let b_cfg = cfg();
    let b = Node::start(TokioNet, b_cfg.clone(), opts(12))
        .await
        .unwrap();
    assert!(!b.reload_tls(&b_cfg).unwrap(), "nothing to reload yet");
    let mut new = b_cfg;
    new.tls.ca_file = dir.write("ca.pem", &ca.cert.pem(), 0o644);
    new.overlay.peers = vec![format!("tls://a@{}", tls_addr(&a))];
    // As the daemon's SIGHUP does: the files first, then the config.
    assert!(b.reload_tls(&new).unwrap());
    b.reconfigure(new).await.unwrap();
    until("b to peer with a over TLS", || async {
        b.stats().await.unwrap().peers == 1
    })
    .await;
    for n in [b, a] {
        n.shutdown().await.unwrap();
    }
}

/// The first bytes a rustls client sends: a ClientHello, to replay on raw sockets.
fn client_hello(ca: &Ca) -> Vec<u8> {
    let name = ServerName::try_from("n1".to_string()).unwrap();
    let mut c = rustls::ClientConnection::new(Arc::new(ClientSpec::new(ca).build()), name).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

/// Sends `hello` on a new connection and reads until the node closes it: the bytes it
/// answered with (a ServerHello, if it started a TLS handshake).
async fn replay(addr: SocketAddr, hello: &[u8]) -> usize {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A refused connection may be closed before this arrives: then the write fails.
    let _ = s.write_all(hello).await;
    let mut buf = [0u8; 4096];
    // A RST (the node dropped it unread) reads as an error: nothing answered.
    tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the node answers or closes")
        .unwrap_or_default()
}

fn sum(node: &Node, family: &str) -> f64 {
    let text = node.prometheus().render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_over_the_handshake_rate_are_closed_before_any_tls_work() {
    let dir = Dir::new("flood");
    let ca = Ca::new();
    let mut c = tls_cfg(&dir, &ca, "n1");
    c.overlay.handshake_rate = 1;
    c.overlay.handshake_burst = 1;
    let node = Node::start(TokioNet, c, opts(11)).await.unwrap();
    // The one handshake the burst allows: a subscriber, established before the flood.
    let mut sub = connect(tls_addr(&node), ClientSpec::new(&ca), "n1")
        .await
        .unwrap();
    let mut client = Client::new("c1", Role::Client, vec!["t".into()], None);
    client.start();
    while let Some(b) = client.poll_transmit() {
        sub.write_all(&b).await.unwrap();
    }
    let mut buf = BytesMut::with_capacity(4096);
    let mut next_event = async |client: &mut Client, buf: &mut BytesMut| loop {
        if let Some(ev) = client.poll_event() {
            return ev;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), sub.read_buf(buf))
            .await
            .expect("a frame")
            .unwrap();
        assert!(n > 0, "the subscriber's session closed");
        client.handle_bytes(buf);
    };
    let ev = next_event(&mut client, &mut buf).await;
    assert!(matches!(ev, ClientEvent::Established(_)), "{ev:?}");

    let hello: Arc<[u8]> = client_hello(&ca).into();
    // Half one at a time, half at once: the acceptor asks about a backlog in batches.
    const N: usize = 40;
    let mut silent = 0;
    for _ in 0..N / 2 {
        if replay(tls_addr(&node), &hello).await == 0 {
            silent += 1;
        }
    }
    let mut together = tokio::task::JoinSet::new();
    for _ in 0..N / 2 {
        let (addr, hello) = (tls_addr(&node), hello.clone());
        together.spawn(async move { replay(addr, &hello).await });
    }
    while let Some(answered) = together.join_next().await {
        if answered.unwrap() == 0 {
            silent += 1;
        }
    }
    // One token a second comes back, so a slow run may admit one or two; never most.
    assert!(silent >= N / 2, "only {silent} of {N} closed unanswered");
    let ratelimit = r#"overlay_handshake_failures_total{reason="ratelimit"}"#;
    until_metric(&node, ratelimit, silent as f64).await;
    assert_eq!(
        metric(&node, r#"rejected_total{reason="ratelimit"}"#),
        silent as f64
    );
    // Those that were answered were TLS handshakes broken off by the client (`proto`);
    // the refused ones reached no TLS code at all.
    let proto = r#"overlay_handshake_failures_total{reason="proto"}"#;
    until_metric(&node, proto, (N - silent) as f64).await;
    assert_eq!(sum(&node, "tls_handshake_failures_total"), 0.0);
    assert_eq!(
        metric(&node, "overlay_handshake_attempts_total"),
        (N + 1) as f64
    );

    assert_eq!(node.ready().status, 200, "{}", node.ready().body);
    node.publish("t", bytes::Bytes::from_static(b"still here"), None)
        .await
        .unwrap()
        .unwrap();
    let ev = next_event(&mut client, &mut buf).await;
    assert!(
        matches!(&ev, ClientEvent::Message(m) if &m.data[..] == b"still here"),
        "{ev:?}"
    );
    node.shutdown().await.unwrap();
}
