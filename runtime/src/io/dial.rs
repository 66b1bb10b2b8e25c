//! Executing the node's dials: one connect per `Dial` the core hands out (plain, or TLS for
//! a `tls://` peer, its certificate verified against the expected node id or host), within
//! `overlay.handshake_timeout`, and its outcome back to the driver. Which peer, which
//! address, when, and when again after a failure or a session's end are the core's
//! (`overlay_core::dialer`).

use std::sync::Arc;
use std::time::Duration;

use overlay_core::{Dial, PeerAddr, TlsSession};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::io::messages::Control;
use crate::io::net::{Net, Stream};
use crate::io::tls::handshake::Failed;
use crate::io::tls::{TlsContext, Wire};

/// Connects to `d.addr` for configured peer `d.peer` and reports the stream or the failure.
/// A TLS handshake that fails is reported twice: as a TLS failure (its reason counted) and
/// as a failed dial (retried).
pub(crate) async fn dial<N: Net>(
    net: N,
    d: Dial,
    ctl: mpsc::Sender<Control<N::Stream>>,
    connect_timeout: Duration,
    tls: Arc<TlsContext>,
) {
    // Validation refused anything else; a peer that cannot parse is dialed as plain.
    let peer = PeerAddr::parse(&d.peer).unwrap_or(PeerAddr {
        tls: false,
        name: None,
        host_port: &d.peer,
    });
    let opened = Instant::now();
    let error = match tokio::time::timeout(connect_timeout, net.connect(&d.addr)).await {
        Ok(Ok(stream)) => match secure(&peer, &tls, stream, connect_timeout).await {
            Ok((stream, tls)) => {
                let msg = Control::Connected {
                    stream,
                    dial: d,
                    tls,
                    opened,
                };
                // A driver that is gone no longer wants the outcome.
                let _ = ctl.send(msg).await;
                return;
            }
            Err((refusal, detail)) => {
                let error = format!("TLS: {detail}");
                let msg = Control::TlsFailed {
                    refusal,
                    peer_addr: d.addr.clone(),
                    inbound: false,
                    detail,
                };
                if ctl.send(msg).await.is_err() {
                    return;
                }
                error
            }
        },
        Ok(Err(e)) => e.to_string(),
        Err(_) => "connect timed out".into(),
    };
    let _ = ctl.send(Control::DialFailed { dial: d, error }).await;
}

/// The TLS handshake of a `tls://` peer; a plain peer's stream passes as it is.
async fn secure<S: Stream>(
    peer: &PeerAddr<'_>,
    tls: &TlsContext,
    stream: S,
    timeout: Duration,
) -> Result<(Wire<S>, Option<TlsSession>), Failed> {
    if !peer.tls {
        return Ok((Wire::Plain(stream), None));
    }
    let (w, s) = tls.connect(stream, peer.server_name(), timeout).await?;
    Ok((w, Some(s)))
}
