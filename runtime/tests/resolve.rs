//! Peers by name. A name is looked up at start and every `overlay.peer_resolve_interval`;
//! every address of the answer is dialed, an address that leaves the answer is no longer
//! redialed (its session, if any, is left alone), and a failed lookup keeps the last good
//! answer. The names come from a table the test controls (no DNS), except `localhost`,
//! which goes through the real resolver.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cfg, opts, series, until};
use svc_overlay::net::Net;
use svc_overlay::{Node, TokioNet};

const NAME: &str = "peers.test:9444";

/// TCP on loopback with names answered from `names` (`None`: the lookup fails), counting
/// the dials to each address and the lookups of each name.
#[derive(Clone, Default)]
struct TableNet {
    names: Arc<Mutex<BTreeMap<String, Option<Vec<SocketAddr>>>>>,
    dials: Arc<Mutex<BTreeMap<String, usize>>>,
    lookups: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl TableNet {
    fn set(&self, name: &str, addrs: Option<Vec<SocketAddr>>) {
        self.names.lock().unwrap().insert(name.into(), addrs);
    }

    fn dials(&self, addr: SocketAddr) -> usize {
        let dials = self.dials.lock().unwrap();
        dials.get(&addr.to_string()).copied().unwrap_or(0)
    }

    fn lookups(&self, name: &str) -> usize {
        self.lookups.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

impl Net for TableNet {
    type Stream = tokio::net::TcpStream;
    type Listener = <TokioNet as Net>::Listener;
    async fn bind(&self, addr: &str) -> std::io::Result<Self::Listener> {
        TokioNet.bind(addr).await
    }
    async fn connect(&self, addr: &str) -> std::io::Result<tokio::net::TcpStream> {
        *self.dials.lock().unwrap().entry(addr.into()).or_default() += 1;
        TokioNet.connect(addr).await
    }
    async fn resolve(&self, host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
        *self
            .lookups
            .lock()
            .unwrap()
            .entry(host_port.into())
            .or_default() += 1;
        let answer = self.names.lock().unwrap().get(host_port).cloned().flatten();
        answer.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))
    }
}

/// An address that takes each connection and drops it: every dial connects, no session
/// ever forms, and the dialer backs off and redials, so its dial count shows whether the
/// address is still being dialed.
async fn refuser() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    addr
}

