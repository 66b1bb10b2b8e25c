//! The publishing client on node 0: one thread, a non-blocking socket and poll(2), so it
//! keeps reading acks while the node is slow to take its writes.
//!
//! Every publish asks for an ack. By default at most `window` acks are outstanding, and a
//! refused message (429, 503) is published again, with a fresh id but the timestamp of its
//! first attempt (latency counts the refusals), after a backoff that doubles from 1 ms to
//! 100 ms and resets on the next 202. With `no_backoff` there is no window and no retry: it
//! publishes as fast as the socket takes bytes, and every refusal it is told of is counted.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use e2e::wire::OapClient;
use overlay_core::client::ClientEvent;
use overlay_core::oap::{AppProto, Decoder, FrameKind, Limits};

use crate::payload;
use crate::subscriber::Shared;

#[derive(Clone, Debug)]
pub struct Plan {
    pub messages: u64,
    pub size: usize,
    pub topic: String,
    pub ttl: u8,
    pub window: usize,
    /// Offered messages per second (retries included); `None`: as fast as acks allow.
    pub rate: Option<f64>,
    pub no_backoff: bool,
    pub timeout: Duration,
}

#[derive(Debug, Default)]
pub struct Report {
    /// Publishes written (retries included).
    pub published: u64,
    /// Distinct seqs answered 202.
    pub accepted: u64,
    pub ratelimited: u64,
    pub busy: u64,
    pub other_refused: u64,
    pub retries: u64,
    /// Publishes never answered when the run ended.
    pub unanswered: u64,
    /// GOSSIP RESP frames with corr_id 0 (a node telling of refusals not tied to one ack)
    /// and the sum of their `refused` counts.
    pub notices: u64,
    pub notice_refused: u64,
    /// Every GOSSIP RESP received: these are gossip tx frames of node 0 that are not copies
    /// of a message.
    pub resp_frames: u64,
    /// Seqs in `no_backoff` mode whose only answer was a refusal.
    pub told_refused: u64,
    pub first_publish_ns: Option<u64>,
    pub last_publish_ns: u64,
    pub error: Option<String>,
}

/// Bytes encoded but not yet taken by the socket, at most: beyond it the socket's own
/// backpressure holds the publisher, so a timestamp is never far older than its write.
const PENDING_CAP: usize = 256 << 10;
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

struct Out {
    q: VecDeque<Bytes>,
    bytes: usize,
}

impl Out {
    fn push(&mut self, b: Bytes) {
        self.bytes += b.len();
        self.q.push_back(b);
    }

