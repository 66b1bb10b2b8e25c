//! The logger: a bus subscriber that turns overlay events into log lines. Error events
//! that repeat (handshake floods, reject storms) are sampled 1:N per (event, reason);
//! the counters in core still count every one.

use std::sync::Arc;

use overlay_core::Event;

use crate::bus::{BusEvent, BusKind, Subscription};
use crate::logging::{truncate, LogPolicy, Sampler};

pub(crate) async fn run(mut sub: Subscription, policy: Arc<LogPolicy>) {
    let mut sampler = Sampler::default();
    while let Some(ev) = sub.recv().await {
        log_event(&ev, &policy, &mut sampler);
    }
}

pub(crate) fn log_event(ev: &BusEvent, policy: &LogPolicy, sampler: &mut Sampler) {
    let node = &*ev.node;
    let (corr_id, dir, peer_addr, latency_ms) = match &ev.ctx {
        Some(c) => (
            c.corr_id.as_str(),
            c.dir(),
            // Omitted (not blanked) when policy forbids it.
            policy.peer_addr().then_some(c.peer_addr.as_str()),
            c.opened.elapsed().as_millis() as u64,
        ),
        None => ("", "", None, 0),
    };
    let every = policy.sample_every();
    match &ev.kind {
        BusKind::Accepted => {
            tracing::info!(event = "accept", node, corr_id, dir, peer_addr);
        }
        BusKind::Connected => {
            tracing::info!(event = "connect", node, corr_id, dir, peer_addr);
        }
        BusKind::DialFailed { addr, error } => {
            if let Some(suppressed) = sampler.admit(every, "dial_fail", "connect") {
                let addr = policy.peer_addr().then_some(addr.as_str());
                tracing::warn!(event = "dial_fail", reason = "connect", node, peer_addr = addr,
                    error = %truncate(error.clone()), suppressed);
            }
        }
        BusKind::Overlay(e) => match e {
            Event::HandshakeStarted { .. } => {
                tracing::info!(event = "handshake_start", node, corr_id, dir, peer_addr);
            }
            Event::HandshakeOk {
                role, node: peer, ..
            } => {
                let peer_id = policy.peer_addr().then_some(peer.as_str());
                tracing::info!(
                    event = "handshake_ok",
                    node,
                    corr_id,
                    dir,
                    peer_addr,
                    peer_id,
                    role = role.as_str(),
                    latency_ms
                );
            }
            Event::HandshakeFailed {
                reason,
                reject,
                code,
                detail,
                ..
            } => {
                // The handshake label where there is one, else the reject reason: both
                // are metric label values.
                let reason = reason
                    .map(|r| r.as_str())
                    .or(reject.map(|r| r.as_str()))
                    .unwrap_or("refused");
                if let Some(suppressed) = sampler.admit(every, "handshake_fail", reason) {
                    tracing::warn!(event = "handshake_fail", reason, node, corr_id, dir,
                        peer_addr, code, latency_ms, detail = %truncate(detail.clone()),
                        suppressed);
                }
            }
            Event::Rejected {
                reason,
                frames,
                detail,
                ..
            } => {
                let reason = reason.as_str();
                if let Some(suppressed) = sampler.admit(every, "reject", reason) {
                    tracing::warn!(event = "reject", reason, node, corr_id, dir, peer_addr,
                        frames, detail = %truncate(detail.clone()), suppressed);
                }
            }
            Event::Closed { reason, .. } => {
                tracing::info!(
                    event = "close",
                    reason = reason.as_str(),
                    node,
                    corr_id,
                    dir,
                    peer_addr,
                    latency_ms
                );
            }
            Event::Abort { .. } => {
                if let Some(suppressed) = sampler.admit(every, "abort", "write_timeout") {
                    tracing::warn!(
                        event = "abort",
                        reason = "write_timeout",
                        node,
                        corr_id,
                        dir,
                        peer_addr,
                        suppressed
                    );
                }
            }
            Event::PeerDraining { .. } => {
                tracing::info!(event = "peer_draining", node, corr_id, dir, peer_addr);
            }
            Event::ReadinessChanged { state, missing } => {
                tracing::info!(event = "readyz_change", node, state = state.as_str(),
                    missing = %missing.join(","));
            }
            Event::Message { message, .. } => {
                // Never the payload: its size and topic only.
                tracing::debug!(
                    event = "message",
                    node,
                    corr_id,
                    topic = message.header.topic_str(),
                    bytes = message.data.len() as u64
                );
            }
            Event::Ack { code, .. } => {
                tracing::debug!(event = "ack", node, corr_id, code);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::ConnCtx;
    use crate::logging::tests::capture;
    use overlay_core::observe::HandshakeFailure;
    use overlay_core::{ConnId, RejectReason};

    fn ev(kind: BusKind) -> BusEvent {
        BusEvent {
            node: Arc::from("n1"),
            ctx: Some(Arc::new(ConnCtx {
                conn: ConnId(3),
                corr_id: "01CORR".into(),
                peer_addr: "10.1.2.3:5555".into(),
                inbound: true,
                opened: tokio::time::Instant::now(),
            })),
            kind,
        }
    }

    fn policy(peer_addr: bool, sample_every: u32) -> Arc<LogPolicy> {
        LogPolicy::new(&overlay_core::config::LogConfig {
            peer_addr,
            sample_every,
            ..Default::default()
        })
    }

    #[test]
    fn rejects_are_sampled_per_reason_with_labels_as_reasons() {
        let (cap, sub) = capture(true);
        let p = policy(true, 10);
        let mut s = Sampler::default();
        tracing::subscriber::with_default(sub, || {
            for _ in 0..25 {
                let e = Event::Rejected {
                    conn: ConnId(3),
                    reason: RejectReason::Oversize,
                    corr_id: 0,
                    app_proto: 1,
                    frames: 1,
                    detail: "too big".into(),
                };
                log_event(&ev(BusKind::Overlay(e)), &p, &mut s);
            }
            let e = Event::HandshakeFailed {
                conn: ConnId(3),
                corr_id: 1,
                reason: Some(HandshakeFailure::Timeout),
                reject: Some(overlay_core::RejectReason::Timeout),
                code: 408,
                detail: "slow".into(),
            };
            log_event(&ev(BusKind::Overlay(e)), &p, &mut s);
        });
        let lines = cap.lines();
        let rejects: Vec<_> = lines.iter().filter(|l| l["event"] == "reject").collect();
        assert_eq!(rejects.len(), 3, "1st, 11th, 21st");
        assert_eq!(rejects[0]["reason"], "oversize");
        assert_eq!(rejects[0]["suppressed"], 0);
        assert_eq!(rejects[1]["suppressed"], 9);
        assert_eq!(rejects[0]["corr_id"], "01CORR");
        assert_eq!(rejects[0]["peer_addr"], "10.1.2.3:5555");
        let hs: Vec<_> = lines
            .iter()
            .filter(|l| l["event"] == "handshake_fail")
            .collect();
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0]["reason"], "timeout");
        assert_eq!(hs[0]["level"], "WARN");
    }

    #[test]
    fn peer_addr_and_peer_id_follow_policy() {
        let (cap, sub) = capture(true);
        let p = policy(false, 1);
        let mut s = Sampler::default();
        tracing::subscriber::with_default(sub, || {
            log_event(&ev(BusKind::Accepted), &p, &mut s);
            let e = Event::HandshakeOk {
                conn: ConnId(3),
                corr_id: 1,
                inbound: true,
                role: overlay_core::oap::Role::Peer,
                node: "node-10.1.2.3:5555".into(),
            };
            log_event(&ev(BusKind::Overlay(e)), &p, &mut s);
        });
        let text = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("\"event\":\"accept\""), "{text}");
        assert!(text.contains("\"event\":\"handshake_ok\""), "{text}");
        assert!(!text.contains("10.1.2.3"), "{text}");
    }

    #[test]
    fn messages_never_log_payloads() {
        let (cap, sub) = capture(true);
        let p = policy(true, 1);
        let mut s = Sampler::default();
        let header = overlay_core::oap::GossipHeader::new([7; 16], 3, "feed").unwrap();
        let message = overlay_core::oap::Message {
            corr_id: 1,
            tenant_id: 0,
            header,
            data: bytes::Bytes::from_static(b"TOP-SECRET-PAYLOAD"),
            ack_req: false,
            frames: 1,
        };
        tracing::subscriber::with_default(sub, || {
            log_event(
                &ev(BusKind::Overlay(Event::Message {
                    from: Some(ConnId(3)),
                    message,
                })),
                &p,
                &mut s,
            );
        });
        let text = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("\"bytes\":18"), "{text}");
        assert!(!text.contains("TOP-SECRET"), "{text}");
    }
}