fn resolves(node: &Node, outcome: &str) -> f64 {
    let text = node.prometheus().render();
    series(
        &text,
        &format!("overlay_peer_resolve_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn established(node: &Node) -> usize {
    node.stats().await.unwrap().established
}

// One thread: an abort the driver makes is final before the test looks, so a dial count
// read after the driver acted cannot move from a dial that was already under way.
#[tokio::test]
async fn a_name_follows_its_answer_and_a_failed_lookup_keeps_the_last_one() {
    let a = Node::start(TokioNet, cfg(), opts(1)).await.unwrap();
    let b = Node::start(TokioNet, cfg(), opts(2)).await.unwrap();
    let (a_dead, b_dead) = (refuser().await, refuser().await);
    let net = TableNet::default();
    net.set(NAME, Some(vec![a.overlay_addr(), a_dead]));
    let mut c = cfg();
    c.overlay.peers = vec![NAME.into()];
    c.overlay.peer_resolve_interval = Duration::from_millis(100);
    c.overlay.dial_backoff_base = Duration::from_millis(10);
    c.overlay.dial_backoff_max = Duration::from_millis(40);
    let x = Node::start(net.clone(), c, opts(3)).await.unwrap();

    until("a session with A, and A's dead twin redialed", || async {
        established(&x).await == 1 && net.dials(a_dead) >= 2
    })
    .await;

    net.set(NAME, Some(vec![b.overlay_addr(), b_dead]));
    until("a session with B once the new answer is in", || async {
        established(&b).await == 1
    })
    .await;
    // The answer that started B's dialers stopped A's in the same step of the driver.
    let a_dead_dials = net.dials(a_dead);
    let ok = resolves(&x, "ok");
    until("two more lookups, with B's dead twin redialed", || async {
        resolves(&x, "ok") >= ok + 2.0 && net.dials(b_dead) >= 3
    })
    .await;
    assert_eq!(
        net.dials(a_dead),
        a_dead_dials,
        "an address that left the answer is redialed"
    );
    assert_eq!(net.dials(a.overlay_addr()), 1);
    assert_eq!(
        established(&x).await,
        2,
        "the session with A, no longer in the answer, is left alone"
    );

    net.set(NAME, None);
    let ok = resolves(&x, "ok");
    let errors = resolves(&x, "error");
    until("two failed lookups counted", || async {
        resolves(&x, "error") >= errors + 2.0
    })
    .await;
    let b_dead_dials = net.dials(b_dead);
    until(
        "the last good answer still dialed through the failures",
        || async { resolves(&x, "error") >= errors + 4.0 && net.dials(b_dead) >= b_dead_dials + 2 },
    )
    .await;
    assert_eq!(resolves(&x, "ok"), ok, "a failure is not counted ok");
    assert_eq!(established(&x).await, 2);
    assert_eq!(net.dials(b.overlay_addr()), 1);

    x.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn localhost_works_as_a_peer_with_the_real_resolver() {
    let y = Node::start(TokioNet, cfg(), opts(4)).await.unwrap();
    let mut c = cfg();
    c.overlay.peers = vec![format!("localhost:{}", y.overlay_addr().port())];
    let x = Node::start(TokioNet, c, opts(5)).await.unwrap();
    until("a session through localhost", || async {
        established(&x).await == 1 && established(&y).await == 1
    })
    .await;
    assert!(resolves(&x, "ok") >= 1.0, "the lookup is counted");
    assert_eq!(resolves(&x, "error"), 0.0);
    x.shutdown().await.unwrap();
    y.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reload_applies_a_new_interval_at_once_and_a_removed_name_stops_its_lookups() {
    let a = Node::start(TokioNet, cfg(), opts(6)).await.unwrap();
    let b = Node::start(TokioNet, cfg(), opts(7)).await.unwrap();
    let net = TableNet::default();
    net.set(NAME, Some(vec![a.overlay_addr()]));
    // A second name, answering nothing anyone listens on, whose lookups keep time.
    const CLOCK: &str = "clock.test:9444";
    net.set(CLOCK, Some(vec![refuser().await]));
    let mut c = cfg();
    c.overlay.peers = vec![NAME.into(), CLOCK.into()];
    c.overlay.peer_resolve_interval = Duration::from_secs(3600);
    let x = Node::start(net.clone(), c.clone(), opts(8)).await.unwrap();
    until("a session with A", || async { established(&a).await == 1 }).await;

    // An hour before the next lookup, unless the reload starts the lookups anew.
    net.set(NAME, Some(vec![b.overlay_addr()]));
    c.overlay.peer_resolve_interval = Duration::from_millis(50);
    x.reconfigure(c.clone()).await.unwrap();
    until("a session with B", || async { established(&b).await == 1 }).await;

    c.overlay.peers = vec![CLOCK.into()];
    x.reconfigure(c).await.unwrap();
    // The reload stopped NAME's resolver in the driver's step that answered it.
    let (name_lookups, clock_lookups) = (net.lookups(NAME), net.lookups(CLOCK));
    until("four more lookups of the name still configured", || async {
        net.lookups(CLOCK) >= clock_lookups + 4
    })
    .await;
    assert_eq!(
        net.lookups(NAME),
        name_lookups,
        "a removed name is still looked up"
    );

    x.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Waits for `n` more successful lookups than now.
async fn lookups_ok(node: &Node, n: f64) {
    let from = resolves(node, "ok");
    until("more lookups", || async {
        resolves(node, "ok") >= from + n
    })
    .await;
}

// Rotating DNS answers move an address out and back while its session is open: the
// session is kept, and the address is not dialed a second time.
#[tokio::test]
async fn an_address_that_flaps_out_of_the_answer_and_back_keeps_one_connection() {
    let a = Node::start(TokioNet, cfg(), opts(9)).await.unwrap();
    let b = Node::start(TokioNet, cfg(), opts(10)).await.unwrap();
    let a_addr = a.overlay_addr();
    let net = TableNet::default();
    net.set(NAME, Some(vec![a_addr]));
    let mut c = cfg();
    c.overlay.peers = vec![NAME.into()];
    c.overlay.peer_resolve_interval = Duration::from_millis(50);
    c.overlay.dial_backoff_base = Duration::from_millis(10);
    c.overlay.dial_backoff_max = Duration::from_millis(40);
    let x = Node::start(net.clone(), c, opts(11)).await.unwrap();
    until("a session with A", || async { established(&a).await == 1 }).await;

    net.set(NAME, Some(vec![b.overlay_addr()]));
    until("a session with B", || async { established(&b).await == 1 }).await;
    net.set(NAME, Some(vec![a_addr, b.overlay_addr()]));
    lookups_ok(&x, 3.0).await;
    assert_eq!(
        net.dials(a_addr),
        1,
        "A, back in the answer, was dialed again"
    );
    assert_eq!(established(&a).await, 1);
    assert_eq!(established(&x).await, 2);

    // Out again, and then its session ends: nobody redials it.
    net.set(NAME, Some(vec![b.overlay_addr()]));
    lookups_ok(&x, 2.0).await;
    a.shutdown().await.unwrap();
    until("the session with A over", || async {
        established(&x).await == 1
    })
    .await;
    lookups_ok(&x, 3.0).await;
    assert_eq!(net.dials(a_addr), 1, "A, out of the answer, was redialed");

    x.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
