//! Keeping configured peers dialed: one task per peer address (plain, or TLS for `tls://`
//! peers), redialing with exponential backoff and seeded jitter once its connection ends.

use std::sync::Arc;
use std::time::Duration;

use overlay_core::{PeerAddr, TlsSession};
use tokio::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use crate::bounds::Bounds;
use crate::bounds::DIAL_JITTER;
use crate::io::messages::Control;
use crate::io::net::{Net, Stream};
use crate::io::tls::handshake::Failed;
use crate::io::tls::{TlsContext, Wire};

/// Exponential backoff with +-`DIAL_JITTER` jitter, so peers that lost the same node do
/// not all redial it in the same instant.
/// The delays come from `overlay.dial_backoff_base` and `overlay.dial_backoff_max`.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    max: Duration,
    rng: ChaCha8Rng,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            base,
            max: max.max(base),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let j: f64 = self.rng.gen_range(-DIAL_JITTER..=DIAL_JITTER);
        exp.mul_f64(1.0 + j)
    }
}

/// Dials `addr` until it connects (over TLS for `tls://` peers, verifying the certificate
/// names the expected node id or host), hands the stream to the driver, waits for the
/// driver to say the connection ended (and whether it had been established), then backs
/// off and redials.
pub(crate) async fn dial_loop<N: Net>(
    net: N,
    addr: String,
    ctl: mpsc::Sender<Control<N::Stream>>,
    mut ended: mpsc::Receiver<bool>,
    seed: u64,
    b: Bounds,
    tls: Arc<TlsContext>,
) {
    let connect_timeout = b.connect_timeout;
    let mut backoff = Backoff::new(b.dial_backoff_base, b.dial_backoff_max, seed);
    // Validation refused anything else; a peer that cannot parse is dialed as written.
    let peer = PeerAddr::parse(&addr).unwrap_or(PeerAddr {
        tls: false,
        name: None,
        host_port: &addr,
    });
    // Failures in a row, for the log: a peer that never answers shows a growing count.
    let mut failures = 0u32;
    loop {
        let opened = Instant::now();
        let error = match tokio::time::timeout(connect_timeout, net.connect(peer.host_port)).await {
            Ok(Ok(stream)) => match secure(&peer, &tls, stream, connect_timeout).await {
                Ok((stream, tls)) => {
                    let msg = Control::Connected {
                        stream,
                        addr: addr.clone(),
                        tls,
                        opened,
                    };
                    if ctl.send(msg).await.is_err() {
                        return;
                    }
                    match ended.recv().await {
                        None => return,
                        Some(true) => {
                            backoff.reset();
                            failures = 0;
                        }
                        Some(false) => {}
                    }
                    None
                }
                Err((refusal, detail)) => {
                    let error = format!("TLS: {detail}");
                    let msg = Control::TlsFailed {
                        refusal,
                        peer_addr: addr.clone(),
                        inbound: false,
                        detail,
                    };
                    if ctl.send(msg).await.is_err() {
                        return;
                    }
                    Some(error)
                }
            },
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("connect timed out".into()),
        };
        if let Some(error) = error {
            failures = failures.saturating_add(1);
            let msg = Control::DialFailed {
                addr: addr.clone(),
                error,
                failures,
            };
            if ctl.send(msg).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The TLS handshake of a `tls://` peer; a plain peer's stream passes as it is.
async fn secure<S: Stream>(
    peer: &PeerAddr<'_>,
    tls: &TlsContext,
    stream: S,
    timeout: Duration,
) -> Result<(Wire<S>, Option<TlsSession>), Failed> {
    if !peer.tls {
        return Ok((Wire::Plain(stream), None));
    }
    let (w, s) = tls.connect(stream, peer.server_name(), timeout).await?;
    Ok((w, Some(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(BASE, MAX, 1);
        let d: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        let lo = |base: Duration| base.mul_f64(1.0 - DIAL_JITTER);
        let hi = |base: Duration| base.mul_f64(1.0 + DIAL_JITTER);
        assert!(d[0] >= lo(BASE) && d[0] <= hi(BASE));
        assert!(d[3] >= lo(BASE * 8));
        assert!(d.iter().all(|x| *x <= hi(MAX)));
        assert!(d[11] >= lo(MAX));
        b.reset();
        assert!(b.next_delay() <= hi(BASE));
    }

    #[test]
    fn backoff_bounds_come_from_config() {
        let mut cfg = overlay_core::Config::default();
        cfg.overlay.dial_backoff_base = Duration::from_millis(10);
        cfg.overlay.dial_backoff_max = Duration::from_millis(50);
        let bounds = Bounds::from_config(&cfg);
        let mut b = Backoff::new(bounds.dial_backoff_base, bounds.dial_backoff_max, 3);
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        let ceiling = Duration::from_millis(50).mul_f64(1.0 + DIAL_JITTER);
        assert!(d[0] <= Duration::from_millis(10).mul_f64(1.0 + DIAL_JITTER));
        assert!(d.iter().all(|x| *x <= ceiling), "{d:?}");
        // The ceiling is reached: the doubling stops at dial_backoff_max.
        assert!(d[9] >= Duration::from_millis(50).mul_f64(1.0 - DIAL_JITTER));
    }

    #[test]
    fn jitter_is_seeded() {
        let a: Vec<_> = {
            let mut b = Backoff::new(BASE, MAX, 9);
            (0..5).map(|_| b.next_delay()).collect()
        };
        let mut b = Backoff::new(BASE, MAX, 9);
        let again: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(a, again);
        let mut c = Backoff::new(BASE, MAX, 10);
        let other: Vec<_> = (0..5).map(|_| c.next_delay()).collect();
        assert_ne!(a, other);
    }
}
