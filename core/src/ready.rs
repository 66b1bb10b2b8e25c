//! Readiness: the keys of `/readyz` (docs/ARCHITECTURE.md section 5; no `tor_bootstrap`: no
//! Tor transport exists), the sustained windows, and the exact bodies.

use std::time::Duration;

use crate::time::Time;

/// Facts only the runtime can observe; it reports them with `Overlay::set_probe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    ListenersBound,
    MetricsBound,
    CfgLoaded,
    FdHeadroom,
    PqReady,
}

/// `readyz_state`: 0 down, 1 ready, 2 degraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadyState {
    Down = 0,
    Ready = 1,
    Degraded = 2,
}

impl ReadyState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyState::Down => "down",
            ReadyState::Ready => "ready",
            ReadyState::Degraded => "degraded",
        }
    }
}

/// Pressure that counts once it has lasted `sustain`, where dips shorter than `grace` do
/// not end it: a queue that keeps touching its watermark, or refusals that keep coming, are
/// sustained even if each sample in between looks fine. It clears once `grace` passes with
/// none, so readiness recovers within about a second of the pressure ending.
#[derive(Clone, Debug)]
pub struct Sustained {
    sustain: Duration,
    grace: Duration,
    since: Option<Time>,
    last_bad: Option<Time>,
}

impl Sustained {
    pub fn new(sustain: Duration, grace: Duration) -> Sustained {
        Sustained {
            sustain,
            grace,
            since: None,
            last_bad: None,
        }
    }

    pub fn set_sustain(&mut self, sustain: Duration) {
        self.sustain = sustain;
    }

    /// Records whether the bad condition holds now; returns whether it has been sustained.
    pub fn observe(&mut self, now: Time, bad: bool) -> bool {
        let gap_over =
            |last: Option<Time>| last.map_or(true, |l| now.saturating_since(l) >= self.grace);
        if bad {
            if self.since.is_none() || gap_over(self.last_bad) {
                self.since = Some(now);
            }
            self.last_bad = Some(now);
        } else if gap_over(self.last_bad) {
            self.since = None;
        }
        self.since
            .is_some_and(|s| now.saturating_since(s) >= self.sustain)
    }

    /// When the condition, if it keeps holding, becomes sustained.
    pub fn deadline(&self) -> Option<Time> {
        self.since.map(|s| s + self.sustain)
    }
}

/// Counts in one-second buckets over a trailing window, for rates like the shed rate.
#[derive(Clone, Debug)]
pub struct RateWindow {
    buckets: Vec<(u64, u64, u64)>, // (second, hits, total)
}

impl RateWindow {
    pub fn new(window: Duration) -> RateWindow {
        let n = window.as_secs().clamp(1, 3600) as usize;
        RateWindow {
            buckets: vec![(u64::MAX, 0, 0); n],
        }
    }

    fn bucket(&mut self, now: Time) -> &mut (u64, u64, u64) {
        let sec = now.since_epoch().as_secs();
        let n = self.buckets.len();
        let b = &mut self.buckets[(sec as usize) % n];
        if b.0 != sec {
            *b = (sec, 0, 0);
        }
        b
    }

    pub fn record(&mut self, now: Time, hit: bool) {
        let b = self.bucket(now);
        b.2 += 1;
        if hit {
            b.1 += 1;
        }
    }

    /// (hits, total) over the window ending at `now`.
    pub fn totals(&self, now: Time) -> (u64, u64) {
        let sec = now.since_epoch().as_secs();
        let n = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.0 != u64::MAX && b.0 <= sec && sec - b.0 < n)
            .fold((0, 0), |(h, t), b| (h + b.1, t + b.2))
    }
}

/// The readiness keys and their current values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyView {
    pub listeners_bound: bool,
    pub metrics_bound: bool,
    pub cfg_loaded: bool,
    /// `None` unless `pq_mode = hybrid`.
    pub pq_ready: Option<bool>,
    pub queues_ok: bool,
    pub shed_rate_ok: bool,
    pub fd_headroom: bool,
    /// Fewer sessions than `overlay.max_conns`: at the bound every new connection is
    /// refused `503 busy`, so a balancer must stop sending clients here until one ends.
    pub conns_ok: bool,
    /// Draining for shutdown: not ready whatever the keys say.
    pub draining: bool,
}

