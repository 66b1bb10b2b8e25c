//! TLS 1.3 under the OAP/1 byte stream (spec section 7). The core never sees TLS: this
//! layer runs the handshake, maps its failures to closed reasons, and hands the driver a
//! `Wire` stream with what the handshake verified (`overlay_core::TlsSession`).
//!
//! `material` reads the files into rustls configs, `handshake` runs one handshake either
//! way, `classify` maps rustls errors, `wire` is the stream type both listeners share.

use std::sync::Arc;

use overlay_core::config::{Config, PqModeConfig};
use overlay_core::sync::Snapshot;

pub mod classify;
pub(crate) mod handshake;
pub mod material;
pub mod wire;

pub use material::{Material, MaterialError, ALPN};
pub use wire::Wire;

/// The node's TLS configs, swapped whole on SIGHUP: handshakes begun before a swap finish
/// with the configs they started with, and established sessions are not touched.
pub struct TlsContext {
    material: Snapshot<Material>,
    pq: PqModeConfig,
}

impl TlsContext {
    /// Also without any TLS configured (then it holds no configs): a reload may add trust
    /// roots for `tls://` peers later, and the dialers share this context.
    pub fn load(cfg: &Config) -> Result<Arc<TlsContext>, MaterialError> {
        Ok(Arc::new(TlsContext {
            material: Snapshot::new(Material::load(cfg)?),
            pq: cfg.overlay.pq_mode,
        }))
    }

    /// Rereads the files (SIGHUP). A file that cannot be used leaves the old configs in
    /// place; the error says which and why. `Ok(false)`: no TLS file is configured.
    pub fn reload(&self, cfg: &Config) -> Result<bool, MaterialError> {
        // The groups were fixed at start (pq_mode needs a restart): keep them.
        let mut cfg = cfg.clone();
        cfg.overlay.pq_mode = self.pq;
        let m = Material::load(&cfg)?;
        self.material.store(m);
        let t = &cfg.tls;
        Ok(!(t.cert_file.is_empty() && t.ca_file.is_empty() && t.client_ca_file.is_empty()))
    }

    pub fn hybrid(&self) -> bool {
        self.pq == PqModeConfig::Hybrid
    }

    /// What `pq_ready` reports: the listener's config loaded with the hybrid group.
    pub fn hybrid_ready(&self) -> bool {
        self.material.load().hybrid_ready
    }

    pub(crate) fn material(&self) -> Arc<Material> {
        self.material.load()
    }
}
