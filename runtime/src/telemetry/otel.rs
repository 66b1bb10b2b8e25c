//! OpenTelemetry export of the `svc.overlay.*` spans (feature `otel`): OTLP over gRPC to
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, when that is set.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{Tracer, TracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

fn resource() -> Resource {
    Resource::new(vec![
        KeyValue::new("service.name", crate::telemetry::logging::SERVICE),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ])
}

/// An OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Needs a tokio runtime
/// entered: the batch processor runs on it.
pub fn provider_from_env() -> anyhow::Result<Option<TracerProvider>> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    Ok(Some(
        TracerProvider::builder()
            .with_batch_exporter(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_resource(resource())
            .build(),
    ))
}

/// A provider that hands every span to `exporter` as it ends (tests, debugging).
pub fn provider_with<E>(exporter: E) -> TracerProvider
where
    E: opentelemetry_sdk::export::trace::SpanExporter + 'static,
{
    TracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource())
        .build()
}

pub fn layer<S>(provider: &TracerProvider) -> OpenTelemetryLayer<S, Tracer>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("svc-overlay"))
}