impl ReadyView {
    /// The keys that are false, in a fixed order (the order docs/ARCHITECTURE.md section 5
    /// lists them), so the 503 body is stable; `draining` last while the node shuts down.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        let mut need = |ok: bool, k| {
            if !ok {
                m.push(k)
            }
        };
        need(self.listeners_bound, "listeners_bound");
        need(self.metrics_bound, "metrics_bound");
        need(self.cfg_loaded, "cfg_loaded");
        need(self.queues_ok, "queues_ok");
        need(self.shed_rate_ok, "shed_rate_ok");
        need(self.fd_headroom, "fd_headroom");
        need(self.conns_ok, "conns_ok");
        need(self.pq_ready != Some(false), "pq_ready");
        need(!self.draining, "draining");
        m
    }

    /// Down while the node cannot serve at all (not bound, no config, draining);
    /// degraded while it serves but should not take writes; otherwise ready.
    pub fn state(&self) -> ReadyState {
        if self.draining || !self.listeners_bound || !self.cfg_loaded {
            ReadyState::Down
        } else if self.missing().is_empty() {
            ReadyState::Ready
        } else {
            ReadyState::Degraded
        }
    }

    /// Status code and JSON body of `/readyz` (seed section 2.3).
    pub fn http(&self, retry_after: u64) -> (u16, String) {
        if self.state() == ReadyState::Ready {
            return (200, r#"{"ready":true}"#.to_string());
        }
        let missing = self.missing();
        let body = serde_json::json!({
            "ready": false,
            "degraded": true,
            "missing": missing,
            "retry_after": retry_after,
        });
        (503, body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_up() -> ReadyView {
        ReadyView {
            listeners_bound: true,
            metrics_bound: true,
            cfg_loaded: true,
            pq_ready: None,
            queues_ok: true,
            shed_rate_ok: true,
            fd_headroom: true,
            conns_ok: true,
            draining: false,
        }
    }

    #[test]
    fn bodies_are_the_seed_documents() {
        assert_eq!(all_up().http(5), (200, r#"{"ready":true}"#.to_string()));
        let v = ReadyView {
            pq_ready: Some(false),
            queues_ok: false,
            ..all_up()
        };
        assert_eq!(v.state(), ReadyState::Degraded);
        let (code, body) = v.http(5);
        assert_eq!(code, 503);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ready": false, "degraded": true, "missing": ["queues_ok", "pq_ready"], "retry_after": 5})
        );
    }

    #[test]
    fn down_when_unbound_unconfigured_or_draining() {
        for v in [
            ReadyView {
                listeners_bound: false,
                ..all_up()
            },
            ReadyView {
                cfg_loaded: false,
                ..all_up()
            },
            ReadyView {
                draining: true,
                ..all_up()
            },
        ] {
            assert_eq!(v.state(), ReadyState::Down);
        }
        assert_eq!(
            ReadyView {
                draining: true,
                ..all_up()
            }
            .missing(),
            vec!["draining"]
        );
    }

    #[test]
    fn sustained_needs_the_whole_window_rides_out_dips_and_clears_after_grace() {
        let mut s = Sustained::new(Duration::from_secs(30), Duration::from_secs(1));
        let t = Time::from_millis;
        assert!(!s.observe(t(0), true));
        // Under the watermark for half of every second: still one episode.
        for ms in (250..30_000).step_by(250) {
            assert!(
                !s.observe(t(ms), (ms / 500) % 2 == 0),
                "not before 30 s ({ms})"
            );
        }
        assert_eq!(s.deadline(), Some(t(30_000)));
        assert!(s.observe(t(30_000), true), "sustained despite the dips");
        assert!(
            s.observe(t(30_500), false),
            "a dip shorter than grace keeps it"
        );
        assert!(
            !s.observe(t(31_000), false),
            "clears once grace passes with none"
        );
        assert!(!s.observe(t(31_250), true), "and starts over");
        assert_eq!(s.deadline(), Some(t(61_250)));
    }

    #[test]
    fn rate_window_forgets_old_seconds() {
        let mut w = RateWindow::new(Duration::from_secs(10));
        let t = Time::from_millis;
        w.record(t(0), true);
        w.record(t(500), false);
        w.record(t(9_900), false);
        assert_eq!(w.totals(t(9_900)), (1, 3));
        assert_eq!(w.totals(t(10_100)), (0, 1), "second 0 left the window");
        assert_eq!(w.totals(t(30_000)), (0, 0));
    }
}
