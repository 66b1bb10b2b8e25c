//! Helpers for end-to-end tests of the built binary live in `tests/`.
