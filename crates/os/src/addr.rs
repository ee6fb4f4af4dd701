//! Service addresses through rtnetlink (no `ip` subprocess: that costs ~3.5 ms a call).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::Handle;

use crate::OsError;

/// An interface as the daemon needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    pub up: bool,
}

/// A route-netlink socket of the current network namespace.
pub struct Netlink {
    handle: Handle,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Netlink {
    /// Opens the socket; its connection task runs on the current tokio runtime.
    pub async fn new() -> Result<Netlink, OsError> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| OsError::io("opening a route netlink socket", e))?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
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

    /// Adds `ip/prefix_len` to the interface; already present is fine.
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

    async fn find(&self, ifindex: u32, ip: Ipv4Addr) -> Result<Option<AddressMessage>, OsError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .set_address_filter(IpAddr::V4(ip))
            .execute();
        loop {
            match stream.try_next().await {
                Ok(Some(m)) => {
                    let matches = m.header.index == ifindex
                        && m.attributes.iter().any(|a| {
                            matches!(a, AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) if *a == ip)
                        });
                    if matches {
                        return Ok(Some(m));
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(None),
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
        Ok(self.find(ifindex, ip).await?.is_some())
    }

    /// Removes `ip` from the interface; absent is fine. The address is found by value, so a
    /// copy added by hand with another prefix length is removed too: the address is ours.
    pub async fn remove_address(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), OsError> {
        let Some(message) = self.find(ifindex, ip).await? else {
            return Ok(());
        };
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    errno(&e),
                    Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(source) => Err(OsError::Netlink {
                what: format!("removing {ip}/{prefix_len} from interface index {ifindex}"),
                source,
            }),
        }
    }
}
