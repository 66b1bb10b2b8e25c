//! `/readyz`: the core's `ReadyView` as the driver last published it, read whole from a
//! `Snapshot` so a probe never sees half of one version and half of another.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use overlay_core::ReadyView;

use super::{json, AdminState};

/// `/readyz` as the driver last computed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadySnapshot {
    pub status: u16,
    pub body: String,
    /// Seconds, for the `Retry-After` header of a 503.
    pub retry_after: u64,
    pub view: Option<ReadyView>,
}

pub(super) async fn readyz(State(s): State<AdminState>) -> Response {
    let snap = s.ready.load();
    let code = StatusCode::from_u16(snap.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = json(code, snap.body.clone());
    if code != StatusCode::OK {
        if let Ok(v) = HeaderValue::from_str(&snap.retry_after.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}
