//! The process's allocator settings, made before any thread starts.
//!
//! glibc gives each thread an arena of its own (up to 8 per core), and an arena keeps what
//! it was given at its own peak: a 64 KiB payload read on one worker and freed on another
//! leaves its space in the first arena, so each arena grows to the transient peak of its
//! share of the traffic. In the mesh bench (case B, docs/PERFORMANCE.md "Memory in case
//! B") that was about 10 MiB per daemon above what the store, queues and buffers hold;
//! with one arena it is gone, at no measured cost in throughput: the driver, which makes
//! most allocations, is one task anyway, and glibc's per-thread cache still serves small
//! allocations without the arena's lock.

/// Asks glibc for one arena unless the operator set `MALLOC_ARENA_MAX`, which glibc reads
/// itself and which then stands. Must run before the first thread is spawned: a thread
/// keeps the arena it was first given.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator parameters; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
