//! Realtime scheduling, so heartbeats keep their rhythm when the backend saturates the CPUs.

use crate::OsError;

/// SCHED_FIFO at `priority` (1..=99) for the calling thread only: on Linux
/// `sched_setscheduler(0, ..)` names the calling thread, not the process. Put the heartbeat
/// work on a dedicated thread and call this there.
///
/// SCHED_RESET_ON_FORK is set too, so every thread and process started from this thread
/// (tokio workers, notify hooks, exec health checks) runs at normal priority instead of
/// inheriting the realtime policy. The kernel's RT throttling (sched_rt_runtime_us, 95 % by
/// default) still keeps a runaway realtime thread from starving the machine.
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
            "setting SCHED_FIFO priority {priority} on the calling thread (needs CAP_SYS_NICE; \
             priorities are 1..=99)"
        )));
    }
    Ok(())
}
