//! Executing the node's dials: one connect per `Dial` the core hands out, within
//! `overlay.handshake_timeout`, and its outcome back to the driver. Which peer, which
//! address, when, and when again after a failure or a session's end are the core's
//! (`overlay_core::dialer`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::io::messages::Control;
use crate::io::net::Net;

/// Connects to `addr` for configured peer `peer` and reports the stream or the failure.
pub(crate) async fn dial<N: Net>(
    net: N,
    peer: Arc<str>,
    addr: String,
    ctl: mpsc::Sender<Control<N::Stream>>,
    connect_timeout: Duration,
) {
    let msg = match tokio::time::timeout(connect_timeout, net.connect(&addr)).await {
        Ok(Ok(stream)) => Control::Connected { stream, peer, addr },
        Ok(Err(e)) => Control::DialFailed {
            peer,
            addr,
            error: e.to_string(),
        },
        Err(_) => Control::DialFailed {
            peer,
            addr,
            error: "connect timed out".into(),
        },
    };
    // A driver that is gone no longer wants the outcome.
    let _ = ctl.send(msg).await;
}
