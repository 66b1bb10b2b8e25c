//! Connection management of the admin plane. Probes (`/healthz`, `/readyz`) must be
//! answered within a kubelet's 1 s timeout whatever else holds the port, so:
//!
//! - every connection has deadlines: its request head within `admin.header_timeout`
//!   (hyper's timer; it also bounds an idle keep-alive wait), each write within
//!   `admin.write_timeout` of stalling (`Guarded`), and a head of at most
//!   `admin.max_header_bytes` (hyper answers 431);
//! - a client may be at most `admin.max_pipelined` requests ahead of reading its answers;
//! - at `admin.max_conns` a new connection is not left in the backlog behind stalled
//!   ones: the oldest connection that has been open for `EVICT_GRACE` and has no request
//!   being answered is evicted. A probe sends its request at once, so within the grace it
//!   is being answered and safe; and because only connections past the grace can be
//!   evicted, an attacker reconnecting what was evicted churns at most `admin.max_conns`
//!   connections per grace, which lets a probe waiting behind them in the backlog through
//!   in a few graces. With no connection past its grace, the next accept waits for one.
//!
//! Each refusal is counted in `admin_refusals_total{reason}`.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use overlay_core::observe::{AdminRefusal, HttpMetrics};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::{Instant, Sleep};

use crate::bounds::{AdminLimits, ACCEPT_ERROR_PAUSE};
use crate::io::net::Listener;
use crate::telemetry::throttle::{LogThrottle, ACCEPT_ERROR_LOG_EVERY};

/// What the accept loop and a connection's IO and service share.
struct ConnState {
    /// A request is with the router: the connection is being served, not stalled.
    in_flight: AtomicBool,
    /// Requests answered since the client was last seen waiting for us (a read that found
    /// nothing): how far ahead of its answers it is.
    ahead: AtomicU32,
    answered: AtomicU64,
    /// Bytes arrived since the last answer: a header timeout without them is the end of an
    /// idle keep-alive, not a refusal.
    read_since_answer: AtomicBool,
    /// A refusal decided by our own guards, `1 + AdminRefusal::index`, 0 for none.
    refusal: AtomicU8,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            in_flight: AtomicBool::new(false),
            ahead: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            read_since_answer: AtomicBool::new(false),
            refusal: AtomicU8::new(0),
        }
    }

    fn refuse(&self, r: AdminRefusal) {
        let _ = self.refusal.compare_exchange(
            0,
            r.index() as u8 + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn refusal(&self) -> Option<AdminRefusal> {
        let v = self.refusal.load(Ordering::Relaxed) as usize;
        v.checked_sub(1)
            .and_then(|i| AdminRefusal::ALL.get(i).copied())
    }

    /// Why hyper's connection ended, as a refusal, if it was one.
    fn classify(&self, e: &hyper::Error) -> Option<AdminRefusal> {
        if let Some(r) = self.refusal() {
            return Some(r);
        }
        if e.is_timeout() {
            let idle = self.answered.load(Ordering::Relaxed) > 0
                && !self.read_since_answer.load(Ordering::Relaxed);
            return (!idle).then_some(AdminRefusal::HeaderTimeout);
        }
        if e.is_parse_too_large() {
            return Some(AdminRefusal::HeadersTooLarge);
        }
        e.is_parse().then_some(AdminRefusal::Malformed)
    }
}

/// A connection's socket with a write deadline, and the reads that tell whether the client
/// is waiting for us.
struct Guarded<S> {
    inner: S,
    state: Arc<ConnState>,
    write_timeout: Duration,
    /// Armed while a write is blocked; cleared by any write progress.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stall = None;
            return r;
        }
        let wt = self.write_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(wt)));
        if stall.as_mut().poll(cx).is_ready() {
            self.state.refuse(AdminRefusal::WriteTimeout);
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match r {
            Poll::Pending => self.state.ahead.store(0, Ordering::Relaxed),
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.state.read_since_answer.store(true, Ordering::Relaxed)
            }
            Poll::Ready(_) => {}
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.on_write(cx, r)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("more than admin.max_pipelined requests ahead of their answers")]
struct PipelineBound;

/// The router, refusing a request that is too far ahead of the client's reading.
struct Bounded {
    app: TowerToHyperService<Router>,
    state: Arc<ConnState>,
    max_pipelined: u32,
}

type Answer = Result<axum::response::Response, PipelineBound>;

