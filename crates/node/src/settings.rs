//! The daemon's view of its configuration: the parsed file (steadfast_core::config) turned into
//! what the loop needs (resolved key, election parameters, addresses, checks).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use steadfast_core::config::{self, Config, Mode};
use steadfast_core::election::ElectionConfig;
use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::replication_seal::Protection;
use steadfast_core::NodeId;

use crate::health::Check;
use crate::hooks::Hook;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    pub name: String,
    pub vip: Ipv4Addr,
    pub prefix_len: u8,
    pub interface: String,
    pub ports: Vec<u16>,
    pub mode: String,
    pub implemented: bool,
    /// The modes whose data plane owns VIP:port: simplex, duplex and active.
    pub proxied: bool,
    pub duplex: bool,
    /// Every member runs the (Redis) service; the primary orders updates and spreads reads.
    pub active: bool,
    pub backend: std::net::SocketAddr,
    pub stream_replies_above: u64,
    pub client_timeouts: steadfast_core::client_timer::ClientTimeouts,
    pub max_connections: Option<u32>,
    pub max_connections_per_source: Option<u32>,
    pub max_half_open_per_source: Option<u32>,
    pub max_request_bytes_held: Option<u64>,
    pub half_open_lifetime: Option<std::time::Duration>,
    /// Active mode: when replicas run updates, and which serve reads (the defaults in the
    /// other modes, where nothing reads them).
    pub delivery: steadfast_core::active_order::DeliveryStrategy,
    pub read_policy: steadfast_core::active_order::ReadPolicy,
}

pub struct Settings {
    pub node_id: NodeId,
    pub group_name: String,
    pub port: u16,
    pub key: AuthKey,
    pub election: ElectionConfig,
    /// See `Group::replication_stall`.
    pub replication_stall: Duration,
    /// What the replication stream's frames get after its handshake.
    pub replication_protection: Protection,
    pub voters: BTreeMap<NodeId, Ipv4Addr>,
    pub local_address: Ipv4Addr,
    pub services: Vec<ServiceSettings>,
    pub checks: Vec<Check>,
    pub hook: Option<Hook>,
    pub garp_count: u32,
    pub garp_spacing: Duration,
    pub refresh_on_heal: bool,
    pub control_socket: PathBuf,
    /// Where the Prometheus endpoint listens, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub realtime_priority: i32,
    /// Link relay (issue 19); `None`: off.
    pub relay: Option<config::Relay>,
}

/// The group key authenticates every heartbeat and replication frame: anyone who can read it
/// can speak for a member, anyone who can write it can split the group. Like sshd with a
/// private key, the daemon refuses a key file that anyone but its owner may read or write.
fn refuse_key_open_to_others(config: &Path, key: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key)
        .with_context(|| {
            format!(
                "{}: group.auth_key_file: reading the permissions of {}",
                config.display(),
                key.display()
            )
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{}: group.auth_key_file: {} has mode {mode:04o}, so other users of this host may \
             read or change the group key and forge heartbeats and replication frames; make it \
             readable by its owner only: chmod 600 {}",
            config.display(),
            key.display(),
            key.display()
        );
    }
    Ok(())
}

impl Settings {
    /// Reads, parses and validates `path`, and reads the key file it names.
    pub fn load(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let exists = |p: &Path| p.exists();
        let cfg = config::parse(&text, &path.display().to_string(), &exists, dir)
            .map_err(|errors| anyhow::anyhow!("{errors}"))?;
        Self::from_config(cfg, path)
    }

