//! `publish`: messages to a node, acked (a window of answers outstanding) or not (refusal
//! notices still heard), at a rate or as fast as the node takes them, with a summary.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::Duration;

use bytes::Bytes;
use overlay_core::client::ClientEvent;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::time::Instant;

use super::Conn;
use crate::admin::corr::os_seed;

/// How long to wait for outstanding acks at the end.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// Capability token presented in HELLO (base64 text, as `token mint` prints it).
    pub token: Option<String>,
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
            token: None,
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
    let token = args.token.clone().map(Bytes::from);
    let mut conn = Conn::open(&args.to, Vec::new(), args.connect_timeout, token).await?;
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
}
