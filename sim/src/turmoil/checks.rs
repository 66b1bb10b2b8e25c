//! Checks every scenario ends with, and the audit of bytes the network never delivered.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure};
use bytes::BytesMut;
use overlay_core::oap::{AppProto, Decoder, Flags, GossipHeader, Limits, MsgId};
use overlay_core::{Balance, Event};
use svc_overlay::bus::BusKind;

use super::expo::Exposition;
use super::harness::{Ctx, OVERLAY_PORT};

const OUTCOMES: [&str; 5] = ["delivered", "relayed", "duplicate", "dropped", "rejected"];

/// The balance law on one running node, through its handle (the core's own `Balance`) and
/// through `/metrics`: frames received = the sum of their outcomes (+ frames still held in
/// partial streams), and the dropped outcome = the drops by reason. Returns the scrape.
pub async fn balance(ctx: &Ctx, node: &str) -> anyhow::Result<Exposition> {
    let st = ctx.stats(node).await?;
    ensure!(
        st.balance.holds(),
        "{node}: balance law broken: {}",
        st.balance
    );
    let m = ctx.scrape(node).await?;
    // Frames may arrive between the two reads, so the HTTP side must balance on its own;
    // partial streams are its only unknown, and scenarios check when nothing is half-sent.
    let pending = ctx.stats(node).await?.balance.pending;
    ensure!(
        pending == 0,
        "{node}: {pending} frames still in partial streams at the check"
    );
    let rx = m.sum("overlay_frames_total", &[("dir", "rx")]);
    let mut outcomes = 0.0;
    for o in OUTCOMES {
        outcomes += m.get("overlay_rx_outcomes_total", &[("outcome", o)])?;
    }
    ensure!(
        rx == outcomes,
        "{node}: /metrics says {rx} frames received but {outcomes} outcomes"
    );
    let dropped = m.get("overlay_rx_outcomes_total", &[("outcome", "dropped")])?;
    let by_reason = m.sum("overlay_rx_dropped_total", &[]);
    ensure!(
        dropped == by_reason,
        "{node}: {dropped} frames dropped but {by_reason} by reason"
    );
    Ok(m)
}

/// The end of every scenario: the balance law on every node, running or stopped, and the
/// final metric values of the running ones into the trace (so the determinism check
/// covers them). Returns the final scrapes.
pub async fn epilogue(ctx: &Ctx) -> anyhow::Result<BTreeMap<String, Exposition>> {
    let mut scrapes = BTreeMap::new();
    for node in ctx.nodes() {
        for (i, r) in ctx.reports(&node).iter().enumerate() {
            let b = Balance {
                stats: r.stats.clone(),
                pending: 0,
            };
            ensure!(
                b.holds(),
                "{node}: balance law broken at stop {}: {b}",
                i + 1
            );
        }
        if !ctx.running().contains(&node) {
            continue;
        }
        let m = balance(ctx, &node).await?;
        scrapes.insert(node, m);
    }
    for (node, m) in &scrapes {
        for (s, v) in &m.series {
            ctx.note(format!("final {node} {s} {v}"));
        }
    }
    Ok(scrapes)
}

/// A gossip message whose frame was written toward `to` and never read there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lost {
    pub from: String,
    pub to: String,
    pub msg_id: MsgId,
}

/// Every gossip message (first frames) lost on overlay connections: written by one host,
/// never read by the other (a dropped segment, a crash, a link broken for good).
pub fn lost_in_transit(ctx: &Ctx) -> anyhow::Result<BTreeSet<Lost>> {
    let mut out = BTreeSet::new();
    for u in ctx.net().unread() {
        if u.to.port() != OVERLAY_PORT && u.from.port() != OVERLAY_PORT {
            continue;
        }
        let name = |a: std::net::SocketAddr| {
            ::turmoil::reverse_lookup(a.ip()).unwrap_or_else(|| a.ip().to_string())
        };
        let mut buf = BytesMut::from(&u.written[..]);
        let mut dec = Decoder::new(Limits {
            max_frame: 1 << 24,
            max_body_bytes: 1 << 24,
            decompress_ratio_cap: u32::MAX,
        });
        let total = buf.len();
        loop {
            let f = match dec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                // Hostile bytes: nothing after them is a frame.
                Err(_) => break,
            };
            // A frame read only in part never reached the node whole: lost too.
            if total - buf.len() <= u.read {
                continue;
            }
            if f.app_proto == AppProto::GOSSIP
                && f.flags.contains(Flags::START)
                && !f.flags.contains(Flags::RESP)
            {
                match GossipHeader::parse(&f.payload) {
                    Ok((h, _)) => {
                        out.insert(Lost {
                            from: name(u.from),
                            to: name(u.to),
                            msg_id: h.msg_id,
                        });
                    }
                    Err(e) => bail!("undecodable gossip header in transit: {e}"),
                }
            }
        }
    }
    Ok(out)
}

/// One established session of a node, from its bus events.
#[derive(Clone, Debug)]
pub struct SessionSpan {
    /// The peer's node id from HELLO (the host name in these scenarios).
    pub peer: String,
    pub incarnation: u32,
    pub opened: std::time::Duration,
    /// `None` while still open.
    pub closed: Option<std::time::Duration>,
}

impl SessionSpan {
    pub fn open_at(&self, t: std::time::Duration) -> bool {
        self.opened <= t && self.closed.map_or(true, |c| t < c)
    }
}

/// Every session `node` established, with when it opened and closed.
pub fn sessions(ctx: &Ctx, node: &str) -> Vec<SessionSpan> {
    let mut out: Vec<(overlay_core::ConnId, SessionSpan)> = Vec::new();
    for r in ctx.events(node) {
        match &r.event.kind {
            BusKind::Overlay(Event::HandshakeOk {
                conn, node: peer, ..
            }) => out.push((
                *conn,
                SessionSpan {
                    peer: peer.clone(),
                    incarnation: r.incarnation,
                    opened: r.at,
                    closed: None,
                },
            )),
            BusKind::Overlay(Event::Closed { conn, .. }) => {
                if let Some((_, s)) = out.iter_mut().find(|(c, s)| {
                    c == conn && s.incarnation == r.incarnation && s.closed.is_none()
                }) {
                    s.closed = Some(r.at);
                }
            }
            _ => {}
        }
    }
    out.into_iter().map(|(_, s)| s).collect()
}
