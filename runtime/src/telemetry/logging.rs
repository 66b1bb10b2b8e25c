//! JSON log lines with the fields listed in docs/OPERATIONS.md, "Logs" (`ts level service event
//! reason corr_id peer_addr latency_ms bytes dir`), the redaction policy, and installing
//! the process's subscriber (`init`); the sampling of repetitive events is in `sampler`.
//!
//! A small `Layer` of our own rather than `tracing_subscriber::fmt().json()`: the required
//! field names (`ts`, `level`, `service`) and the flattening of span fields into each line
//! are not what the stock formatter emits, and the peer-address policy must be enforced at
//! the one place every line passes through.
//!
//! Long because: a third of it is tests of the line format, which need the private
//! rendering and share their capture helper with `eventlog`'s tests.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::bounds::LOG_FIELD_MAX;

pub const SERVICE: &str = "svc-overlay";

/// Target of lines that are logged whatever `log.level` says (see `logging::init`).
pub const ANNOUNCE: &str = "svc_overlay::announce";

/// Log policy that SIGHUP may change while the process runs.
#[derive(Debug)]
pub struct LogPolicy {
    peer_addr: AtomicBool,
    max_lines_per_sec: AtomicU32,
}

impl LogPolicy {
    pub fn new(cfg: &overlay_core::config::LogConfig) -> Arc<LogPolicy> {
        Arc::new(LogPolicy {
            peer_addr: AtomicBool::new(cfg.peer_addr),
            max_lines_per_sec: AtomicU32::new(cfg.max_lines_per_sec.max(1)),
        })
    }
    pub fn update(&self, cfg: &overlay_core::config::LogConfig) {
        self.peer_addr.store(cfg.peer_addr, Ordering::Relaxed);
        self.max_lines_per_sec
            .store(cfg.max_lines_per_sec.max(1), Ordering::Relaxed);
    }
    pub fn peer_addr(&self) -> bool {
        self.peer_addr.load(Ordering::Relaxed)
    }
    pub fn max_lines_per_sec(&self) -> u32 {
        self.max_lines_per_sec.load(Ordering::Relaxed)
    }
}

/// Cuts a string to at most `LOG_FIELD_MAX` bytes on a char boundary, marking the cut.
pub fn truncate(mut s: String) -> String {
    if s.len() <= LOG_FIELD_MAX {
        return s;
    }
    let mut end = LOG_FIELD_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...[truncated]");
    s
}

#[derive(Default)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    fn put(&mut self, k: &'static str, v: Value) {
        if let Some(slot) = self.0.iter_mut().find(|(name, _)| *name == k) {
            slot.1 = v;
        } else {
            self.0.push((k, v));
        }
    }
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.iter().find(|(name, _)| *name == k).map(|(_, v)| v)
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.put(f.name(), Value::String(truncate(format!("{v:?}"))));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f.name(), Value::String(truncate(v.to_string())));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f.name(), Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f.name(), Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f.name(), Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f.name(), Value::from(v));
    }
    fn record_error(&mut self, f: &Field, e: &(dyn std::error::Error + 'static)) {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(c) = src {
            let _ = write!(s, ": {c}");
            if s.len() > LOG_FIELD_MAX {
                break;
            }
            src = c.source();
        }
        self.put(f.name(), Value::String(truncate(s)));
    }
}

/// The layer that writes one JSON object per event.
pub struct JsonLayer<W> {
    make_writer: W,
    policy: Arc<LogPolicy>,
}

