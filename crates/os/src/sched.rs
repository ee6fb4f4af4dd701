//! Realtime scheduling, so heartbeats keep their rhythm when the backend saturates the CPUs.

use crate::OsError;

/// SCHED_FIFO at `priority` for the calling process, with SCHED_RESET_ON_FORK so that the
/// programs it starts (notify hooks, exec health checks) run at normal priority.
pub fn set_realtime_priority(priority: i32) -> Result<(), OsError> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler reads a valid sched_param.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc < 0 {
        return Err(OsError::last_os(format!(
            "setting SCHED_FIFO priority {priority}"
        )));
    }
    Ok(())
}
