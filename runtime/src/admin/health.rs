//! Liveness: the driver stamps a heartbeat every loop turn, and `/healthz` fails once the
//! stamp is older than `HEALTH_STALE`, so a wedged driver is visible even while the admin
//! plane's own tasks still answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use tokio::time::Instant;

use super::{json, AdminState};
use crate::bounds::HEALTH_STALE;

/// Liveness: the driver stamps this every loop turn; `/healthz` reads its age.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: AtomicU64,
}

/// `last_ms` before the first beat: not alive until the driver has run once.
const NEVER: u64 = u64::MAX;

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(NEVER),
        }
    }
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    pub fn age(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last == NEVER {
            return Duration::MAX;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(last))
    }
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat::new()
    }
}

pub(super) async fn healthz(State(s): State<AdminState>) -> Response {
    let age = s.heartbeat.age();
    let (code, alive) = if age <= HEALTH_STALE {
        (StatusCode::OK, true)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, false)
    };
    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    let body = serde_json::json!({ "alive": alive, "tick_age_ms": age_ms });
    json(code, body.to_string())
}
