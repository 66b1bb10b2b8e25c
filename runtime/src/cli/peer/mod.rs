//! `publish` and `subscribe`: OAP/1 clients over TCP, speaking through core's sans-IO
//! `Client` (role `client`). Here the connection both share: connect with retry, HELLO,
//! reads on the caller's task and writes on a task of their own.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use overlay_core::client::{Client, ClientEvent};
use overlay_core::oap::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

mod publish;
mod subscribe;

pub use publish::{linger_for, publish, PublishArgs, PublishSummary};
pub use subscribe::{hex, subscribe, MessageLine};

/// How long to wait for the HELLO answer.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// First and largest pause between connection attempts while the node is not up yet.
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(25);
const CONNECT_RETRY_MAX: Duration = Duration::from_millis(500);

/// A connected, established client: reads on this task, writes on a writer task so a
/// long write never stops us reading acks.
pub(super) struct Conn {
    pub(super) client: Client,
    rd: OwnedReadHalf,
    buf: BytesMut,
    tx: mpsc::Sender<Bytes>,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Connects, retrying with a short doubling pause until `within` has passed: a client
/// started together with its node (a pasted quick start) waits for it to listen.
async fn connect(to: &str, within: Duration) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + within;
    let mut pause = CONNECT_RETRY_FIRST;
    loop {
        match TcpStream::connect(to).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() + pause >= deadline => {
                anyhow::bail!("cannot connect to {to} within {within:?}: {e}")
            }
            Err(e) => {
                tracing::debug!(event = "connect_retry", reason = %e, "node not reachable yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(CONNECT_RETRY_MAX);
            }
        }
    }
}

impl Conn {
    pub(super) async fn open(
        to: &str,
        topics: Vec<String>,
        connect_timeout: Duration,
        token: Option<Bytes>,
    ) -> anyhow::Result<Conn> {
        let stream = connect(to, connect_timeout).await?;
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(64);
        let writer = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                wr.write_all(&b).await?;
            }
            wr.shutdown().await
        });
        let name = format!("cli-{}", std::process::id());
        let mut c = Conn {
            client: Client::new(&name, Role::Client, topics, token),
            rd,
            buf: BytesMut::with_capacity(64 << 10),
            tx,
            writer,
        };
        c.client.start();
        c.flush().await?;
        let hello = async {
            loop {
                c.read().await?;
                c.flush().await?;
                while let Some(ev) = c.client.poll_event() {
                    match ev {
                        ClientEvent::Established(_) => return Ok(()),
                        ClientEvent::Refused {
                            code,
                            error,
                            retry_after,
                        } => anyhow::bail!(
                            "node refused the HELLO: {code} {error} (retry_after {retry_after:?})"
                        ),
                        ClientEvent::Broken(e) => anyhow::bail!("protocol error: {e}"),
                        _ => {}
                    }
                }
            }
        };
        tokio::time::timeout(HELLO_TIMEOUT, hello)
            .await
            .map_err(|_| anyhow::anyhow!("no HELLO answer from {to} within {HELLO_TIMEOUT:?}"))??;
        Ok(c)
    }

    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        while let Some(b) = self.client.poll_transmit() {
            self.tx
                .send(b)
                .await
                .map_err(|_| anyhow::anyhow!("connection closed"))?;
        }
        Ok(())
    }

    /// Reads once and feeds the client; an EOF is an error. Cancel-safe (it is raced
    /// against the send timer): whatever the client queues in answer (PONG) goes out
    /// with the next `flush`.
    pub(super) async fn read(&mut self) -> anyhow::Result<()> {
        let n = self.rd.read_buf(&mut self.buf).await?;
        if n == 0 {
            anyhow::bail!("the node closed the connection");
        }
        self.client.handle_bytes(&mut self.buf);
        Ok(())
    }

    pub(super) async fn close(mut self) {
        self.client.goaway();
        let _ = self.flush().await;
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer).await;
    }
}
