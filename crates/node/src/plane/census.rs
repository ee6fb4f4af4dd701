//! How many client sessions are open, by the backup link generation that protects them, so the
//! node can tell the election whether it carries connections no other node could take over
//! whole (a session not protected by the current backup lives only here).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Open sessions by protecting generation (0: not protected).
#[derive(Debug, Default)]
pub struct SessionCensus {
    by_generation: Mutex<BTreeMap<u64, u64>>,
}

impl SessionCensus {
    /// Counts a session protected by `generation` until the returned entry is dropped.
    pub fn enter(self: &Arc<Self>, generation: u64) -> CensusEntry {
        self.add(generation, 1);
        CensusEntry {
            census: self.clone(),
            generation,
        }
    }

    /// Open sessions that the link of `current` (0: no link) does not protect.
    pub fn unprotected(&self, current: u64) -> u64 {
        self.by_generation
            .lock()
            .expect("census lock")
            .iter()
            .filter(|(&generation, _)| current == 0 || generation != current)
            .map(|(_, &count)| count)
            .sum()
    }

    pub fn open(&self) -> u64 {
        self.by_generation
            .lock()
            .expect("census lock")
            .values()
            .sum()
    }

    fn add(&self, generation: u64, delta: i64) {
        let mut map = self.by_generation.lock().expect("census lock");
        let count = map.entry(generation).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            map.remove(&generation);
        }
    }
}

/// One open session's place in the census.
#[derive(Debug)]
pub struct CensusEntry {
    census: Arc<SessionCensus>,
    generation: u64,
}

impl CensusEntry {
    /// The generation that protects the session (0: none).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The session is protected by `generation` from now on (adopted by a backup that joined).
    pub fn protected_by(&mut self, generation: u64) {
        if generation != self.generation {
            self.census.add(self.generation, -1);
            self.census.add(generation, 1);
            self.generation = generation;
        }
    }
}

impl Drop for CensusEntry {
    fn drop(&mut self) {
        self.census.add(self.generation, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_count_as_unprotected_unless_the_current_link_protects_them() {
        let census = Arc::new(SessionCensus::default());
        let mut a = census.enter(0);
        let b = census.enter(3);
        assert_eq!(census.open(), 2);
        assert_eq!(census.unprotected(3), 1, "a is not protected");
        assert_eq!(census.unprotected(4), 2, "a newer link protects neither");
        assert_eq!(census.unprotected(0), 2, "no link protects nothing");
        a.protected_by(3);
        assert_eq!(census.unprotected(3), 0);
        drop(b);
        drop(a);
        assert_eq!(census.open(), 0);
        assert_eq!(census.unprotected(0), 0);
    }
}
