//! Network-namespace entry for the calling thread (sockets made afterwards live there).

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::OsError;

/// Moves the calling thread into the namespace `/run/netns/NAME`. A tokio runtime must be
/// built after this call, on this thread, for its sockets to live there.
pub fn enter(name: &str) -> Result<(), OsError> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).map_err(|e| OsError::io(format!("opening {path}"), e))?;
    // SAFETY: setns with a valid namespace descriptor affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(OsError::last_os(format!(
            "entering network namespace {name}"
        )));
    }
    Ok(())
}
