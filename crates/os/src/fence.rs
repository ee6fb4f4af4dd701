//! The dead-man switch (DESIGN invariant I5, "daemon death is node death"), with nftables.
//!
//! A persistent table drops every IPv4 packet and ARP frame to or from the service addresses
//! unless it carries [`LIVE_MARK`]. The mark is set, earlier in the same hooks, by a second
//! table created with the `owner` flag through an `nft -i` child whose standard input the daemon
//! holds: when the daemon dies for any reason its end of the pipe closes, `nft` exits, and the
//! kernel deletes the owner table with it. From then on the node's kernel neither answers ARP
//! for the address nor sends a byte (data, FIN or RST) from it, whatever address state the dead
//! daemon left behind.
//!
//! No crate speaks nf_tables' netlink protocol well enough to create owner tables, so the `nft`
//! program (Debian package `nftables`) is used; it is a start-up cost, never on a hot path.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::OsError;

/// Packets of the service addresses carry this mark while the daemon lives.
pub const LIVE_MARK: u32 = 0x5f1d;
const FENCE_TABLE: &str = "steadfast_fence";
const LIVE_TABLE: &str = "steadfast_live";

/// The armed switch. Dropping it (or the process dying) lets the fence drop the addresses'
/// traffic.
pub struct Fence {
    child: Child,
    _stdin: ChildStdin,
}

fn matches(family: &str, direction: &str, ip: Ipv4Addr) -> String {
    match (family, direction) {
        ("arp", "input") => format!("arp daddr ip {ip}"),
        ("arp", _) => format!("arp saddr ip {ip}"),
        (_, "input") => format!("ip daddr {ip}"),
        _ => format!("ip saddr {ip}"),
    }
}

/// One table on one line (`nft -i` reads a command per line; `;` separates statements): the
/// input and output chains, `verdict` after each address match.
fn table(
    family: &str,
    name: &str,
    flags: &str,
    priority: i32,
    vips: &[Ipv4Addr],
    verdict: &str,
) -> String {
    let mut t = format!("table {family} {name} {{ {flags} ");
    for direction in ["input", "output"] {
        t.push_str(&format!(
            "chain {direction} {{ type filter hook {direction} priority {priority}; policy accept; "
        ));
        for ip in vips {
            t.push_str(&format!("{} {verdict}; ", matches(family, direction, *ip)));
        }
        t.push_str("}; ");
    }
    t.push_str("}\n");
    t
}

fn nft_available() -> Result<(), OsError> {
    match Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(OsError::Command {
            command: "nft --version".into(),
            detail: "the nft program is missing: install the Debian package nftables".into(),
        }),
    }
}

fn table_exists(family: &str, name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", family, name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Fence {
    /// Arms the switch for `vips` in the current network namespace: first the owner table
    /// (so the addresses keep working), then the persistent fence, replacing an older one.
    pub fn arm(vips: &[Ipv4Addr]) -> Result<Fence, OsError> {
        nft_available()?;
        let mut child = unsafe {
            Command::new("nft")
                .arg("-i")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // If the daemon dies, nft must go too (EOF does it; this is belt and braces).
                .pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
                .spawn()
        }
        .map_err(|e| OsError::io("starting nft -i for the owner table", e))?;
        let mut stdin = child.stdin.take().expect("stdin was piped");
        let live_verdict = format!("meta mark set {LIVE_MARK:#x}");
        let mut live = String::new();
        for family in ["inet", "arp"] {
            live.push_str(&table(
                family,
                LIVE_TABLE,
                "flags owner;",
                -10,
                vips,
                &live_verdict,
            ));
        }
        stdin
            .write_all(live.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| OsError::io("writing the owner table to nft -i", e))?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while !(table_exists("inet", LIVE_TABLE) && table_exists("arp", LIVE_TABLE)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(OsError::Unexpected {
                    what: "nft -i did not create the owner table within 3 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let fence_verdict = format!("meta mark != {LIVE_MARK:#x} drop");
        let mut fence = String::new();
        for family in ["inet", "arp"] {
            // Replace any fence of a previous life (its addresses may differ).
            fence.push_str(&format!(
                "table {family} {FENCE_TABLE}\ndelete table {family} {FENCE_TABLE}\n"
            ));
            fence.push_str(&table(family, FENCE_TABLE, "", 0, vips, &fence_verdict));
        }
        apply(&fence)?;
        Ok(Fence {
            child,
            _stdin: stdin,
        })
    }

    /// Whether the owner table's keeper still runs.
    pub fn is_armed(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn apply(ruleset: &str) -> Result<(), OsError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| OsError::io("starting nft -f -", e))?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(ruleset.as_bytes())
        .map_err(|e| OsError::io("writing the fence ruleset to nft", e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| OsError::io("waiting for nft -f -", e))?;
    if !out.status.success() {
        return Err(OsError::Command {
            command: "nft -f - (the steadfast fence)".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Removes the persistent fence (for an operator taking a node out of service for good).
pub fn disarm() -> Result<(), OsError> {
    let mut ruleset = String::new();
    for family in ["inet", "arp"] {
        ruleset.push_str(&format!(
            "table {family} {FENCE_TABLE}\ndelete table {family} {FENCE_TABLE}\n"
        ));
    }
    apply(&ruleset)
}
