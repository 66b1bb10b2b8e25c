//! The socket layer, behind a trait so the same runtime runs on tokio TCP in production, on
//! turmoil's simulated TCP in `sim`, and (later) over TLS-wrapped streams.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

pub use crate::bounds::SocketBuffers;

/// A byte stream the runtime can split into a reader and a writer task.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A bound listener.
pub trait Listener: Send + 'static {
    type Stream: Stream;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Bind, accept, connect and look up names: everything the runtime asks of the network.
pub trait Net: Clone + Send + Sync + 'static {
    type Stream: Stream;
    type Listener: Listener<Stream = Self::Stream>;
    fn bind(&self, addr: &str) -> impl Future<Output = io::Result<Self::Listener>> + Send;
    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// The addresses `host:port` names now. Behind the trait so simulations and tests
    /// answer from a table they control, never from real DNS.
    fn resolve(&self, host_port: &str) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;

    /// Whether the TLS listener's handshakes may run on a runtime of their own
    /// (`io/handshakes.rs`). A simulation keeps every task on its own runtime.
    fn handshakes_apart(&self) -> bool {
        false
    }

    /// Sizes the kernel buffers of a connection's socket. A network without kernel sockets
    /// (turmoil's) has none to size.
    fn set_buffers(&self, _stream: &Self::Stream, _b: SocketBuffers) -> io::Result<()> {
        Ok(())
    }
}

/// Production: tokio TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNet;

pub struct TokioListener(tokio::net::TcpListener);

impl Listener for TokioListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, addr) = self.0.accept().await?;
        // Frames are written whole by the writer task; Nagle would only add latency to
        // small control frames (PONG, acks).
        let _ = s.set_nodelay(true);
        Ok((s, addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Connections the kernel holds for a listener before `accept`: tokio's default (128, as
/// std) is less than a few hundred hostile admin clients, and a full queue drops the SYN of
/// a probe, which then retries only after 1 s. The kernel caps it at `net.core.somaxconn`.
/// It also holds what the overlay acceptor leaves waiting while it is paused.
pub const LISTEN_BACKLOG: u32 = 1024;

fn listen(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own bind: a restarted node rebinds its port at once.
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(LISTEN_BACKLOG)
}

impl Net for TokioNet {
    type Stream = tokio::net::TcpStream;
    type Listener = TokioListener;

    async fn bind(&self, addr: &str) -> io::Result<TokioListener> {
        let mut last = None;
        for a in tokio::net::lookup_host(addr).await? {
            match listen(a) {
                Ok(l) => return Ok(TokioListener(l)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address")))
    }

    async fn connect(&self, addr: &str) -> io::Result<tokio::net::TcpStream> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    async fn resolve(&self, host_port: &str) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host(host_port).await?.collect())
    }

    fn handshakes_apart(&self) -> bool {
        true
    }

    fn set_buffers(&self, s: &tokio::net::TcpStream, b: SocketBuffers) -> io::Result<()> {
        // Setting a size also turns the kernel's autotuning off for that direction, which is
        // the point: on loopback it grows to MiBs per socket, a backlog behind a paused read
        // that no watermark of the node sees.
        let sock = socket2::SockRef::from(s);
        if b.send > 0 {
            sock.set_send_buffer_size(b.send)?;
        }
        if b.recv > 0 {
            sock.set_recv_buffer_size(b.recv)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_buffers_sizes_the_socket_and_zero_leaves_it() {
        let l = TokioNet.bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let s = TokioNet.connect(&addr).await.unwrap();
        let before = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        let b = SocketBuffers {
            send: 64 << 10,
            recv: 0,
        };
        TokioNet.set_buffers(&s, b).unwrap();
        let sock = socket2::SockRef::from(&s);
        // Linux doubles the value for its bookkeeping; other kernels keep it.
        let send = sock.send_buffer_size().unwrap();
        assert!((64 << 10..=128 << 10).contains(&send), "SO_SNDBUF {send}");
        assert_eq!(
            sock.recv_buffer_size().unwrap(),
            before,
            "0 leaves it alone"
        );
        TokioNet
            .set_buffers(
                &s,
                SocketBuffers {
                    send: 0,
                    recv: 32 << 10,
                },
            )
            .unwrap();
        let recv = sock.recv_buffer_size().unwrap();
        assert!((32 << 10..=64 << 10).contains(&recv), "SO_RCVBUF {recv}");
    }
}
