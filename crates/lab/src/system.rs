//! The lab's dealings with the kernel and other programs: `ip`, network namespaces, processes.
//!
//! This is test setup, not a hot path, so configuration goes through `ip`; what must be quick
//! or exact (finding and signalling the processes of a namespace, running code inside one,
//! nftables over netlink) is done directly.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::LabError;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Finds a program in PATH or in the sbin directories, which a non-login root shell may lack.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Like [`find_program`], but a missing program is an error naming its Debian package.
pub fn require_program(name: &str, package: &str) -> Result<PathBuf, LabError> {
    find_program(name).ok_or_else(|| LabError::MissingProgram {
        program: name.to_string(),
        package: package.to_string(),
    })
}

fn describe(program: &str, args: &[&str]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// Runs a program to completion and returns its stdout; a failure carries the command line and
/// its stderr.
pub(crate) fn run(program: &str, package: &str, args: &[&str]) -> Result<String, LabError> {
    let path = require_program(program, package)?;
    let output = Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: describe(program, args),
            source,
        })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: describe(program, args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", "iproute2", args)
}

pub fn namespace_exists(namespace: &str) -> bool {
    Path::new(NETNS_DIR).join(namespace).exists()
}

/// The names of every namespace `ip netns` knows.
pub fn list_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// The identity of a network namespace: the (device, inode) of its nsfs file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct NamespaceId {
    dev: u64,
    ino: u64,
}

