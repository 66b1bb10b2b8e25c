//! Time as the caller tells it. Core never reads a clock.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time: a duration since an epoch the caller chose (process start in the
/// runtime, zero in simulations). Only differences are ever meaningful.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    pub const ZERO: Time = Time(Duration::ZERO);

    pub const fn from_duration(d: Duration) -> Time {
        Time(d)
    }
    pub const fn from_millis(ms: u64) -> Time {
        Time(Duration::from_millis(ms))
    }
    pub const fn since_epoch(self) -> Duration {
        self.0
    }
    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}
