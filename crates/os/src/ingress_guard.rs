//! The duplex primary's ingress guard (docs/design.md, I1): while a backup receives first,
//! frames to the VIP's service ports that did not come through the backup (source MAC) never
//! reach the primary's TCP unlogged, so a stray or forged ARP entry in a client can never bypass
//! the log. Such frames are bounced to the backup at the interface's ingress (netdev family,
//! both MACs rewritten so the switch learns nothing false): the backup logs and forwards them
//! like any other. Clients whose ARP entry still names the primary (the moments after a backup
//! joins, before its gratuitous ARP lands) lose nothing and wait for no retransmission. What
//! the bounce cannot take (it is removed, or the frame is not IPv4) the `ip` prerouting chain
//! drops. Also a "drop everything to the service ports" state for a planned hand-over.
//!
//! nftables over netlink ([`crate::nftables`]) on a socket the guard keeps: an install or
//! a role change is one transaction, never on the per-packet path (that is the kernel's).

use std::net::Ipv4Addr;

use crate::nftables::model::key_type;
use crate::nftables::{
    AddressField, Batch, Chain, CmpOp, Family, Hook, NftError, NftSocket, PortMatch, RuleBuilder,
    Table, Verdict,
};

const COUNTER: &str = "guard_dropped";
const BOUNCE_COUNTER: &str = "guard_bounced";

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("ingress guard: {interface:?} is not an interface name")]
    InterfaceName { interface: String },
    #[error("ingress guard: no interface {interface} in this network namespace")]
    NoSuchInterface { interface: String },
    #[error("ingress guard on {interface}: {state:?} needs at least one service port")]
    NoPorts {
        interface: String,
        state: GuardState,
    },
    #[error("ingress guard on {interface}: {what}: {source}")]
    Nftables {
        interface: String,
        what: String,
        #[source]
        source: NftError,
    },
}

/// The guard's counters: client frames that did not come through the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuardCounts {
    /// Sent on to the backup to be logged first.
    pub bounced: u64,
    /// Dropped (not IPv4, or no backup to send them to).
    pub dropped: u64,
}

/// What the guard lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardState {
    /// Everything: the primary serves the VIP itself.
    Open,
    /// Only frames whose source MAC is the backup's.
    OnlyFrom([u8; 6]),
    /// Nothing to the service ports.
    DropAll,
}

/// The guard's nftables tables; removed on drop.
pub struct IngressGuard {
    /// Made in the guard's network namespace: every change goes through it.
    socket: NftSocket,
    /// The group's tables: `ip` (the guard) and `netdev` (the bounce).
    table: String,
    bounce_table: String,
    interface: String,
    /// The interface's index in the guard's namespace, for `fwd to` (resolved at install, as
    /// the socket is bound then: later calls may come from any thread).
    interface_index: u32,
    own_mac: [u8; 6],
    vip: Ipv4Addr,
    ports: Vec<u16>,
    state: GuardState,
    removed: bool,
}

fn interface_index(interface: &str) -> Result<u32, GuardError> {
    let name = std::ffi::CString::new(interface).map_err(|_| GuardError::InterfaceName {
        interface: interface.to_string(),
    })?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(GuardError::NoSuchInterface {
            interface: interface.to_string(),
        }),
        index => Ok(index),
    }
}

