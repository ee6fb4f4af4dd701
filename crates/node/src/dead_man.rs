//! The daemon's dead-man switch: a panic in any of its threads (the election loop, the proxy,
//! the backup's logger, a tokio task) ends the whole process at once.
//!
//! A node half alive is worse than a dead one: a panicked logger thread would leave a backup
//! that still answers heartbeats but protects nothing, and a panicked task would leave its
//! connections hanging while the node keeps the service address. A dead process is what the
//! group already handles: its peers stop hearing it and take over, and a primary's fence
//! silences its kernel when its lease ends. Unwinding stays on for the lab tools (`demo`,
//! `bench`, the tests), whose guards delete the namespaces they made on the way out; only
//! `run` and `witness` install the switch.
//!
//! It also settles the locks: a lock held by a thread that panics is never seen poisoned,
//! since no other thread runs on after the panic, so `lock().expect(..)` cannot fire for that
//! reason.

/// From now on a panic anywhere prints its message and location (the default report), says
/// that the node stops, and aborts the process.
pub fn install() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        eprintln!(
            "steadfast: thread {} panicked: the node stops now (its peers take over)",
            thread.name().unwrap_or("unnamed")
        );
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    const CHILD: &str = "STEADFAST_DEAD_MAN_CHILD";

    /// Run in a child process by the test below (a no-op otherwise): installs the switch and
    /// panics in a spawned thread, then waits as a live node's main thread would.
    #[test]
    fn child_that_panics_in_a_thread() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        super::install();
        let _ = std::thread::Builder::new()
            .name("steadfast-logger".into())
            .spawn(|| panic!("a bug in a data-plane thread"));
        std::thread::sleep(std::time::Duration::from_secs(10));
        // Reached only if the switch did not fire.
        std::process::exit(0);
    }

    #[test]
    fn a_panic_in_any_thread_ends_the_process() {
        let started = std::time::Instant::now();
        let output = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                "dead_man::tests::child_that_panics_in_a_thread",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGABRT),
            "the child ended by abort, not {:?}: {stderr}",
            output.status
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "at once, not after the main thread's wait"
        );
        assert!(
            stderr.contains("a bug in a data-plane thread")
                && stderr.contains("thread steadfast-logger panicked: the node stops now"),
            "the panic and the stop are reported: {stderr}"
        );
    }
}
