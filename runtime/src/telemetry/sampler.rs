//! Time-based sampling of repetitive log lines (`log.max_lines_per_sec`): a flood of
//! accepts or refusals costs a bounded number of lines, and what was held back is still
//! reported as a count.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The window of `log.max_lines_per_sec`.
pub const SAMPLE_WINDOW: Duration = Duration::from_secs(1);

/// Time-based sampling per event kind (event, reason): at most `per_sec` lines of a kind
/// in each one-second window, whatever the flood; what is held back is counted and told as
/// `suppressed` on the next line of that kind, or by [`Sampler::flush`] once the window is
/// over, so a burst followed by silence is still reported. Keys come from closed label
/// sets, so the map stays small.
#[derive(Debug, Default)]
pub struct Sampler {
    kinds: HashMap<(&'static str, &'static str), Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    suppressed: u64,
}

impl Sampler {
    /// `Some(suppressed)` when this occurrence should be logged, with how many of its kind
    /// were held back since the last line of it; `None` to drop it.
    pub fn admit(
        &mut self,
        now: Instant,
        per_sec: u32,
        event: &'static str,
        reason: &'static str,
    ) -> Option<u64> {
        let w = self.kinds.entry((event, reason)).or_insert(Window {
            start: now,
            lines: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.start) >= SAMPLE_WINDOW {
            w.start = now;
            w.lines = 0;
        }
        if w.lines < per_sec.max(1) {
            w.lines += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }

    /// Kinds whose window is over with occurrences held back: `(event, reason,
    /// suppressed)`, each count taken (it will not be reported twice).
    pub fn flush(&mut self, now: Instant) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for ((event, reason), w) in self.kinds.iter_mut() {
            if w.suppressed > 0 && now.saturating_duration_since(w.start) >= SAMPLE_WINDOW {
                out.push((*event, *reason, std::mem::take(&mut w.suppressed)));
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_allows_n_lines_per_second_per_kind_and_counts_the_rest() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // A flood of 1000 a second for 3 s, at most 5 lines a second.
        let mut logged = vec![0u32; 3];
        let mut reported = 0;
        for i in 0..3000u64 {
            if let Some(sup) = s.admit(ms(i), 5, "reject", "ratelimit") {
                logged[(i / 1000) as usize] += 1;
                reported += sup;
            }
        }
        assert_eq!(logged, vec![5, 5, 5]);
        assert_eq!(
            reported,
            2 * 995,
            "told on the first line of the next window"
        );
        // The tail of the flood is told by the flush once its window is over.
        assert!(s.flush(ms(2999)).is_empty(), "window not over yet");
        assert_eq!(s.flush(ms(3000)), vec![("reject", "ratelimit", 995)]);
        assert!(s.flush(ms(5000)).is_empty(), "reported once");
        assert_eq!(
            reported + 995,
            3000 - 15,
            "every occurrence logged or counted"
        );
        // Another kind has its own budget.
        assert_eq!(s.admit(ms(1), 5, "reject", "oversize"), Some(0));
        assert_eq!(s.admit(ms(1), 1, "accept", ""), Some(0));
        assert_eq!(s.admit(ms(2), 1, "accept", ""), None);
        assert_eq!(s.admit(ms(1002), 1, "accept", ""), Some(1));
    }
}
