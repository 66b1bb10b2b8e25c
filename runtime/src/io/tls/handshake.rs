//! One TLS handshake, accepted or dialed, bounded by `overlay.handshake_timeout`, and what
//! it verified: the negotiated group and the peer certificate's SAN names.

use std::time::Duration;

use overlay_core::observe::TlsFailure;
use overlay_core::{CertName, TlsRefusal, TlsSession};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CommonState, NamedGroup};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{classify, TlsContext, Wire, ALPN};
use crate::io::net::Stream;

/// A failed handshake: its reason and a detail for the log.
pub(crate) type Failed = (TlsRefusal, String);

fn group_name(g: NamedGroup) -> &'static str {
    match g {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
        NamedGroup::X25519 => "X25519",
        NamedGroup::secp256r1 => "secp256r1",
        NamedGroup::secp384r1 => "secp384r1",
        _ => "other",
    }
}

/// The SAN names of a certificate rustls has verified (DNS and URI; nothing else can name
/// a node id under spec section 7).
fn san_names(der: &CertificateDer<'_>) -> Vec<CertName> {
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(CertName::Dns(d.to_string())),
            GeneralName::URI(u) => Some(CertName::Uri(u.to_string())),
            _ => None,
        })
        .collect()
}

/// ALPN is required: rustls lets a client that offers none through, spec section 7 does not.
fn session(conn: &CommonState, peer_names: bool) -> Result<TlsSession, Failed> {
    if conn.alpn_protocol() != Some(ALPN) {
        return Err((
            TlsRefusal::Tls(TlsFailure::Alpn),
            "peer did not negotiate ALPN oap/1".into(),
        ));
    }
    let group = conn
        .negotiated_key_exchange_group()
        .map(|g| g.name())
        .ok_or((TlsRefusal::Malformed, "no key exchange group".to_string()))?;
    Ok(TlsSession {
        group: group_name(group),
        hybrid: group == NamedGroup::X25519MLKEM768,
        peer_names: peer_names.then(|| {
            conn.peer_certificates()
                .and_then(|c| c.first())
                .map(san_names)
                .unwrap_or_default()
        }),
    })
}

impl TlsContext {
    /// Server side, on a connection the TLS listener accepted.
    pub(crate) async fn accept<S: Stream>(
        &self,
        stream: S,
        timeout: Duration,
    ) -> Result<(Wire<S>, TlsSession), Failed> {
        let m = self.material();
        let Some(sc) = m.server.clone() else {
            return Err((TlsRefusal::Malformed, "no TLS listener config".into()));
        };
        // With a client CA every client has a verified certificate, and the HELLO's node
        // id must be among its names.
        let mtls = m.mtls;
        let s = match tokio::time::timeout(timeout, TlsAcceptor::from(sc).accept(stream)).await {
            Err(_) => return Err((TlsRefusal::Timeout, "TLS handshake timed out".into())),
            Ok(Err(e)) => return Err((classify::refusal(&e, true, self.hybrid()), e.to_string())),
            Ok(Ok(s)) => s,
        };
        let info = session(s.get_ref().1, mtls)?;
        Ok((Wire::Tls(Box::new(s.into())), info))
    }

    /// Client side, to a `tls://` peer whose certificate must name `server_name`.
    pub(crate) async fn connect<S: Stream>(
        &self,
        stream: S,
        server_name: &str,
        timeout: Duration,
    ) -> Result<(Wire<S>, TlsSession), Failed> {
        let m = self.material();
        let Some(cc) = m.client.clone() else {
            return Err((
                TlsRefusal::Tls(TlsFailure::Cert),
                "tls.ca_file not loaded".into(),
            ));
        };
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
            (
                TlsRefusal::Tls(TlsFailure::Cert),
                format!("{server_name:?}: {e}"),
            )
        })?;
        let fut = TlsConnector::from(cc).connect(name, stream);
        let s = match tokio::time::timeout(timeout, fut).await {
            Err(_) => return Err((TlsRefusal::Timeout, "TLS handshake timed out".into())),
            Ok(Err(e)) => return Err((classify::refusal(&e, false, self.hybrid()), e.to_string())),
            Ok(Ok(s)) => s,
        };
        let info = session(s.get_ref().1, false)?;
        Ok((Wire::Tls(Box::new(s.into())), info))
    }
}
