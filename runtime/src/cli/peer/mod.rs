//! `publish` and `subscribe`: OAP/1 clients over TCP, speaking through core's sans-IO
//! `Client` (role `client`).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use overlay_core::client::{Client, ClientEvent};
use overlay_core::oap::{Message, Role};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::admin::corr::os_seed;

/// How long to wait for the HELLO answer, and for outstanding acks at the end.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// First and largest pause between connection attempts while the node is not up yet.
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(25);
const CONNECT_RETRY_MAX: Duration = Duration::from_millis(500);
/// Messages published per loop turn when no rate is set.
const BURST: usize = 64;
/// Runs this long (or longer) get a progress bar, when stderr is a terminal.
const PROGRESS_AFTER: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct PublishArgs {
    pub to: String,
    pub topic: String,
    pub count: u64,
    pub size: usize,
    /// Messages per second; `None` is as fast as the connection takes them.
    pub rate: Option<f64>,
    /// Ask for an answer to every message (acked flow control).
    pub ack: bool,
    pub data: Option<String>,
    /// Hops the messages may travel (`overlay.gossip.default_ttl` of the loaded config).
    pub ttl: u8,
    /// With `ack`: most messages sent and not yet answered. Below the node's control queue
    /// bound, so a publisher that waits for answers never overfills its own.
    pub window: usize,
    /// How long to keep trying to reach the node (it may still be starting).
    pub connect_timeout: Duration,
    /// How long to listen for refusal notices after the last message without ack: the
    /// node's `overlay.peer.notice_interval` plus its tick and the way back.
    pub linger: Duration,
}

impl PublishArgs {
    /// One message of `data` to `topic` with the defaults of the command line.
    pub fn new(to: impl Into<String>, topic: impl Into<String>) -> PublishArgs {
        PublishArgs {
            to: to.into(),
            topic: topic.into(),
            count: 1,
            size: 64,
            rate: None,
            ack: true,
            data: None,
            ttl: overlay_core::Config::default().overlay.gossip.default_ttl,
            window: 256,
            connect_timeout: Duration::from_secs(10),
            linger: linger_for(overlay_core::Config::default().overlay.peer.notice_interval),
        }
    }
}

/// The linger that hears the last notice a node with this `notice_interval` sends.
pub fn linger_for(notice_interval: Duration) -> Duration {
    notice_interval + overlay_core::TICK + Duration::from_millis(250)
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PublishSummary {
    pub sent: u64,
    /// Answered 2xx.
    pub acked: u64,
    /// Refused, in answers and in refusal notices...
    pub refused: u64,
    /// ...by reason (`ratelimit`, `busy`, ...).
    pub refused_by: BTreeMap<String, u64>,
    /// Sent with ACK_REQ and neither answered nor told refused (0 without acks: there is
    /// nothing to confirm).
    pub unconfirmed: u64,
    pub acks: bool,
    pub elapsed_s: f64,
    pub rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl PublishSummary {
    /// Every message was taken: none refused, none left unconfirmed.
    pub fn all_taken(&self) -> bool {
        self.refused == 0 && self.unconfirmed == 0
    }

    fn refuse(&mut self, reason: &str, n: u64) {
        self.refused += n;
        *self.refused_by.entry(reason.to_string()).or_default() += n;
    }

    fn progress(&self, in_doubt: u64) -> String {
        let by: Vec<String> = self
            .refused_by
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let mut m = format!("acked {} refused {}", self.acked, self.refused);
        if !by.is_empty() {
            m.push_str(&format!(" ({})", by.join(", ")));
        }
        if self.acks {
            m.push_str(&format!(" unconfirmed {in_doubt}"));
        }
        m
    }
}

/// A connected, established client: reads on this task, writes on a writer task so a
/// long write never stops us reading acks.
struct Conn {
    client: Client,
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
    async fn open(
        to: &str,
        topics: Vec<String>,
        connect_timeout: Duration,
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
            client: Client::new(&name, Role::Client, topics, None),
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

    async fn flush(&mut self) -> anyhow::Result<()> {
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
    async fn read(&mut self) -> anyhow::Result<()> {
        let n = self.rd.read_buf(&mut self.buf).await?;
        if n == 0 {
            anyhow::bail!("the node closed the connection");
        }
        self.client.handle_bytes(&mut self.buf);
        Ok(())
    }

    async fn close(mut self) {
        self.client.goaway();
        let _ = self.flush().await;
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer).await;
    }
}

fn payload(args: &PublishArgs) -> Bytes {
    match &args.data {
        Some(d) => Bytes::from(d.clone().into_bytes()),
        None => {
            let pattern = b"svc-overlay ";
            Bytes::from(
                (0..args.size)
                    .map(|i| pattern[i % pattern.len()])
                    .collect::<Vec<u8>>(),
            )
        }
    }
}

fn progress(args: &PublishArgs) -> indicatif::ProgressBar {
    let long = args.count >= 10_000
        || args
            .rate
            .is_some_and(|r| r > 0.0 && args.count as f64 / r >= PROGRESS_AFTER.as_secs_f64());
    if long && std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(args.count);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} sent {per_sec} eta {eta} {msg}",
        ) {
            pb.set_style(style);
        }
        pb
    } else {
        indicatif::ProgressBar::hidden()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx].as_secs_f64() * 1000.0)
}

