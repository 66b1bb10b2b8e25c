//! Simulators for svc-overlay; see the issue tracker for the scenarios that land here.
