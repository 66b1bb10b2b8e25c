//! Simulators for svc-overlay: a deterministic many-node simulator over the core (`des`)
//! and turmoil scenarios over the real runtime (in `tests/`).

pub mod des;
pub mod turmoil;
