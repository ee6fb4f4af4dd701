//! Named network namespaces (the `ip netns` convention: a bind mount at /run/netns/NAME).
//!
//! Entering is per thread: sockets a thread creates after `enter` live in the namespace, and
//! so does its view of /proc/sys/net. A tokio runtime must be built after entering, on the
//! entered thread (a current-thread runtime), or its I/O driver and workers live elsewhere.
//! Creating and deleting shell out to `ip netns`: that is lab setup, never the daemon's path.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::thread::JoinHandle;

use crate::OsError;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

fn check_name(name: &str) -> Result<(), OsError> {
    let why = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "a directory name"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(OsError::InvalidName {
        kind: "network namespace name",
        name: name.to_string(),
        why,
    })
}

fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Moves the calling thread into the namespace /run/netns/NAME. Other threads, the ones
/// already running and the ones other threads start later, stay where they are.
pub fn enter(name: &str) -> Result<(), OsError> {
    check_name(name)?;
    let path = path_of(name);
    let file = File::open(&path).map_err(|e| {
        OsError::io(
            format!(
                "entering network namespace {name}: opening {}",
                path.display()
            ),
            e,
        )
    })?;
    // SAFETY: setns with a valid namespace descriptor affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(OsError::last_os(format!(
            "entering network namespace {name}"
        )));
    }
    Ok(())
}

/// Whether /run/netns/NAME exists (an invalid name never does).
pub fn exists(name: &str) -> bool {
    check_name(name).is_ok() && path_of(name).exists()
}

/// The names in /run/netns, sorted; none when the directory does not exist yet.
pub fn list() -> Result<Vec<String>, OsError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(OsError::io(format!("listing {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| OsError::io(format!("listing {NETNS_DIR}"), e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn run_ip(args: &[&str]) -> Result<(), OsError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| OsError::io(format!("running `{command}`"), e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(OsError::Command {
        command,
        detail: format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

/// Creates the namespace NAME (`ip netns add`; its `lo` starts down, as in any new namespace).
/// Fails if it already exists, so that a guard never adopts,
/// and later deletes, a namespace someone else made.
pub fn create(name: &str) -> Result<(), OsError> {
    check_name(name)?;
    run_ip(&["netns", "add", name])
}

/// Deletes the namespace NAME (`ip netns del`); absent is fine. Interfaces inside it go with
/// it (a veth's peer too); processes inside keep the namespace alive until they exit.
pub fn delete(name: &str) -> Result<(), OsError> {
    check_name(name)?;
    if !exists(name) {
        return Ok(());
    }
    run_ip(&["netns", "del", name])
}

/// A namespace this process created, deleted when the guard is dropped (also on panic).
#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    /// Creates the namespace; see [`create`].
    pub fn create(name: &str) -> Result<NetnsGuard, OsError> {
        create(name)?;
        Ok(NetnsGuard {
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Nothing can be done with the error in a destructor; an unwinding test must not
        // abort on a second panic.
        let _ = delete(&self.name);
    }
}

/// Runs `body` on a new thread that first entered namespace NAME. The thread's result is the
/// entry error or what `body` returned.
pub fn spawn_in<T, F>(name: &str, body: F) -> JoinHandle<Result<T, OsError>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        Ok(body())
    })
}
