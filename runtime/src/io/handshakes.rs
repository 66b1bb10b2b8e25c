//! Where the TLS listener's handshakes run: on a runtime of their own, one thread, beside
//! the one that serves sessions. A handshake's crypto (key exchange, certificate
//! signature) runs without yielding, and a burst of admitted handshakes (up to
//! `overlay.handshake_burst` at once) queued on the session runtime's workers would hold
//! the driver and every session's reader and writer behind it for as long as their crypto
//! takes: hundreds of milliseconds on two cores. On a thread of its own it is the kernel
//! that shares the CPU, and the driver, mostly asleep, is woken promptly.

use std::io;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::bounds::{HANDSHAKE_NICE, HANDSHAKE_THREADS};

pub(crate) struct HandshakePool(Option<Runtime>);

impl HandshakePool {
    pub(crate) fn start() -> io::Result<HandshakePool> {
        let rt = Builder::new_multi_thread()
            .worker_threads(HANDSHAKE_THREADS)
            .thread_name("svc-tls-handshake")
            .on_thread_start(yield_to_sessions)
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
fn yield_to_sessions() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; on Linux a tid names one
        // thread, so only this thread's nice value changes. A failure leaves it as it was.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, HANDSHAKE_NICE);
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
