//! rustls errors mapped to the reasons of spec section 7, so every failed TLS handshake is
//! counted under a closed label set instead of a free-form error string.

use overlay_core::observe::TlsFailure;
use overlay_core::TlsRefusal;
use rustls::{AlertDescription, Error, PeerIncompatible};

/// `inbound`: we are the server (a certificate problem is then the client's: mTLS).
/// `hybrid`: `pq_mode = "hybrid"`, where a missing common group means no X25519MLKEM768.
pub fn refusal(e: &std::io::Error, inbound: bool, hybrid: bool) -> TlsRefusal {
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return TlsRefusal::Malformed;
    };
    let cert = if inbound {
        TlsRefusal::ClientCert
    } else {
        TlsRefusal::Tls(TlsFailure::Cert)
    };
    // An alert about certificates is the peer refusing ours: as the server, our server
    // certificate; as the dialer, our client certificate (mTLS).
    let ours_refused = if inbound {
        TlsRefusal::Tls(TlsFailure::Cert)
    } else {
        TlsRefusal::ClientCert
    };
    let group = if hybrid {
        TlsRefusal::PqIncompatible
    } else {
        TlsRefusal::Tls(TlsFailure::Cipher)
    };
    match err {
        Error::PeerIncompatible(p) => match p {
            PeerIncompatible::NoKxGroupsInCommon
            | PeerIncompatible::KeyShareExtensionRequired
            | PeerIncompatible::NamedGroupsExtensionRequired => group,
            PeerIncompatible::NoCipherSuitesInCommon
            | PeerIncompatible::NoSignatureSchemesInCommon
            | PeerIncompatible::NoCertificateRequestSignatureSchemesInCommon => {
                TlsRefusal::Tls(TlsFailure::Cipher)
            }
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => {
                TlsRefusal::Tls(TlsFailure::Version)
            }
            _ => TlsRefusal::Malformed,
        },
        Error::NoApplicationProtocol => TlsRefusal::Tls(TlsFailure::Alpn),
        Error::NoCertificatesPresented | Error::InvalidCertificate(_) => cert,
        Error::AlertReceived(a) => match a {
            AlertDescription::ProtocolVersion => TlsRefusal::Tls(TlsFailure::Version),
            AlertDescription::NoApplicationProtocol => TlsRefusal::Tls(TlsFailure::Alpn),
            AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => group,
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired => ours_refused,
            _ => TlsRefusal::Malformed,
        },
        _ => TlsRefusal::Malformed,
    }
}
