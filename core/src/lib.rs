//! `overlay-core`: the sans-IO heart of svc-overlay.
//!
//! No sockets, clocks, threads or globals live here: the runtime passes bytes and time in
//! through `handle_*` calls and drains what to send through `poll_*` calls.

#![forbid(unsafe_code)]

pub mod oap;
pub mod reason;

pub use reason::RejectReason;
