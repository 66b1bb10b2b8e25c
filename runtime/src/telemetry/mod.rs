//! What the node tells the world besides its wire protocol: JSON logs and their sampling,
//! the logger that turns bus events into lines, OTLP spans, the event bus and the node's
//! own Prometheus recorder.

pub mod bus;
pub(crate) mod eventlog;
pub mod logging;
#[cfg(feature = "otel")]
pub mod otel;
pub mod recorder;
pub mod sampler;
pub(crate) mod throttle;
