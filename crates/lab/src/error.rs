//! The lab's error type: every variant names the lab, host, file or command it is about.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::options::{CrashKind, Mode};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid lab name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("invalid node count {count}: a lab has 1 to {max} nodes")]
    InvalidNodeCount { count: u8, max: u8 },

    #[error("mode {mode} needs at least {min} nodes (a primary and a backup), not {nodes}")]
    ModeNeedsNodes { mode: Mode, min: u8, nodes: u8 },

    #[error("{program} is not installed (looked in PATH, /usr/sbin, /sbin): install the Debian package {package}")]
    MissingProgram { program: String, package: String },

    #[error("the steadfast executable {path} does not exist or is not a file")]
    MissingExecutable { path: PathBuf },

    #[error("lab {name} already exists ({what}): run `steadfast-lab lab down {name}` first")]
    AlreadyExists { name: String, what: String },

    #[error("lab {name} does not exist (no state file {path})")]
    NotFound { name: String, path: PathBuf },

    #[error("lab {lab} has no host {host:?} (it has: {known})")]
    UnknownHost {
        lab: String,
        host: String,
        known: String,
    },

    #[error("lab {lab}: no node holds the VIP {vip}, so `primary` names no node")]
    NoPrimary { lab: String, vip: String },

    #[error("lab {lab}: several nodes hold the VIP {vip} ({holders}), so `primary` is ambiguous")]
    SeveralPrimaries {
        lab: String,
        vip: String,
        holders: String,
    },

    #[error("lab {lab}: {host} is already crashed (--how {how}): heal it first")]
    AlreadyCrashed {
        lab: String,
        host: String,
        how: CrashKind,
    },

    #[error("lab {lab}: {host} cannot be crashed with --how {how}: {reason}")]
    CrashNotApplicable {
        lab: String,
        host: String,
        how: CrashKind,
        reason: String,
    },

    #[error("lab {lab}: {reason}")]
    InvalidRequest { lab: String, reason: String },

    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("state file {path} is not valid: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("entering network namespace {namespace}: {source}")]
    Namespace {
        namespace: String,
        #[source]
        source: std::io::Error,
    },

    #[error("lab {lab}: nftables in namespace {namespace}: {source}")]
    Nftables {
        lab: String,
        namespace: String,
        #[source]
        source: steadfast_os::nftables::NftError,
    },

    #[error("HTTP GET http://{target}{path} from namespace {namespace}: {source}")]
    Http {
        namespace: String,
        target: SocketAddr,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("RESP PING to {target} from namespace {namespace}: {source}")]
    Redis {
        namespace: String,
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("sending {signal} to {what} (pid {pid}) in namespace {namespace}: {source}")]
    Signal {
        signal: String,
        what: String,
        pid: i32,
        namespace: String,
        #[source]
        source: nix::Error,
    },

    #[error("SYN flood from namespace {namespace}: {source}")]
    Flood {
        namespace: String,
        #[source]
        source: steadfast_os::OsError,
    },

    #[error("lab {lab}: {what} not ready after {waited:?}{details}")]
    NotReady {
        lab: String,
        what: String,
        waited: Duration,
        details: String,
    },

    #[error("lab {lab}: per-node CPU quota: {source}")]
    CpuQuota {
        lab: String,
        #[source]
        source: crate::cpu_quota::CpuQuotaError,
    },
}

impl LabError {
    pub(crate) fn io(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        LabError::Io {
            what: what.into(),
            path: path.into(),
            source,
        }
    }
}
