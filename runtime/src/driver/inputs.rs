//! One handler per input channel of the loop: writer reports, control messages from the
//! runtime's tasks (sockets, dial outcomes, probes, panics), reader chunks, and commands
//! from the `Node` handle, reconfiguration included.

use bytes::BytesMut;
use overlay_core::Link;
use tracing::field;

use super::{Command, Driver, NodeStats};
use crate::bounds::Bounds;
use crate::io::frames::log_frames_rx;
use crate::io::messages::{AfterPanic, Control, Ingress, WriterReport};
use crate::io::net::Net;
use crate::telemetry::bus::BusKind;

impl<N: Net> Driver<N> {
    pub(super) fn on_report(&mut self, r: WriterReport) {
        let now = self.now();
        match r {
            WriterReport::Written { conn, n } => {
                self.overlay.handle_written(now, conn, n);
                self.flush_pending(conn);
            }
            WriterReport::Done { conn, error } => {
                if let (Some(e), Some(c)) = (error, self.conns.get(&conn)) {
                    c.span.in_scope(
                        || tracing::debug!(event = "write_error", error = %e, "write failed"),
                    );
                }
                self.to_close.push(conn);
            }
        }
    }

    pub(super) fn on_control(&mut self, c: Control<N::Stream>) {
        let now = self.now();
        match c {
            Control::Accepted {
                stream,
                peer,
                tls,
                opened,
                prepaid,
            } => {
                let ctx = self.new_ctx(peer.to_string(), true, tls.as_ref(), opened);
                let span = self.session_span(&ctx);
                let accept = tracing::info_span!(parent: &span, "svc.overlay.accept",
                    corr_id = %ctx.corr_id, dir = "in");
                let link = Link {
                    opened: self.time_of(opened),
                    tls,
                    prepaid,
                };
                let conn = accept.in_scope(|| self.overlay.handle_accept_over(now, link));
                self.attach(conn, stream, ctx, span);
                self.publish(Some(conn), BusKind::Accepted);
            }
            Control::Connected {
                stream,
                dial,
                tls,
                opened,
            } => {
                self.dials.remove(&(dial.peer.clone(), dial.addr.clone()));
                let ctx = self.new_ctx(dial.addr.clone(), false, tls.as_ref(), opened);
                let span = self.session_span(&ctx);
                let link = Link {
                    opened: self.time_of(opened),
                    tls,
                    prepaid: None,
                };
                // None: the core no longer wants this dial (draining, peer or address
                // removed): the stream is dropped, which closes it.
                let dialed = span.in_scope(|| self.overlay.handle_dialed_over(now, &dial, link));
                let Some(conn) = dialed else {
                    return;
                };
                self.attach(conn, stream, ctx, span);
                self.publish(Some(conn), BusKind::Connected);
            }
            // The acceptor gone meanwhile (a panic, the node stopping) drops the answer.
            Control::Incoming { n, reply } => {
                let answers = (0..n).map(|_| self.overlay.handle_incoming(now)).collect();
                let _ = reply.send(answers);
            }
            Control::TlsFailed {
                refusal,
                peer_addr,
                inbound,
                detail,
            } => {
                let reason = self.overlay.handle_tls_failed(now, refusal);
                self.publish(
                    None,
                    BusKind::TlsFailed {
                        peer_addr,
                        inbound,
                        reason,
                        tls_reason: refusal.tls_reason(),
                        detail,
                    },
                );
            }
            Control::DialFailed { dial, error } => {
                self.dials.remove(&(dial.peer.clone(), dial.addr.clone()));
                if let Some(failures) = self.overlay.handle_dial_failed(now, &dial) {
                    let kind = BusKind::DialFailed {
                        addr: dial.addr,
                        error,
                        failures,
                    };
                    self.publish(None, kind);
                }
            }
            Control::Resolved {
                name,
                answer,
                failures,
            } => self.on_resolved(name, answer, failures),
            Control::Probe(p, ok) => self.overlay.set_probe(now, p, ok),
            Control::Panicked {
                task,
                reason,
                after,
            } => self.on_panic(task, reason, after),
        }
    }

