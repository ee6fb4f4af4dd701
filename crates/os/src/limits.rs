//! The process's limit on open files. A proxy holds two descriptors per client connection (the
//! client's and the server's), far more than the soft limit of 1024 most systems start a
//! process with; the hard limit is what an administrator granted.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::OsError;

/// The soft and hard limits on open files.
fn open_file_limits() -> Result<(u64, u64), OsError> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| OsError::Io {
        what: "reading the open-file limit (RLIMIT_NOFILE)".into(),
        source: e.into(),
    })
}

/// The limit on open files in force (the soft one).
pub fn open_files() -> Result<u64, OsError> {
    Ok(open_file_limits()?.0)
}

/// Raises the soft limit on open files to the hard limit, and returns the limit now in force.
pub fn raise_open_files() -> Result<u64, OsError> {
    let (soft, hard) = open_file_limits()?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| OsError::Io {
        what: format!("raising the open-file limit (RLIMIT_NOFILE) from {soft} to {hard}"),
        source: e.into(),
    })?;
    Ok(hard)
}

/// Raises the limit on open files to at least `wanted`, the hard limit too when it is lower
/// (which takes root, or CAP_SYS_RESOURCE, as HAProxy does for its `maxconn`), but never above
/// the kernel's `fs.nr_open`. Returns the limit now in force, which may stay below `wanted`
/// when the hard limit cannot be raised.
pub fn raise_open_files_to(wanted: u64) -> Result<u64, OsError> {
    let (soft, hard) = open_file_limits()?;
    if soft >= wanted {
        return Ok(soft);
    }
    if hard < wanted {
        let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let target = wanted.min(ceiling).max(hard);
        if setrlimit(Resource::RLIMIT_NOFILE, target, target).is_ok() {
            return Ok(target);
        }
    }
    raise_open_files()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this process may raise its hard limits (CAP_SYS_RESOURCE, bit 24 of the
    /// effective set; containers often withhold it even from root).
    fn may_raise_hard_limits() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let effective = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap();
        effective & (1 << 24) != 0
    }

    /// The hard limit is raised too where the process may, within `fs.nr_open`; elsewhere
    /// the soft limit reaches the hard one. (One test: the two cases share the process's
    /// limits.)
    #[test]
    fn a_limit_above_the_hard_one_is_reached_where_the_process_may() {
        let in_force = raise_open_files().expect("raise the open-file limit");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((in_force, soft), (hard, hard));
        assert_eq!(open_files().unwrap(), hard);

        let wanted = hard + 1000;
        let in_force = raise_open_files_to(wanted).expect("raise the open-file limit");
        let (soft, new_hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((in_force, soft), (new_hard, new_hard));
        let expected = if may_raise_hard_limits() {
            wanted
        } else {
            hard
        };
        assert_eq!(in_force, expected);
        // Asking for less changes nothing.
        assert_eq!(raise_open_files_to(10).unwrap(), in_force);
    }
}
