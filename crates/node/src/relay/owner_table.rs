//! The responder's owner table: every kernel entry its relays installed, one per line in a
//! file, so that the next start of a daemon that died removes what it left behind
//! (`Responder::start` takes them as leftovers).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use steadfast_core::relay_agent::RelayEntry;

pub struct OwnerTable {
    path: PathBuf,
    entries: BTreeSet<RelayEntry>,
}

fn line_of(entry: &RelayEntry) -> String {
    match entry {
        RelayEntry::Forwarding { interface } => format!("forwarding {interface}"),
        RelayEntry::Route {
            address,
            interface,
            next_hop,
        } => format!("route {address} {interface} {next_hop}"),
        RelayEntry::ProxyArp { address, interface } => format!("proxy-arp {address} {interface}"),
    }
}

fn entry_of(line: &str) -> Option<RelayEntry> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["forwarding", interface] => Some(RelayEntry::Forwarding {
            interface: (*interface).to_string(),
        }),
        ["route", address, interface, next_hop] => Some(RelayEntry::Route {
            address: address.parse::<Ipv4Addr>().ok()?,
            interface: (*interface).to_string(),
            next_hop: next_hop.parse::<Ipv4Addr>().ok()?,
        }),
        ["proxy-arp", address, interface] => Some(RelayEntry::ProxyArp {
            address: address.parse::<Ipv4Addr>().ok()?,
            interface: (*interface).to_string(),
        }),
        _ => None,
    }
}

impl OwnerTable {
    pub fn new(path: PathBuf) -> OwnerTable {
        OwnerTable {
            path,
            entries: BTreeSet::new(),
        }
    }

    /// What a previous life recorded (nothing when there is no file); lines that do not parse
    /// are logged and skipped.
    pub fn read(&self) -> Vec<RelayEntry> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::error!(
                    "relay: reading the owner table {}: {e}; what a previous life installed \
                     stays",
                    self.path.display()
                );
                return Vec::new();
            }
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| {
                let entry = entry_of(l);
                if entry.is_none() {
                    tracing::warn!(
                        "relay: owner table {}: cannot read {l:?}; skipped",
                        self.path.display()
                    );
                }
                entry
            })
            .collect()
    }

    /// Records `entry` as installed (or no longer), and writes the table through a rename so
    /// that a crash mid-write leaves the old or the new table, never half of one.
    pub fn record(&mut self, entry: &RelayEntry, installed: bool) {
        let changed = if installed {
            self.entries.insert(entry.clone())
        } else {
            self.entries.remove(entry)
        };
        if !changed && self.path.exists() {
            return;
        }
        let text: String = self.entries.iter().map(|e| line_of(e) + "\n").collect();
        let temporary = self.path.with_extension("relay-owner.tmp");
        let written =
            std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(e) = written {
            tracing::error!(
                "relay: writing the owner table {}: {e}; a restart may not undo {}",
                self.path.display(),
                line_of(entry)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_reads_back_from_its_line() {
        let entries = [
            RelayEntry::Forwarding {
                interface: "eth0".into(),
            },
            RelayEntry::Route {
                address: Ipv4Addr::new(10, 77, 0, 11),
                interface: "eth1".into(),
                next_hop: Ipv4Addr::new(10, 78, 0, 11),
            },
            RelayEntry::ProxyArp {
                address: Ipv4Addr::new(10, 77, 0, 100),
                interface: "eth0".into(),
            },
        ];
        for entry in entries {
            assert_eq!(entry_of(&line_of(&entry)), Some(entry));
        }
        assert_eq!(entry_of("route 10.0.0.1 eth1"), None);
        assert_eq!(entry_of("proxy-arp nonsense eth0"), None);
    }
}
