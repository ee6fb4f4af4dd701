//! Sends a takeover's probes (see [`AckProbe`]) to the clients they ask: the backup's, for
//! what each client acknowledged before the rebuild, and the new primary's, to the clients of
//! the connections it lost.

use steadfast_core::image::{AckProbe, FourTuple};

/// Sends each probe to its connection's client; false when no raw socket could be opened
/// (`whom` names the clients in the warning).
pub fn send_probes(probes: &[(FourTuple, AckProbe)], whom: &str) -> bool {
    let sender = match steadfast_os::raw_ip::RawIpSender::open() {
        Ok(sender) => sender,
        Err(e) => {
            tracing::warn!("takeover: cannot probe {whom}: {e}");
            return false;
        }
    };
    for (tuple, probe) in probes {
        if let Err(e) = sender.send(&probe.encode(), *tuple.client.ip()) {
            tracing::debug!("takeover: probing {tuple}: {e}");
        }
    }
    true
}