impl IngressGuard {
    /// Creates the tables of `group`'s guard (replacing ones left by a previous life), open, in
    /// the calling thread's network namespace, where `interface` must exist.
    pub fn install(
        group: &str,
        interface: &str,
        own_mac: [u8; 6],
        vip: Ipv4Addr,
        ports: &[u16],
    ) -> Result<IngressGuard, GuardError> {
        if interface.is_empty()
            || interface.len() > 15
            || !interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(GuardError::InterfaceName {
                interface: interface.to_string(),
            });
        }
        let nftables = |what: &str| {
            let what = what.to_string();
            move |source| GuardError::Nftables {
                interface: interface.to_string(),
                what,
                source,
            }
        };
        let table = crate::group_table("guard", group);
        let bounce_table = crate::group_table("bounce", group);
        let interface_index = interface_index(interface)?;
        let mut socket = NftSocket::open().map_err(nftables("opening a netlink socket"))?;
        let mut batch = Batch::new();
        batch
            .remove_table(Family::Ip, &table)
            .add_table(Table::new(Family::Ip, &table))
            .add_counter(Family::Ip, &table, COUNTER)
            // Priority -300: before conntrack (-200), so a dropped frame leaves no trace in TCP.
            .add_chain(
                Chain::filter(
                    Family::Ip,
                    &table,
                    "prerouting",
                    Hook::Prerouting,
                    -300,
                    None,
                )
                .expect("ip has a prerouting hook"),
            )
            .remove_table(Family::Netdev, &bounce_table)
            .add_table(Table::new(Family::Netdev, &bounce_table))
            .add_counter(Family::Netdev, &bounce_table, BOUNCE_COUNTER)
            .add_chain(
                Chain::filter(
                    Family::Netdev,
                    &bounce_table,
                    "ingress",
                    Hook::Ingress,
                    -500,
                    Some(interface),
                )
                .expect("netdev has an ingress hook"),
            );
        socket
            .apply(&batch, "installing the ingress guard")
            .map_err(nftables("installing the tables"))?;
        Ok(IngressGuard {
            socket,
            table,
            bounce_table,
            interface: interface.to_string(),
            interface_index,
            own_mac,
            vip,
            ports: ports.to_vec(),
            state: GuardState::Open,
            removed: false,
        })
    }

    pub fn state(&self) -> GuardState {
        self.state
    }

    fn nftables_error(&self, what: String) -> impl FnOnce(NftError) -> GuardError + '_ {
        move |source| GuardError::Nftables {
            interface: self.interface.clone(),
            what,
            source,
        }
    }

    /// `tcp dport PORT` or `tcp dport { P1, P2, ... }` (an anonymous set of the rule's table).
    fn service_ports(&self, batch: &mut Batch, family: Family, table: &str) -> PortMatch {
        match self.ports[..] {
            [port] => PortMatch::One(port),
            _ => PortMatch::InSet(
                batch.add_anonymous_set(
                    family,
                    table,
                    key_type::INET_SERVICE,
                    self.ports
                        .iter()
                        .map(|p| p.to_be_bytes().to_vec())
                        .collect(),
                ),
            ),
        }
    }

    /// `iifname IF ip daddr VIP tcp dport PORTS` in the ip table.
    fn guarded_frames(&self, batch: &mut Batch) -> RuleBuilder {
        let ports = self.service_ports(batch, Family::Ip, &self.table);
        RuleBuilder::new(Family::Ip)
            .iifname(&self.interface)
            .ip_address(AddressField::Destination, CmpOp::Equal, self.vip)
            .tcp_destination_port(ports)
    }

    /// Sets the guard to `state` (one nftables transaction).
    pub fn apply(&mut self, state: GuardState) -> Result<(), GuardError> {
        if state != GuardState::Open && self.ports.is_empty() {
            return Err(GuardError::NoPorts {
                interface: self.interface.clone(),
                state,
            });
        }
        // One transaction: the chain is never empty between the old rule and the new.
        let mut batch = Batch::new();
        batch
            .flush_chain(Family::Ip, &self.table, "prerouting")
            .flush_chain(Family::Netdev, &self.bounce_table, "ingress");
        match state {
            GuardState::Open => {}
            GuardState::OnlyFrom(backup) => {
                let ports = self.service_ports(&mut batch, Family::Netdev, &self.bounce_table);
                batch.add_rule(
                    RuleBuilder::new(Family::Netdev)
                        .ether_address(AddressField::Source, CmpOp::NotEqual, backup)
                        .ether_type_ipv4()
                        .ip_address(AddressField::Destination, CmpOp::Equal, self.vip)
                        .tcp_destination_port(ports)
                        .named_counter(BOUNCE_COUNTER)
                        .set_ether_address(AddressField::Source, self.own_mac)
                        .set_ether_address(AddressField::Destination, backup)
                        .forward_to(self.interface_index)
                        .build(&self.bounce_table, "ingress"),
                );
                let drop = self
                    .guarded_frames(&mut batch)
                    .ether_address(AddressField::Source, CmpOp::NotEqual, backup)
                    .named_counter(COUNTER)
                    .verdict(Verdict::Drop)
                    .build(&self.table, "prerouting");
                batch.add_rule(drop);
            }
            GuardState::DropAll => {
                let drop = self
                    .guarded_frames(&mut batch)
                    .named_counter(COUNTER)
                    .verdict(Verdict::Drop)
                    .build(&self.table, "prerouting");
                batch.add_rule(drop);
            }
        }
        let what = format!("setting the ingress guard to {state:?}");
        self.socket
            .apply(&batch, &what)
            .map_err(self.nftables_error(what))?;
        self.state = state;
        Ok(())
    }

    /// Admit only frames forwarded by the backup with this MAC.
    pub fn allow_only_from(&mut self, backup_mac: [u8; 6]) -> Result<(), GuardError> {
        self.apply(GuardState::OnlyFrom(backup_mac))
    }

    /// Admit everything (no backup receives first).
    pub fn open(&mut self) -> Result<(), GuardError> {
        self.apply(GuardState::Open)
    }

    /// Drop every frame to the service ports (a takeover's gate).
    pub fn drop_all(&mut self) -> Result<(), GuardError> {
        self.apply(GuardState::DropAll)
    }

    /// Frames the guard has bounced to the backup (they came straight here) and dropped, since
    /// it was installed: the named counters, read from the kernel.
    pub fn counts(&mut self) -> Result<GuardCounts, GuardError> {
        let what = "reading the guard's counters".to_string();
        let bounced = self
            .socket
            .counter(Family::Netdev, &self.bounce_table, BOUNCE_COUNTER)
            .map_err(self.nftables_error(what.clone()))?;
        let dropped = self
            .socket
            .counter(Family::Ip, &self.table, COUNTER)
            .map_err(self.nftables_error(what))?;
        Ok(GuardCounts {
            bounced: bounced.packets,
            dropped: dropped.packets,
        })
    }

    fn remove_tables(&mut self) -> Result<(), GuardError> {
        let mut batch = Batch::new();
        batch
            .delete_table(Family::Ip, &self.table)
            .delete_table(Family::Netdev, &self.bounce_table);
        let what = "removing the guard".to_string();
        self.socket
            .apply(&batch, &what)
            .map_err(self.nftables_error(what))
    }

    /// Removes the tables.
    pub fn remove(mut self) -> Result<(), GuardError> {
        // Removed or beyond removing: the drop must not try again.
        self.removed = true;
        self.remove_tables()
    }
}

impl Drop for IngressGuard {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.remove_tables();
        }
    }
}
