//! Rate limits for log lines that a failing syscall or a peer can repeat in a loop (accept
//! errors at the fd limit, a connection flood refused before TLS, the log bus lagging): one
//! line per period, carrying how many were held back, so the log neither floods nor hides
//! that the failure kept happening.

use std::time::Duration;

use tokio::time::Instant;

/// At most one accept-error line per second per listener.
pub const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(1);

/// At most one line per second for TLS connections refused over the handshake rate: a
/// flood must not turn into a log line per connection.
pub const INCOMING_REFUSED_LOG_EVERY: Duration = Duration::from_secs(1);

/// At most one `bus_lagged` line per second per bus subscriber.
pub const BUS_LAG_LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed)` when a line may be logged now (with the count of lines held
    /// back since the last one), `None` when this one is held back.
    pub fn admit(&mut self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    pub(crate) fn admit_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_held_back_count() {
        let mut t = LogThrottle::new(Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(t.admit_at(at(0)), Some(0));
        // An accept loop failing every 100 ms for a second logs nothing more...
        for i in 1..10 {
            assert_eq!(t.admit_at(at(i * 100)), None);
        }
        // ...and the next line says how many it stood for.
        assert_eq!(t.admit_at(at(1000)), Some(9));
        assert_eq!(t.admit_at(at(1000)), None);
    }
}
