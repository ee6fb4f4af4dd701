//! CPU time of a process and its descendants, from the kernel's per-process accounting
//! (`/proc/PID/stat`, fields utime and stime, every thread included).
//!
//! nginx and apache2 serve from worker children of the pid the lab started, so a backend's time
//! is its whole process tree. Time the kernel spends in softirq context (packet receive) is
//! charged to whatever process happened to run, or to ksoftirqd: the figures are the processes'
//! own view, as the papers' tables are.

use std::collections::BTreeMap;
use std::path::Path;

/// User and system time, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CpuTime {
    pub user_us: f64,
    pub system_us: f64,
}

impl CpuTime {
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_us: (self.user_us - earlier.user_us).max(0.0),
            system_us: (self.system_us - earlier.system_us).max(0.0),
        }
    }

    pub fn plus(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user_us: self.user_us + other.user_us,
            system_us: self.system_us + other.system_us,
        }
    }

    pub fn per(self, count: u64) -> CpuTime {
        let n = count.max(1) as f64;
        CpuTime {
            user_us: self.user_us / n,
            system_us: self.system_us / n,
        }
    }
}

/// The fields of `/proc/PID/stat` the accounting needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatLine {
    pub ppid: i32,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) may hold spaces and parentheses,
/// so the fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<StatLine> {
    let after = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    Some(StatLine {
        ppid: fields.get(1)?.parse().ok()?,
        utime_ticks: fields.get(11)?.parse().ok()?,
        stime_ticks: fields.get(12)?.parse().ok()?,
    })
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the running kernel.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Every live process's stat line, by pid.
fn all_processes(proc_root: &Path) -> BTreeMap<i32, StatLine> {
    let mut processes = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return processes;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read: it simply is not counted.
        if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            processes.insert(pid, stat);
        }
    }
    processes
}

/// The CPU time of `root` and every descendant, summed over the given process table.
pub fn tree_time(processes: &BTreeMap<i32, StatLine>, root: i32, ticks_per_second: f64) -> CpuTime {
    let mut total = (0u64, 0u64);
    let mut frontier = vec![root];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(pid) = frontier.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(stat) = processes.get(&pid) {
            total.0 += stat.utime_ticks;
            total.1 += stat.stime_ticks;
        }
        frontier.extend(
            processes
                .iter()
                .filter(|(_, s)| s.ppid == pid)
                .map(|(child, _)| *child),
        );
    }
    let us = 1e6 / ticks_per_second;
    CpuTime {
        user_us: total.0 as f64 * us,
        system_us: total.1 as f64 * us,
    }
}

/// Reads the CPU time of each root's process tree in one pass over `/proc`.
pub fn sample(roots: &[i32]) -> Vec<CpuTime> {
    let processes = all_processes(Path::new("/proc"));
    let ticks = ticks_per_second();
    roots
        .iter()
        .map(|root| tree_time(&processes, *root, ticks))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_hostile_command_name() {
        let line = "4242 (nginx: worker) (x) S 4200 4200 4200 0 -1 4194624 900 0 0 0 125 37 0 0 20 0 1 0 100 0 0";
        assert_eq!(
            parse_stat(line),
            Some(StatLine {
                ppid: 4200,
                utime_ticks: 125,
                stime_ticks: 37
            })
        );
        assert_eq!(parse_stat("12 (short) S 1"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn sums_a_process_tree_and_nothing_else() {
        let stat = |ppid, u, s| StatLine {
            ppid,
            utime_ticks: u,
            stime_ticks: s,
        };
        let table: BTreeMap<i32, StatLine> = [
            (10, stat(1, 1, 2)),
            (11, stat(10, 10, 20)),
            (12, stat(11, 100, 200)),
            (13, stat(1, 1000, 2000)),
        ]
        .into_iter()
        .collect();
        let t = tree_time(&table, 10, 100.0);
        assert_eq!(t.user_us, 111.0 * 10_000.0);
        assert_eq!(t.system_us, 222.0 * 10_000.0);
        assert_eq!(tree_time(&table, 99, 100.0), CpuTime::default());
    }

    #[test]
    fn this_process_is_charged_for_the_work_it_does() {
        let me = std::process::id() as i32;
        let before = sample(&[me])[0];
        let start = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until the kernel has charged at least a tick more, for at most 5 s of wall time.
        let charged = loop {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            let now = sample(&[me])[0];
            if now.user_us + now.system_us > before.user_us + before.system_us {
                break true;
            }
            if start.elapsed() > std::time::Duration::from_secs(5) {
                break false;
            }
        };
        std::hint::black_box(x);
        assert!(charged, "spinning for 5 s charged no CPU time to pid {me}");
    }

    #[test]
    fn differences_never_go_negative_and_divide_safely() {
        let a = CpuTime {
            user_us: 5.0,
            system_us: 1.0,
        };
        let b = CpuTime {
            user_us: 3.0,
            system_us: 4.0,
        };
        assert_eq!(
            a.since(b),
            CpuTime {
                user_us: 2.0,
                system_us: 0.0
            }
        );
        assert_eq!(a.per(0), a);
    }
}
