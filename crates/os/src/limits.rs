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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let in_force = raise_open_files().expect("raise the open-file limit");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((in_force, soft), (hard, hard));
        assert_eq!(open_files().unwrap(), hard);
    }
}
