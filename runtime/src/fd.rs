//! The `fd_headroom` probe: open descriptors against the soft `RLIMIT_NOFILE`, less the
//! configured reserve.

/// `Some(true)` while more than `reserve` descriptors are free; `None` where the count
/// cannot be taken (no `/proc`).
pub fn headroom(reserve: u64) -> Option<bool> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let (soft, _hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    Some(open.saturating_add(reserve) < soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_depends_on_the_reserve() {
        assert_eq!(headroom(0), Some(true));
        assert_eq!(headroom(u64::MAX / 2), Some(false));
    }
}
