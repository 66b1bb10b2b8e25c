//! The runtime's `Net` over turmoil's simulated TCP, with the one thing turmoil's TCP lacks:
//! flow control.
//!
//! turmoil's streams accept every write at once (no send buffer ever fills) and panic when a
//! receive buffer overflows, so a peer that stops reading would never push back on the
//! runtime's writers. Each connection here therefore carries a send window per direction,
//! shared in memory by its two ends (both ends live in one simulation on one thread): a
//! write takes window, the peer's application reading the bytes gives it back. A held or
//! partitioned link, or a reader that stops, then stalls the writer exactly as a full TCP
//! send buffer would, while the bytes themselves still travel through turmoil (latency,
//! hold, partition, crash all apply to them).
//!
//! The window also keeps what was written and not yet read, like TCP's retransmission
//! queue. What is still unread once a run is over never reached its reader: the ledger
//! reports it, so the scenarios can tell a message lost on a broken link from one lost
//! silently.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use svc_overlay::net::{Listener, Net};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a writer may have sent and its peer's application not yet read: a typical
/// socket buffer.
pub const WINDOW: usize = 64 << 10;

/// turmoil's per-socket segment capacity. Every unread segment carries at least one
/// unread byte, so a window of `WINDOW` bytes can never overflow it (turmoil panics on
/// overflow); the same capacity bounds a listener's SYN backlog, which the handshake
/// flood fills.
pub const TCP_CAPACITY: usize = WINDOW + 64;

/// One direction of a connection.
#[derive(Debug, Default)]
struct Pipe {
    /// Every byte written, kept so that what was never read can be decoded frame by
    /// frame from the start of the stream (simulated runs move a few MiB at most).
    history: BytesMut,
    /// How much of `history` the peer's application has read.
    read: usize,
    /// The writer waiting for window.
    waker: Option<Waker>,
}

impl Pipe {
    fn unread(&self) -> &[u8] {
        &self.history[self.read..]
    }
}

/// Both directions of one connection, shared by its two ends.
#[derive(Debug)]
pub struct Conn {
    /// The dialer's address and the listener's.
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// `[client -> server, server -> client]`.
    pipes: [Mutex<Pipe>; 2],
}

