//! The logger: a bus subscriber that turns overlay events into log lines. Events that come
//! once per connection or per refusal (accepts, handshakes, closes, rejects, dial failures)
//! are sampled by time per (event, reason), at most `log.max_lines_per_sec` lines a second
//! each, with a `suppressed` count; the counters in core still count every one.
//!
//! Long because: one match maps every overlay event to its line, and half of the file is
//! the tests that pin each line's fields.

use std::sync::Arc;
use std::time::Instant;

use overlay_core::Event;

use crate::telemetry::bus::{BusEvent, BusKind, Subscription};
use crate::telemetry::logging::{truncate, LogPolicy};
use crate::telemetry::sampler::{Sampler, SAMPLE_WINDOW};

/// Event kinds logged at WARN: their held-back counts are told at WARN too.
const WARN_KINDS: [&str; 5] = [
    "handshake_fail",
    "reject",
    "abort",
    "dial_fail",
    "resolve_fail",
];

pub(crate) async fn run(mut sub: Subscription, policy: Arc<LogPolicy>) {
    let mut sampler = Sampler::default();
    let mut node: Arc<str> = Arc::from("");
    let mut flush = tokio::time::interval(SAMPLE_WINDOW);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = sub.recv() => match ev {
                Some(ev) => {
                    node = ev.node.clone();
                    log_event(&ev, &policy, &mut sampler);
                }
                None => break,
            },
            _ = flush.tick() => log_suppressed(&node, &mut sampler, Instant::now()),
        }
    }
    log_suppressed(&node, &mut sampler, Instant::now() + SAMPLE_WINDOW);
}

/// One line per event kind whose window ended with occurrences held back, so the tail of
/// a burst is told even if no line of that kind follows.
pub(crate) fn log_suppressed(node: &str, sampler: &mut Sampler, now: Instant) {
    for (kind, reason, suppressed) in sampler.flush(now) {
        if WARN_KINDS.contains(&kind) {
            tracing::warn!(event = "log_suppressed", kind, reason, node, suppressed);
        } else {
            tracing::info!(event = "log_suppressed", kind, reason, node, suppressed);
        }
    }
}

pub(crate) fn log_event(ev: &BusEvent, policy: &LogPolicy, sampler: &mut Sampler) {
    log_event_at(Instant::now(), ev, policy, sampler)
}

