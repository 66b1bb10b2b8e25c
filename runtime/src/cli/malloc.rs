//! The process's allocator settings, made before any thread starts.
//!
//! glibc gives each thread that contends for the heap an arena of its own (up to 8 per
//! core), and an arena keeps what it was given at its own peak: a 64 KiB payload read on
//! one worker and freed on another leaves its space in the first arena, so each arena
//! grows to the transient peak of its share of the traffic. In the mesh bench (case B,
//! docs/PERFORMANCE.md "Memory in case B") that was 10 MiB per daemon above what the
//! store, queues and buffers hold, about a fifth of its peak; with one arena it is gone,
//! at no measured cost in throughput (the driver, which makes most allocations, is one
//! task anyway, and glibc's per-thread cache still serves small ones without the lock).

/// The arena count the daemon asks glibc for when the operator has not chosen one.
pub const DEFAULT_ARENAS: i32 = 1;

/// What to pass to `mallopt(M_ARENA_MAX, ..)`: nothing when `MALLOC_ARENA_MAX` is set,
/// so an operator's own tuning (read by glibc itself) stands.
pub fn arena_max(env: Option<&std::ffi::OsStr>) -> Option<i32> {
    match env {
        Some(_) => None,
        None => Some(DEFAULT_ARENAS),
    }
}

/// Applies [`arena_max`]; must run before the first thread is spawned, since threads
/// already attached to an arena keep it.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Some(n) = arena_max(std::env::var_os("MALLOC_ARENA_MAX").as_deref()) {
        // SAFETY: mallopt only changes allocator parameters; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_malloc_arena_max_stands() {
        assert_eq!(arena_max(None), Some(1));
        assert_eq!(arena_max(Some(std::ffi::OsStr::new("4"))), None);
    }
}
