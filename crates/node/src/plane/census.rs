//! The open client sessions, by the backup link generation that protects them, so the node can
//! tell the election whether it carries connections no other node could take over whole (a
//! session not protected by the current backup lives only here), tell a backup that joins which
//! connections it will have to adopt, and end them all when another node carries them on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast_core::image::FourTuple;
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Sessions {
    /// Open sessions by protecting generation (0: not protected).
    by_generation: BTreeMap<u64, u64>,
    /// Each open session's connection and generation, by entry number (a 4-tuple may be open
    /// twice for a moment: a session ending while its client's port is reused).
    entries: HashMap<u64, (FourTuple, u64)>,
    next_entry: u64,
    /// Entries told to end (see [`SessionCensus::retire_where`]).
    retired: HashSet<u64>,
    /// Entries whose backup disowned them (see [`SessionCensus::disown`]) until their session
    /// takes note.
    disowned: HashSet<u64>,
    /// The generation of the backup link now (0: none), see [`SessionCensus::link_changed`].
    current: u64,
}

impl Sessions {
    fn count(&mut self, generation: u64, delta: i64) {
        let count = self.by_generation.entry(generation).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.by_generation.remove(&generation);
        }
    }

    /// Open sessions that the link of `current` (0: no link) does not protect.
    fn unprotected(&self, current: u64) -> u64 {
        self.by_generation
            .iter()
            .filter(|(&generation, _)| current == 0 || generation != current)
            .map(|(_, &count)| count)
            .sum()
    }
}

#[derive(Debug)]
pub struct SessionCensus {
    sessions: Mutex<Sessions>,
    /// Counts the retirements ([`SessionCensus::retire_where`]); sessions watch it.
    retirements: watch::Sender<u64>,
    /// Counts the disownings ([`SessionCensus::disown`]); sessions watch it.
    disownings: watch::Sender<u64>,
    /// Whether some open session is not protected by the current link, kept up to date under
    /// the lock for a reader that must never wait for it: the daemon's realtime election
    /// thread, which a session thread preempted while holding the lock would stall past its
    /// lease (priority inversion).
    carries_unprotected: AtomicBool,
    /// The same flag for tasks that wait for it to change (the primary measures how long a
    /// joined backup takes to protect every connection).
    unprotected_changes: watch::Sender<bool>,
}

impl Default for SessionCensus {
    fn default() -> Self {
        SessionCensus {
            sessions: Mutex::default(),
            retirements: watch::Sender::new(0),
            disownings: watch::Sender::new(0),
            carries_unprotected: AtomicBool::new(false),
            unprotected_changes: watch::Sender::new(false),
        }
    }
}

impl SessionCensus {
    /// Runs `change` on the sessions under the lock, then refreshes [`Self::carries_unprotected`].
    fn update<T>(&self, change: impl FnOnce(&mut Sessions) -> T) -> T {
        let mut sessions = self.sessions.lock().expect("census lock");
        let result = change(&mut sessions);
        let carries = sessions.unprotected(sessions.current) > 0;
        self.carries_unprotected.store(carries, Ordering::Relaxed);
        self.unprotected_changes.send_if_modified(|was| {
            let changed = *was != carries;
            *was = carries;
            changed
        });
        result
    }

    /// Follows [`Self::carries_unprotected`].
    pub fn watch_unprotected(&self) -> watch::Receiver<bool> {
        self.unprotected_changes.subscribe()
    }

    /// Open sessions the current link does not protect (status).
    pub fn unprotected_count(&self) -> u64 {
        let sessions = self.sessions.lock().expect("census lock");
        sessions.unprotected(sessions.current)
    }

    /// The backup link now protecting new sessions changed (0: none).
    pub fn link_changed(&self, current: u64) {
        self.update(|sessions| sessions.current = current);
    }

    /// Some open session is not protected by the current link; never waits.
    pub fn carries_unprotected(&self) -> bool {
        self.carries_unprotected.load(Ordering::Relaxed)
    }

