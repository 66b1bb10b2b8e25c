//! turmoil scenarios over the real runtime: each simulated host runs `svc_overlay::Node`
//! (the daemon's code, not a model of it) on simulated TCP through the runtime's `Net`
//! trait, with its own Prometheus recorder and its admin plane on the simulated network.
//! Scenarios assert through HTTP from inside the simulation.
//!
//! - `net`: the `Net` implementation (turmoil TCP plus a send window) and its ledger.
//! - `harness`: hosts, agents, the control script, the step loop.
//! - `http`, `expo`: a hand-rolled HTTP/1.1 GET and the exposition parser.
//! - `oap`: OAP/1 clients through core's sans-IO `Client`; `agents`: what agent hosts run
//!   (subscriber, steerable publisher, handshake flood, hostile frames).
//! - `steps`: waits and publishes scenarios share.
//! - `checks`: the balance law on every node, final metrics into the trace, the audit of
//!   bytes lost in transit.
//! - `trace`: the hashed trace that makes runs comparable.

pub mod agents;
pub mod checks;
pub mod expo;
pub mod harness;
pub mod http;
pub mod net;
pub mod oap;
pub mod steps;
pub mod trace;

pub use harness::{mesh, node_config, run, seed_from_env, Ctx, Outcome, Setup};
