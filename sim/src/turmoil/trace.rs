//! The trace of a run: one line per event (simulated time, host, what happened) and the
//! final metric values, hashed so two runs of one seed can be compared. Lines are kept so
//! a mismatch can name the first line where the runs parted.

/// FNV-1a, 64 bit: stable across Rust versions and platforms, unlike std's hashers.
#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(Fnv::PRIME);
        }
    }
}

#[derive(Clone, Debug)]
pub struct Trace {
    hash: Fnv,
    lines: Vec<String>,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace {
            hash: Fnv(Fnv::OFFSET),
            lines: Vec::new(),
        }
    }
}

impl Trace {
    pub fn record(&mut self, line: String) {
        self.hash.write(line.as_bytes());
        self.hash.write(b"\n");
        self.lines.push(line);
    }

    pub fn hash(&self) -> u64 {
        self.hash.0
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Where two traces part: the index and both lines (`None` past an end).
    pub fn first_difference<'a>(
        &'a self,
        other: &'a Trace,
    ) -> Option<(usize, Option<&'a str>, Option<&'a str>)> {
        let n = self.lines.len().max(other.lines.len());
        (0..n).find_map(|i| {
            let a = self.lines.get(i).map(String::as_str);
            let b = other.lines.get(i).map(String::as_str);
            (a != b).then_some((i, a, b))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_lines_same_hash_and_differences_are_located() {
        let mut a = Trace::default();
        let mut b = Trace::default();
        for l in ["x", "y"] {
            a.record(l.into());
            b.record(l.into());
        }
        assert_eq!(a.hash(), b.hash());
        assert!(a.first_difference(&b).is_none());
        b.record("z".into());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.first_difference(&b), Some((2, None, Some("z"))));
        // Line boundaries count: "ab" then "c" is not "a" then "bc".
        let (mut c, mut d) = (Trace::default(), Trace::default());
        c.record("ab".into());
        c.record("c".into());
        d.record("a".into());
        d.record("bc".into());
        assert_ne!(c.hash(), d.hash());
    }
}