pub(crate) fn log_event_at(now: Instant, ev: &BusEvent, policy: &LogPolicy, sampler: &mut Sampler) {
    let node = &*ev.node;
    let tls_group = ev.ctx.as_ref().and_then(|c| c.tls_group);
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
    let cap_id = ev.ctx.as_ref().and_then(|c| c.cap_id.as_deref());
    let per_sec = policy.max_lines_per_sec();
    // `Some(held back since the last line, if any)` when this occurrence gets a line.
    let mut admit = |event: &'static str, reason: &'static str| {
        sampler
            .admit(now, per_sec, event, reason)
            .map(|n| (n > 0).then_some(n))
    };
    match &ev.kind {
        BusKind::Accepted => {
            if let Some(suppressed) = admit("accept", "") {
                tracing::info!(
                    event = "accept",
                    node,
                    corr_id,
                    dir,
                    peer_addr,
                    tls_group,
                    suppressed
                );
            }
        }
        BusKind::Connected => {
            if let Some(suppressed) = admit("connect", "") {
                tracing::info!(
                    event = "connect",
                    node,
                    corr_id,
                    dir,
                    peer_addr,
                    tls_group,
                    suppressed
                );
            }
        }
        BusKind::TlsFailed {
            peer_addr: addr,
            inbound,
            reason,
            tls_reason,
            detail,
        } => {
            if let Some(suppressed) = admit("handshake_fail", reason.as_str()) {
                let addr = policy.peer_addr().then_some(addr.as_str());
                tracing::warn!(event = "handshake_fail", reason = reason.as_str(), node,
                    dir = if *inbound { "in" } else { "out" }, peer_addr = addr,
                    tls_reason = tls_reason.map(|r| r.as_str()), detail = %truncate(detail.clone()),
                    suppressed);
            }
        }
        BusKind::DialFailed {
            addr,
            error,
            failures,
        } => {
            // Under backoff a dead peer fails at most every `overlay.dial_backoff_max`, far
            // below the line budget: a persistent fault stays visible, with its count.
            if let Some(suppressed) = admit("dial_fail", "connect") {
                let addr = policy.peer_addr().then_some(addr.as_str());
                tracing::warn!(event = "dial_fail", reason = "connect", node, peer_addr = addr,
                    error = %truncate(error.clone()), failures, suppressed);
            }
        }
        BusKind::ResolveFailed {
            name,
            error,
            failures,
        } => {
            // One lookup per name per `overlay.peer_resolve_interval`: a DNS outage logs
            // one line a name an interval, with its count in a row.
            if let Some(suppressed) = admit("resolve_fail", "lookup") {
                let name = policy.peer_addr().then_some(name.as_str());
                tracing::warn!(event = "resolve_fail", reason = "lookup", node, peer_name = name,
                    error = %truncate(error.clone()), failures, suppressed);
            }
        }
        BusKind::Resolved { name, addrs } => {
            if policy.peer_addr() {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                tracing::info!(event = "peer_resolved", node, peer_name = name.as_str(),
                    addrs = %truncate(addrs.join(",")), count = addrs.len());
            } else {
                tracing::info!(event = "peer_resolved", node, count = addrs.len());
            }
        }
        BusKind::Overlay(e) => match e {
            Event::HandshakeStarted { .. } => {
                if let Some(suppressed) = admit("handshake_start", "") {
                    tracing::info!(
                        event = "handshake_start",
                        node,
                        corr_id,
                        dir,
                        peer_addr,
                        suppressed
                    );
                }
            }
            Event::HandshakeOk {
                role, node: peer, ..
            } => {
                let peer_id = policy.peer_addr().then_some(peer.as_str());
                if let Some(suppressed) = admit("handshake_ok", role.as_str()) {
                    tracing::info!(
                        event = "handshake_ok",
                        node,
                        corr_id,
                        dir,
                        peer_addr,
                        peer_id,
                        role = role.as_str(),
                        cap_id,
                        tls_group,
                        latency_ms,
                        suppressed
                    );
                }
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
                if let Some(suppressed) = admit("handshake_fail", reason) {
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
                if let Some(suppressed) = admit("reject", reason) {
                    tracing::warn!(event = "reject", reason, node, corr_id, dir, peer_addr,
                        cap_id, frames, detail = %truncate(detail.clone()), suppressed);
                }
            }
            Event::Closed { reason, .. } => {
                if let Some(suppressed) = admit("close", reason.as_str()) {
                    tracing::info!(
                        event = "close",
                        reason = reason.as_str(),
                        node,
                        corr_id,
                        dir,
                        peer_addr,
                        cap_id,
                        latency_ms,
                        suppressed
                    );
                }
            }
            Event::Abort { .. } => {
                if let Some(suppressed) = admit("abort", "write_timeout") {
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
                if let Some(suppressed) = admit("peer_draining", "") {
                    tracing::info!(
                        event = "peer_draining",
                        node,
                        corr_id,
                        dir,
                        peer_addr,
                        suppressed
                    );
                }
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
    use crate::telemetry::bus::ConnCtx;
    use crate::telemetry::logging::tests::capture;
    use overlay_core::observe::HandshakeFailure;
    use overlay_core::{ConnId, RejectReason};
    use std::time::Duration;

    fn ev(kind: BusKind) -> BusEvent {
        BusEvent {
            node: Arc::from("n1"),
            ctx: Some(Arc::new(ConnCtx {
                conn: ConnId(3),
                corr_id: "01CORR".into(),
                peer_addr: "10.1.2.3:5555".into(),
                inbound: true,
                opened: tokio::time::Instant::now(),
                cap_id: Some("cap:feed:write".into()),
                tls_group: None,
            })),
            kind,
        }
    }

    fn policy(peer_addr: bool, max_lines_per_sec: u32) -> Arc<LogPolicy> {
        LogPolicy::new(&overlay_core::config::LogConfig {
            peer_addr,
            max_lines_per_sec,
            ..Default::default()
        })
    }

    fn reject(reason: RejectReason) -> BusEvent {
        ev(BusKind::Overlay(Event::Rejected {
            conn: ConnId(3),
            reason,
            corr_id: 0,
            app_proto: 1,
            frames: 1,
            detail: "refused".into(),
        }))
    }

    fn count(l: &serde_json::Map<String, serde_json::Value>, k: &str) -> u64 {
        l.get(k).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    #[test]
    fn a_flood_gets_n_lines_per_second_per_kind_and_every_one_is_counted() {
        let (cap, sub) = capture(true);
        let p = policy(true, 5);
        let mut s = Sampler::default();
        let t0 = Instant::now();
        // 3 s of 1000 rejects a second of one reason, and 10 a second of another.
        tracing::subscriber::with_default(sub, || {
            for i in 0..3000u64 {
                let now = t0 + Duration::from_millis(i);
                log_event_at(now, &reject(RejectReason::Ratelimit), &p, &mut s);
                if i % 100 == 0 {
                    log_event_at(now, &reject(RejectReason::Oversize), &p, &mut s);
                }
            }
            let e = Event::HandshakeFailed {
                conn: ConnId(3),
                corr_id: 1,
                reason: Some(HandshakeFailure::Timeout),
                reject: Some(RejectReason::Timeout),
                code: 408,
                detail: "slow".into(),
            };
            log_event_at(t0, &ev(BusKind::Overlay(e)), &p, &mut s);
            log_suppressed("n1", &mut s, t0 + Duration::from_secs(4));
        });
        let lines = cap.lines();
        let rl: Vec<_> = lines
            .iter()
            .filter(|l| l["event"] == "reject" && l["reason"] == "ratelimit")
            .collect();
        assert_eq!(rl.len(), 15, "5 a second for 3 s");
        assert_eq!(rl[0]["level"], "WARN");
        assert_eq!(rl[0]["corr_id"], "01CORR");
        assert_eq!(rl[0]["peer_addr"], "10.1.2.3:5555");
        assert!(rl[0].get("suppressed").is_none(), "nothing held back yet");
        assert_eq!(
            count(rl[5], "suppressed"),
            995,
            "the first line of a window tells the last"
        );
        let tail: Vec<_> = lines
            .iter()
            .filter(|l| l["event"] == "log_suppressed" && l["reason"] == "ratelimit")
            .collect();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0]["kind"], "reject");
        assert_eq!(tail[0]["level"], "WARN");
        let told: u64 =
            rl.iter().map(|l| count(l, "suppressed")).sum::<u64>() + count(tail[0], "suppressed");
        assert_eq!(
            rl.len() as u64 + told,
            3000,
            "every reject logged or counted"
        );
        // The other reason has its own budget: 10 a second is over 5, so 5 lines a second.
        let ov = lines
            .iter()
            .filter(|l| l["event"] == "reject" && l["reason"] == "oversize")
            .count();
        assert_eq!(ov, 15);
        let hs: Vec<_> = lines
            .iter()
            .filter(|l| l["event"] == "handshake_fail")
            .collect();
        assert_eq!(hs.len(), 1);
        assert_eq!(
            (hs[0]["reason"].as_str(), hs[0]["level"].as_str()),
            (Some("timeout"), Some("WARN"))
        );
    }

    #[test]
    fn a_repeating_dial_failure_stays_visible_through_a_flood() {
        let (cap, sub) = capture(true);
        let p = policy(true, 5);
        let mut s = Sampler::default();
        let t0 = Instant::now();
        // A mistyped peer port fails every 30 s (the backoff ceiling) for two hours while
        // a flooding client is refused 100 times a second.
        tracing::subscriber::with_default(sub, || {
            for ms in (0..7_200_000u64).step_by(10) {
                let now = t0 + Duration::from_millis(ms);
                log_event_at(now, &reject(RejectReason::Ratelimit), &p, &mut s);
                if ms % 30_000 == 0 {
                    let e = ev(BusKind::DialFailed {
                        addr: "127.0.0.1:9".into(),
                        error: "connection refused".into(),
                        failures: (ms / 30_000 + 1) as u32,
                    });
                    log_event_at(now, &e, &p, &mut s);
                }
            }
        });
        let dials: Vec<u64> = cap
            .lines()
            .iter()
            .filter(|l| l["event"] == "dial_fail")
            .map(|l| count(l, "failures"))
            .collect();
        assert_eq!(dials.len(), 240, "every failure of two hours at 30 s");
        assert_eq!(dials.last(), Some(&240), "with the count in a row");
    }

    #[test]
    fn a_failing_peer_name_logs_each_lookup_with_the_name_as_policy_allows() {
        let fail = |failures| {
            ev(BusKind::ResolveFailed {
                name: "seed.example:9444".into(),
                error: "failed to lookup address information".into(),
                failures,
            })
        };
        for shown in [true, false] {
            let (cap, sub) = capture(true);
            let p = policy(shown, 5);
            let mut s = Sampler::default();
            let t0 = Instant::now();
            // An hour of DNS outage at the default 30 s interval.
            tracing::subscriber::with_default(sub, || {
                for i in 0..120u32 {
                    let now = t0 + Duration::from_secs(30 * u64::from(i));
                    log_event_at(now, &fail(i + 1), &p, &mut s);
                }
            });
            let lines = cap.lines();
            let fails: Vec<_> = lines
                .iter()
                .filter(|l| l["event"] == "resolve_fail")
                .collect();
            assert_eq!(fails.len(), 120, "one line a lookup");
            assert_eq!(
                count(fails[119], "failures"),
                120,
                "with the count in a row"
            );
            assert_eq!(fails[0]["level"], "WARN");
            let name = fails[0].get("peer_name");
            if shown {
                assert_eq!(name.and_then(|n| n.as_str()), Some("seed.example:9444"));
            } else {
                assert_eq!(name, None, "log.peer_addr = false omits the name");
            }
        }
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
                cap_id: Some("cap:feed:write".into()),
            };
            log_event(&ev(BusKind::Overlay(e)), &p, &mut s);
        });
        let text = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("\"event\":\"accept\""), "{text}");
        assert!(text.contains("\"event\":\"handshake_ok\""), "{text}");
        assert!(!text.contains("10.1.2.3"), "{text}");
        // The capability's class, never the token, is in the session's lines.
        assert!(text.contains("\"cap_id\":\"cap:feed:write\""), "{text}");
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
