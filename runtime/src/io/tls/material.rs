//! The TLS files read and turned into rustls configs: fail closed at start (a key others
//! can read, a certificate that does not parse or does not match its key), and on reload
//! report why a new file is refused so the caller can keep the old configs.

use std::path::Path;
use std::sync::Arc;

use overlay_core::config::{Config, PqModeConfig};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, NamedGroup, RootCertStore, ServerConfig};

/// The only application protocol spoken over TLS (spec section 7).
pub const ALPN: &[u8] = b"oap/1";

/// A TLS file that cannot be used, and why; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{key} {file}: {why}")]
pub struct MaterialError {
    pub key: &'static str,
    pub file: String,
    pub why: String,
}

fn err(key: &'static str, file: &str, why: impl std::fmt::Display) -> MaterialError {
    MaterialError {
        key,
        file: file.to_string(),
        why: why.to_string(),
    }
}

/// rustls configs built from the files, for the listener and for dialing `tls://` peers.
pub struct Material {
    pub server: Option<Arc<ServerConfig>>,
    pub client: Option<Arc<ClientConfig>>,
    /// The listener requires client certificates (`tls.client_ca_file`).
    pub mtls: bool,
    /// The server offers X25519MLKEM768 (what `pq_ready` reports under hybrid).
    pub hybrid_ready: bool,
}

/// The key exchange groups of `pq_mode`: hybrid offers and accepts only X25519MLKEM768, so
/// a classical-only peer fails the handshake instead of silently downgrading.
pub fn provider(pq: PqModeConfig) -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = match pq {
        PqModeConfig::Hybrid => vec![aws_lc_rs::kx_group::X25519MLKEM768],
        PqModeConfig::Off => vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1],
    };
    Arc::new(p)
}

fn certs(key: &'static str, file: &str) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let pem = std::fs::read(file).map_err(|e| err(key, file, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, file, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err(key, file, "holds no certificate"));
    }
    Ok(certs)
}

fn roots(key: &'static str, file: &str) -> Result<Arc<RootCertStore>, MaterialError> {
    let mut store = RootCertStore::empty();
    for c in certs(key, file)? {
        store
            .add(c)
            .map_err(|e| err(key, file, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// The private key, refused if group or others may read it: a key others can read is a
/// key that may already be copied, and serving with it would hide that.
fn private_key(file: &str) -> Result<PrivateKeyDer<'static>, MaterialError> {
    const KEY: &str = "tls.key_file";
    let meta = std::fs::metadata(file).map_err(|e| err(KEY, file, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            return Err(err(
                KEY,
                file,
                format!("is readable by group or others (mode {mode:o}); chmod 600 it"),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    PrivateKeyDer::from_pem_file(Path::new(file))
        .map_err(|e| err(KEY, file, format!("no PEM private key: {e}")))
}

impl Material {
    /// Reads every configured TLS file; the first that cannot be used fails the whole load.
    pub fn load(cfg: &Config) -> Result<Material, MaterialError> {
        let t = &cfg.tls;
        let p = provider(cfg.overlay.pq_mode);
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let identity = if t.cert_file.is_empty() {
            None
        } else {
            Some((
                certs("tls.cert_file", &t.cert_file)?,
                private_key(&t.key_file)?,
            ))
        };
        let mut server = None;
        if let (false, Some((chain, key))) = (cfg.overlay.tls_listen.is_empty(), &identity) {
            let b = ServerConfig::builder_with_provider(p.clone())
                .with_protocol_versions(versions)
                .map_err(|e| err("tls.cert_file", &t.cert_file, e))?;
            let b = if t.client_ca_file.is_empty() {
                b.with_no_client_auth()
            } else {
                let v = WebPkiClientVerifier::builder_with_provider(
                    roots("tls.client_ca_file", &t.client_ca_file)?,
                    p.clone(),
                )
                .build()
                .map_err(|e| err("tls.client_ca_file", &t.client_ca_file, e))?;
                b.with_client_cert_verifier(v)
            };
            let mut sc = b
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    err(
                        "tls.key_file",
                        &t.key_file,
                        format!("does not fit tls.cert_file: {e}"),
                    )
                })?;
            sc.alpn_protocols = vec![ALPN.to_vec()];
            server = Some(Arc::new(sc));
        }
        let mut client = None;
        if !t.ca_file.is_empty() {
            let b = ClientConfig::builder_with_provider(p.clone())
                .with_protocol_versions(versions)
                .map_err(|e| err("tls.ca_file", &t.ca_file, e))?
                .with_root_certificates(roots("tls.ca_file", &t.ca_file)?);
            // Our certificate doubles as the client certificate, for peers that require mTLS.
            let mut cc = match identity {
                Some((chain, key)) => b
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| err("tls.key_file", &t.key_file, e))?,
                None => b.with_no_client_auth(),
            };
            cc.alpn_protocols = vec![ALPN.to_vec()];
            client = Some(Arc::new(cc));
        }
        let hybrid_ready = server.is_some()
            && p.kx_groups
                .iter()
                .any(|g| g.name() == NamedGroup::X25519MLKEM768);
        Ok(Material {
            mtls: server.is_some() && !t.client_ca_file.is_empty(),
            server,
            client,
            hybrid_ready,
        })
    }
}
