//! Canonical reject reasons: the closed label set of `rejected_total{reason}`.

/// Why a frame, request or connection was refused. The string form is the metric label
/// and the `reason` log field. The set is closed so dashboards and alerts can list every
/// value (docs/ARCHITECTURE.md section 6 says when each is counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    Oversize,
    RatioCap,
    Proto,
    Timeout,
    Busy,
    Unauth,
    Ratelimit,
    NotReady,
    Forbidden,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Oversize,
        RejectReason::RatioCap,
        RejectReason::Proto,
        RejectReason::Timeout,
        RejectReason::Busy,
        RejectReason::Unauth,
        RejectReason::Ratelimit,
        RejectReason::NotReady,
        RejectReason::Forbidden,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversize => "oversize",
            RejectReason::RatioCap => "ratio_cap",
            RejectReason::Proto => "proto",
            RejectReason::Timeout => "timeout",
            RejectReason::Busy => "busy",
            RejectReason::Unauth => "unauth",
            RejectReason::Ratelimit => "ratelimit",
            RejectReason::NotReady => "not_ready",
            RejectReason::Forbidden => "forbidden",
        }
    }

    /// The RESP status code that tells a peer about this reject (spec sections 1 and 2).
    pub const fn status(self) -> u16 {
        match self {
            RejectReason::Oversize => 413,
            RejectReason::RatioCap | RejectReason::Proto => 400,
            RejectReason::Timeout => 408,
            RejectReason::Busy | RejectReason::NotReady => 503,
            RejectReason::Unauth => 401,
            RejectReason::Ratelimit => 429,
            RejectReason::Forbidden => 403,
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
