//! What a caller chooses: the replication mode, the backend, the crash kind, and `up`'s options.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The contract's `--mode`. `active` runs with the redis backend only (it replicates Redis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Unreplicated,
    Simplex,
    Duplex,
    /// Every member runs its own redis-server; the primary orders the updates and spreads the
    /// reads (the daemon's active mode).
    Active,
}

/// The contract's `--backend`: the server each node runs behind the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// `steadfast-lab backend`, the HTTP server inside the binary.
    Builtin,
    Nginx,
    Apache2,
    /// `redis-server` (Debian package `redis-server`), one per member with its own data and
    /// nothing persisted, on port 6379 (see [`crate::topology::service_port`]). Unreplicated
    /// (what keepalived in front of Redis gives: the address moves, the data does not) or
    /// active mode.
    Redis,
}

impl BackendKind {
    /// Whether the backend serves HTTP (the docroot, `/health`): everything but `redis`.
    pub fn speaks_http(self) -> bool {
        !matches!(self, BackendKind::Redis)
    }
}

/// Why a lab of `mode` with `backend` (and maybe a front proxy) cannot be built, if it cannot:
/// the proxies of simplex and duplex, and HAProxy in front of a member, frame HTTP/1.1, and a
/// Redis backend speaks RESP.
pub fn backend_refusal(
    mode: Mode,
    backend: BackendKind,
    front_proxy: Option<FrontProxy>,
) -> Option<String> {
    if backend.speaks_http() {
        if mode == Mode::Active {
            return Some(format!(
                "the {backend} backend cannot run in active mode: active mode replicates Redis \
                 only; use --backend redis"
            ));
        }
        return None;
    }
    if matches!(mode, Mode::Simplex | Mode::Duplex) {
        return Some(format!(
            "the {backend} backend cannot run in {mode} mode: its proxy frames HTTP/1.1 only; \
             use active (Redis replicated on every member) or unreplicated"
        ));
    }
    if mode == Mode::Active {
        return front_proxy.map(|proxy| {
            format!(
                "a {proxy} front proxy runs in unreplicated labs only: in active mode the \
                 daemon holds the service address"
            )
        });
    }
    front_proxy.map(|proxy| {
        format!(
            "the {backend} backend cannot run behind a {proxy} front proxy: it runs in mode \
             http; the {backend} lab serves the VIP from redis-server itself"
        )
    })
}

/// A proxy the lab itself runs in front of each member's backend, on the service address, in
/// an unreplicated lab: the reference proxy hop the overhead bench sets beside simplex and
/// duplex (whose own proxy is the daemon's). The backend then listens where simplex and duplex
/// put it (the service's port on the loopback address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrontProxy {
    /// HAProxy (Debian package `haproxy`) in `mode http`.
    Haproxy,
}

/// The contract's `--how`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrashKind {
    /// Stop every process of the node, cut its link, then kill them all: nothing leaves the
    /// host after the first instant, as with a power loss.
    Host,
    /// Kill -9 the daemon only; the node's kernel stays alive.
    Process,
    /// SIGSTOP the daemon.
    Freeze,
    /// Cut the node's link only.
    Link,
    /// Kill the backend only.
    Backend,
    /// The node's public link loses its carrier (the switch end of its cable goes down) while
    /// the node and its private link live on: link relay's case. Restored by `heal`, which
    /// leaves the processes be.
    #[serde(rename = "link-down")]
    LinkDown,
    /// The node's public link keeps its carrier but the switch drops every frame to and from
    /// it (a dead switch port, a wedged driver): only probes can tell. Restored by `heal`.
    #[serde(rename = "link-blackhole")]
    LinkBlackhole,
}

/// A word of the command line that names none of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: expected one of {expected}")]
pub struct ParseChoiceError {
    pub what: &'static str,
    pub given: String,
    pub expected: &'static str,
}

macro_rules! word_enum {
    ($ty:ident, $what:literal, $( $variant:ident => $word:literal ),+ ) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $( $ty::$variant => $word ),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = ParseChoiceError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $word => Ok($ty::$variant), )+
                    _ => Err(ParseChoiceError {
                        what: $what,
                        given: s.to_string(),
                        expected: concat!($( $word, " " ),+),
                    }),
                }
            }
        }
    };
}

word_enum!(Mode, "mode", Unreplicated => "unreplicated", Simplex => "simplex", Duplex => "duplex",
    Active => "active");
word_enum!(BackendKind, "backend", Builtin => "builtin", Nginx => "nginx", Apache2 => "apache2",
    Redis => "redis");
word_enum!(FrontProxy, "front proxy", Haproxy => "haproxy");
word_enum!(CrashKind, "crash kind", Host => "host", Process => "process", Freeze => "freeze",
    Link => "link", Backend => "backend", LinkDown => "link-down",
    LinkBlackhole => "link-blackhole");

