//! What the kernel says about a process: CPU time and peak resident set. Read from
//! `/proc` rather than measured in-process, so the daemons are judged as operators see them.

use std::fs;

/// utime + stime of `pid` in seconds (fields 14 and 15 of `/proc/<pid>/stat`); `None` once
/// the process is gone.
pub fn cpu_s(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself contain spaces or
    // parentheses: the fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field 14 is index 11.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// `VmHWM` (peak resident set) of `pid` in MiB.
pub fn peak_rss_mib(pid: i32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The calling process (the harness: publisher and subscriber clients).
pub fn self_pid() -> i32 {
    std::process::id() as i32
}
