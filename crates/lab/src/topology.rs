//! The lab's shape: its name, its hosts, their namespaces and addresses, and the bridge that
//! joins them.
//!
//! A lab `NAME` is the namespace `NAME-sw`, which holds the bridge `br0` (so nothing of the lab
//! lives in the root namespace), and one namespace per host: `NAME-client`, `NAME-n1` …
//! `NAME-nN`, and `NAME-w` for the witness. Each host is joined to the bridge by a veth pair whose
//! end in the host is `eth0` and whose end in `NAME-sw` carries the host's short name (`client`,
//! `n1`, `w`), which is also where a link is cut. The addresses exist only inside the lab, so every
//! lab uses the same ones.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::system::{ip, namespace_exists};

pub const MAX_NODES: u8 = 9;
/// Keeps every name derived from the lab's short enough for the kernel and the tools.
pub const MAX_NAME_LEN: usize = 20;
pub const PREFIX_LEN: u8 = 24;
pub const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const WITNESS_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 9);
pub const WITNESS_NODE_ID: u32 = 100;
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// The service's port with a web backend (builtin, nginx, apache2).
pub const SERVICE_PORT: u16 = 80;
/// The service's port with the redis backend.
pub const REDIS_PORT: u16 = 6379;

/// The port clients reach at the VIP, which follows the backend: 6379 for redis, 80 for the
/// web backends. Behind a proxy the backend keeps the same port on the loopback address.
pub fn service_port(backend: crate::options::BackendKind) -> u16 {
    match backend {
        crate::options::BackendKind::Redis => REDIS_PORT,
        crate::options::BackendKind::Builtin
        | crate::options::BackendKind::Nginx
        | crate::options::BackendKind::Apache2 => SERVICE_PORT,
    }
}

/// The backend's listening address in a lab of `mode`: the service port itself when the VIP's
/// traffic reaches the backend directly; when the node's proxy owns VIP:port (simplex and
/// duplex), the service's own port on the loopback address (a server on another port would put
/// that port in the absolute URLs it writes, redirects, which clients of the VIP cannot reach).
pub fn backend_listen(
    mode: crate::options::Mode,
    backend: crate::options::BackendKind,
) -> std::net::SocketAddrV4 {
    use std::net::{Ipv4Addr, SocketAddrV4};
    let port = service_port(backend);
    match mode {
        crate::options::Mode::Unreplicated => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        crate::options::Mode::Simplex
        | crate::options::Mode::Duplex
        | crate::options::Mode::Active => SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
    }
}

/// The backend's listening address in a lab of `mode` whose members may run a front proxy of
/// the lab's own (unreplicated only): behind one, the backend moves where simplex and duplex
/// put it, and the proxy takes the service address.
pub fn backend_listen_behind(
    mode: crate::options::Mode,
    backend: crate::options::BackendKind,
    front_proxy: Option<crate::options::FrontProxy>,
) -> std::net::SocketAddrV4 {
    match front_proxy {
        Some(_) => {
            std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, service_port(backend))
        }
        None => backend_listen(mode, backend),
    }
}

/// Where the node's health check and the lab's readiness probe reach the backend.
pub fn backend_target(
    mode: crate::options::Mode,
    backend: crate::options::BackendKind,
) -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        backend_listen(mode, backend).port(),
    )
}
/// The bridge inside `NAME-sw`.
pub const BRIDGE: &str = "br0";
/// The interface of every host namespace, which also gets the VIP.
pub const HOST_INTERFACE: &str = "eth0";

/// The bridge of the private network between the members (labs with link relay), in `NAME-sw`.
pub const PRIVATE_BRIDGE: &str = "br1";
/// Each member's interface on the private network.
pub const PRIVATE_INTERFACE: &str = "eth1";

/// Member node `i`'s address on the private network: 10.78.0.(10 + i).
pub fn private_address(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 0, 10 + index)
}

/// The bridge-side end of member `host`'s private veth pair: its private cable.
pub fn private_port(host: Host) -> String {
    format!("{}p", host.short_name())
}

/// Member node `i`'s address: 10.77.0.(10 + i).
pub fn node_address(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + index)
}

/// A validated lab name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabName(String);