/// How long `up` waits, by default, for the VIP to answer from the client namespace.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The options of `steadfast-lab lab up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The lab's name: `[a-z0-9-]`, 1 to 20 characters, starting with a letter or digit.
    pub name: String,
    /// Number of member nodes, 1 to 9.
    pub nodes: u8,
    /// Add the witness voter `NAME-w`.
    pub witness: bool,
    pub mode: Mode,
    pub backend: BackendKind,
    /// `group.heartbeat_interval_ms` in the node configs; `None` keeps the daemon's default.
    pub heartbeat_ms: Option<u32>,
    /// `group.replication_stall_ms` in the node configs; `None` keeps the daemon's default.
    pub replication_stall_ms: Option<u32>,
    /// `group.replication_encryption` in the node configs; `None` keeps the daemon's default
    /// (encrypted).
    pub replication_encryption: Option<bool>,
    /// `service.stream_replies_above` in the node configs (duplex and simplex: longer replies
    /// are logged and sent in pieces); `None` keeps the daemon's default.
    pub stream_replies_above: Option<u64>,
    /// `service.client_header_timeout_ms` and `service.client_idle_timeout_ms` in the node
    /// configs (the proxy's client timeouts); `None` keeps the daemon's defaults.
    pub client_timeouts_ms: Option<(u32, u32)>,
    /// `service.max_connections` and `service.max_connections_per_source`; `None` keeps the
    /// daemon's defaults.
    pub max_connections: Option<u32>,
    pub max_connections_per_source: Option<u32>,
    /// `service.half_open_lifetime_ms` (the backup's half-open images); `None` keeps the
    /// daemon's default.
    pub half_open_lifetime_ms: Option<u32>,
    /// `service.delivery` and `service.read_policy` (active mode alone: the daemon refuses
    /// them in the others); `None` keeps the daemon's defaults.
    pub delivery: Option<steadfast_core::active_order::DeliveryStrategy>,
    pub read_policy: Option<steadfast_core::active_order::ReadPolicy>,
    /// `arp.gratuitous_count` and `arp.gratuitous_spacing_ms` in the node configs; `None`
    /// keeps the daemon's defaults.
    pub gratuitous_arp: Option<(u32, u32)>,
    /// Link relay: a private network between the members (`eth1`, bridge `br1`) and a
    /// `[relay]` table in their configurations (issue 19).
    pub relay: bool,
    /// A proxy the lab runs on each member in front of its backend (unreplicated labs only);
    /// `None`: clients reach the backend (or the daemon's proxy) directly.
    pub front_proxy: Option<FrontProxy>,
    /// A CPU limit for each member (its daemon and its backend together, one cgroup per
    /// member, see [`crate::cpu_quota`]); `None`: no limit.
    pub cpu_quota: Option<crate::cpu_quota::CpuQuota>,
    /// The executable whose `run`, `witness` and `backend` commands run the daemons and the
    /// builtin backend: `steadfast-lab` (its command line passes `std::env::current_exe()`).
    pub steadfast_exe: PathBuf,
    /// Start the daemons. Without them nothing takes the VIP: `up` returns once the backends
    /// answer, with no primary (tests of the lab itself place the VIP by hand).
    pub start_daemons: bool,
    /// How long `up` waits for the VIP to answer from the client namespace.
    pub ready_timeout: Duration,
}

impl UpOptions {
    /// Unreplicated mode, builtin backend, no witness, default heartbeat, daemons started.
    pub fn new(name: impl Into<String>, nodes: u8, steadfast_exe: impl Into<PathBuf>) -> Self {
        UpOptions {
            name: name.into(),
            nodes,
            witness: false,
            mode: Mode::Unreplicated,
            backend: BackendKind::Builtin,
            heartbeat_ms: None,
            replication_stall_ms: None,
            replication_encryption: None,
            stream_replies_above: None,
            client_timeouts_ms: None,
            max_connections: None,
            max_connections_per_source: None,
            half_open_lifetime_ms: None,
            delivery: None,
            read_policy: None,
            gratuitous_arp: None,
            relay: false,
            front_proxy: None,
            cpu_quota: None,
            steadfast_exe: steadfast_exe.into(),
            start_daemons: true,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_parses_and_runs_unreplicated_or_active_only() {
        assert_eq!("redis".parse::<BackendKind>(), Ok(BackendKind::Redis));
        assert_eq!(BackendKind::Redis.to_string(), "redis");
        let unknown = "memcached".parse::<BackendKind>().unwrap_err();
        assert!(unknown.expected.contains("redis"), "{unknown}");
        assert!(!BackendKind::Redis.speaks_http());
        assert_eq!(
            backend_refusal(Mode::Unreplicated, BackendKind::Redis, None),
            None
        );
        assert_eq!(
            backend_refusal(Mode::Active, BackendKind::Redis, None),
            None
        );
        for mode in [Mode::Simplex, Mode::Duplex] {
            let why = backend_refusal(mode, BackendKind::Redis, None).expect("refused");
            assert!(
                why.contains("its proxy frames HTTP/1.1 only; use active"),
                "{why}"
            );
            assert!(why.contains(mode.as_str()), "{why}");
        }
        for backend in [
            BackendKind::Builtin,
            BackendKind::Nginx,
            BackendKind::Apache2,
        ] {
            let why = backend_refusal(Mode::Active, backend, None).expect("refused");
            assert!(why.contains("active mode replicates Redis only"), "{why}");
        }
        assert!(
            backend_refusal(Mode::Active, BackendKind::Redis, Some(FrontProxy::Haproxy)).is_some()
        );
        let why = backend_refusal(
            Mode::Unreplicated,
            BackendKind::Redis,
            Some(FrontProxy::Haproxy),
        )
        .expect("refused");
        assert!(why.contains("haproxy"), "{why}");
        for web in [
            BackendKind::Builtin,
            BackendKind::Nginx,
            BackendKind::Apache2,
        ] {
            assert!(web.speaks_http());
            for mode in [Mode::Unreplicated, Mode::Simplex, Mode::Duplex] {
                assert_eq!(backend_refusal(mode, web, None), None);
            }
        }
    }
}
