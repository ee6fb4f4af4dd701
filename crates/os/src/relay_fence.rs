//! The link relay's dead-man switch (issue 19: "a dead responder leaves nothing behind"), built
//! as the daemon's own fence ([`crate::fence`]) is: a persistent table drops the ARP frames and
//! the forwarded IPv4 packets of the addresses a responder relays for unless they carry
//! [`LIVE_MARK`], which an owner table on a socket the [`RelayFence`] keeps open sets. When the
//! daemon dies for any reason the kernel deletes the owner table with the socket, and from then
//! on its kernel neither answers ARP for those addresses (proxy ARP) nor forwards their traffic,
//! whatever routes and proxy entries the dead daemon left; the next start removes those (the
//! responder's owner table file).
//!
//! The mark is the daemon fence's own: both tables say the same thing, "this daemon lives",
//! and a packet marked by either is marked with the same value, so they never undo each other.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::fence::LIVE_MARK;
use crate::nftables::{
    AddressField, Batch, Chain, CmpOp, Family, Hook, NftSocket, RuleBuilder, Table, Verdict,
};
use crate::OsError;

/// The persistent table (inet and arp) that drops the guarded addresses' packets unmarked.
pub const RELAY_FENCE_TABLE: &str = "steadfast_relay_fence";
/// The owner table (inet and arp) that marks them while the daemon lives.
pub const RELAY_LIVE_TABLE: &str = "steadfast_relay_live";
/// How long arming waits for a previous life's owner tables to be released.
const OWNER_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The armed switch of the relay. Dropping it (or the process dying) fences the guarded
/// addresses.
pub struct RelayFence {
    owner: NftSocket,
    guarded: Vec<Ipv4Addr>,
}

fn chain(family: Family, table: &str, name: &str, hook: Hook, priority: i32) -> Chain {
    Chain::filter(family, table, name, hook, priority, None)
        .expect("inet has a forward hook and arp an input hook")
}

/// The hook each family guards: forwarded IPv4 packets, and ARP frames coming in.
fn guarded_hook(family: Family) -> (&'static str, Hook) {
    if family == Family::Arp {
        ("input", Hook::Input)
    } else {
        ("forward", Hook::Forward)
    }
}

fn live_tables(batch: &mut Batch) {
    for family in [Family::Inet, Family::Arp] {
        let (name, hook) = guarded_hook(family);
        batch.add_table(Table::owned(family, RELAY_LIVE_TABLE));
        batch.add_chain(chain(family, RELAY_LIVE_TABLE, name, hook, -10));
        batch.add_rule(
            RuleBuilder::new(family)
                .set_mark(LIVE_MARK)
                .build(RELAY_LIVE_TABLE, name),
        );
    }
}

/// Replaces the persistent fence with one guarding `addresses`.
fn fence_tables(batch: &mut Batch, addresses: &[Ipv4Addr]) {
    for family in [Family::Inet, Family::Arp] {
        let (name, hook) = guarded_hook(family);
        batch.remove_table(family, RELAY_FENCE_TABLE);
        batch.add_table(Table::new(family, RELAY_FENCE_TABLE));
        batch.add_chain(chain(family, RELAY_FENCE_TABLE, name, hook, 0));
        for address in addresses {
            let fields: &[AddressField] = if family == Family::Arp {
                &[AddressField::Destination]
            } else {
                &[AddressField::Destination, AddressField::Source]
            };
            for field in fields {
                let rule = RuleBuilder::new(family);
                let rule = if family == Family::Arp {
                    rule.arp_ip_address(*field, CmpOp::Equal, *address)
                } else {
                    rule.ip_address(*field, CmpOp::Equal, *address)
                };
                batch.add_rule(
                    rule.mark(CmpOp::NotEqual, LIVE_MARK)
                        .counter()
                        .verdict(Verdict::Drop)
                        .build(RELAY_FENCE_TABLE, name),
                );
            }
        }
    }
}

impl RelayFence {
    /// Arms the switch in the calling thread's network namespace with nothing guarded yet.
    pub fn arm() -> Result<RelayFence, OsError> {
        let nftables = |what: &str| {
            let what = what.to_string();
            move |source| OsError::Nftables { what, source }
        };
        let mut owner =
            NftSocket::open().map_err(nftables("opening the relay fence's netlink socket"))?;
        let started = Instant::now();
        loop {
            let mut batch = Batch::new();
            live_tables(&mut batch);
            fence_tables(&mut batch, &[]);
            match owner.apply(&batch, "arming the relay fence") {
                Ok(()) => break,
                // A previous life's owner table is released tens of milliseconds after its
                // socket closed (see `Fence::arm`).
                Err(e)
                    if e.raw_os_error() == Some(libc::EPERM)
                        && started.elapsed() < OWNER_RELEASE_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(nftables("arming the relay fence")(e)),
            }
        }
        Ok(RelayFence {
            owner,
            guarded: Vec::new(),
        })
    }

    /// Guards exactly `addresses` from now (one transaction); nothing to do when unchanged.
    pub fn guard(&mut self, addresses: &[Ipv4Addr]) -> Result<(), OsError> {
        let mut sorted = addresses.to_vec();
        sorted.sort();
        sorted.dedup();
        if sorted == self.guarded {
            return Ok(());
        }
        let mut batch = Batch::new();
        fence_tables(&mut batch, &sorted);
        self.owner
            .apply(&batch, "guarding the relayed addresses")
            .map_err(|source| OsError::Nftables {
                what: format!("guarding the relayed addresses {sorted:?}"),
                source,
            })?;
        self.guarded = sorted;
        Ok(())
    }
}
