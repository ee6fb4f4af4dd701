//! The kernel edges of the link relay (issue 19; docs/design.md, Link relay): the links'
//! carrier and operational state as netlink events, ARP probes that find a black hole, and
//! what a relay installs: host routes, proxy ARP entries, per-interface forwarding, and on the
//! node that relays its own traffic a policy rule sending it through the sibling.
//!
//! Every call is one netlink request (or one sysctl write); none polls.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage, State};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags};
use rtnetlink::packet_route::neighbour::{NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::garp::{parse_arp, ARP_REPLY};
use crate::OsError;

const ETH_P_ARP: u16 = 0x0806;

/// The kernel's operational state of an interface (RFC 2863), as netlink gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperStatus {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
}

/// What the kernel says of one interface, from a dump or an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    pub index: u32,
    pub name: String,
    /// `IFLA_CARRIER`, when the message carried it.
    pub carrier: Option<bool>,
    /// `IFLA_OPERSTATE`, when the message carried it.
    pub oper: Option<OperStatus>,
    /// The interface was deleted.
    pub removed: bool,
}

fn link_status(message: &LinkMessage, removed: bool) -> Option<LinkStatus> {
    let mut name = None;
    let mut carrier = None;
    let mut oper = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Carrier(c) => carrier = Some(*c != 0),
            LinkAttribute::OperState(s) => {
                oper = Some(match s {
                    State::Up => OperStatus::Up,
                    State::Down => OperStatus::Down,
                    State::LowerLayerDown => OperStatus::LowerLayerDown,
                    State::Testing => OperStatus::Testing,
                    State::Dormant => OperStatus::Dormant,
                    State::NotPresent => OperStatus::NotPresent,
                    _ => OperStatus::Unknown,
                })
            }
            _ => {}
        }
    }
    Some(LinkStatus {
        index: message.header.index,
        name: name?,
        carrier,
        oper,
        removed,
    })
}

