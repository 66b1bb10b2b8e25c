//! Correlation ids: ULIDs (48-bit wall-clock milliseconds + 80 pseudo-random bits,
//! Crockford base32), lock-free so the admin plane and the driver can mint them freely.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A seed from the OS: std's `RandomState` keys come from the OS RNG, which saves a
/// dependency for the few seeds a process needs.
pub fn os_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where the millisecond prefix of an id comes from.
#[derive(Clone, Copy, Debug)]
pub enum WallClock {
    /// The system clock (production).
    System,
    /// `epoch` plus tokio time elapsed since `start`. Under a simulated (paused) tokio
    /// clock this makes ids a function of the seed and simulated time alone, so a
    /// simulation replays them exactly.
    Tokio {
        epoch: SystemTime,
        start: tokio::time::Instant,
    },
}

impl WallClock {
    pub fn now(&self) -> SystemTime {
        match self {
            WallClock::System => SystemTime::now(),
            WallClock::Tokio { epoch, start } => *epoch + start.elapsed(),
        }
    }
}

#[derive(Debug)]
pub struct CorrIds {
    seed: u64,
    counter: AtomicU64,
    clock: WallClock,
}

impl CorrIds {
    pub fn new(seed: u64) -> CorrIds {
        CorrIds::with_clock(seed, WallClock::System)
    }

    pub fn with_clock(seed: u64, clock: WallClock) -> CorrIds {
        CorrIds {
            seed,
            counter: AtomicU64::new(0),
            clock,
        }
    }

    pub fn next_id(&self) -> String {
        let ms = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            & ((1 << 48) - 1);
        let c = self.counter.fetch_add(1, Ordering::Relaxed);
        let a = splitmix64(self.seed ^ c);
        let b = splitmix64(a ^ self.seed.rotate_left(17));
        let rand80 = ((u128::from(a) << 16) | u128::from(b & 0xFFFF)) & ((1u128 << 80) - 1);
        encode((u128::from(ms) << 80) | rand80)
    }
}

fn encode(mut v: u128) -> String {
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = CROCKFORD[(v & 31) as usize];
        v >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

/// Whether an id a client sent may be echoed and logged as is: short and of a harmless
/// alphabet, so a header cannot inject into logs or responses.
pub fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_are_26_crockford_chars_and_distinct() {
        let g = CorrIds::new(7);
        let a = g.next_id();
        let b = g.next_id();
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|c| CROCKFORD.contains(&c)));
        assert_ne!(a, b);
        // Time-ordered prefix: same millisecond or later.
        assert!(a[..10] <= b[..10]);
    }

    #[test]
    fn an_injected_clock_makes_ids_repeat() {
        // A start in the future reads as no time elapsed (tokio instants saturate), so the
        // ids depend on the seed and the epoch alone.
        let clock = || WallClock::Tokio {
            epoch: UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            start: tokio::time::Instant::now() + std::time::Duration::from_secs(3600),
        };
        let (a, b) = (
            CorrIds::with_clock(7, clock()),
            CorrIds::with_clock(7, clock()),
        );
        let ids: Vec<String> = (0..3).map(|_| a.next_id()).collect();
        let again: Vec<String> = (0..3).map(|_| b.next_id()).collect();
        assert_eq!(ids, again);
        assert_eq!(
            &ids[0][..10],
            "01HF7YAT00",
            "1_700_000_000_000 ms as the prefix"
        );
    }

    #[test]
    fn incoming_ids_are_screened() {
        assert!(acceptable("01HZX3J8Q6W2M1V7K9D4T5R0PZ"));
        assert!(acceptable("req-42.a_b"));
        assert!(!acceptable(""));
        assert!(!acceptable("a b"));
        assert!(!acceptable("x\n{\"evil\":1}"));
        assert!(!acceptable(&"a".repeat(65)));
    }
}
