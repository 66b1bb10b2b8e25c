//! Refusal notices: how a writer hears about messages refused without an answer of their
//! own (sent without ACK_REQ, or whose answer found the session's control queue full).
//!
//! On the wire a notice is a GOSSIP RESP with `corr_id` 0 (stream ids start at 1, so 0
//! answers no stream; a peer of spec sections 1–6 sees a RESP for nothing and ignores it),
//! `code` the reason's status and the payload `{"error","refused","retry_after"}`
//! (docs/OAP1.md, "Additions"). A session holds at most one count per reason, so what the
//! node keeps for a writer that never reads is a fixed-size array, never a queue.

use serde::{Deserialize, Serialize};

use crate::reason::RejectReason;
use crate::time::Time;

/// The `corr_id` of a notice: no stream has it.
pub const NOTICE_CORR_ID: u64 = 0;

/// The JSON payload of a notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalNotice {
    /// The reason, as in `rejected_total{reason}`.
    pub error: String,
    /// Messages refused with this reason since the previous notice of it.
    pub refused: u64,
    /// Seconds before the writer should expect room again.
    pub retry_after: u64,
}

impl RefusalNotice {
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a string and two integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

const REASONS: usize = RejectReason::ALL.len();

/// One session's refusals not yet told, per reason, and when each reason was last told.
#[derive(Clone, Debug, Default)]
pub struct NoticeLedger {
    pending: [u64; REASONS],
    retry_after: [u64; REASONS],
    last_sent: [Option<Time>; REASONS],
}

impl NoticeLedger {
    /// One more message refused with `reason` that its writer has not heard about.
    pub fn add(&mut self, reason: RejectReason, retry_after: u64) {
        let i = reason.index();
        self.pending[i] = self.pending[i].saturating_add(1);
        self.retry_after[i] = self.retry_after[i].max(retry_after);
    }

    /// When the next notice may go, if one is waiting.
    pub fn deadline(&self, interval: std::time::Duration) -> Option<Time> {
        (0..REASONS)
            .filter(|&i| self.pending[i] > 0)
            .map(|i| self.last_sent[i].map_or(Time::ZERO, |t| t + interval))
            .min()
    }

    /// Refusals waiting to be told, all reasons together.
    pub fn pending(&self) -> u64 {
        self.pending.iter().sum()
    }

    /// The next notice that may go now (something pending and `interval` passed since that
    /// reason was last told); taking it resets that reason's count and window.
    pub fn take_due(
        &mut self,
        now: Time,
        interval: std::time::Duration,
    ) -> Option<(RejectReason, RefusalNotice)> {
        let reason = RejectReason::ALL.into_iter().find(|r| {
            let i = r.index();
            self.pending[i] > 0
                && self.last_sent[i].map_or(true, |t| now.saturating_since(t) >= interval)
        })?;
        let i = reason.index();
        let notice = RefusalNotice {
            error: reason.as_str().to_string(),
            refused: std::mem::take(&mut self.pending[i]),
            retry_after: std::mem::take(&mut self.retry_after[i]),
        };
        self.last_sent[i] = Some(now);
        Some((reason, notice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_notice_per_reason_per_interval_carrying_every_refusal() {
        let s = Duration::from_secs(1);
        let mut l = NoticeLedger::default();
        let t0 = Time::ZERO;
        l.add(RejectReason::Ratelimit, 1);
        let (r, n) = l.take_due(t0, s).unwrap();
        assert_eq!(
            (r, n.refused, n.retry_after),
            (RejectReason::Ratelimit, 1, 1)
        );
        for _ in 0..5 {
            l.add(RejectReason::Ratelimit, 2);
        }
        l.add(RejectReason::Busy, 5);
        let (r, n) = l.take_due(t0, s).unwrap();
        assert_eq!(
            (r, n.refused),
            (RejectReason::Busy, 1),
            "another reason has its own window"
        );
        assert!(l.take_due(t0 + Duration::from_millis(999), s).is_none());
        let (_, n) = l.take_due(t0 + s, s).unwrap();
        assert_eq!((n.refused, n.retry_after), (5, 2));
        assert_eq!(l.pending(), 0);
        assert_eq!(
            n.to_json(),
            br#"{"error":"ratelimit","refused":5,"retry_after":2}"#
        );
    }
}
