//! svc-overlay, the daemon around `overlay-core`: sockets, time, signals, the admin plane,
//! logs and the command line. The core decides; this crate moves bytes to and from it.
//!
//! A library with a thin `main`, so that `sim` can run the same runtime over simulated
//! sockets and tests can start nodes in-process.
//!
//! Folders by concern, each using only those below it (`tests/layout.rs` checks it):
//! `cli` → `node` → `driver` → `admin` → `io` → `telemetry` → `bounds`, `config`, `token`.

pub mod admin;
pub mod bounds;
pub mod cli;
pub mod config;
mod driver;
pub mod io;
pub mod node;
pub mod telemetry;
pub mod token;

// The paths embedders, `sim` and the tests have always used.
pub use admin::health::Heartbeat;
pub use admin::ready::ReadySnapshot;
pub use cli::peer;
pub use driver::{NodeStats, ShutdownReport};
pub use io::net::{self, Listener, Net, TokioNet};
pub use node::{Node, NodeOptions};
pub use telemetry::bus;
#[cfg(feature = "otel")]
pub use telemetry::otel;