impl<W> JsonLayer<W> {
    pub fn new(make_writer: W, policy: Arc<LogPolicy>) -> JsonLayer<W> {
        JsonLayer {
            make_writer,
            policy,
        }
    }
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut f = Fields::default();
        attrs.record(&mut f);
        span.extensions_mut().insert(f);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(f) = ext.get_mut::<Fields>() {
            values.record(f);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Span fields (corr_id, dir, pq_mode...) fill in what the event did not say,
        // innermost span first.
        let mut span_name = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                span_name.get_or_insert(span.name());
                if let Some(sf) = span.extensions().get::<Fields>() {
                    for (k, v) in &sf.0 {
                        if fields.get(k).is_none() {
                            fields.put(k, v.clone());
                        }
                    }
                }
            }
        }
        let line = render(
            event.metadata().level(),
            span_name,
            fields,
            self.policy.peer_addr(),
        );
        let mut w = self.make_writer.make_writer_for(event.metadata());
        let _ = w.write_all(line.as_bytes());
    }
}

fn render(
    level: &tracing::Level,
    span: Option<&'static str>,
    fields: Fields,
    peer_addr: bool,
) -> String {
    let mut out = String::with_capacity(256);
    out.push('{');
    let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    push(&mut out, "ts", &Value::String(ts));
    push(
        &mut out,
        "level",
        &Value::String(level.as_str().to_string()),
    );
    push(&mut out, "service", &Value::String(SERVICE.into()));
    for (k, v) in fields.0 {
        let k = match k {
            // The reserved header fields cannot be overridden by an event.
            "ts" | "level" | "service" => continue,
            "peer_addr" if !peer_addr => continue,
            "message" => "msg",
            other => other,
        };
        push(&mut out, k, &v);
    }
    if let Some(s) = span {
        push(&mut out, "span", &Value::String(s.into()));
    }
    out.pop();
    out.push_str("}\n");
    out
}

fn push(out: &mut String, k: &str, v: &Value) {
    out.push_str(&Value::String(k.to_string()).to_string());
    out.push(':');
    out.push_str(&v.to_string());
    out.push(',');
}

/// Where log lines go: the daemon logs to stdout; commands whose stdout is data
/// (`publish`, `subscribe`, `demo`) log to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

type ReloadFn = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The process's logging, as installed by `init`.
pub struct Logging {
    pub policy: Arc<LogPolicy>,
    reload_level: ReloadFn,
    #[cfg(feature = "otel")]
    otel: Option<opentelemetry_sdk::trace::TracerProvider>,
}

impl Logging {
    /// Applies a reloaded `[log]` section.
    pub fn reconfigure(&self, cfg: &overlay_core::config::LogConfig) -> Result<(), String> {
        self.policy.update(cfg);
        (self.reload_level)(&cfg.level)
    }

    /// Flushes exporters (spans still batched for OTLP).
    pub fn shutdown(&self) {
        #[cfg(feature = "otel")]
        if let Some(p) = &self.otel {
            let _ = p.shutdown();
        }
    }
}

/// `log.level`, plus the announcement target at INFO whatever the level: scripts wait for
/// the `listening` line even when the operator asked for warnings only.
fn level_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    tracing_subscriber::EnvFilter::try_new(format!("{level},{}=info", ANNOUNCE))
        .map_err(|e| e.to_string())
}

