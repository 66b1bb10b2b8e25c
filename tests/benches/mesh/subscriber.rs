//! One subscribing client per non-publishing node, each on its own thread: counts every
//! (node, seq) once and records receive − send on the harness's one clock.

use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use e2e::wire::OapClient;
use overlay_core::client::ClientEvent;

use crate::payload;

/// What every subscriber and the publisher share.
pub struct Shared {
    /// The clock `send_ns` and receive times are measured on.
    pub base: Instant,
    /// Unique (node, seq) deliveries so far.
    pub delivered: AtomicU64,
    /// `base`-relative time of the latest delivery.
    pub last_recv_ns: AtomicU64,
    /// `base`-relative time of the first publish; `u64::MAX` until then.
    pub first_publish_ns: AtomicU64,
    /// Ends the publisher; the subscribers read on until `stop`, so that what the nodes
    /// write after the publisher stopped is still counted by its receiver.
    pub stop_publisher: AtomicBool,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub latencies_us: Vec<u32>,
    /// The seq of each latency, in arrival order.
    pub seqs: Vec<u32>,
    /// Messages received (duplicates included) and the frames that carried them.
    pub messages: u64,
    pub frames: u64,
    /// A seq this client had already received (the node delivered a copy twice).
    pub duplicates: u64,
    /// Set if the connection broke or closed before the run ended.
    pub error: Option<String>,
}

/// Reads until `shared.stop`; `messages` is the number of distinct seqs the run may send.
pub fn spawn(mut c: OapClient, messages: u64, shared: Arc<Shared>) -> JoinHandle<Report> {
    std::thread::spawn(move || {
        let mut seen = vec![false; messages as usize];
        let mut r = Report {
            latencies_us: Vec::with_capacity(messages as usize),
            ..Report::default()
        };
        // The stop flag is checked at least this often.
        c.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let mut chunk = vec![0u8; 256 << 10];
        let mut buf = BytesMut::new();
        while !shared.stop.load(Ordering::Relaxed) {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    r.error = Some("the node closed the connection".into());
                    break;
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    c.client.handle_bytes(&mut buf);
                    // PONGs go out at once, so the node never idles us out.
                    c.flush();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) => {
                    r.error = Some(e.to_string());
                    break;
                }
            }
            while let Some(ev) = c.client.poll_event() {
                match ev {
                    ClientEvent::Message(m) => {
                        let at = shared.now_ns();
                        r.messages += 1;
                        r.frames += m.frames as u64;
                        let Some((seq, sent)) = payload::parse(&m.data) else {
                            continue;
                        };
                        match seen.get_mut(seq as usize) {
                            Some(s) if !*s => {
                                *s = true;
                                r.seqs.push(seq as u32);
                                r.latencies_us
                                    .push((at.saturating_sub(sent) / 1000).min(u32::MAX as u64)
                                        as u32);
                                shared.delivered.fetch_add(1, Ordering::Relaxed);
                                shared.last_recv_ns.fetch_max(at, Ordering::Relaxed);
                            }
                            Some(_) => r.duplicates += 1,
                            None => {}
                        }
                    }
                    ClientEvent::Broken(e) => r.error = Some(e),
                    ClientEvent::Refused { code, error, .. } => {
                        r.error = Some(format!("{code} {error}"))
                    }
                    _ => {}
                }
            }
        }
        r
    })
}