    /// Writes what the socket takes now; true if anything went.
    fn write(&mut self, s: &mut std::net::TcpStream) -> std::io::Result<bool> {
        let mut any = false;
        while let Some(front) = self.q.front_mut() {
            match s.write(front) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    any = true;
                    self.bytes -= n;
                    front.advance(n);
                    if front.is_empty() {
                        self.q.pop_front();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(any)
    }
}

pub fn spawn(mut c: OapClient, plan: Plan, shared: Arc<Shared>) -> JoinHandle<Report> {
    std::thread::spawn(move || {
        let mut r = Report::default();
        if let Err(e) = run(&mut c, &plan, &shared, &mut r) {
            r.error = Some(e.to_string());
        }
        r
    })
}

fn run(c: &mut OapClient, plan: &Plan, shared: &Shared, r: &mut Report) -> std::io::Result<()> {
    c.stream.set_nonblocking(true)?;
    let fd = c.stream.as_raw_fd();
    let mut template = payload::template(plan.size);
    let mut out = Out {
        q: VecDeque::new(),
        bytes: 0,
    };
    let mut rx = BytesMut::new();
    // A second decoder over the same bytes: `ClientEvent::Ack` drops the body, and a
    // refusal notice's count is in its body.
    let mut notice_dec = Decoder::new(Limits::default());
    let mut notice_buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut outstanding: HashMap<u64, u64> = HashMap::new();
    let mut retry: VecDeque<u64> = VecDeque::new();
    let mut first_sent: HashMap<u64, u64> = HashMap::new();
    let mut next_fresh = 0u64;
    let mut pause_until = Instant::now();
    let mut backoff = Duration::ZERO;
    let interval = plan.rate.filter(|r| *r > 0.0).map(|r| 1.0 / r);
    let mut paced = 0u64;
    let mut pace_start: Option<Instant> = None;
    let mut deadline: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if shared.stop_publisher.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d) {
            break;
        }
        let done = if plan.no_backoff {
            next_fresh == plan.messages && outstanding.is_empty()
        } else {
            r.accepted == plan.messages
        };
        if done {
            break;
        }
        let mut progress = false;
        // Publish while the window, the pace, the backoff and the socket allow.
        let mut wait_until: Option<Instant> = None;
        loop {
            let has_work = !retry.is_empty() || next_fresh < plan.messages;
            if !has_work || out.bytes >= PENDING_CAP {
                break;
            }
            if !plan.no_backoff && outstanding.len() >= plan.window {
                break;
            }
            let now = Instant::now();
            if now < pause_until {
                wait_until = Some(pause_until);
                break;
            }
            if let (Some(i), Some(t0)) = (interval, pace_start) {
                let due = t0 + Duration::from_secs_f64(paced as f64 * i);
                if now < due {
                    wait_until = Some(due);
                    break;
                }
            }
            let seq = match retry.pop_front() {
                Some(s) => {
                    r.retries += 1;
                    s
                }
                None => {
                    next_fresh += 1;
                    next_fresh - 1
                }
            };
            let sent = shared.now_ns();
            // Latency runs from a message's first attempt: a retry keeps its stamp, so the
            // time spent refused and backing off counts against the system, as it does for
            // the application waiting on it.
            let first = *first_sent.entry(seq).or_insert(sent);
            payload::stamp(&mut template, seq, first);
            // A fresh id per publish: a refused message is not remembered by the node, but
            // a retry must never be mistaken for a duplicate either way.
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&seq.to_be_bytes());
            id[8..].copy_from_slice(&r.published.to_be_bytes());
            let corr = c
                .client
                .publish(
                    id,
                    &plan.topic,
                    plan.ttl,
                    &Bytes::copy_from_slice(&template),
                    true,
                )
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            while let Some(b) = c.client.poll_transmit() {
                out.push(b);
            }
            outstanding.insert(corr, seq);
            r.published += 1;
            r.last_publish_ns = sent;
            if r.first_publish_ns.is_none() {
                r.first_publish_ns = Some(sent);
                shared.first_publish_ns.store(sent, Ordering::Relaxed);
                pace_start = Some(now);
                deadline = Some(now + plan.timeout);
            }
            paced += 1;
            progress = true;
        }
        progress |= out.write(&mut c.stream)?;
        // Read everything there is.
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    progress = true;
                    notice_buf.extend_from_slice(&chunk[..n]);
                    rx.extend_from_slice(&chunk[..n]);
                    c.client.handle_bytes(&mut rx);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while let Ok(Some(f)) = notice_dec.decode(&mut notice_buf) {
            if f.proto() == AppProto::Gossip
                && f.flags.kind() == Some(FrameKind::Resp)
                && f.corr_id == 0
            {
                r.notices += 1;
                let body: serde_json::Value =
                    serde_json::from_slice(&f.payload).unwrap_or_default();
                r.notice_refused += body["refused"].as_u64().unwrap_or(0);
            }
        }
        while let Some(ev) = c.client.poll_event() {
            match ev {
                ClientEvent::Ack { corr_id, code, .. } => {
                    r.resp_frames += 1;
                    let Some(seq) = outstanding.remove(&corr_id) else {
                        continue;
                    };
                    match code {
                        200..=299 => {
                            r.accepted += 1;
                            backoff = Duration::ZERO;
                        }
                        _ => {
                            match code {
                                429 => r.ratelimited += 1,
                                503 => r.busy += 1,
                                _ => r.other_refused += 1,
                            }
                            if plan.no_backoff {
                                r.told_refused += 1;
                            } else {
                                retry.push_back(seq);
                                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                                pause_until = Instant::now() + backoff;
                            }
                        }
                    }
                }
                ClientEvent::Refused { code, error, .. } => {
                    return Err(std::io::Error::other(format!("refused: {code} {error}")))
                }
                ClientEvent::Broken(e) => return Err(std::io::Error::other(e)),
                _ => {}
            }
        }
        // PONGs.
        while let Some(b) = c.client.poll_transmit() {
            out.push(b);
        }
        if !progress {
            let wait = wait_until
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(10))
                .min(Duration::from_millis(10));
            let timeout_ms = wait.as_micros().div_ceil(1000) as i32;
            let mut events = libc::POLLIN;
            if out.bytes > 0 {
                events |= libc::POLLOUT;
            }
            let mut pfd = libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd for a socket we own, for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        }
    }
    r.unanswered = outstanding.len() as u64;
    Ok(())
}
