//! svc-overlay, the daemon around `overlay-core`: sockets, time, signals, the admin plane,
//! logs and the command line. The core decides; this crate moves bytes to and from it.
//!
//! A library with a thin `main`, so that `sim` can run the same runtime over simulated
//! sockets and tests can start nodes in-process.

pub mod admin;
pub mod bounds;
pub mod bus;
pub mod cli;
pub mod config;
mod conn;
pub mod corr;
mod credit;
pub mod daemon;
pub mod demo;
mod dial;
mod driver;
mod eventlog;
pub mod fd;
pub mod logging;
pub mod net;
pub mod node;
pub mod observe;
#[cfg(feature = "otel")]
pub mod otel;
pub mod peer;
pub mod shutdown;
mod supervise;
mod throttle;

pub use driver::{Heartbeat, NodeStats, ReadySnapshot, ShutdownReport};
pub use net::{Listener, Net, TokioNet};
pub use node::{Node, NodeOptions};
