//! `overlay-core`: the sans-IO heart of svc-overlay.
//!
//! No sockets, clocks, threads or globals live here: the runtime passes bytes and time in
//! through `handle_*` calls and drains what to send through `poll_*` calls, in the manner
//! of quinn-proto. See `docs/ARCHITECTURE.md`.

#![forbid(unsafe_code)]

pub mod cap;
pub mod client;
pub mod config;
pub mod dialer;
pub mod egress;
pub mod event;
pub mod limiter;
mod node;
pub mod notice;
pub mod oap;
pub mod observe;
pub mod ready;
pub mod reason;
pub mod seen;
pub(crate) mod session;
pub mod stats;
pub mod store;
pub mod sync;
pub mod time;
pub mod transport;

pub use config::{Config, ConfigError};
pub use dialer::Dial;
pub use event::Event;
pub use node::{
    Held, Overlay, PublishError, ShutdownReport, Transmit, PEER_PRESSURE_MAX, PRESSURE_GRACE, TICK,
};
pub use ready::{Probe, ReadyState, ReadyView};
pub use reason::RejectReason;
pub use session::{CloseReason, ConnId};
pub use stats::{Balance, Stats};
pub use time::Time;
pub use transport::{Admission, CertName, Link, PeerAddr, Prepaid, TlsRefusal, TlsSession};
