//! Programs for agent hosts: a subscriber, a publisher that can be steered while it runs,
//! a handshake flood, and the hostile frames of the malformed-input scenario.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use overlay_core::client::ClientEvent;
use overlay_core::oap::{
    self, put_header, AppProto, Flags, Frame, GossipHeader, Header, MsgId, Role, HEADER_LEN,
};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::net::SimNet;
use super::oap::OapClient;
use super::steps::{payload, TOPIC};

/// What a subscriber has seen.
#[derive(Debug, Default)]
pub struct Inbox {
    pub established: bool,
    pub got: Vec<MsgId>,
    /// Why it stopped, once it has.
    pub ended: Option<String>,
}

/// Subscribes to `topics` at `addr` and records every message until the node closes.
pub async fn subscriber(
    net: SimNet,
    addr: String,
    name: String,
    topics: Vec<String>,
    inbox: Rc<RefCell<Inbox>>,
) {
    let mut c = match OapClient::connect(&net, &addr, &name, topics).await {
        Ok((c, _)) => c,
        Err(e) => {
            inbox.borrow_mut().ended = Some(format!("{e:#}"));
            return;
        }
    };
    inbox.borrow_mut().established = true;
    loop {
        match c.next_event().await {
            Ok(Some(ClientEvent::Message(m))) => inbox.borrow_mut().got.push(m.header.msg_id),
            Ok(Some(_)) => {}
            Ok(None) => {
                inbox.borrow_mut().ended = Some("closed".into());
                return;
            }
            Err(e) => {
                inbox.borrow_mut().ended = Some(format!("{e:#}"));
                return;
            }
        }
    }
}

/// Orders for a running publisher.
pub enum PubCmd {
    /// Publish one message (without ACK_REQ) every so often, or stop doing so.
    Stream(Option<Duration>),
    /// Publish one message with ACK_REQ and report the ack.
    Probe(oneshot::Sender<anyhow::Result<(u16, Option<String>)>>),
}

/// Messages a publisher has sent, by kind.
#[derive(Debug, Default)]
pub struct Sent {
    /// Without ACK_REQ, with simulated send time.
    pub streamed: Vec<(Duration, MsgId)>,
    /// With ACK_REQ and answered 202.
    pub acked: Vec<MsgId>,
}

/// A `client` at `addr` publishing as ordered through `cmds`; ends when the orders do.
/// It names a topic it never publishes to, so nothing is delivered back to it.
pub async fn publisher(
    net: SimNet,
    addr: String,
    size: usize,
    mut rng: ChaCha8Rng,
    mut cmds: mpsc::UnboundedReceiver<PubCmd>,
    sent: Rc<RefCell<Sent>>,
) -> anyhow::Result<()> {
    let (mut c, _) = OapClient::connect(&net, &addr, "pub", vec!["nothing".into()]).await?;
    let mut every: Option<Duration> = None;
    let mut n = 0u64;
    let mut id = move || {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        id
    };
    loop {
        let cmd = match every {
            Some(d) => tokio::select! {
                biased;
                cmd = cmds.recv() => Some(cmd),
                _ = tokio::time::sleep(d) => None,
            },
            None => Some(cmds.recv().await),
        };
        match cmd {
            None => {
                n += 1;
                let m = id();
                c.publish(m, TOPIC, &payload(n, size), false).await?;
                let now = ::turmoil::sim_elapsed().unwrap_or_default();
                sent.borrow_mut().streamed.push((now, m));
            }
            Some(None) => return Ok(()),
            Some(Some(PubCmd::Stream(e))) => every = e,
            Some(Some(PubCmd::Probe(reply))) => {
                n += 1;
                let m = id();
                let r = c.publish_acked(m, TOPIC, &payload(n, size)).await;
                if matches!(r, Ok((202, _))) {
                    sent.borrow_mut().acked.push(m);
                }
                let _ = reply.send(r);
            }
        }
    }
}