/// A route-netlink socket subscribed to the link group: the kernel sends a message at every
/// change of any interface's flags, carrier or operational state.
pub struct LinkEvents {
    handle: Handle,
    messages: UnboundedReceiver<(
        NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
}

impl LinkEvents {
    /// Subscribes in the calling thread's network namespace; the connection runs on the
    /// current tokio runtime.
    pub fn open() -> Result<LinkEvents, OsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OsError::NoRuntime {
            what: "subscribing to link events".to_string(),
        })?;
        let (mut connection, handle, messages) = rtnetlink::new_connection()
            .map_err(|e| OsError::io("opening a route netlink socket for link events", e))?;
        let groups = rtnetlink::sys::SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK);
        connection
            .socket_mut()
            .socket_mut()
            .bind(&groups)
            .map_err(|e| OsError::io("subscribing to the link multicast group", e))?;
        runtime.spawn(connection);
        Ok(LinkEvents { handle, messages })
    }

    /// Every interface's status now (subscribe first, then dump: a change between the two is
    /// seen as an event after the dump, never lost).
    pub async fn dump(&self) -> Result<Vec<LinkStatus>, OsError> {
        let mut links = self.handle.link().get().execute();
        let mut found = Vec::new();
        loop {
            match links.try_next().await {
                Ok(Some(message)) => found.extend(link_status(&message, false)),
                Ok(None) => return Ok(found),
                Err(source) => {
                    return Err(OsError::Netlink {
                        what: "listing the interfaces".to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// The next change; `None` when the socket closed.
    pub async fn next(&mut self) -> Option<LinkStatus> {
        loop {
            let (message, _) = self.messages.next().await?;
            let status = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    link_status(&m, false)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    link_status(&m, true)
                }
                _ => None,
            };
            if status.is_some() {
                return status;
            }
        }
    }
}

/// ARP probes of one interface's neighbours. A probe is an RFC 5227 ARP probe (sender IP
/// 0.0.0.0): the neighbour answers it, yet no host updates its cache from it, so probing a
/// link whose node's address a sibling answers for meanwhile does not take the address back.
pub struct ArpProber {
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
}

impl ArpProber {
    pub fn open(ifindex: u32, mac: [u8; 6]) -> Result<ArpProber, OsError> {
        let fd = crate::garp::packet_socket(ETH_P_ARP.to_be(), ifindex, "probing neighbours")?;
        Ok(ArpProber { fd, ifindex, mac })
    }

    /// Sends one probe to each target; a full device queue is an error, never a wait.
    pub fn send_round(&self, targets: &[Ipv4Addr]) -> Result<(), OsError> {
        for target in targets {
            let frame = crate::garp::probe_frame(self.mac, *target);
            crate::garp::send_broadcast(&self.fd, self.ifindex, &frame).map_err(|e| {
                OsError::io(
                    format!(
                        "sending an ARP probe for {target} on interface index {}",
                        self.ifindex
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// Reads every frame waiting; true when one is a target's answer to this prober.
    pub fn drain_answers(&self, targets: &[Ipv4Addr]) -> Result<bool, OsError> {
        let mut answered = false;
        let mut buf = [0u8; 128];
        loop {
            // SAFETY: buf is valid for its length; the socket is non-blocking.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(answered),
                    Some(libc::EINTR) => continue,
                    _ => Err(OsError::io(
                        format!("reading ARP answers on interface index {}", self.ifindex),
                        err,
                    )),
                };
            }
            if let Some(arp) = parse_arp(&buf[..n as usize]) {
                if arp.opcode == ARP_REPLY
                    && arp.target_mac == self.mac
                    && targets.contains(&arp.sender_ip)
                {
                    answered = true;
                }
            }
        }
    }
}

impl AsRawFd for ArpProber {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Routes, proxy ARP entries and policy rules of the relay, through one netlink socket.
#[derive(Clone, Debug)]
pub struct RelayKernel {
    handle: Handle,
}

impl RelayKernel {
    pub fn new(netlink: &crate::addr::Netlink) -> RelayKernel {
        RelayKernel {
            handle: netlink.handle().clone(),
        }
    }

    fn host_route(
        address: Ipv4Addr,
        next_hop: Ipv4Addr,
        ifindex: u32,
    ) -> rtnetlink::packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(address, 32)
            .gateway(next_hop)
            .output_interface(ifindex)
            .build()
    }

    /// `ip route replace ADDRESS/32 via NEXT_HOP dev IF`.
    pub async fn add_host_route(
        &self,
        address: Ipv4Addr,
        next_hop: Ipv4Addr,
        ifindex: u32,
    ) -> Result<(), OsError> {
        self.handle
            .route()
            .add(Self::host_route(address, next_hop, ifindex))
            .replace()
            .execute()
            .await
            .map_err(|source| OsError::Netlink {
                what: format!(
                    "adding the route {address}/32 via {next_hop} on interface index {ifindex}"
                ),
                source,
            })
    }

    /// Removes the route; absent is fine.
    pub async fn remove_host_route(
        &self,
        address: Ipv4Addr,
        next_hop: Ipv4Addr,
        ifindex: u32,
    ) -> Result<(), OsError> {
        match self
            .handle
            .route()
            .del(Self::host_route(address, next_hop, ifindex))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH) | Some(libc::ENODEV)) => Ok(()),
            Err(source) => Err(OsError::Netlink {
                what: format!(
                    "removing the route {address}/32 via {next_hop} on interface index {ifindex}"
                ),
                source,
            }),
        }
    }

    /// `ip neigh replace proxy ADDRESS dev IF`: the interface answers ARP for the address.
    pub async fn add_proxy_arp(&self, address: Ipv4Addr, ifindex: u32) -> Result<(), OsError> {
        self.handle
            .neighbours()
            .add(ifindex, IpAddr::V4(address))
            .flags(NeighbourFlags::Proxy)
            .replace()
            .execute()
            .await
            .map_err(|source| OsError::Netlink {
                what: format!("adding proxy ARP for {address} on interface index {ifindex}"),
                source,
            })
    }

    /// Removes the proxy ARP entry; absent is fine.
    pub async fn remove_proxy_arp(&self, address: Ipv4Addr, ifindex: u32) -> Result<(), OsError> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = ifindex;
        message.header.flags = NeighbourFlags::Proxy;
        message.header.state = NeighbourState::Permanent;
        message.header.kind = RouteType::Unspec;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                address,
            )));
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
            Err(source) => Err(OsError::Netlink {
                what: format!("removing proxy ARP for {address} on interface index {ifindex}"),
                source,
            }),
        }
    }

    /// Deletes every neighbour entry of interface `ifindex` but permanent and proxy ones:
    /// `ip neigh flush dev IF`. Why: once a link loses its carrier, the kernel forgets its
    /// neighbours, and a packet routed there before the relay took over waits in a new
    /// entry's queue for an ARP answer that cannot come (three seconds until the entry
    /// fails). TCP will not send such a segment again while it is queued in the host
    /// (`skb_still_in_host_queue`), so a stream held there stalls for seconds even though
    /// its route now goes through the sibling. Deleting the entry drops what it holds, and
    /// the next retransmission takes the relayed route. Returns how many were deleted.
    pub async fn flush_neighbours(&self, ifindex: u32) -> Result<usize, OsError> {
        let mut listed = self
            .handle
            .neighbours()
            .get()
            .set_family(rtnetlink::IpVersion::V4)
            .execute();
        let mut doomed = Vec::new();
        loop {
            match listed.try_next().await {
                Ok(Some(entry)) => {
                    let keep = entry.header.ifindex != ifindex
                        || entry.header.flags.contains(NeighbourFlags::Proxy)
                        || entry.header.state == NeighbourState::Permanent
                        || entry.header.state == NeighbourState::Noarp;
                    if !keep {
                        doomed.push(entry);
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(OsError::Netlink {
                        what: format!("listing the neighbours of interface index {ifindex}"),
                        source,
                    })
                }
            }
        }
        let mut deleted = 0;
        for entry in doomed {
            match self.handle.neighbours().del(entry).execute().await {
                Ok(()) => deleted += 1,
                // Gone meanwhile (failed, or replaced).
                Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => {}
                Err(source) => {
                    return Err(OsError::Netlink {
                        what: format!("deleting a neighbour of interface index {ifindex}"),
                        source,
                    })
                }
            }
        }
        Ok(deleted)
    }

    /// Sends every packet this host does not deliver locally through `via` on `ifindex`:
    /// `ip route replace default via VIA dev IF table TABLE` and `ip rule add priority PRIORITY
    /// lookup TABLE`, ahead of the main table, whose routes still name the dead public link
    /// (a link without carrier keeps its connected routes).
    pub async fn route_all_through(
        &self,
        via: Ipv4Addr,
        ifindex: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), OsError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(via)
            .output_interface(ifindex)
            .table_id(table)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|source| OsError::Netlink {
                what: format!("adding the default route via {via} in table {table}"),
                source,
            })?;
        match self
            .handle
            .rule()
            .add()
            .v4()
            .table_id(table)
            .priority(priority)
            .action(rtnetlink::packet_route::rule::RuleAction::ToTable)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(OsError::Netlink {
                what: format!("adding the rule priority {priority} lookup {table}"),
                source,
            }),
        }
    }

    /// Undoes [`Self::route_all_through`]; absent is fine.
    pub async fn stop_routing_through(&self, table: u32, priority: u32) -> Result<(), OsError> {
        let mut rules = self.handle.rule().get(rtnetlink::IpVersion::V4).execute();
        let mut found = Vec::new();
        loop {
            match rules.try_next().await {
                Ok(Some(rule)) => {
                    let priority_matches = rule.attributes.iter().any(|a| {
                        matches!(a, rtnetlink::packet_route::rule::RuleAttribute::Priority(p) if *p == priority)
                    });
                    if priority_matches {
                        found.push(rule);
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(OsError::Netlink {
                        what: "listing the policy rules".to_string(),
                        source,
                    })
                }
            }
        }
        for rule in found {
            match self.handle.rule().del(rule).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(OsError::Netlink {
                        what: format!("removing the rule priority {priority}"),
                        source,
                    })
                }
            }
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(table)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(()),
            Err(source) => Err(OsError::Netlink {
                what: format!("removing the default route of table {table}"),
                source,
            }),
        }
    }
}

/// `net.ipv4.conf.IF.forwarding`.
pub fn set_forwarding(interface: &str, on: bool) -> Result<(), OsError> {
    crate::sysctl::write(
        &format!("net/ipv4/conf/{interface}/forwarding"),
        if on { "1" } else { "0" },
    )
}
