//! Draining the node after an input: transmits to writers, events to the bus, closes,
//! and readiness to the `/readyz` snapshot.

use overlay_core::{ConnId, Event, Time};

use super::Driver;
use crate::admin::ready::ReadySnapshot;
use crate::io::net::Net;
use crate::telemetry::bus::{BusEvent, BusKind, ConnCtx};

impl<N: Net> Driver<N> {
    /// Drains every output of the node, in the contract's order (transmits, events, dials;
    /// then the closes they asked for) until none is left; returns how many connections got
    /// transmits.
    pub(super) fn drain_outputs(&mut self, now: Time) -> usize {
        let mut touched: Vec<ConnId> = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(t) = self.overlay.poll_transmit(now) {
                if !touched.contains(&t.conn) {
                    touched.push(t.conn);
                }
                self.route(t);
                progressed = true;
            }
            while let Some(ev) = self.overlay.poll_event() {
                self.on_event(ev);
                progressed = true;
            }
            while let Some(d) = self.overlay.poll_dial() {
                self.spawn_dial(d);
                progressed = true;
            }
            for conn in std::mem::take(&mut self.to_close) {
                self.finish_close(now, conn);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if !self.held_credits.is_empty() {
            // What held them caught up: those readers go on.
            let overlay = &self.overlay;
            self.held_credits.retain(|(c, _)| overlay.read_paused(*c));
        }
        touched.len()
    }

    pub(super) fn on_event(&mut self, ev: Event) {
        let conn = event_conn(&ev);
        match &ev {
            Event::HandshakeOk {
                conn, node, cap_id, ..
            } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.established = true;
                    if let Some(id) = cap_id {
                        // Every later line of the session carries its capability class.
                        c.ctx = std::sync::Arc::new(ConnCtx {
                            cap_id: Some(id.as_str().into()),
                            ..(*c.ctx).clone()
                        });
                    }
                    c.span.record("peer_id", node.as_str());
                    if let Some(h) = c.handshake.take() {
                        h.record("peer_id", node.as_str());
                    }
                }
            }
            Event::HandshakeFailed { conn, .. } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.handshake = None;
                }
            }
            Event::Abort { conn } => self.to_close.push(*conn),
            _ => {}
        }
        let closed = matches!(ev, Event::Closed { .. });
        self.publish(conn, BusKind::Overlay(ev));
        if closed {
            if let Some(c) = conn {
                self.forget(c);
            }
        }
    }

    pub(super) fn publish(&self, conn: Option<ConnId>, kind: BusKind) {
        let ctx = conn.and_then(|c| self.conns.get(&c)).map(|c| c.ctx.clone());
        // No subscriber is not an error: the event is simply not wanted.
        let _ = self.bus.send(BusEvent {
            node: self.node.clone(),
            ctx,
            kind,
        });
    }

    pub(super) fn publish_ready(&mut self) {
        let view = self.overlay.readiness();
        let retry = self.cfg.readiness.retry_after;
        if self.last_ready.as_ref() == Some(&(view.clone(), retry)) {
            return;
        }
        let (status, body) = view.http(retry);
        self.ready.store(ReadySnapshot {
            status,
            body,
            retry_after: retry,
            view: Some(view.clone()),
        });
        self.last_ready = Some((view, retry));
    }
}

fn event_conn(ev: &Event) -> Option<ConnId> {
    match ev {
        Event::HandshakeStarted { conn, .. }
        | Event::HandshakeOk { conn, .. }
        | Event::HandshakeFailed { conn, .. }
        | Event::Rejected { conn, .. }
        | Event::Closed { conn, .. }
        | Event::Abort { conn }
        | Event::PeerDraining { conn }
        | Event::Ack { conn, .. } => Some(*conn),
        Event::Message { from, .. } => *from,
        Event::ReadinessChanged { .. } => None,
    }
}
