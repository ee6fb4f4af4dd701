//! Service addresses through rtnetlink (no `ip` subprocess: that costs ~3.5 ms a call, one
//! netlink request a few tens of microseconds).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::AddressFamily;
use rtnetlink::Handle;

use crate::OsError;

/// An interface as the daemon needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// All zero for interfaces without an Ethernet address (`lo` has one of zeros anyway).
    pub mac: [u8; 6],
    /// IFF_UP: administratively up (says nothing about carrier).
    pub up: bool,
}

/// A route-netlink socket of the network namespace of the thread that opened it. Clones share
/// the socket.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The interface address of an IPv4 address message: IFA_LOCAL, or IFA_ADDRESS when the kernel
/// gave only that. (IFA_ADDRESS is the peer on point-to-point links, so IFA_LOCAL comes first.)
fn local_ipv4(message: &AddressMessage) -> Option<Ipv4Addr> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        })
    })
}

/// Upper bound on copies of one address removed in one call (the kernel removes one per request;
/// copies differ by prefix length, and nobody sensible has more than a couple).
const MAX_COPIES_REMOVED: usize = 16;

impl Netlink {
    /// Opens the socket in the calling thread's network namespace; its connection task runs on
    /// the current tokio runtime (spawned, so it lives as long as that runtime).
    pub async fn new() -> Result<Netlink, OsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OsError::NoRuntime {
            what: "opening a route netlink socket".to_string(),
        })?;
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| OsError::io("opening a route netlink socket", e))?;
        runtime.spawn(connection);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for the other kernel edges that share this socket.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Looks an interface up by name in this socket's namespace.
    pub async fn link_by_name(&self, name: &str) -> Result<Link, OsError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let message = match links.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(OsError::NoSuchInterface(name.to_string())),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {
                return Err(OsError::NoSuchInterface(name.to_string()))
            }
            Err(source) => {
                return Err(OsError::Netlink {
                    what: format!("looking up interface {name}"),
                    source,
                })
            }
        };
        let mut mac = [0u8; 6];
        for attr in &message.attributes {
            if let LinkAttribute::Address(bytes) = attr {
                if bytes.len() == 6 {
                    mac.copy_from_slice(bytes);
                }
            }
        }
        Ok(Link {
            index: message.header.index,
            mac,
            up: message.header.flags.contains(LinkFlags::Up),
        })
    }

    /// Adds `ip/prefix_len` to the interface. Already present with this prefix length is fine
    /// (the kernel's EEXIST); the same address with another prefix length is a second entry.
    /// One netlink round trip.
    pub async fn add_address(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), OsError> {
        match self
            .handle
            .address()
            .add(ifindex, IpAddr::V4(ip), prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(OsError::Netlink {
                what: format!("adding {ip}/{prefix_len} to interface index {ifindex}"),
                source,
            }),
        }
    }

    /// Removes `ip` from the interface; absent is fine, and so is a vanished interface (the
    /// address is gone with it). Every copy of the address is removed whatever its prefix
    /// length (`prefix_len` only names it in errors): a node giving the address up must not
    /// keep answering for it through a copy someone added by hand.
    ///
    /// Note: removing a *primary* address also removes the secondaries of its subnet unless
    /// `net/ipv4/conf/IF/promote_secondaries` is 1. A service address normally sits beside the
    /// node's own address, as a secondary, so this does not arise.
    pub async fn remove_address(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), OsError> {
        for _ in 0..MAX_COPIES_REMOVED {
            // IFA_LOCAL without IFA_ADDRESS: the kernel matches the address alone, not the
            // prefix, and no dump is needed first. It answers EADDRNOTAVAIL once none is left.
            let mut message = AddressMessage::default();
            message.header.family = AddressFamily::Inet;
            message.header.index = ifindex;
            message.header.prefix_len = prefix_len;
            message
                .attributes
                .push(AddressAttribute::Local(IpAddr::V4(ip)));
            match self.handle.address().del(message).execute().await {
                Ok(()) => continue,
                Err(e)
                    if matches!(
                        errno(&e),
                        Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ENODEV)
                    ) =>
                {
                    return Ok(())
                }
                Err(source) => {
                    return Err(OsError::Netlink {
                        what: format!("removing {ip}/{prefix_len} from interface index {ifindex}"),
                        source,
                    })
                }
            }
        }
        Err(OsError::Unexpected {
            what: format!(
                "removing {ip}/{prefix_len} from interface index {ifindex}: still present after \
                 {MAX_COPIES_REMOVED} removals (is something re-adding it?)"
            ),
        })
    }

    /// The IPv4 addresses of the interface with their prefix lengths, in kernel order. An
    /// interface that does not exist has none.
    pub async fn addresses(&self, ifindex: u32) -> Result<Vec<(Ipv4Addr, u8)>, OsError> {
        let mut request = self.handle.address().get().set_link_index_filter(ifindex);
        // Family INET makes the kernel dump IPv4 only; the index filter runs in user space.
        request.message_mut().header.family = AddressFamily::Inet;
        let mut stream = request.execute();
        let mut found = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(message)) => {
                    if message.header.index != ifindex {
                        continue;
                    }
                    if let Some(ip) = local_ipv4(&message) {
                        found.push((ip, message.header.prefix_len));
                    }
                }
                Ok(None) => return Ok(found),
                Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(found),
                Err(source) => {
                    return Err(OsError::Netlink {
                        what: format!("listing addresses of interface index {ifindex}"),
                        source,
                    })
                }
            }
        }
    }

    /// Whether `ip` is assigned to the interface, whatever its prefix length.
    pub async fn has_address(&self, ifindex: u32, ip: Ipv4Addr) -> Result<bool, OsError> {
        Ok(self
            .addresses(ifindex)
            .await
            .map_err(|e| match e {
                OsError::Netlink { source, .. } => OsError::Netlink {
                    what: format!("checking for {ip} on interface index {ifindex}"),
                    source,
                },
                other => other,
            })?
            .iter()
            .any(|(a, _)| *a == ip))
    }
}
