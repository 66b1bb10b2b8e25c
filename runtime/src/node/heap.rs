//! Giving freed heap back to the OS. glibc returns only the top of its heap by itself
//! (`M_TRIM_THRESHOLD`); what an attack or a burst made the node hold in the middle of it
//! (partial frames, queued deliveries, read chunks) stays resident once freed, at the
//! peak, until `malloc_trim` gives its pages back (`madvise(MADV_DONTNEED)`). `malloc_trim`
//! walks the heap under the arena's lock, so it runs only when a sample shows that much
//! more freed memory is resident than after the last trim, and never on the hot path.

use std::time::Duration;

/// What one sample of the process found, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapSample {
    /// Anonymous resident memory (`/proc/self/statm` resident minus shared).
    pub anon: u64,
    /// What the program holds: allocated heap chunks and mmapped blocks.
    pub in_use: u64,
    /// Free bytes the allocator keeps (`fordblks`), resident or not.
    pub free: u64,
}

impl HeapSample {
    /// Resident but not in use: freed heap still in RAM, plus what is not heap at all
    /// (thread stacks, the allocator's own), which stays about constant.
    fn idle(&self) -> u64 {
        self.anon.saturating_sub(self.in_use)
    }
}

/// When to trim. Pure, so that its decisions are tested without an allocator.
#[derive(Debug)]
pub struct TrimPolicy {
    /// Resident idle memory at its lowest since the last trim (or start): what is not
    /// trimmable, as far as this process has shown.
    floor: Option<u64>,
    /// Idle memory this far above the floor, with as much free, is worth a trim.
    min_bytes: u64,
    /// At most one trim this often, whatever the samples say: under churn a trim's pages
    /// fault back in, and the walk holds the allocator's lock.
    min_gap: Duration,
    since_trim: Option<Duration>,
}

impl TrimPolicy {
    pub fn new(min_bytes: u64, min_gap: Duration) -> TrimPolicy {
        TrimPolicy {
            floor: None,
            min_bytes,
            min_gap,
            since_trim: None,
        }
    }

    /// Whether to trim now, `elapsed` after the previous sample.
    pub fn sample(&mut self, s: HeapSample, elapsed: Duration) -> bool {
        self.since_trim = self.since_trim.map(|t| t + elapsed);
        let idle = s.idle();
        let floor = *self.floor.get_or_insert(idle);
        if idle < floor {
            self.floor = Some(idle);
            return false;
        }
        let rested = self.since_trim.map_or(true, |t| t >= self.min_gap);
        rested && s.free >= self.min_bytes && idle - floor >= self.min_bytes
    }

    /// After a trim, what is still idle is the new floor: a trim that could not give much
    /// back (fragments smaller than a page) is not repeated until more is freed.
    pub fn trimmed(&mut self, after: HeapSample) {
        self.floor = Some(after.idle());
        self.since_trim = Some(Duration::ZERO);
    }
}

/// The allocator's view and the trim itself, where the allocator is glibc's.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub mod glibc {
    use std::sync::OnceLock;

    use super::HeapSample;

    type Mallinfo2 = unsafe extern "C" fn() -> libc::mallinfo2;

    /// `mallinfo2` came with glibc 2.33; looked up at run time so that the binary still
    /// starts on an older glibc, which gets `mallinfo` (its `int` fields wrap past 2 GiB,
    /// which only makes a sample wrong, never unsafe).
    fn mallinfo2() -> Option<Mallinfo2> {
        static F: OnceLock<Option<Mallinfo2>> = OnceLock::new();
        *F.get_or_init(|| {
            // SAFETY: dlsym with a NUL-terminated name; a non-null result is glibc's
            // `mallinfo2`, whose signature is the one above.
            unsafe {
                let p = libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr());
                (!p.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, Mallinfo2>(p))
            }
        })
    }

    fn anon_resident() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/statm").ok()?;
        let mut f = s.split_whitespace().skip(1).map(|v| v.parse::<u64>().ok());
        let (resident, shared) = (f.next()??, f.next()??);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(resident.saturating_sub(shared) * u64::try_from(page).ok()?)
    }

    pub fn sample() -> Option<HeapSample> {
        let anon = anon_resident()?;
        let (in_use, free) = match mallinfo2() {
            // SAFETY: glibc's mallinfo2 takes no arguments and only reads allocator state.
            Some(f) => {
                let m = unsafe { f() };
                ((m.uordblks + m.hblkhd) as u64, m.fordblks as u64)
            }
            None => {
                // SAFETY: as above.
                #[allow(deprecated)]
                let m = unsafe { libc::mallinfo() };
                let u = |v: libc::c_int| v as u32 as u64;
                (u(m.uordblks) + u(m.hblkhd), u(m.fordblks))
            }
        };
        Some(HeapSample { anon, in_use, free })
    }

    /// Gives every free page of every arena back to the OS.
    pub fn trim() {
        // SAFETY: malloc_trim only changes allocator state, under its own locks.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const SEC: Duration = Duration::from_secs(1);

    fn s(anon: u64, in_use: u64, free: u64) -> HeapSample {
        HeapSample {
            anon: anon * MIB,
            in_use: in_use * MIB,
            free: free * MIB,
        }
    }

    #[test]
    fn trims_once_freed_memory_stays_resident_and_not_while_it_is_in_use() {
        let mut p = TrimPolicy::new(8 * MIB, 5 * SEC);
        assert!(!p.sample(s(10, 6, 1), SEC), "idle 4 MiB: the floor");
        assert!(!p.sample(s(74, 70, 2), SEC), "64 MiB more, all in use");
        assert!(p.sample(s(74, 6, 66), SEC), "freed and still resident");
        p.trimmed(s(11, 6, 66));
        assert!(!p.sample(s(11, 6, 66), SEC), "as much free, but given back");
        assert!(
            !p.sample(s(60, 6, 66), SEC),
            "faulted in and freed again, but a trim was less than min_gap ago"
        );
        assert!(!p.sample(s(60, 6, 66), SEC));
        assert!(!p.sample(s(60, 6, 66), SEC));
        assert!(p.sample(s(60, 6, 66), SEC), "min_gap has passed");
    }

    #[test]
    fn a_trim_that_gave_little_back_is_not_repeated_until_more_is_freed() {
        let mut p = TrimPolicy::new(8 * MIB, SEC);
        assert!(!p.sample(s(10, 6, 1), SEC));
        assert!(p.sample(s(40, 6, 30), SEC));
        // Fragments below a page: only 4 MiB came back.
        p.trimmed(s(36, 6, 30));
        for _ in 0..10 {
            assert!(!p.sample(s(36, 6, 30), SEC));
        }
        assert!(p.sample(s(45, 6, 39), SEC));
    }

    #[test]
    fn little_free_heap_is_not_worth_a_walk() {
        let mut p = TrimPolicy::new(8 * MIB, SEC);
        assert!(!p.sample(s(10, 6, 1), SEC));
        // Idle grew (stacks, the allocator's own), but the heap keeps little free.
        assert!(!p.sample(s(30, 6, 2), SEC));
    }
}