/// Publishes `count` messages. With `ack`, at most `window` wait for their answer at once,
/// and the run waits for every answer; without, it listens `linger` for refusal notices.
/// A message refused in an answer or in a notice is counted by reason.
pub async fn publish(args: &PublishArgs) -> anyhow::Result<PublishSummary> {
    let mut conn = Conn::open(&args.to, Vec::new(), args.connect_timeout).await?;
    let data = payload(args);
    let mut rng = ChaCha8Rng::seed_from_u64(os_seed());
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let pb = progress(args);
    let started = Instant::now();
    let mut next_send = started;
    let mut s = PublishSummary {
        acks: args.ack,
        ..PublishSummary::default()
    };
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    // Refusals told in notices while acking: messages of `pending` that will never be
    // answered (a notice does not say which).
    let mut noticed = 0u64;
    let mut latencies = Vec::new();
    let mut finish_by = None;
    let window = args.window.max(1) as u64;
    loop {
        let in_doubt = (pending.len() as u64).saturating_sub(noticed);
        if s.sent == args.count {
            if args.ack && in_doubt == 0 {
                break;
            }
            let wait = if args.ack { ACK_TIMEOUT } else { args.linger };
            finish_by.get_or_insert_with(|| Instant::now() + wait);
        }
        let want_send = s.sent < args.count && (!args.ack || in_doubt < window);
        tokio::select! {
            biased;
            r = conn.read() => r?,
            _ = tokio::time::sleep_until(next_send), if want_send => {
                let burst = if interval.is_some() { 1 } else { BURST };
                for _ in 0..burst {
                    let in_doubt = (pending.len() as u64).saturating_sub(noticed);
                    if s.sent == args.count || (args.ack && in_doubt >= window) {
                        break;
                    }
                    let mut id = [0u8; 16];
                    rng.fill_bytes(&mut id);
                    let corr = conn
                        .client
                        .publish(id, &args.topic, args.ttl, &data, args.ack)
                        .map_err(|e| anyhow::anyhow!("cannot publish: {e}"))?;
                    if args.ack {
                        pending.insert(corr, Instant::now());
                    }
                    s.sent += 1;
                }
                conn.flush().await?;
                pb.set_position(s.sent);
                next_send = match interval {
                    Some(i) => next_send + i,
                    None => Instant::now(),
                };
            }
            _ = tokio::time::sleep_until(finish_by.unwrap_or_else(Instant::now)),
                if finish_by.is_some() => break,
        }
        while let Some(ev) = conn.client.poll_event() {
            match ev {
                ClientEvent::Ack {
                    corr_id,
                    code,
                    error,
                } => {
                    if let Some(t) = pending.remove(&corr_id) {
                        latencies.push(t.elapsed());
                    }
                    match code {
                        200..=299 => s.acked += 1,
                        _ => s.refuse(error.as_deref().unwrap_or(&code.to_string()), 1),
                    }
                }
                ClientEvent::Notice { error, refused, .. } => {
                    s.refuse(&error, refused);
                    if args.ack {
                        noticed += refused;
                    }
                }
                ClientEvent::Refused { code, error, .. } => {
                    anyhow::bail!("node refused: {code} {error}")
                }
                ClientEvent::Broken(e) => anyhow::bail!("protocol error: {e}"),
                ClientEvent::Goaway => {
                    tracing::warn!(event = "goaway", "the node is draining");
                }
                _ => {}
            }
        }
        if !pb.is_hidden() {
            pb.set_message(s.progress((pending.len() as u64).saturating_sub(noticed)));
        }
        conn.flush().await?;
    }
    pb.finish_and_clear();
    let elapsed = started.elapsed();
    s.unconfirmed = (pending.len() as u64).saturating_sub(noticed);
    s.elapsed_s = elapsed.as_secs_f64();
    s.rate = if elapsed.is_zero() {
        0.0
    } else {
        s.sent as f64 / elapsed.as_secs_f64()
    };
    latencies.sort();
    s.p50_ms = percentile(&latencies, 0.50);
    s.p99_ms = percentile(&latencies, 0.99);
    conn.close().await;
    Ok(s)
}

