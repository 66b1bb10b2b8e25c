//! The admin plane: `/metrics /healthz /readyz /version`, with the golden HTTP metrics
//! and `X-Corr-ID` on every request.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use overlay_core::observe::{HttpMetrics, Method, Route, Status};
use overlay_core::sync::Snapshot;
use tokio::time::Instant;
use tracing::Instrument;

use corr::CorrIds;
use health::{healthz, Heartbeat};
use ready::{readyz, ReadySnapshot};

pub mod corr;
pub mod health;
pub mod ready;
mod serve;
pub(crate) use serve::serve;

pub const CORR_HEADER: &str = "x-corr-id";
const PROM_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What `/version` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VersionInfo {
    pub version: &'static str,
    pub git: &'static str,
    pub build: &'static str,
    pub features: Vec<&'static str>,
}

impl VersionInfo {
    pub fn current() -> VersionInfo {
        let mut features = Vec::new();
        if cfg!(feature = "otel") {
            features.push("otel");
        }
        VersionInfo {
            version: env!("CARGO_PKG_VERSION"),
            git: env!("OVERLAY_BUILD_GIT"),
            build: env!("OVERLAY_BUILD_PROFILE"),
            features,
        }
    }
}

/// `/metrics` renders, one at a time, shared by every request that arrived before the render
/// began: a render costs milliseconds of CPU, and clients pipelining scrapes must not be
/// able to spend every core on them while probes wait. No request is answered with a
/// render older than itself.
pub struct Scrapes {
    prom: PrometheusHandle,
    last: tokio::sync::Mutex<Option<(Instant, bytes::Bytes)>>,
}

impl Scrapes {
    pub fn new(prom: PrometheusHandle) -> Scrapes {
        Scrapes {
            prom,
            last: tokio::sync::Mutex::new(None),
        }
    }

    pub fn handle(&self) -> &PrometheusHandle {
        &self.prom
    }

