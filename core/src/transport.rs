//! What the runtime tells the node about the transport a connection arrived on: plain TCP,
//! or TLS with what the handshake verified. The core never runs TLS; it decides with these
//! facts (the mTLS identity check at HELLO, the PQ negotiation count, the latency label).

use crate::observe::{HandshakeFailure, PqOutcome, TlsFailure, Transport};
use crate::time::Time;

/// A configured peer: `host:port`, `tls://host:port` or `tls://node-id@host:port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr<'a> {
    pub tls: bool,
    /// The node id its certificate must carry (else the host name is checked).
    pub name: Option<&'a str>,
    /// What to connect to.
    pub host_port: &'a str,
}

impl<'a> PeerAddr<'a> {
    pub fn parse(s: &'a str) -> Option<PeerAddr<'a>> {
        let Some(rest) = s.strip_prefix("tls://") else {
            return Some(PeerAddr {
                tls: false,
                name: None,
                host_port: s,
            });
        };
        let (name, host_port) = match rest.split_once('@') {
            Some((n, hp)) => (Some(n), hp),
            None => (None, rest),
        };
        (!host_port.is_empty()).then_some(PeerAddr {
            tls: true,
            name,
            host_port,
        })
    }

    /// The name the peer's certificate must match: the expected node id, else the host.
    pub fn server_name(&self) -> &'a str {
        self.name.unwrap_or_else(|| {
            let host = self
                .host_port
                .rsplit_once(':')
                .map_or(self.host_port, |(h, _)| h);
            host.trim_start_matches('[').trim_end_matches(']')
        })
    }
}

/// A name from a verified certificate's subject alternative names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertName {
    /// `DNS:<name>`
    Dns(String),
    /// `URI:<uri>`
    Uri(String),
}

impl CertName {
    /// Spec section 7: a node id is carried as `DNS:<id>` or `URI:oap://<id>`.
    pub fn names_node(&self, node: &str) -> bool {
        match self {
            CertName::Dns(n) => n == node,
            CertName::Uri(u) => u.strip_prefix("oap://") == Some(node),
        }
    }
}

/// A TLS session as the handshake left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSession {
    /// The key exchange group negotiated (e.g. `X25519MLKEM768`), for logs.
    pub group: &'static str,
    /// Whether that group is the post-quantum hybrid.
    pub hybrid: bool,
    /// SAN names of the peer's certificate, verified against the trust roots; `None` when
    /// the peer presented none (no mTLS on this listener).
    pub peer_names: Option<Vec<CertName>>,
}

/// How a connection reached the node, handed over with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// When the connection was accepted or dialed, before any TLS handshake: the handshake
    /// latency is measured from here.
    pub opened: Time,
    pub tls: Option<TlsSession>,
    /// Set when `Overlay::handle_incoming` admitted the connection before its TLS
    /// handshake: its HELLO is not charged to the handshake rate limit a second time.
    pub prepaid: Option<Prepaid>,
}

impl Link {
    pub fn tcp(opened: Time) -> Link {
        Link {
            opened,
            tls: None,
            prepaid: None,
        }
    }

    pub fn transport(&self) -> Transport {
        if self.tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        }
    }
}

/// What `Overlay::handle_incoming` decided for a connection nothing has been read from yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go on with the handshake; hand the `Prepaid` back in the connection's `Link`.
    Admit(Prepaid),
    /// Over the handshake rate limit: close it without reading from it (no TLS work),
    /// already counted.
    Refuse,
}

/// Proof that a connection's handshake was charged to the rate limit when it arrived. Only
/// the core makes one, so a runtime cannot exempt a connection it did not ask about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepaid(());

impl Prepaid {
    pub(crate) fn new() -> Prepaid {
        Prepaid(())
    }
}

/// Why a TLS handshake failed, as the runtime classified the TLS library's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRefusal {
    /// Version, ALPN, cipher suite or group, or the peer's server certificate.
    Tls(TlsFailure),
    /// The client certificate was missing or not verified (mTLS).
    ClientCert,
    /// `pq_mode = "hybrid"` and the peer offered no X25519MLKEM768.
    PqIncompatible,
    /// Not finished within `overlay.handshake_timeout`.
    Timeout,
    /// Not TLS, or TLS broken off: nothing the spec's TLS reasons name.
    Malformed,
}

impl TlsRefusal {
    /// Its `tls_handshake_failures_total` reason, if it has one.
    pub fn tls_reason(self) -> Option<TlsFailure> {
        match self {
            TlsRefusal::Tls(r) => Some(r),
            TlsRefusal::ClientCert => Some(TlsFailure::Cert),
            // No shared group: the TLS-level reason, with the PQ outcome on top.
            TlsRefusal::PqIncompatible => Some(TlsFailure::Cipher),
            TlsRefusal::Timeout | TlsRefusal::Malformed => None,
        }
    }

    /// Its `overlay_handshake_failures_total` reason.
    pub fn handshake_reason(self) -> HandshakeFailure {
        match self {
            TlsRefusal::Tls(_) => HandshakeFailure::Tls,
            TlsRefusal::ClientCert => HandshakeFailure::Mtls,
            TlsRefusal::PqIncompatible => HandshakeFailure::PqNegFail,
            TlsRefusal::Timeout => HandshakeFailure::Timeout,
            TlsRefusal::Malformed => HandshakeFailure::Proto,
        }
    }

    /// The PQ outcome it stands for, if any.
    pub fn pq_outcome(self) -> Option<PqOutcome> {
        (self == TlsRefusal::PqIncompatible).then_some(PqOutcome::Incompatible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_name_what_the_certificate_must_carry() {
        let p = PeerAddr::parse("tls://n2@10.0.0.2:9445").unwrap();
        assert_eq!(
            (p.tls, p.host_port, p.server_name()),
            (true, "10.0.0.2:9445", "n2")
        );
        let p = PeerAddr::parse("tls://peer.example:9445").unwrap();
        assert_eq!((p.tls, p.server_name()), (true, "peer.example"));
        let p = PeerAddr::parse("tls://[::1]:9445").unwrap();
        assert_eq!(p.server_name(), "::1");
        let p = PeerAddr::parse("10.0.0.2:9444").unwrap();
        assert_eq!((p.tls, p.name, p.host_port), (false, None, "10.0.0.2:9444"));
        assert!(PeerAddr::parse("tls://").is_none());
        assert!(PeerAddr::parse("tls://n2@").is_none());
    }
}