/// One received message as `subscribe` prints it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MessageLine {
    pub topic: String,
    pub msg_id: String,
    pub ttl: u8,
    pub bytes: usize,
    pub data: String,
    /// `utf8` when the data is valid UTF-8, else `hex`.
    pub encoding: &'static str,
}

impl MessageLine {
    pub fn new(m: &Message) -> MessageLine {
        let (data, encoding) = match std::str::from_utf8(&m.data) {
            Ok(s) => (s.to_string(), "utf8"),
            Err(_) => (hex(&m.data), "hex"),
        };
        MessageLine {
            topic: m.header.topic_str().to_string(),
            msg_id: hex(&m.header.msg_id),
            ttl: m.header.ttl,
            bytes: m.data.len(),
            data,
            encoding,
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Receives messages on `topics` (all, if empty) and hands each to `out` until `count`
/// have arrived (forever if `None`) or the node closes; waits up to `connect_timeout` for
/// the node to listen.
pub async fn subscribe(
    to: &str,
    topics: Vec<String>,
    count: Option<u64>,
    connect_timeout: Duration,
    mut out: impl FnMut(&Message),
) -> anyhow::Result<u64> {
    let mut conn = Conn::open(to, topics, connect_timeout).await?;
    tracing::info!(event = "subscribed", to, "subscribed");
    let mut got = 0u64;
    loop {
        if count.is_some_and(|c| got >= c) {
            break;
        }
        if let Err(e) = conn.read().await {
            if conn.client.is_done() || e.to_string().contains("closed") {
                break;
            }
            return Err(e);
        }
        conn.flush().await?;
        while let Some(ev) = conn.client.poll_event() {
            match ev {
                ClientEvent::Message(m) if count.map_or(true, |c| got < c) => {
                    out(&m);
                    got += 1;
                }
                ClientEvent::Goaway => {
                    tracing::info!(event = "goaway", "the node is draining");
                }
                ClientEvent::Broken(e) => anyhow::bail!("protocol error: {e}"),
                _ => {}
            }
        }
    }
    conn.close().await;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_run_is_taken_only_with_nothing_refused_or_unconfirmed() {
        let mut s = PublishSummary {
            sent: 10,
            acked: 10,
            acks: true,
            ..PublishSummary::default()
        };
        assert!(s.all_taken());
        s.unconfirmed = 1;
        assert!(!s.all_taken());
        s.unconfirmed = 0;
        s.refuse("ratelimit", 3);
        s.refuse("busy", 1);
        s.refuse("ratelimit", 2);
        assert!(!s.all_taken());
        assert_eq!(s.refused, 6);
        assert_eq!(
            s.progress(0),
            "acked 10 refused 6 (busy 1, ratelimit 5) unconfirmed 0"
        );
    }

    #[test]
    fn message_lines_use_utf8_or_hex() {
        let header = overlay_core::oap::GossipHeader::new([0xab; 16], 2, "feed").unwrap();
        let mut m = Message {
            corr_id: 1,
            tenant_id: 0,
            header,
            data: Bytes::from_static(b"hello"),
            ack_req: false,
            frames: 1,
        };
        let l = MessageLine::new(&m);
        assert_eq!(l.data, "hello");
        assert_eq!(l.encoding, "utf8");
        assert_eq!(l.msg_id, "ab".repeat(16));
        m.data = Bytes::from_static(&[0xff, 0x00]);
        let l = MessageLine::new(&m);
        assert_eq!((l.data.as_str(), l.encoding, l.bytes), ("ff00", "hex", 2));
    }
}