impl Service<hyper::Request<Incoming>> for Bounded {
    type Response = axum::response::Response;
    type Error = PipelineBound;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        if self.state.ahead.fetch_add(1, Ordering::Relaxed) >= self.max_pipelined {
            self.state.refuse(AdminRefusal::Pipeline);
            return Box::pin(std::future::ready(Err(PipelineBound)));
        }
        let state = self.state.clone();
        state.in_flight.store(true, Ordering::Relaxed);
        Box::pin(self.app.call(req).map(move |r| {
            state.answered.fetch_add(1, Ordering::Relaxed);
            state.read_since_answer.store(false, Ordering::Relaxed);
            state.in_flight.store(false, Ordering::Relaxed);
            r.map_err(|e| match e {})
        }))
    }
}

/// How long a new connection is safe from eviction: ample for a client that sends its
/// request at once to have it read and be answered, and short enough that a probe queued
/// behind a few hundred hostile connections in the backlog gets in well within 1 s.
pub const EVICT_GRACE: Duration = Duration::from_millis(100);

struct Entry {
    state: Arc<ConnState>,
    abort: AbortHandle,
    accepted: Instant,
}

/// Serves `app` on `listener` until the task is dropped. Dropping it drops every
/// connection with it.
pub(crate) async fn serve<L: Listener>(
    listener: &mut L,
    app: Router,
    limits: &AdminLimits,
    http: &HttpMetrics,
) {
    let mut conns: JoinSet<()> = JoinSet::new();
    // Ordered by task id, which is spawn order: oldest connection first.
    let mut table: BTreeMap<Id, Entry> = BTreeMap::new();
    let mut errors = LogThrottle::new(ACCEPT_ERROR_LOG_EVERY);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192));
    loop {
        // Full, with no connection past its grace: accept again when the oldest gets there.
        let wait = (table.len() >= limits.max_conns)
            .then(|| table.values().map(|e| e.accepted).min())
            .flatten()
            .map(|t| t + EVICT_GRACE)
            .filter(|t| *t > Instant::now());
        tokio::select! {
            // Fixed polling order: an unbiased select draws from tokio's per-thread RNG,
            // which is seeded from the OS and would make simulated runs unrepeatable.
            biased;
            Some(done) = conns.join_next_with_id(), if !conns.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                table.remove(&id);
            }
            _ = tokio::time::sleep_until(wait.unwrap_or_else(Instant::now)), if wait.is_some() => {}
            r = listener.accept(), if wait.is_none() => match r {
                Ok((stream, _)) => {
                    if table.len() >= limits.max_conns {
                        evict(&mut table, http);
                    }
                    let state = Arc::new(ConnState::new());
                    let io = Guarded {
                        inner: stream,
                        state: state.clone(),
                        write_timeout: limits.write_timeout,
                        stall: None,
                    };
                    let svc = Bounded {
                        app: TowerToHyperService::new(app.clone()),
                        state: state.clone(),
                        max_pipelined: limits.max_pipelined,
                    };
                    let conn = builder.serve_connection(TokioIo::new(io), svc);
                    let (st, http2) = (state.clone(), http.clone());
                    let abort = conns.spawn(async move {
                        if let Err(e) = conn.await {
                            if let Some(r) = st.classify(&e) {
                                http2.refuse(r);
                            }
                        }
                    });
                    let accepted = Instant::now();
                    table.insert(abort.id(), Entry { state, abort, accepted });
                }
                Err(e) => {
                    if let Some(suppressed) = errors.admit() {
                        tracing::warn!(event = "accept_error", reason = "io", error = %e,
                            suppressed, "admin accept failed");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
        http.connections.set(table.len() as f64);
    }
}

/// Closes the oldest connection past its grace that has no request being answered (slow
/// heads, idle keep-alives, stalled writes), or the oldest past its grace if every one is
/// being answered. The caller only accepts when the oldest of all is past its grace.
fn evict(table: &mut BTreeMap<Id, Entry>, http: &HttpMetrics) {
    let now = Instant::now();
    let ripe = |e: &Entry| now.saturating_duration_since(e.accepted) >= EVICT_GRACE;
    let victim = table
        .iter()
        .find(|(_, e)| ripe(e) && !e.state.in_flight.load(Ordering::Relaxed))
        .or_else(|| table.iter().find(|(_, e)| ripe(e)))
        .map(|(id, _)| *id);
    if let Some(e) = victim.and_then(|id| table.remove(&id)) {
        e.abort.abort();
        http.refuse(AdminRefusal::MaxConns);
    }
}
