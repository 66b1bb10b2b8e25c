//! The TLS listener's threads of its own, beside the runtime that serves sessions: one for
//! its handshakes, one for its acceptor.
//!
//! A handshake's crypto (key exchange, certificate signature) runs without yielding, and a
//! burst of admitted handshakes (up to `overlay.handshake_burst` at once) queued on the
//! session runtime's workers would hold the driver and every session's reader and writer
//! behind it for as long as their crypto takes: hundreds of milliseconds on two cores. On
//! a thread of its own it is the kernel that shares the CPU, and the driver, mostly asleep,
//! is woken promptly.
//!
//! The acceptor's work under a flood is small per connection (an accept and a close) but
//! comes 10,000 times a second: on a session worker, a delivery that becomes ready while
//! the worker is in a batch of accepts waits behind the batch. On a thread of its own the
//! kernel preempts it for the sessions instead; it keeps the default priority so that it
//! still empties the kernel backlog faster than a flood fills it.

use std::io;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::bounds::{ACCEPT_NICE, HANDSHAKE_NICE, HANDSHAKE_THREADS};

/// A one-thread runtime of its own (`start` for handshakes, `acceptor` for the acceptor).
pub(crate) struct HandshakePool(Option<Runtime>);

impl HandshakePool {
    pub(crate) fn start() -> io::Result<HandshakePool> {
        Self::build("svc-tls-handshake", HANDSHAKE_THREADS, HANDSHAKE_NICE)
    }

    pub(crate) fn acceptor() -> io::Result<HandshakePool> {
        Self::build("svc-tls-accept", 1, ACCEPT_NICE)
    }

    fn build(name: &'static str, threads: usize, nice: libc::c_int) -> io::Result<Self> {
        let rt = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .on_thread_start(move || set_nice(nice))
            .enable_all()
            .build()?;
        Ok(HandshakePool(Some(rt)))
    }

    pub(crate) fn handle(&self) -> &Handle {
        self.0.as_ref().expect("taken only on drop").handle()
    }
}

/// Lowers the handshake thread's scheduling priority, so that when the cores are busy the
/// kernel runs the driver and the sessions first and a flood's admitted handshakes take
/// what is left: the crypto of a new connection can wait a few milliseconds, an
/// established session's delivery should not.
fn set_nice(nice: libc::c_int) {
    #[cfg(target_os = "linux")]
    if nice != 0 {
        // SAFETY: gettid and setpriority take no pointers; on Linux a tid names one
        // thread, so only this thread's nice value changes. A failure leaves it as it was.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
}

impl Drop for HandshakePool {
    fn drop(&mut self) {
        // Dropped by the acceptor, on the session runtime, where waiting for the threads
        // to end is not allowed: the handshakes still running end with their runtime.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