    /// Tells the open sessions whose protecting generation matches to end at once, without a
    /// byte to their clients (another node carries their connections on, and anything sent
    /// from here would reach those clients beside its bytes), and waits until they have ended
    /// or `within` passed. Returns how many were told and how many are still ending.
    pub async fn retire_where(
        &self,
        protected_by: impl Fn(u64) -> bool,
        within: Duration,
    ) -> (u64, u64) {
        let told = {
            let mut sessions = self.sessions.lock().expect("census lock");
            let chosen: Vec<u64> = sessions
                .entries
                .iter()
                .filter(|(_, (_, generation))| protected_by(*generation))
                .map(|(&number, _)| number)
                .collect();
            sessions.retired.extend(chosen.iter().copied());
            chosen.len() as u64
        };
        if told == 0 {
            return (0, 0);
        }
        self.retirements.send_modify(|count| *count += 1);
        // An ending session leaves `retired` when its entry drops.
        let ending = || self.sessions.lock().expect("census lock").retired.len() as u64;
        let deadline = tokio::time::Instant::now() + within;
        while ending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (told, ending())
    }

    /// The backup of link `generation` says it never saw these connections open (their
    /// handshake reached this node before it stood in front): the sessions it was thought to
    /// protect are unprotected from now on, and told so (they hand their connections over like
    /// sessions opened before the join). Returns how many were disowned.
    pub fn disown(&self, tuples: &[FourTuple], generation: u64) -> usize {
        let wanted: HashSet<&FourTuple> = tuples.iter().collect();
        let disowned = self.update(|sessions| {
            let chosen: Vec<u64> = sessions
                .entries
                .iter()
                .filter(|(_, (tuple, protected_by))| {
                    *protected_by == generation && wanted.contains(tuple)
                })
                .map(|(&number, _)| number)
                .collect();
            for number in &chosen {
                sessions.count(generation, -1);
                sessions.count(0, 1);
                if let Some(entry) = sessions.entries.get_mut(number) {
                    entry.1 = 0;
                }
                sessions.disowned.insert(*number);
            }
            chosen.len()
        });
        if disowned > 0 {
            self.disownings.send_modify(|count| *count += 1);
        }
        disowned
    }

    /// Changes whenever sessions are disowned: a session then looks at
    /// [`CensusEntry::take_disowned`].
    pub fn watch_disownings(&self) -> watch::Receiver<u64> {
        self.disownings.subscribe()
    }