pub(crate) fn namespace_id(namespace: &str) -> Option<NamespaceId> {
    let meta = std::fs::metadata(Path::new(NETNS_DIR).join(namespace)).ok()?;
    Some(NamespaceId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

fn process_namespace(pid: i32) -> Option<NamespaceId> {
    // A zombie has no namespaces left, so it never counts as a process of a namespace.
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some(NamespaceId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Whether `pid` is a live (not zombie) process in the namespace.
pub(crate) fn process_is_in(pid: i32, namespace: NamespaceId) -> bool {
    process_namespace(pid) == Some(namespace)
}

/// Whether any thread of `pid` has not finished exiting. A killed multi-threaded process can
/// lose its namespace link (its leader exited) while other threads still hold its sockets: a
/// restarted daemon binding the same ports must wait for those too.
fn has_live_threads(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let after = stat.rfind(')')?;
                stat[after + 1..]
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            })
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Every process whose network namespace is `namespace` (what `ip netns pids` prints), never
/// this process itself.
pub fn pids_in_namespace(namespace: &str) -> Vec<i32> {
    let Some(id) = namespace_id(namespace) else {
        return Vec::new();
    };
    pids_in(id)
}

pub(crate) fn pids_in(id: NamespaceId) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && process_namespace(pid) == Some(id))
        .collect()
}

/// Sends `sig` to the process group led by `pid` (every process the lab starts leads its own
/// session, so its group is the program and its workers), after checking that `pid` still is a
/// process of the namespace, so a recycled pid is never hit.
pub(crate) fn signal_group(
    pid: i32,
    namespace: &str,
    what: &str,
    sig: Signal,
) -> Result<bool, LabError> {
    let Some(id) = namespace_id(namespace) else {
        return Ok(false);
    };
    if !process_is_in(pid, id) {
        return Ok(false);
    }
    match signal::killpg(Pid::from_raw(pid), sig) {
        Ok(()) => Ok(true),
        Err(nix::Error::ESRCH) => Ok(false),
        Err(source) => Err(LabError::Signal {
            signal: sig.to_string(),
            what: what.to_string(),
            pid,
            namespace: namespace.to_string(),
            source,
        }),
    }
}

/// Sends `sig` to every process of a namespace; returns how many were signalled.
pub(crate) fn signal_all(id: NamespaceId, sig: Signal) -> usize {
    pids_in(id)
        .into_iter()
        .filter(|&pid| signal::kill(Pid::from_raw(pid), sig).is_ok())
        .count()
}

/// Kills every process of a namespace and waits (at most `limit`) until none is left; returns
/// how many were killed. Loops because a process may fork while it is being killed.
pub(crate) fn kill_all_in(namespace: &str, limit: Duration) -> Result<usize, LabError> {
    let Some(id) = namespace_id(namespace) else {
        return Ok(0);
    };
    let deadline = Instant::now() + limit;
    // A process drops out of the namespace's list as soon as its leader thread exits, while
    // its other threads may still hold its sockets: what was killed is waited for thread by
    // thread, or a restarted daemon finds its ports taken.
    let mut killed: Vec<i32> = Vec::new();
    let still_running = |killed: &[i32]| -> Vec<i32> {
        let mut left = pids_in(id);
        left.extend(killed.iter().copied().filter(|&pid| has_live_threads(pid)));
        left.sort_unstable();
        left.dedup();
        left
    };
    loop {
        if still_running(&killed).is_empty() {
            return Ok(killed.len());
        }
        // Only what is still in the namespace is signalled: a pid already out of it is dying,
        // and signalling it again would risk a stranger that was given the same pid.
        for pid in pids_in(id) {
            if signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() && !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        if Instant::now() >= deadline {
            let left = still_running(&killed);
            if left.is_empty() {
                return Ok(killed.len());
            }
            return Err(LabError::Command {
                command: format!("kill -9 of every process in namespace {namespace}"),
                status: format!("processes still alive after {limit:?}"),
                stderr: format!("{left:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (at most `limit`) until `pid` is no longer a live process of the namespace.
pub(crate) fn wait_gone(pid: i32, id: NamespaceId, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while process_is_in(pid, id) || has_live_threads(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Starts `argv` inside a namespace (through `ip netns exec`, which also gives it a /sys of that
/// namespace) as the leader of a new session, so it outlives the command that started it and
/// can be signalled with its workers as one group. stdout and stderr append to `log`. Returns
/// the pid, which is the program's own: `ip netns exec` execs without forking.
pub(crate) fn spawn_in_namespace(
    namespace: &str,
    argv: &[OsString],
    log: &Path,
) -> Result<i32, LabError> {
    spawn_in_namespace_in(namespace, argv, log, None)
}

/// [`spawn_in_namespace`], and with `cgroup_procs` (a cgroup's `cgroup.procs`) the program
/// enters that cgroup between fork and exec: it never runs outside it, and neither does
/// anything it starts.
pub(crate) fn spawn_in_namespace_in(
    namespace: &str,
    argv: &[OsString],
    log: &Path,
    cgroup_procs: Option<&Path>,
) -> Result<i32, LabError> {
    let ip_path = require_program("ip", "iproute2")?;
    let command_line = format!(
        "ip netns exec {namespace} {}",
        argv.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io("opening the log", log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::io("duplicating the log's descriptor", log, e))?;
    let mut command = Command::new(ip_path);
    command
        .arg("netns")
        .arg("exec")
        .arg(namespace)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // Opened here: between fork and exec only async-signal-safe calls (a write) are allowed.
    let cgroup = cgroup_procs
        .map(|path| {
            OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| LabError::io("opening the node's cgroup", path, e))
        })
        .transpose()?;
    let cgroup_fd = cgroup.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    // SAFETY: setsid and write are async-signal-safe and touch no memory of the parent; the
    // descriptor stays open in the parent until spawn returns.
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = cgroup_fd {
                // "0" moves the writing process itself (cgroup v1 and v2 alike).
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(|source| LabError::Spawn {
        command: command_line.clone(),
        source,
    })?;
    let pid = child.id() as i32;
    let entered = wait_entered(pid, namespace, &mut child);
    // Reap the child whenever it ends, so a long-lived caller (a test) never keeps zombies that
    // would still answer to their pid.
    let reaper = std::thread::Builder::new()
        .name(format!("lab-reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(source) = reaper {
        return Err(LabError::Spawn {
            command: format!("reaper thread for `{command_line}`"),
            source,
        });
    }
    match entered {
        Ok(()) => Ok(pid),
        Err(status) => Err(LabError::Command {
            command: command_line,
            status,
            stderr: log_tail(log, 20),
        }),
    }
}

/// How long a started program may take to get into its namespace (`ip netns exec` runs first).
const ENTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until the child runs inside the namespace, so every later check by namespace (is it
/// alive, may it be signalled) sees it; reports an early exit instead.
fn wait_entered(pid: i32, namespace: &str, child: &mut std::process::Child) -> Result<(), String> {
    let deadline = Instant::now() + ENTER_TIMEOUT;
    let id = namespace_id(namespace).ok_or_else(|| format!("namespace {namespace} is gone"))?;
    loop {
        if process_is_in(pid, id) {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("exited at once ({status})")),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot be waited for: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!("not inside {namespace} after {ENTER_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `work` on a thread that has entered the network namespace, so the sockets it opens live
/// there. The calling thread's namespace is untouched.
pub fn run_in_namespace<T, F>(namespace: &str, work: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = Path::new(NETNS_DIR).join(namespace);
    let file = File::open(&path).map_err(|source| LabError::Namespace {
        namespace: namespace.to_string(),
        source,
    })?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                LabError::Namespace {
                    namespace: namespace.to_string(),
                    source: std::io::Error::from(e),
                }
            })?;
            Ok(work())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The last `lines` lines of a log file (at most its last 16 KiB), or a note that it is missing.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 16 * 1024;
    let Ok(mut file) = File::open(path) else {
        return format!("({} does not exist)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    let mut text = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut text).is_err() {
        return format!("({} is unreadable)", path.display());
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    if all.is_empty() {
        return format!("({} is empty)", path.display());
    }
    all[from..].join("\n")
}

/// Reads CLOCK_MONOTONIC, the clock every process of the machine shares, so another process
/// can compare its own readings with a crash's.
pub fn monotonic_now() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => Duration::from(ts),
        // CLOCK_MONOTONIC exists on every Linux; a zero reading would only mark "unknown".
        Err(_) => Duration::ZERO,
    }
}
