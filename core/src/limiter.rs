//! Token buckets on injected time: the handshake rate limit and per-session `max_rps`.

use crate::time::Time;

#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Time,
}

impl TokenBucket {
    /// `rate` tokens per second, holding at most `burst`; starts full.
    pub fn new(rate: u32, burst: u32, now: Time) -> TokenBucket {
        TokenBucket {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    pub fn reconfigure(&mut self, rate: u32, burst: u32) {
        self.rate = rate.max(1) as f64;
        self.burst = burst.max(1) as f64;
        self.tokens = self.tokens.min(self.burst);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Time) -> bool {
        let elapsed = now.saturating_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whole seconds until a token is there (the `retry_after` to advertise).
    pub fn retry_after_secs(&self) -> u64 {
        (((1.0 - self.tokens).max(0.0) / self.rate).ceil() as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_at_rate_and_caps_at_burst() {
        let t0 = Time::ZERO;
        let mut b = TokenBucket::new(10, 3, t0);
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 3);
    }
}
