//! The metric inventory: every name and label set is defined once (`names`), and every
//! handle is registered once per node (`Metrics`), so the hot path is an atomic add.

mod handles;
pub mod names;

pub(crate) use handles::Counted;
pub use handles::{HttpMetrics, Metrics};
pub use names::*;