    async fn render(&self) -> bytes::Bytes {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((began, text)) = &*last {
            if *began >= arrived {
                return text.clone();
            }
        }
        let began = Instant::now();
        let text = bytes::Bytes::from(self.prom.render());
        *last = Some((began, text.clone()));
        text
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub scrapes: Arc<Scrapes>,
    pub http: HttpMetrics,
    pub ready: Arc<Snapshot<ReadySnapshot>>,
    pub heartbeat: Arc<Heartbeat>,
    pub corr: Arc<CorrIds>,
    pub version: Arc<VersionInfo>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let text = s.scrapes.render().await;
    ([(header::CONTENT_TYPE, PROM_CONTENT_TYPE)], text).into_response()
}

async fn version(State(s): State<AdminState>) -> Response {
    json(
        StatusCode::OK,
        serde_json::to_string(&*s.version).unwrap_or_default(),
    )
}

async fn not_found() -> Response {
    json(
        StatusCode::NOT_FOUND,
        r#"{"error":"not found"}"#.to_string(),
    )
}

fn json(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Decrements `inflight_requests` even when the client goes away mid-request and the
/// handler future is dropped.
struct Inflight(metrics::Gauge);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn corr_id(headers: &HeaderMap, gen: &CorrIds) -> String {
    headers
        .get(CORR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| corr::acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| gen.next_id())
}

async fn observe(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let route = Route::from_path(req.uri().path());
    let method = Method::from_name(req.method().as_str());
    let corr = corr_id(req.headers(), &s.corr);
    let span = tracing::debug_span!("svc.overlay.admin", corr_id = %corr,
        route = route.as_str(), method = method.as_str());
    let gauge = s.http.inflight(route).clone();
    gauge.increment(1.0);
    let _inflight = Inflight(gauge);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    if let Ok(v) = HeaderValue::from_str(&corr) {
        resp.headers_mut().insert(CORR_HEADER, v);
    }
    let code = resp.status().as_u16();
    s.http
        .request(route, method, Status::from_code(code))
        .increment(1);
    s.http.latency(route, method).record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            event = "admin_request",
            status = code,
            latency_ms = elapsed.as_millis() as u64
        )
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use overlay_core::ReadyView;
    use tower::ServiceExt;

    fn state(ready: ReadySnapshot) -> (AdminState, Arc<Snapshot<ReadySnapshot>>) {
        let rec = crate::telemetry::recorder::Recorder::new().unwrap();
        let tx = Arc::new(Snapshot::new(ready));
        let rx = tx.clone();
        let hb = Arc::new(Heartbeat::new());
        hb.beat();
        (
            AdminState {
                scrapes: Arc::new(Scrapes::new(rec.handle)),
                http: rec.http,
                ready: rx,
                heartbeat: hb,
                corr: Arc::new(CorrIds::new(1)),
                version: Arc::new(VersionInfo::current()),
            },
            tx,
        )
    }

    fn ready_view(ready: bool) -> ReadyView {
        ReadyView {
            listeners_bound: true,
            metrics_bound: true,
            cfg_loaded: true,
            pq_ready: None,
            queues_ok: ready,
            shed_rate_ok: true,
            fd_headroom: true,
            conns_ok: true,
            draining: false,
        }
    }

    fn snapshot(v: ReadyView) -> ReadySnapshot {
        let (status, body) = v.http(5);
        ReadySnapshot {
            status,
            body,
            retry_after: 5,
            view: Some(v),
        }
    }

    async fn get(app: &Router, path: &str, corr: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = axum::http::Request::builder().uri(path);
        if let Some(c) = corr {
            req = req.header(CORR_HEADER, c);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_serves_the_core_view() {
        let (s, tx) = state(snapshot(ready_view(true)));
        let app = router(s);
        let (code, h, body) = get(&app, "/readyz", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_eq!(body, r#"{"ready":true}"#);

        tx.store(snapshot(ready_view(false)));
        let (code, h, body) = get(&app, "/readyz", None).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h[header::RETRY_AFTER], "5");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], false);
        assert_eq!(v["degraded"], true);
        assert_eq!(v["missing"], serde_json::json!(["queues_ok"]));
        assert_eq!(v["retry_after"], 5);
    }

    #[tokio::test]
    async fn healthz_follows_the_heartbeat() {
        let (mut s, _tx) = state(snapshot(ready_view(true)));
        // A driver that has not ticked yet is not alive.
        s.heartbeat = Arc::new(Heartbeat::new());
        let hb = s.heartbeat.clone();
        let app = router(s);
        let (code, _, body) = get(&app, "/healthz", None).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        hb.beat();
        let (code, _, _) = get(&app, "/healthz", None).await;
        assert_eq!(code, StatusCode::OK);
    }

    #[tokio::test]
    async fn version_has_the_four_fields() {
        let (s, _tx) = state(snapshot(ready_view(true)));
        let (code, _, body) = get(&router(s), "/version", None).await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert!(!v["git"].as_str().unwrap().is_empty());
        assert!(!v["build"].as_str().unwrap().is_empty());
        assert!(v["features"].is_array());
    }

    #[tokio::test]
    async fn corr_id_is_echoed_or_minted() {
        let (s, _tx) = state(snapshot(ready_view(true)));
        let app = router(s);
        let (_, h, _) = get(&app, "/healthz", Some("abc-123")).await;
        assert_eq!(h[CORR_HEADER], "abc-123");
        let (_, h, _) = get(&app, "/healthz", None).await;
        assert_eq!(h[CORR_HEADER].len(), 26);
        // A hostile id is replaced, not echoed.
        let (_, h, _) = get(&app, "/healthz", Some("a b\"c")).await;
        assert_eq!(h[CORR_HEADER].len(), 26);
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_method_status() {
        let (s, _tx) = state(snapshot(ready_view(false)));
        let prom = s.scrapes.handle().clone();
        let app = router(s);
        get(&app, "/readyz", None).await;
        get(&app, "/nope", None).await;
        let (code, h, body) = get(&app, "/metrics", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], PROM_CONTENT_TYPE);
        assert!(body.contains("# TYPE http_requests_total counter"));
        let text = prom.render();
        let find = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with("http_requests_total{") && l.contains(needle))
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        assert_eq!(
            find(r#"route="/readyz",method="GET",status="503""#).as_deref(),
            Some("1")
        );
        assert_eq!(
            find(r#"route="other",method="GET",status="404""#).as_deref(),
            Some("1")
        );
        assert!(text.contains(r#"request_latency_seconds_count{route="/readyz",method="GET"} 1"#));
        assert!(
            body.contains(r#"inflight_requests{route="/metrics"} 1"#),
            "the scrape itself"
        );
        assert!(text.contains(r#"inflight_requests{route="/metrics"} 0"#));
        assert!(text.contains(r#"inflight_requests{route="/readyz"} 0"#));
    }

    #[tokio::test]
    async fn wrong_method_is_405_and_counted() {
        let (s, _tx) = state(snapshot(ready_view(true)));
        let prom = s.scrapes.handle().clone();
        let app = router(s);
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/metrics")
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(prom
            .render()
            .contains(r#"http_requests_total{route="/metrics",method="other",status="405"} 1"#));
    }
}
