//! Keeping configured peers dialed: one task per peer address, redialing with exponential
//! backoff and seeded jitter once its connection ends.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use crate::bounds::{DIAL_BACKOFF_BASE, DIAL_BACKOFF_MAX, DIAL_JITTER};
use crate::driver::Control;
use crate::net::Net;

/// Exponential backoff with +-`DIAL_JITTER` jitter, so peers that lost the same node do
/// not all redial it in the same instant.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = DIAL_BACKOFF_BASE
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(DIAL_BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let j: f64 = self.rng.gen_range(-DIAL_JITTER..=DIAL_JITTER);
        exp.mul_f64(1.0 + j)
    }
}

/// Dials `addr` until it connects, hands the stream to the driver, waits for the driver to
/// say the connection ended (and whether it had been established), then backs off and
/// redials.
pub(crate) async fn dial_loop<N: Net>(
    net: N,
    addr: String,
    ctl: mpsc::Sender<Control<N::Stream>>,
    mut ended: mpsc::Receiver<bool>,
    seed: u64,
    connect_timeout: Duration,
) {
    let mut backoff = Backoff::new(seed);
    loop {
        match tokio::time::timeout(connect_timeout, net.connect(&addr)).await {
            Ok(Ok(stream)) => {
                let msg = Control::Connected {
                    stream,
                    addr: addr.clone(),
                };
                if ctl.send(msg).await.is_err() {
                    return;
                }
                match ended.recv().await {
                    None => return,
                    Some(true) => backoff.reset(),
                    Some(false) => {}
                }
            }
            Ok(Err(e)) => {
                let msg = Control::DialFailed {
                    addr: addr.clone(),
                    error: e.to_string(),
                };
                if ctl.send(msg).await.is_err() {
                    return;
                }
            }
            Err(_) => {
                let msg = Control::DialFailed {
                    addr: addr.clone(),
                    error: "connect timed out".into(),
                };
                if ctl.send(msg).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(1);
        let d: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        let lo = |base: Duration| base.mul_f64(1.0 - DIAL_JITTER);
        let hi = |base: Duration| base.mul_f64(1.0 + DIAL_JITTER);
        assert!(d[0] >= lo(DIAL_BACKOFF_BASE) && d[0] <= hi(DIAL_BACKOFF_BASE));
        assert!(d[3] >= lo(DIAL_BACKOFF_BASE * 8));
        assert!(d.iter().all(|x| *x <= hi(DIAL_BACKOFF_MAX)));
        assert!(d[11] >= lo(DIAL_BACKOFF_MAX));
        b.reset();
        assert!(b.next_delay() <= hi(DIAL_BACKOFF_BASE));
    }

    #[test]
    fn jitter_is_seeded() {
        let a: Vec<_> = {
            let mut b = Backoff::new(9);
            (0..5).map(|_| b.next_delay()).collect()
        };
        let mut b = Backoff::new(9);
        let again: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(a, again);
        let mut c = Backoff::new(10);
        let other: Vec<_> = (0..5).map(|_| c.next_delay()).collect();
        assert_ne!(a, other);
    }
}
