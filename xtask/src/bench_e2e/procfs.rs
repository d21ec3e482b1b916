//! What `/proc` tells of a process: its CPU time, its peak RSS; and the machine's load.

use std::time::Duration;

use anyhow::Context as _;

/// The first three fields of `/proc/loadavg`.
pub(super) fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// CPU time (user and system) of a process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuTime {
    /// Its own threads.
    pub(super) own: Duration,
    /// Its children that it has waited for.
    pub(super) children: Duration,
}

/// The [`CpuTime`] of process `pid` (a number, or `self`).
pub(super) fn cpu_time(pid: &str) -> anyhow::Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_time(&stat).with_context(|| format!("{path}: no CPU times in {stat:?}"))
}

/// The CPU times of a `/proc/<pid>/stat` line: utime, stime, cutime, cstime are fields 14
/// to 17, in clock ticks of `USER_HZ` (100 wherever Linux has `/proc`, x86 and ARM alike).
pub(super) fn parse_cpu_time(stat: &str) -> Option<CpuTime> {
    let ticks = |n: u64| Duration::from_millis(n.saturating_mul(10));
    // The command name (field 2) is in parentheses and may hold spaces.
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let &[utime, stime, cutime, cstime] = fields.as_slice() else {
        return None;
    };
    Some(CpuTime {
        own: ticks(utime + stime),
        children: ticks(cutime + cstime),
    })
}

/// The peak resident set size (`VmHWM`) of process `pid`, in bytes.
pub(super) fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_hwm(&status).with_context(|| format!("{path} has no VmHWM line"))
}

/// The `VmHWM:  <n> kB` line of a `/proc/<pid>/status`, in bytes.
pub(super) fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_from_proc_stat_whatever_the_command_name() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 25 7 3 20 0 4 0 100 1000 200";
        let times = parse_cpu_time(stat).unwrap();
        assert_eq!(times.own, Duration::from_millis(1750));
        assert_eq!(times.children, Duration::from_millis(100));
        assert_eq!(parse_cpu_time("4242 (x) S 1 2"), None);
    }

    #[test]
    fn vm_hwm_is_read_in_bytes_from_proc_status() {
        let status =
            "Name:\tdomain-node\nVmPeak:\t  900000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(23456 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }
}
