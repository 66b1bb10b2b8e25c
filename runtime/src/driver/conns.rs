//! The connection table: each connection's tasks, writer queue overflow, input buffer and
//! spans, from attach to close.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use overlay_core::{ConnId, Time, TlsSession, Transmit};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{field, Span};

use super::Driver;
use crate::io::conn;
use crate::io::credit::CreditPool;
use crate::io::messages::AfterPanic;
use crate::io::net::Net;
use crate::io::tls::Wire;
use crate::telemetry::bus::ConnCtx;

pub(super) struct Conn {
    pub(super) ctx: Arc<ConnCtx>,
    pub(super) writer: mpsc::Sender<Transmit>,
    /// Transmits the writer's queue had no room for, in order. Bounded by the node's
    /// egress permits, since each holds one until written.
    pub(super) pending: VecDeque<Transmit>,
    pub(super) reader: AbortHandle,
    pub(super) writer_task: AbortHandle,
    /// Bytes of a frame not yet complete.
    pub(super) buf: BytesMut,
    pub(super) established: bool,
    pub(super) span: Span,
    pub(super) handshake: Option<Span>,
}

impl<N: Net> Driver<N> {
    pub(super) fn new_ctx(
        &self,
        peer_addr: String,
        inbound: bool,
        tls: Option<&TlsSession>,
        opened: Instant,
    ) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            conn: ConnId(0),
            corr_id: self.corr.next_id(),
            peer_addr,
            inbound,
            opened,
            cap_id: None,
            tls_group: tls.map(|t| t.group),
        })
    }

    pub(super) fn session_span(&self, ctx: &ConnCtx) -> Span {
        tracing::info_span!(parent: None, "svc.overlay.session",
            corr_id = %ctx.corr_id,
            dir = ctx.dir(),
            pq_mode = self.cfg.overlay.pq_mode.mode().as_str(),
            tls_group = ctx.tls_group,
            peer_id = field::Empty)
    }

    pub(super) fn attach(
        &mut self,
        conn: ConnId,
        stream: Wire<N::Stream>,
        ctx: Arc<ConnCtx>,
        span: Span,
    ) {
        let ctx = Arc::new(ConnCtx {
            conn,
            ..(*ctx).clone()
        });
        let handshake = tracing::info_span!(parent: &span, "svc.overlay.handshake",
            corr_id = %ctx.corr_id, dir = ctx.dir(),
            pq_mode = self.cfg.overlay.pq_mode.mode().as_str(), peer_id = field::Empty);
        if let Err(e) = self.net.set_buffers(stream.transport(), self.bounds.socket) {
            // The connection works with the kernel's sizes, only with more delay under load.
            tracing::warn!(event = "socket_buffers", error = %e, "socket buffers not set");
        }
        let (rd, wr) = tokio::io::split(stream);
        let (wtx, wrx) = mpsc::channel(self.bounds.writer_queue);
        let credit = CreditPool::new(self.bounds.read_credit);
        let reader = self.spawn_supervised(
            AfterPanic::Close(conn),
            "reader",
            conn::reader(
                conn,
                rd,
                self.ingress_tx.clone(),
                self.ingress_q.clone(),
                credit,
                self.bounds.read_chunk,
            ),
        );
        let writer_task = self.spawn_supervised(
            AfterPanic::Close(conn),
            "writer",
            conn::writer(conn, wr, wrx, self.report_tx.clone()),
        );
        self.conns.insert(
            conn,
            Conn {
                ctx,
                writer: wtx,
                pending: VecDeque::new(),
                reader,
                writer_task,
                buf: BytesMut::new(),
                established: false,
                span,
                handshake: Some(handshake),
            },
        );
    }

    /// Hands queued transmits to the writer while its queue has room.
    pub(super) fn flush_pending(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        while let Some(t) = c.pending.pop_front() {
            match c.writer.try_send(t) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(t)) => {
                    c.pending.push_front(t);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.to_close.push(conn);
                    return;
                }
            }
        }
    }

    pub(super) fn route(&mut self, t: Transmit) {
        let conn = t.conn;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if tracing::enabled!(tracing::Level::DEBUG) && !t.is_empty() {
            let span = tracing::debug_span!(parent: &c.span, "svc.overlay.gossip.egress",
                corr_id = %c.ctx.corr_id, dir = "tx", frame_bytes = t.len());
            span.in_scope(|| {
                tracing::debug!(event = "oap_frame_tx", dir = "tx", bytes = t.len() as u64)
            });
        }
        c.pending.push_back(t);
        self.flush_pending(conn);
    }

    /// Drops the connection's tasks (and with them the socket) and tells the node.
    pub(super) fn finish_close(&mut self, now: Time, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        c.reader.abort();
        c.writer_task.abort();
        if self.overlay.has_session(conn) {
            // The Closed event that follows removes the entry, after it is logged.
            self.overlay.handle_closed(now, conn);
        } else {
            self.forget(conn);
        }
    }

    pub(super) fn forget(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }
}
