//! Which client connections the proxy takes on: at most `max_connections` sessions at once
//! (further connections wait in the kernel's accept queue, as with HAProxy's `maxconn`), and at
//! most `max_connections_per_source` from one client address (further ones are closed at once
//! and counted, as with HAProxy's `tcp-request connection reject` on a `conn_cur` limit).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors the daemon keeps for everything but client sessions (sockets of the election,
/// the replication link, netlink, the packet ring, logs).
pub const RESERVED_DESCRIPTORS: u64 = 256;

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    limit: usize,
    per_source: Option<u32>,
    sources: Mutex<HashMap<Ipv4Addr, u32>>,
}

/// A session's place: released when dropped.
#[derive(Debug)]
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    admission: Arc<Admission>,
    source: Option<Ipv4Addr>,
}

impl Admission {
    pub fn new(limit: usize, per_source: Option<u32>) -> Arc<Admission> {
        Arc::new(Admission {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            per_source,
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// The most sessions served at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Waits until a session may start: a connection is accepted only then.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the admission semaphore is never closed")
    }

    /// Takes the connection from `source` on with `slot`, or `None` when that address has
    /// as many sessions as it may.
    pub fn admit(
        self: &Arc<Self>,
        slot: OwnedSemaphorePermit,
        source: Ipv4Addr,
    ) -> Option<Admitted> {
        let Some(per_source) = self.per_source else {
            return Some(Admitted {
                _slot: slot,
                admission: self.clone(),
                source: None,
            });
        };
        let mut sources = self.sources.lock().expect("admission lock");
        let count = sources.entry(source).or_default();
        if *count >= per_source {
            return None;
        }
        *count += 1;
        Some(Admitted {
            _slot: slot,
            admission: self.clone(),
            source: Some(source),
        })
    }

    /// Sessions open from `source` now.
    #[cfg(test)]
    fn open_from(&self, source: Ipv4Addr) -> u32 {
        let sources = self.sources.lock().expect("admission lock");
        sources.get(&source).copied().unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(source) = self.source else {
            return;
        };
        let mut sources = self.admission.sources.lock().expect("admission lock");
        if let Some(count) = sources.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                sources.remove(&source);
            }
        }
    }
}

/// The admission of service `name`'s proxy, within the open-file limit in force (the daemon
/// raised it to the hard limit when it started). A configured `max_connections` that needs
/// more raises the hard limit too where the daemon may (as root; HAProxy does the same for its
/// `maxconn`).
pub fn for_service(name: &str, configured: Option<u32>, per_source: Option<u32>) -> Arc<Admission> {
    let open_files = match configured {
        Some(limit) => {
            steadfast_os::limits::raise_open_files_to(u64::from(limit) * 2 + RESERVED_DESCRIPTORS)
        }
        None => steadfast_os::limits::open_files(),
    }
    .unwrap_or_else(|e| {
        tracing::warn!("service {name}: {e}; counting on 1024 open files");
        1024
    });
    let (limit, room) = session_limit(configured, open_files);
    if limit as u64 > room {
        tracing::warn!(
            "service {name}: max_connections = {limit} needs {} open files, but the limit is \
             {open_files}: connections beyond about {room} will fail (raise the hard limit: \
             LimitNOFILE= in the systemd unit, or ulimit -Hn)",
            limit as u64 * 2 + RESERVED_DESCRIPTORS
        );
    }
    tracing::info!(
        "service {name}: at most {limit} client connections at once{}",
        per_source.map_or(String::new(), |n| format!(", {n} from one address"))
    );
    Admission::new(limit, per_source)
}

/// How many sessions the open-file limit `open_files` leaves room for (two descriptors each),
/// and what is served at once: `configured`, or all that room.
pub fn session_limit(configured: Option<u32>, open_files: u64) -> (usize, u64) {
    let room = open_files.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    let room = room.max(1);
    let limit = configured.map_or(room, u64::from);
    (usize::try_from(limit).unwrap_or(usize::MAX), room)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    #[tokio::test]
    async fn one_source_gets_its_share_and_others_still_get_in() {
        let admission = Admission::new(10, Some(2));
        let first = admission.admit(admission.slot().await, A).expect("first");
        let _second = admission.admit(admission.slot().await, A).expect("second");
        assert!(
            admission.admit(admission.slot().await, A).is_none(),
            "a third"
        );
        assert!(
            admission.admit(admission.slot().await, B).is_some(),
            "another address"
        );
        assert_eq!(admission.open_from(A), 2);
        drop(first);
        assert_eq!(admission.open_from(A), 1);
        assert!(
            admission.admit(admission.slot().await, A).is_some(),
            "room again"
        );
    }

    #[tokio::test]
    async fn no_session_starts_beyond_the_limit_until_one_ends() {
        let admission = Admission::new(2, None);
        let first = admission.admit(admission.slot().await, A).expect("first");
        let _second = admission.admit(admission.slot().await, B).expect("second");
        let waiting = admission.slot();
        tokio::pin!(waiting);
        assert!(
            futures_poll_once(waiting.as_mut()).await.is_none(),
            "a third waits"
        );
        drop(first);
        let third = waiting.await;
        assert!(admission.admit(third, A).is_some());
        assert_eq!(
            admission.open_from(A),
            0,
            "no per-source count without a limit"
        );
    }

    /// Polls `future` once: its output if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[test]
    fn the_limit_follows_the_open_files_unless_set() {
        assert_eq!(session_limit(None, 20_000), (9_872, 9_872));
        assert_eq!(session_limit(Some(100), 20_000), (100, 9_872));
        assert_eq!(session_limit(Some(50_000), 20_000), (50_000, 9_872));
        assert_eq!(session_limit(None, 100), (1, 1), "never none at all");
    }
}