    fn from_config(cfg: Config, path: &Path) -> anyhow::Result<Settings> {
        let key_path = cfg.group.auth_key_file.clone();
        let key_bytes = std::fs::read(&key_path).with_context(|| {
            format!(
                "{}: group.auth_key_file: reading {}",
                path.display(),
                key_path.display()
            )
        })?;
        refuse_key_open_to_others(path, &key_path)?;
        let key = AuthKey::from_file_contents(&key_bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: group.auth_key_file: {}: {e}",
                path.display(),
                key_path.display()
            )
        })?;
        let voters: BTreeMap<NodeId, Ipv4Addr> = cfg.peer_addresses().into_iter().collect();
        let local_address = *voters
            .get(&cfg.node_id)
            .context("node_id is not a voter (the parser should have refused this)")?;
        let local_prefix = cfg
            .group
            .members
            .iter()
            .chain(cfg.group.witness.iter())
            .find(|m| m.id == cfg.node_id)
            .map(|m| m.prefix_len())
            .unwrap_or(32);
        let election = ElectionConfig {
            me: cfg.node_id,
            members: cfg.group.members.iter().map(|m| m.id).collect(),
            witness: cfg.group.witness.as_ref().map(|w| w.id),
            heartbeat_interval: cfg.group.heartbeat_interval,
            miss_count: cfg.group.miss_count,
            preempt: cfg.group.preempt,
            two_node: cfg.group.two_node,
            holder_grace: cfg.group.holder_grace,
        };
        let services = cfg
            .services
            .iter()
            .map(|s| ServiceSettings {
                name: s.name.clone(),
                vip: s.vip,
                prefix_len: local_prefix,
                interface: s.interface.clone(),
                ports: s.ports.clone(),
                mode: s.mode.as_str().to_string(),
                implemented: true,
                proxied: matches!(s.mode, Mode::Simplex | Mode::Duplex | Mode::Active),
                duplex: s.mode == Mode::Duplex,
                active: s.mode == Mode::Active,
                backend: s.backend,
                stream_replies_above: s.stream_replies_above,
                client_timeouts: steadfast_core::client_timer::ClientTimeouts {
                    header: s.client_header_timeout,
                    idle: s.client_idle_timeout,
                },
                max_connections: s.max_connections,
                max_connections_per_source: s.max_connections_per_source,
                max_half_open_per_source: s.max_half_open_per_source,
                max_request_bytes_held: s.max_request_bytes_held,
                half_open_lifetime: s
                    .half_open_lifetime_ms
                    .map(std::time::Duration::from_millis),
                delivery: s.delivery.unwrap_or_default(),
                read_policy: s.read_policy.unwrap_or_default(),
            })
            .collect();
        let checks = cfg.health_checks.clone();
        Ok(Settings {
            node_id: cfg.node_id,
            group_name: cfg.group.name.clone(),
            port: cfg.group.port,
            replication_stall: cfg.group.replication_stall,
            replication_protection: if cfg.group.replication_encryption {
                Protection::Encrypted
            } else {
                Protection::Authenticated
            },
            key,
            voters,
            local_address,
            services,
            checks,
            hook: cfg.notify.as_ref().map(|n| Hook {
                command: n.command.clone(),
                timeout: n.timeout,
            }),
            garp_count: cfg.arp.gratuitous_count,
            garp_spacing: cfg.arp.gratuitous_spacing,
            refresh_on_heal: cfg.arp.refresh_on_heal,
            control_socket: cfg.control.socket.clone(),
            metrics_listen: cfg.metrics.as_ref().map(|m| m.listen),
            realtime_priority: 10,
            relay: cfg.relay.clone(),
            election,
        })
    }

    pub fn is_witness(&self) -> bool {
        self.election.is_witness()
    }

    /// Modes the parser knows but this build does not run yet are refused with a clear message.
    pub fn refuse_unimplemented_modes(&self, path: &Path) -> anyhow::Result<()> {
        for s in &self.services {
            if !s.implemented {
                bail!(
                    "{}: service {}: mode {} is not implemented yet (unreplicated, simplex, duplex and active are)",
                    path.display(),
                    s.name,
                    s.mode
                );
            }
        }
        let proxied: Vec<&ServiceSettings> = self.services.iter().filter(|s| s.proxied).collect();
        if proxied.len() > 1 {
            bail!(
                "{}: services {} and {} are both simplex/duplex/active; this version runs \
                 one such service per node",
                path.display(),
                proxied[0].name,
                proxied[1].name
            );
        }
        Ok(())
    }

    /// The data plane's view of the (single) simplex or duplex service.
    pub fn plane_settings(&self) -> Option<crate::plane::PlaneSettings> {
        let service = self.services.iter().find(|s| s.proxied)?;
        let members = self
            .election
            .members
            .iter()
            .filter_map(|id| self.voters.get(id).map(|addr| (*id, *addr)))
            .collect();
        Some(crate::plane::PlaneSettings {
            hook: self.hook.clone(),
            hook_counters: Default::default(),
            group_name: self.group_name.clone(),
            node_id: self.node_id,
            key: self.key.clone(),
            local_address: self.local_address,
            replication_port: self.port + crate::plane::REPLICATION_PORT_OFFSET,
            replication_stall: self.replication_stall,
            detection: self.election.heartbeat_interval * self.election.miss_count,
            protection: self.replication_protection,
            members,
            service: crate::plane::PlaneService {
                name: service.name.clone(),
                vip: service.vip,
                prefix_len: service.prefix_len,
                ports: service.ports.clone(),
                interface: service.interface.clone(),
                duplex: service.duplex,
                active: service.active,
                backend: service.backend,
                stream_above: service.stream_replies_above,
                client_timeouts: service.client_timeouts,
                max_connections: service.max_connections,
                max_connections_per_source: service.max_connections_per_source,
                max_half_open_per_source: service.max_half_open_per_source,
                max_request_bytes_held: service.max_request_bytes_held,
                half_open_lifetime: service.half_open_lifetime,
                delivery: service.delivery,
                read_policy: service.read_policy,
                garp_count: self.garp_count,
                garp_spacing: self.garp_spacing,
            },
        })
    }

    /// Settings a reload cannot change in a running daemon.
    pub fn restart_needed_for(&self, running: &Settings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.node_id != running.node_id {
            changed.push("node_id");
        }
        // preempt and holder_grace_ms change live (see `Event::Retuned`).
        let fixed = |e: &ElectionConfig| ElectionConfig {
            preempt: false,
            holder_grace: Duration::ZERO,
            ..e.clone()
        };
        if self.voters != running.voters || fixed(&self.election) != fixed(&running.election) {
            changed.push(
                "group (its members, witness, heartbeat_interval_ms, miss_count or two_node)",
            );
        }
        if self.group_name != running.group_name {
            changed.push("group.name");
        }
        if !self.key.same_as(&running.key) {
            changed.push("the group key (group.auth_key_file)");
        }
        if self.port != running.port {
            changed.push("group.port");
        }
        if self.replication_stall != running.replication_stall {
            changed.push("group.replication_stall_ms");
        }
        if self.replication_protection != running.replication_protection {
            changed.push("group.replication_encryption");
        }
        if self.services != running.services {
            changed.push("service");
        }
        if self.relay != running.relay {
            changed.push("relay");
        }
        if self.control_socket != running.control_socket {
            changed.push("control.socket");
        }
        if self.metrics_listen != running.metrics_listen {
            changed.push("metrics.listen");
        }
        changed
    }
}