impl LabName {
    pub fn parse(name: &str) -> Result<Self, LabError> {
        let invalid = |reason| LabError::InvalidName {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("it is longer than 20 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid("only a-z, 0-9 and - are allowed"));
        }
        // A leading dash would be read as an option by `ip`.
        if name.starts_with('-') {
            return Err(invalid("it must start with a letter or a digit"));
        }
        Ok(LabName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace holding the bridge.
    pub fn switch_namespace(&self) -> String {
        format!("{}-sw", self.0)
    }

    /// Every namespace name a lab of this name can own, whether or not it exists.
    pub fn all_namespace_names(&self) -> Vec<String> {
        let mut names = vec![
            self.switch_namespace(),
            Host::Client.namespace(self),
            Host::Witness.namespace(self),
        ];
        names.extend((1..=MAX_NODES).map(|i| Host::Node(i).namespace(self)));
        names
    }

    /// The lab a namespace name would belong to, judged by its suffix only.
    pub fn owner_of_namespace(namespace: &str) -> Option<String> {
        let (lab, suffix) = namespace.rsplit_once('-')?;
        let ours = matches!(suffix, "sw" | "client" | "w")
            || Host::parse_short(suffix).is_some_and(|h| matches!(h, Host::Node(_)));
        (ours && LabName::parse(lab).is_ok()).then(|| lab.to_string())
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One host of a lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Host {
    /// Member node `n1` … `n9`.
    Node(u8),
    Witness,
    Client,
}

impl Host {
    /// `n1`, `w`, `client`: the host's short name, also its port name on the bridge.
    pub fn short_name(self) -> String {
        match self {
            Host::Node(i) => format!("n{i}"),
            Host::Witness => "w".to_string(),
            Host::Client => "client".to_string(),
        }
    }

    pub fn parse_short(short: &str) -> Option<Host> {
        match short {
            "w" => Some(Host::Witness),
            "client" => Some(Host::Client),
            _ => {
                let digits = short.strip_prefix('n')?;
                // "n01" would alias "n1"; only the canonical spelling is a name.
                if digits.len() != 1 {
                    return None;
                }
                let index: u8 = digits.parse().ok()?;
                (1..=MAX_NODES)
                    .contains(&index)
                    .then_some(Host::Node(index))
            }
        }
    }

    pub fn namespace(self, lab: &LabName) -> String {
        format!("{}-{}", lab.as_str(), self.short_name())
    }

    pub fn address(self) -> Ipv4Addr {
        match self {
            Host::Node(i) => node_address(i),
            Host::Witness => WITNESS_ADDRESS,
            Host::Client => CLIENT_ADDRESS,
        }
    }

    /// The voter id in the group configuration, for members and the witness.
    pub fn node_id(self) -> Option<u32> {
        match self {
            Host::Node(i) => Some(u32::from(i)),
            Host::Witness => Some(WITNESS_NODE_ID),
            Host::Client => None,
        }
    }

    pub fn is_member(self) -> bool {
        matches!(self, Host::Node(_))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short_name())
    }
}

/// The hosts of a lab with `nodes` members and, optionally, the witness: members first.
pub fn hosts_of(nodes: u8, witness: bool) -> Vec<Host> {
    let mut hosts: Vec<Host> = (1..=nodes).map(Host::Node).collect();
    if witness {
        hosts.push(Host::Witness);
    }
    hosts.push(Host::Client);
    hosts
}

/// Creates the switch namespace with its bridge, then each host's namespace, veth pair and
/// address. The caller tears everything down if this fails half way.
pub(crate) fn create(lab: &LabName, hosts: &[Host], private_network: bool) -> Result<(), LabError> {
    let sw = lab.switch_namespace();
    ip(&["netns", "add", &sw])?;
    ip(&["-n", &sw, "link", "set", "lo", "up"])?;
    add_bridge(&sw, BRIDGE)?;
    // A switch forwards frames as they are. With br_netfilter loaded the kernel would check
    // (and drop) malformed IPv4 on the bridge, which no real switch does: the hosts' own
    // handling of bad frames must be what the lab sees.
    crate::system::run_in_namespace(&sw, || {
        for key in [
            "bridge-nf-call-iptables",
            "bridge-nf-call-ip6tables",
            "bridge-nf-call-arptables",
        ] {
            let path = std::path::Path::new("/proc/sys/net/bridge").join(key);
            if path.exists() {
                let _ = std::fs::write(&path, "0");
            }
        }
    })?;
    for &host in hosts {
        let ns = host.namespace(lab);
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let port = BridgePort {
            switch: &sw,
            bridge: BRIDGE,
            port: &host.short_name(),
            host: &ns,
            interface: HOST_INTERFACE,
        };
        port.attach(&format!("{}/{PREFIX_LEN}", host.address()))?;
    }
    if private_network {
        create_private_network(lab, hosts)?;
    }
    Ok(())
}

/// The members' private network for link relay: a second bridge with a veth pair per member,
/// `eth1` in the member, so that a member whose public link fails still reaches its siblings.
fn create_private_network(lab: &LabName, hosts: &[Host]) -> Result<(), LabError> {
    let sw = lab.switch_namespace();
    add_bridge(&sw, PRIVATE_BRIDGE)?;
    for &host in hosts {
        let Host::Node(index) = host else { continue };
        let port = BridgePort {
            switch: &sw,
            bridge: PRIVATE_BRIDGE,
            port: &private_port(host),
            host: &host.namespace(lab),
            interface: PRIVATE_INTERFACE,
        };
        port.attach(&format!("{}/{PREFIX_LEN}", private_address(index)))?;
    }
    Ok(())
}

/// Adds `bridge` to the switch namespace `switch`, up. No STP (ports forward at once) and no
/// multicast snooping (nothing here needs it, and it would make the bridge's forwarding depend
/// on IGMP state).
fn add_bridge(switch: &str, bridge: &str) -> Result<(), LabError> {
    ip(&[
        "-n",
        switch,
        "link",
        "add",
        bridge,
        "type",
        "bridge",
        "stp_state",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    ip(&["-n", switch, "link", "set", bridge, "up"])?;
    Ok(())
}

/// A host's link to a bridge: a veth pair, `port` on `bridge` in the switch namespace and
/// `interface` in the host's namespace.
struct BridgePort<'a> {
    switch: &'a str,
    bridge: &'a str,
    port: &'a str,
    host: &'a str,
    interface: &'a str,
}

impl BridgePort<'_> {
    /// Creates the pair, both ends up, `address` (with its prefix) on the host's end.
    fn attach(&self, address: &str) -> Result<(), LabError> {
        let (sw, ns) = (self.switch, self.host);
        ip(&[
            "-n",
            sw,
            "link",
            "add",
            self.port,
            "type",
            "veth",
            "peer",
            "name",
            self.interface,
            "netns",
            ns,
        ])?;
        ip(&["-n", sw, "link", "set", self.port, "master", self.bridge])?;
        ip(&["-n", sw, "link", "set", self.port, "up"])?;
        ip(&["-n", ns, "addr", "add", address, "dev", self.interface])?;
        ip(&["-n", ns, "link", "set", self.interface, "up"])?;
        Ok(())
    }
}

/// The namespaces of this lab that exist now.
pub(crate) fn existing_namespaces(lab: &LabName) -> Vec<String> {
    lab.all_namespace_names()
        .into_iter()
        .filter(|ns| namespace_exists(ns))
        .collect()
}

/// Sets the bridge-side end of a host's veth pair down or up: the host's cable.
pub(crate) fn set_link(lab: &LabName, host: Host, up: bool) -> Result<(), LabError> {
    let state = if up { "up" } else { "down" };
    ip(&[
        "-n",
        &lab.switch_namespace(),
        "link",
        "set",
        &host.short_name(),
        state,
    ])
    .map(|_| ())
}

/// Member `host`'s private cable (labs with link relay) up or down, from the switch side.
pub(crate) fn set_private_link(lab: &LabName, host: Host, up: bool) -> Result<(), LabError> {
    let state = if up { "up" } else { "down" };
    ip(&[
        "-n",
        &lab.switch_namespace(),
        "link",
        "set",
        &private_port(host),
        state,
    ])
    .map(|_| ())
}

/// Whether the bridge-side end of each host's veth pair is administratively up, by port name.
pub(crate) fn link_states(lab: &LabName) -> Result<Vec<(String, bool)>, LabError> {
    let out = ip(&["-n", &lab.switch_namespace(), "-j", "link", "show"])?;
    let links: Vec<serde_json::Value> =
        serde_json::from_str(&out).map_err(|e| LabError::Command {
            command: format!("ip -n {} -j link show", lab.switch_namespace()),
            status: "unparsable output".into(),
            stderr: e.to_string(),
        })?;
    Ok(links
        .iter()
        .filter_map(|link| {
            let name = link.get("ifname")?.as_str()?.to_string();
            let up = link
                .get("flags")?
                .as_array()?
                .iter()
                .any(|f| f.as_str() == Some("UP"));
            Some((name, up))
        })
        .collect())
}

/// The IPv4 addresses (with prefix length) on `eth0` of a host namespace.
pub fn interface_addresses(namespace: &str) -> Result<Vec<(Ipv4Addr, u8)>, LabError> {
    addresses_on(namespace, HOST_INTERFACE)
}

/// The IPv4 addresses of `device` in `namespace` (a duplex primary keeps the VIP on `lo`).
pub fn addresses_on(namespace: &str, device: &str) -> Result<Vec<(Ipv4Addr, u8)>, LabError> {
    Ok(addresses_by_device(namespace, Some(device))?
        .into_iter()
        .map(|(_, addr, prefix)| (addr, prefix))
        .collect())
}

/// The IPv4 addresses of `device` (every device when `None`) in `namespace`, each with its
/// device, read in one listing: an address that moves from one device to another (a duplex
/// primary's VIP between `lo` and `eth0`, added to one before it leaves the other) is never
/// missed, as it could be between two listings.
pub fn addresses_by_device(
    namespace: &str,
    device: Option<&str>,
) -> Result<Vec<(String, Ipv4Addr, u8)>, LabError> {
    let mut args = vec!["-n", namespace, "-j", "-4", "addr", "show"];
    if let Some(device) = device {
        args.extend(["dev", device]);
    }
    let out = ip(&args)?;
    let parsed: Vec<serde_json::Value> =
        serde_json::from_str(&out).map_err(|e| LabError::Command {
            command: format!("ip {}", args.join(" ")),
            status: "unparsable output".into(),
            stderr: e.to_string(),
        })?;
    let mut addresses = Vec::new();
    for link in &parsed {
        let Some(infos) = link.get("addr_info").and_then(|a| a.as_array()) else {
            continue;
        };
        let name = link.get("ifname").and_then(|n| n.as_str()).unwrap_or("");
        for info in infos {
            let local = info.get("local").and_then(|l| l.as_str());
            let prefix = info.get("prefixlen").and_then(|p| p.as_u64());
            if let (Some(local), Some(prefix)) = (local, prefix) {
                if let (Ok(addr), Ok(prefix)) = (local.parse(), u8::try_from(prefix)) {
                    addresses.push((name.to_string(), addr, prefix));
                }
            }
        }
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(LabName::parse("lab-1").is_ok());
        assert!(LabName::parse("a2345678901234567890").is_ok());
        for bad in [
            "",
            "a23456789012345678901",
            "Lab",
            "la_b",
            "-lab",
            "l b",
            "lab/x",
        ] {
            assert!(LabName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn host_names_round_trip() {
        for host in hosts_of(9, true) {
            assert_eq!(Host::parse_short(&host.short_name()), Some(host));
        }
        for bad in ["n0", "n10", "n01", "x", "", "n"] {
            assert_eq!(Host::parse_short(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn namespaces_map_back_to_their_lab() {
        let lab = LabName::parse("t-1").unwrap();
        for ns in lab.all_namespace_names() {
            assert_eq!(LabName::owner_of_namespace(&ns).as_deref(), Some("t-1"));
        }
        assert_eq!(LabName::owner_of_namespace("docker"), None);
        assert_eq!(LabName::owner_of_namespace("x-n0"), None);
    }

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(Host::Node(1).address(), Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(Host::Node(9).address(), Ipv4Addr::new(10, 77, 0, 19));
        assert_eq!(Host::Witness.node_id(), Some(100));
        assert_eq!(Host::Client.node_id(), None);
    }

    #[test]
    fn the_service_port_follows_the_backend() {
        use crate::options::{BackendKind, FrontProxy, Mode};
        use std::net::SocketAddrV4;
        assert_eq!(service_port(BackendKind::Redis), 6379);
        for web in [
            BackendKind::Builtin,
            BackendKind::Nginx,
            BackendKind::Apache2,
        ] {
            assert_eq!(service_port(web), 80);
        }
        assert_eq!(
            backend_listen(Mode::Unreplicated, BackendKind::Redis),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 6379)
        );
        assert_eq!(
            backend_target(Mode::Unreplicated, BackendKind::Redis),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6379)
        );
        assert_eq!(
            backend_listen(Mode::Duplex, BackendKind::Nginx),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80)
        );
        assert_eq!(
            backend_listen_behind(
                Mode::Unreplicated,
                BackendKind::Builtin,
                Some(FrontProxy::Haproxy)
            ),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80)
        );
    }
}