    /// Resolves once the session of `entry` is told to end.
    pub fn retirement(
        self: &Arc<Self>,
        entry: &CensusEntry,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let census = self.clone();
        let number = entry.number;
        let mut notice = self.retirements.subscribe();
        async move {
            loop {
                if census.is_retired(number) {
                    return;
                }
                if notice.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    fn is_retired(&self, number: u64) -> bool {
        self.sessions
            .lock()
            .expect("census lock")
            .retired
            .contains(&number)
    }

    /// Counts the session of `tuple`, protected by `generation`, until the returned entry is
    /// dropped.
    pub fn enter(self: &Arc<Self>, tuple: FourTuple, generation: u64) -> CensusEntry {
        let number = self.update(|sessions| {
            sessions.count(generation, 1);
            let number = sessions.next_entry;
            sessions.next_entry += 1;
            sessions.entries.insert(number, (tuple, generation));
            number
        });
        CensusEntry {
            census: self.clone(),
            number,
            generation,
        }
    }

    /// The connections of the sessions that the link of `current` does not protect.
    pub fn unprotected_connections(&self, current: u64) -> Vec<FourTuple> {
        self.sessions
            .lock()
            .expect("census lock")
            .entries
            .values()
            .filter(|(_, generation)| current == 0 || *generation != current)
            .map(|(tuple, _)| *tuple)
            .collect()
    }

    /// How many open sessions have a protecting generation that matches.
    pub fn count_where(&self, protected_by: impl Fn(u64) -> bool) -> u64 {
        self.sessions
            .lock()
            .expect("census lock")
            .entries
            .values()
            .filter(|(_, generation)| protected_by(*generation))
            .count() as u64
    }

    pub fn open(&self) -> u64 {
        self.sessions
            .lock()
            .expect("census lock")
            .by_generation
            .values()
            .sum()
    }
}

/// One open session's place in the census.
#[derive(Debug)]
pub struct CensusEntry {
    census: Arc<SessionCensus>,
    number: u64,
    generation: u64,
}

impl CensusEntry {
    /// The generation that protects the session (0: none).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the backup disowned this session since the last look; its generation is then 0.
    pub fn take_disowned(&mut self) -> bool {
        let number = self.number;
        let disowned = self
            .census
            .update(|sessions| sessions.disowned.remove(&number));
        if disowned {
            self.generation = 0;
        }
        disowned
    }

    /// The session was handed to the backup of `generation`, which has not yet said it holds
    /// it: its replies are logged there from now on, but the census counts it protected only
    /// once [`CensusEntry::protected_by`] confirms. Counted earlier, a primary would tell the
    /// election that a backup which might still lose the hand-over holds all it carries.
    pub fn handed_to(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// The session is protected by `generation` from now on (adopted by a backup that joined).
    /// The census's own record is counted from, not `self.generation`: a disowning may have
    /// changed it since the session last looked.
    pub fn protected_by(&mut self, generation: u64) {
        let number = self.number;
        self.census.update(|sessions| {
            if let Some(entry) = sessions.entries.get_mut(&number) {
                let old = std::mem::replace(&mut entry.1, generation);
                sessions.count(old, -1);
                sessions.count(generation, 1);
            }
            sessions.disowned.remove(&number);
        });
        self.generation = generation;
    }
}

impl Drop for CensusEntry {
    fn drop(&mut self) {
        let number = self.number;
        self.census.update(|sessions| {
            if let Some((_, generation)) = sessions.entries.remove(&number) {
                sessions.count(generation, -1);
            }
            sessions.retired.remove(&number);
            sessions.disowned.remove(&number);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unprotected(census: &SessionCensus, current: u64) -> u64 {
        census.sessions.lock().unwrap().unprotected(current)
    }

    fn tuple(port: u16) -> FourTuple {
        FourTuple {
            client: format!("10.0.0.2:{port}").parse().unwrap(),
            server: "10.0.0.100:80".parse().unwrap(),
        }
    }

    #[test]
    fn sessions_count_as_unprotected_unless_the_current_link_protects_them() {
        let census = Arc::new(SessionCensus::default());
        let mut a = census.enter(tuple(1), 0);
        let b = census.enter(tuple(2), 3);
        assert_eq!(census.open(), 2);
        assert_eq!(unprotected(&census, 3), 1, "a is not protected");
        assert_eq!(census.unprotected_connections(3), vec![tuple(1)]);
        assert_eq!(unprotected(&census, 4), 2, "a newer link protects neither");
        assert_eq!(unprotected(&census, 0), 2, "no link protects nothing");
        a.protected_by(3);
        assert_eq!(unprotected(&census, 3), 0);
        assert!(census.unprotected_connections(3).is_empty());
        drop(b);
        drop(a);
        assert_eq!(census.open(), 0);
        assert_eq!(unprotected(&census, 0), 0);
        assert!(census.unprotected_connections(0).is_empty());
    }

    #[test]
    fn a_hand_over_counts_only_once_the_backup_holds_it() {
        let census = Arc::new(SessionCensus::default());
        census.link_changed(3);
        let mut a = census.enter(tuple(1), 0);
        a.handed_to(3);
        assert_eq!(
            a.generation(),
            3,
            "its replies are logged to link 3 from now on"
        );
        assert!(
            census.carries_unprotected(),
            "the backup has not answered yet"
        );
        assert_eq!(census.unprotected_connections(3), vec![tuple(1)]);
        a.protected_by(3);
        assert!(!census.carries_unprotected(), "the backup holds it");
        drop(a);
        assert_eq!(census.open(), 0);
    }

    #[test]
    fn the_lock_free_flag_follows_sessions_and_link_changes() {
        let census = Arc::new(SessionCensus::default());
        assert!(!census.carries_unprotected(), "no session");
        census.link_changed(3);
        let mut a = census.enter(tuple(1), 0);
        assert!(census.carries_unprotected(), "a opened before the link");
        a.protected_by(3);
        assert!(!census.carries_unprotected(), "adopted by the current link");
        census.link_changed(0);
        assert!(census.carries_unprotected(), "the link is gone");
        census.link_changed(4);
        assert!(
            census.carries_unprotected(),
            "a newer link never adopted it"
        );
        let b = census.enter(tuple(2), 4);
        a.protected_by(4);
        assert!(!census.carries_unprotected());
        drop(a);
        census.link_changed(0);
        assert!(census.carries_unprotected(), "b is left without a link");
        drop(b);
        assert!(!census.carries_unprotected(), "nothing open");
    }

    #[tokio::test]
    async fn retirement_reaches_the_sessions_it_names() {
        let census = Arc::new(SessionCensus::default());
        let protected = census.enter(tuple(1), 3);
        let unprotected = census.enter(tuple(2), 0);
        let protected_notice = census.retirement(&protected);
        let unprotected_notice = census.retirement(&unprotected);
        // Nothing ends these sessions here: no wait, the counts only.
        let at_once = std::time::Duration::ZERO;
        assert_eq!(
            census
                .retire_where(|generation| generation == 3, at_once)
                .await
                .0,
            1
        );
        tokio::time::timeout(std::time::Duration::from_secs(1), protected_notice)
            .await
            .expect("the protected session is told to end");
        let untouched =
            tokio::time::timeout(std::time::Duration::from_millis(20), unprotected_notice).await;
        assert!(untouched.is_err(), "the other session goes on");
        assert_eq!(census.retire_where(|_| true, at_once).await.0, 2);
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            census.retirement(&unprotected),
        )
        .await
        .expect("retiring every session reaches every session");
        drop(protected);
        drop(unprotected);
        assert!(census.sessions.lock().unwrap().retired.is_empty());
    }

    #[test]
    fn a_tuple_open_twice_is_listed_until_both_sessions_end() {
        let census = Arc::new(SessionCensus::default());
        let old = census.enter(tuple(1), 0);
        let new = census.enter(tuple(1), 0);
        drop(old);
        assert_eq!(census.unprotected_connections(0), vec![tuple(1)]);
        drop(new);
        assert!(census.unprotected_connections(0).is_empty());
    }

    #[test]
    fn a_disowned_session_counts_as_unprotected_until_adopted_again() {
        let census = Arc::new(SessionCensus::default());
        census.link_changed(3);
        let mut before = census.enter(tuple(1), 3);
        let after = census.enter(tuple(2), 3);
        let older_link = census.enter(tuple(3), 2);
        let notice = census.watch_disownings();
        assert_eq!(
            census.disown(&[tuple(1), tuple(3), tuple(9)], 3),
            1,
            "only the sessions of that link, and only open ones"
        );
        assert!(notice.has_changed().unwrap(), "sessions are told");
        let mut listed = census.unprotected_connections(3);
        listed.sort_by_key(|t| t.client.port());
        assert_eq!(listed, vec![tuple(1), tuple(3)]);
        assert_eq!(before.generation(), 3, "the session has not looked yet");
        assert!(before.take_disowned());
        assert_eq!(before.generation(), 0);
        assert!(!before.take_disowned(), "told once");
        before.protected_by(3);
        assert_eq!(census.unprotected_connections(3), vec![tuple(3)]);
        drop(older_link);
        assert!(!census.carries_unprotected(), "adopted again");
        drop(after);
        drop(before);
        assert_eq!(census.open(), 0);
        assert_eq!(unprotected(&census, 0), 0, "no count left behind");
    }

    #[test]
    fn a_session_that_ends_before_it_looks_leaves_no_count_behind() {
        let census = Arc::new(SessionCensus::default());
        census.link_changed(5);
        let entry = census.enter(tuple(1), 5);
        assert_eq!(census.disown(&[tuple(1)], 5), 1);
        drop(entry);
        assert_eq!(census.open(), 0);
        assert!(!census.carries_unprotected());
        assert!(census.sessions.lock().unwrap().by_generation.is_empty());
        assert!(census.sessions.lock().unwrap().disowned.is_empty());
    }
}