impl Conn {
    fn pipe(&self, i: usize) -> MutexGuard<'_, Pipe> {
        // A panic while a pipe is locked fails the run anyway; the data is still usable.
        self.pipes[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One direction of a connection that left bytes unread.
#[derive(Clone, Debug)]
pub struct Unread {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// Everything written, from the start of the stream.
    pub written: Bytes,
    /// How much of it the reader read.
    pub read: usize,
}

#[derive(Debug, Default)]
struct LedgerInner {
    /// Accepted connections whose dialer has not picked up its end yet, by
    /// (dialer, listener) address.
    pending: BTreeMap<(SocketAddr, SocketAddr), Arc<Conn>>,
    /// Every connection ever made, in order.
    conns: Vec<Arc<Conn>>,
}

/// The simulated network of one run: a `Net` for every host, and the ledger of every
/// connection made over it.
#[derive(Clone, Debug, Default)]
pub struct SimNet {
    ledger: Arc<Mutex<LedgerInner>>,
    /// Names a scenario answers itself (`set_name`), ahead of turmoil's host names:
    /// addresses, or `None` for a failing lookup.
    names: Arc<Mutex<BTreeMap<String, Option<Vec<SocketAddr>>>>>,
}

impl SimNet {
    pub fn new() -> SimNet {
        SimNet::default()
    }

    /// From now on a lookup of `host_port` answers `addrs`, or fails with `None`.
    pub fn set_name(&self, host_port: &str, addrs: Option<Vec<SocketAddr>>) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.insert(host_port.to_string(), addrs);
    }

    fn ledger(&self) -> MutexGuard<'_, LedgerInner> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every direction of every connection that has bytes its reader never read.
    pub fn unread(&self) -> Vec<Unread> {
        let conns = self.ledger().conns.clone();
        let mut out = Vec::new();
        for c in conns {
            for (i, (from, to)) in [(c.client, c.server), (c.server, c.client)]
                .into_iter()
                .enumerate()
            {
                let p = c.pipe(i);
                if !p.unread().is_empty() {
                    out.push(Unread {
                        from,
                        to,
                        written: Bytes::copy_from_slice(&p.history),
                        read: p.read,
                    });
                }
            }
        }
        out
    }

    /// Connections made so far (both directions counted once).
    pub fn connections(&self) -> usize {
        self.ledger().conns.len()
    }
}

/// A simulated TCP stream with a send window (see the module docs).
#[derive(Debug)]
pub struct SimStream {
    inner: ::turmoil::net::TcpStream,
    conn: Arc<Conn>,
    /// The pipe this end writes to; it reads from the other.
    tx: usize,
}

impl SimStream {
    fn rx(&self) -> usize {
        1 - self.tx
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// Window left for writing, registering the task for a wake-up when there is none.
    fn window(&self, cx: &mut Context<'_>) -> usize {
        let mut p = self.conn.pipe(self.tx);
        let room = WINDOW.saturating_sub(p.unread().len());
        if room == 0 {
            p.waker = Some(cx.waker().clone());
        }
        room
    }

    fn sent(&self, bytes: &[u8]) {
        let mut p = self.conn.pipe(self.tx);
        p.history.extend_from_slice(bytes);
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            let mut p = this.conn.pipe(this.rx());
            // turmoil re-orders segments by sequence number; what arrives must be exactly
            // what was written next, or the simulation itself is broken.
            assert!(
                p.unread().starts_with(got),
                "simulated stream {} <-> {} delivered bytes that were not written next",
                this.conn.client,
                this.conn.server
            );
            p.read += got.len();
            if let Some(w) = p.waker.take() {
                w.wake();
            }
        }
        r
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        let room = this.window(cx);
        if room == 0 {
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        match Pin::new(&mut this.inner).poll_write(cx, &buf[..n]) {
            Poll::Ready(Ok(k)) => {
                this.sent(&buf[..k]);
                Poll::Ready(Ok(k))
            }
            other => other,
        }
    }

    /// One segment per call: the runtime's writer hands over a frame's head and body as
    /// separate slices, and turmoil would otherwise send each as its own segment.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let room = self.window(cx);
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        if room == 0 {
            return Poll::Pending;
        }
        let mut joined = Vec::with_capacity(room.min(bufs.iter().map(|b| b.len()).sum()));
        for b in bufs {
            let take = (room - joined.len()).min(b.len());
            joined.extend_from_slice(&b[..take]);
            if joined.len() == room {
                break;
            }
        }
        self.poll_write(cx, &joined)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A listener on a simulated host.
pub struct SimListener {
    inner: ::turmoil::net::TcpListener,
    net: SimNet,
}

impl Listener for SimListener {
    type Stream = SimStream;

    async fn accept(&mut self) -> io::Result<(SimStream, SocketAddr)> {
        let (s, peer) = self.inner.accept().await?;
        let conn = Arc::new(Conn {
            client: peer,
            server: s.local_addr()?,
            pipes: Default::default(),
        });
        let mut l = self.net.ledger();
        l.pending.insert((conn.client, conn.server), conn.clone());
        l.conns.push(conn.clone());
        drop(l);
        Ok((
            SimStream {
                inner: s,
                conn,
                tx: 1,
            },
            peer,
        ))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Net for SimNet {
    type Stream = SimStream;
    type Listener = SimListener;

    fn bind(&self, addr: &str) -> impl Future<Output = io::Result<SimListener>> + Send {
        let addr = addr.to_string();
        let net = self.clone();
        async move {
            let inner = ::turmoil::net::TcpListener::bind(addr.as_str()).await?;
            Ok(SimListener { inner, net })
        }
    }

    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<SimStream>> + Send {
        let addr = addr.to_string();
        let net = self.clone();
        async move {
            let s = ::turmoil::net::TcpStream::connect(addr.as_str()).await?;
            // The listener's accept ran (and registered the connection) before turmoil
            // let this connect finish.
            let key = (s.local_addr()?, s.peer_addr()?);
            let conn = net.ledger().pending.remove(&key).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("no accepted connection for {key:?}"),
                )
            })?;
            Ok(SimStream {
                inner: s,
                conn,
                tx: 0,
            })
        }
    }

    fn resolve(&self, host_port: &str) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send {
        let set = {
            let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            names.get(host_port).cloned()
        };
        let host_port = host_port.to_string();
        async move {
            match set {
                Some(Some(addrs)) => Ok(addrs),
                Some(None) => Err(io::Error::new(io::ErrorKind::NotFound, "name not found")),
                None => {
                    let (host, port) = host_port
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                        .ok_or_else(|| {
                            io::Error::new(io::ErrorKind::InvalidInput, "not host:port")
                        })?;
                    // turmoil's hosts, by the names the scenario gave them.
                    Ok(vec![SocketAddr::new(::turmoil::lookup(host), port)])
                }
            }
        }
    }
}