/// Installs the global subscriber: an `EnvFilter` from `log.level` (reloadable), the JSON
/// layer, and with the `otel` feature an OTLP span exporter when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(cfg: &overlay_core::config::LogConfig, sink: Sink) -> anyhow::Result<Logging> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::reload;

    let filter =
        level_filter(&cfg.level).map_err(|e| anyhow::anyhow!("invalid config `log.level`: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let policy = LogPolicy::new(cfg);
    let json = match sink {
        Sink::Stdout => JsonLayer::new(
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
            policy.clone(),
        ),
        Sink::Stderr => JsonLayer::new(
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            policy.clone(),
        ),
    };
    let registry = tracing_subscriber::registry().with(filter).with(json);

    #[cfg(feature = "otel")]
    let (registry, otel) = {
        let provider = crate::telemetry::otel::provider_from_env()?;
        let layer = provider.as_ref().map(crate::telemetry::otel::layer);
        (registry.with(layer), provider)
    };

    tracing::subscriber::set_global_default(registry)
        .map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))?;
    let reload_level: ReloadFn = Box::new(move |level: &str| {
        let f = level_filter(level)?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    Ok(Logging {
        policy,
        reload_level,
        #[cfg(feature = "otel")]
        otel,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;

    /// Collects log output in memory.
    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        pub fn lines(&self) -> Vec<serde_json::Map<String, Value>> {
            let buf = self.0.lock().unwrap().clone();
            String::from_utf8(buf)
                .unwrap()
                .lines()
                .map(|l| match serde_json::from_str::<Value>(l).unwrap() {
                    Value::Object(m) => m,
                    other => panic!("not an object: {other}"),
                })
                .collect()
        }
    }

    pub fn capture(peer_addr: bool) -> (Capture, impl Subscriber + Send + Sync) {
        let cap = Capture::default();
        let cfg = overlay_core::config::LogConfig {
            peer_addr,
            ..Default::default()
        };
        let layer = JsonLayer::new(cap.clone(), LogPolicy::new(&cfg));
        let sub = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(layer);
        (cap, sub)
    }

    #[test]
    fn line_has_the_required_fields() {
        let (cap, sub) = capture(true);
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("svc.overlay.session", corr_id = "01ABC", dir = "in");
            let _g = span.enter();
            tracing::warn!(
                event = "handshake_fail",
                reason = "timeout",
                peer_addr = "1.2.3.4:443",
                latency_ms = 12u64,
                bytes = 38u64,
                "handshake did not finish"
            );
        });
        let lines = cap.lines();
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        let ts = l["ts"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["service"], "svc-overlay");
        assert_eq!(l["event"], "handshake_fail");
        assert_eq!(l["reason"], "timeout");
        assert_eq!(l["corr_id"], "01ABC", "span field flattened");
        assert_eq!(l["dir"], "in");
        assert_eq!(l["peer_addr"], "1.2.3.4:443");
        assert_eq!(l["latency_ms"], 12);
        assert_eq!(l["bytes"], 38);
        assert_eq!(l["msg"], "handshake did not finish");
        assert_eq!(l["span"], "svc.overlay.session");
    }

    #[test]
    fn peer_addr_is_dropped_when_policy_forbids() {
        let (cap, sub) = capture(false);
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("svc.overlay.session", peer_addr = "9.9.9.9:1");
            let _g = span.enter();
            tracing::info!(event = "accept", peer_addr = "1.2.3.4:443");
        });
        let text = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("peer_addr"), "{text}");
        assert!(!text.contains("1.2.3.4"), "{text}");
        assert!(!text.contains("9.9.9.9"), "{text}");
    }

    #[test]
    fn long_errors_are_truncated() {
        #[derive(Debug)]
        struct Chain(u32);
        impl std::fmt::Display for Chain {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "layer {} {}", self.0, "x".repeat(100))
            }
        }
        impl std::error::Error for Chain {}
        let (cap, sub) = capture(true);
        tracing::subscriber::with_default(sub, || {
            let e = Chain(1);
            tracing::error!(event = "reject", error = &e as &dyn std::error::Error);
            tracing::error!(event = "reject", detail = "y".repeat(10_000));
        });
        for l in cap.lines() {
            for v in l.values() {
                if let Some(s) = v.as_str() {
                    assert!(s.len() <= LOG_FIELD_MAX + 20, "{}", s.len());
                }
            }
            if let Some(d) = l.get("detail") {
                assert!(d.as_str().unwrap().ends_with("[truncated]"));
            }
        }
    }

    #[test]
    fn reserved_fields_cannot_be_spoofed() {
        let (cap, sub) = capture(true);
        tracing::subscriber::with_default(sub, || {
            tracing::info!(service = "evil", level = "TRACE", event = "accept");
        });
        let l = &cap.lines()[0];
        assert_eq!(l["service"], "svc-overlay");
        assert_eq!(l["level"], "INFO");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(LOG_FIELD_MAX);
        let t = truncate(s);
        assert!(t.ends_with("[truncated]"));
        assert!(t.len() <= LOG_FIELD_MAX + 20);
    }
}