    pub(super) fn on_panic(&mut self, task: &'static str, reason: String, after: AfterPanic) {
        let now = self.now();
        let restarted = match after {
            AfterPanic::Close(c) => {
                self.to_close.push(c);
                true
            }
            AfterPanic::Redial(dial) => {
                self.dials.remove(&(dial.peer.clone(), dial.addr.clone()));
                // A failed dial to the core, which redials an address still configured (so
                // a restart, counted) and forgets one that is not.
                self.overlay.handle_dial_failed(now, &dial).is_some()
            }
            AfterPanic::Resolve(name) => {
                self.resolvers.remove(&name);
                let again = self.targets.is_configured_name(&name);
                if again {
                    self.spawn_resolver(name);
                }
                again
            }
            AfterPanic::Restart(probe) => {
                if let Some(p) = probe {
                    // Down until the supervisor reports it running again.
                    self.overlay.set_probe(now, p, false);
                }
                true
            }
            AfterPanic::Lost => false,
        };
        if restarted {
            self.overlay.metrics().service_restarts.increment(1);
        }
        tracing::error!(
            event = "task_panic",
            reason = if restarted { "panic" } else { "lost" },
            task,
            detail = %reason,
            node = %self.node,
            "a runtime task panicked; contained"
        );
    }

    pub(super) fn on_ingress(&mut self, i: Ingress) {
        self.ingress_q.take();
        let now = self.now();
        match i {
            Ingress::Data {
                conn,
                chunk,
                credit,
            } => {
                self.overlay.set_ingress_depth(self.ingress_q.depth());
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let n = chunk.len();
                c.buf.unsplit(chunk);
                let span = tracing::debug_span!(parent: &c.span, "svc.overlay.gossip.ingress",
                    corr_id = %c.ctx.corr_id, dir = "rx", frame_bytes = n, fanout = field::Empty);
                let _g = span.enter();
                if tracing::enabled!(tracing::Level::DEBUG) {
                    log_frames_rx(&c.buf);
                }
                self.overlay.handle_bytes(now, conn, &mut c.buf);
                if c.buf.is_empty() {
                    // Let go of the reader's allocation; payload slices keep what they need.
                    c.buf = BytesMut::new();
                }
                if self.overlay.read_paused(conn) {
                    // Held, not returned: the reader waits, and TCP pushes back on the peer.
                    self.held_credits.push((conn, credit));
                } else {
                    drop(credit);
                }
                let fanout = self.drain_outputs(now);
                span.record("fanout", fanout);
            }
            Ingress::Eof { conn, error } => {
                if let (Some(e), Some(c)) = (error, self.conns.get(&conn)) {
                    c.span.in_scope(
                        || tracing::debug!(event = "read_error", error = %e, "read failed"),
                    );
                }
                self.to_close.push(conn);
            }
        }
    }

    pub(super) fn on_command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Publish {
                topic,
                data,
                ttl,
                reply,
            } => {
                let r = self.overlay.publish(now, &topic, data, ttl);
                let _ = reply.send(r);
            }
            Command::Reconfigure {
                cfg,
                verifier,
                credential,
                reply,
            } => {
                self.overlay.set_auth(verifier, credential);
                let restart = self.overlay.reconfigure(now, *cfg);
                let old_interval = self.cfg.overlay.peer_resolve_interval;
                self.cfg = self.overlay.config().clone();
                self.bounds = Bounds::from_config(&self.cfg);
                let o = &self.cfg.overlay;
                self.handshake_bound
                    .resize(o.max_conns, o.handshake_timeout);
                if self.cfg.overlay.peer_resolve_interval != old_interval {
                    self.restart_resolvers();
                }
                self.targets.configure(&self.cfg.overlay.peers);
                self.sync_peers();
                let _ = reply.send(restart);
            }
            Command::Drain => self.begin_drain(),
            Command::Probe(p, ok) => self.overlay.set_probe(now, p, ok),
            Command::Stats(reply) => {
                let _ = reply.send(NodeStats {
                    established: self.overlay.established(),
                    peers: self.overlay.peer_count(),
                    sessions: self.overlay.session_count(),
                    connections: self.conns.len(),
                    stats: self.overlay.stats().clone(),
                    balance: self.overlay.balance(),
                    draining: self.overlay.is_draining(),
                });
            }
        }
    }
}