/// Opens `total` connections to `addr`, `burst` at a time `gap` apart, each sending a
/// HELLO and waiting for its answer; returns how many got each status (0: no answer).
pub async fn handshake_flood(
    net: SimNet,
    addr: String,
    total: usize,
    burst: usize,
    gap: Duration,
) -> BTreeMap<u16, usize> {
    let answers: Rc<RefCell<BTreeMap<u16, usize>>> = Rc::default();
    let mut tasks = Vec::new();
    for i in 0..total {
        if i > 0 && i % burst == 0 {
            tokio::time::sleep(gap).await;
        }
        let (net, addr, answers) = (net.clone(), addr.clone(), answers.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let name = format!("flood-{i}");
            let code = match OapClient::open(&net, &addr, &name, Role::Client, vec![]).await {
                Ok(mut c) => {
                    match tokio::time::timeout(Duration::from_secs(5), c.next_event()).await {
                        Ok(Ok(Some(ClientEvent::Established(_)))) => 200,
                        Ok(Ok(Some(ClientEvent::Refused { code, .. }))) => code,
                        _ => 0,
                    }
                }
                Err(_) => 0,
            };
            *answers.borrow_mut().entry(code).or_default() += 1;
            // Dropping the connection closes it: the flood holds nothing open.
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    answers.take()
}

/// Bytes no well-behaved peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// A length prefix over `max_frame` (2 MiB): `oversize`.
    Oversize,
    /// A header with protocol version 9: `proto`.
    BadVersion,
    /// A COMP frame that inflates far past `limits.decompress_ratio_cap`: `ratio_cap`.
    Bomb,
    /// The first bytes of a frame, then silence: `timeouts.read` cuts it off (`timeout`).
    Stall,
    /// Undefined flag bits in the very first frame, before any HELLO: a `proto` handshake
    /// failure.
    GarbageHello,
}

fn header(len: u32, ver: u16, flags: Flags, app_proto: u16) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    put_header(
        &Header {
            len,
            ver,
            flags,
            code: 0,
            app_proto,
            tenant_id: 0,
            cap_len: 0,
            corr_id: 7,
        },
        &mut b,
    );
    b.to_vec()
}

impl Hostile {
    pub const ALL: [Hostile; 5] = [
        Hostile::Oversize,
        Hostile::BadVersion,
        Hostile::Bomb,
        Hostile::Stall,
        Hostile::GarbageHello,
    ];

    /// Whether the attack comes after a proper HELLO.
    pub fn after_hello(self) -> bool {
        self != Hostile::GarbageHello
    }

    pub fn bytes(self) -> anyhow::Result<Vec<u8>> {
        let data = Flags::EVENT | Flags::START | Flags::END;
        Ok(match self {
            Hostile::Oversize => header(2 << 20, oap::VERSION, data, AppProto::GOSSIP),
            Hostile::BadVersion => header(HEADER_LEN as u32, 9, data, AppProto::GOSSIP),
            Hostile::Bomb => {
                let zeros = vec![0u8; 256 << 10];
                let packed = oap::comp::deflate(&zeros, 3)?;
                Frame::new(AppProto::GOSSIP, data | Flags::COMP, 7, packed)
                    .to_bytes(1 << 20)
                    .map_err(|e| anyhow!("{e}"))?
                    .to_vec()
            }
            Hostile::Stall => {
                let h = GossipHeader::new([9; 16], 3, TOPIC).map_err(|e| anyhow!("{e}"))?;
                let chunks = oap::split(&h, &Bytes::from_static(&[1; 300]), 64 << 10)
                    .map_err(|e| anyhow!("{e}"))?;
                let f = chunks[0]
                    .to_frame(7, Flags::empty())
                    .to_bytes(1 << 20)
                    .map_err(|e| anyhow!("{e}"))?;
                f[..HEADER_LEN + 20].to_vec()
            }
            Hostile::GarbageHello => header(
                HEADER_LEN as u32,
                oap::VERSION,
                Flags::from_bits(0x0300) | Flags::REQ,
                AppProto::HELLO,
            ),
        })
    }
}

/// Delivers `attack` to `addr` and reports the node's answer: `Some((code, error))` for
/// a refusal, `None` for a close without one.
pub async fn attack(
    net: SimNet,
    addr: String,
    attack: Hostile,
) -> anyhow::Result<Option<(u16, String)>> {
    let name = format!("hostile-{attack:?}");
    let mut c = if attack.after_hello() {
        OapClient::connect(&net, &addr, &name, vec![]).await?.0
    } else {
        OapClient::raw(&net, &addr, &name).await?
    };
    c.stream().write_all(&attack.bytes()?).await?;
    c.stream().flush().await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next_event()).await {
            Err(_) => bail!("{attack:?}: the node neither answered nor closed"),
            Ok(Ok(Some(ClientEvent::Refused { code, error, .. }))) => {
                return Ok(Some((code, error)))
            }
            Ok(Ok(Some(ClientEvent::Broken(e)))) => bail!("{attack:?}: {e}"),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => bail!("{attack:?}: {e:#}"),
        }
    }
}
