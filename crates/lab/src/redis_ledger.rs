//! What a verifying Redis client knows it was told, and what it may therefore see.
//!
//! Each client connection owns a counter (INCR) and a list (RPUSH) of its own, so every reply
//! about them can be checked exactly: an acknowledged increment is never lost, none is applied
//! twice, a read never returns less than the connection's last acknowledged write. A command
//! whose reply never came (the connection failed while it was out) may have been applied or
//! not, at most once: the next acknowledged reply on the same key tells which. Shared accounts
//! move amounts between them in MULTI/EXEC transactions, so their sum never changes.
//!
//! The ledger holds no socket: the client feeds it the replies it got, and it returns the
//! violations they show.

use std::fmt;

/// One thing the service answered that it must not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// INCR answered a value other than the last acknowledged one plus one (plus one more if an
    /// increment whose reply was lost was applied).
    IncrementOutOfStep {
        connection: usize,
        acknowledged: i64,
        unknown: bool,
        answered: i64,
    },
    /// RPUSH answered a length other than the acknowledged elements' count plus one (plus one
    /// more if a push whose reply was lost was applied).
    PushOutOfStep {
        connection: usize,
        acknowledged: usize,
        unknown: bool,
        answered: i64,
    },
    /// A read of the connection's own counter returned less than its last acknowledged value
    /// (a stale read) or more than any increment sent could make it.
    CounterRead {
        connection: usize,
        acknowledged: i64,
        unknown: bool,
        read: i64,
    },
    /// A read of the connection's own list length disagrees with its acknowledged pushes.
    ListLength {
        connection: usize,
        acknowledged: usize,
        unknown: bool,
        read: i64,
    },
    /// At the end, the list is not the acknowledged elements in order (and the unknown one at
    /// most once, in its place).
    ListContent { connection: usize, detail: String },
    /// The accounts' balances do not add up to what they started with.
    SumChanged { expected: i64, read: i64 },
    /// A reply of the wrong shape for its command.
    Malformed { connection: usize, detail: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let maybe = |unknown: &bool| if *unknown { " (one more unknown)" } else { "" };
        match self {
            Violation::IncrementOutOfStep {
                connection,
                acknowledged,
                unknown,
                answered,
            } => write!(
                f,
                "connection {connection}: INCR answered {answered} after {acknowledged} was \
                 acknowledged{}",
                maybe(unknown)
            ),
            Violation::PushOutOfStep {
                connection,
                acknowledged,
                unknown,
                answered,
            } => write!(
                f,
                "connection {connection}: RPUSH answered length {answered} after {acknowledged} \
                 acknowledged elements{}",
                maybe(unknown)
            ),
            Violation::CounterRead {
                connection,
                acknowledged,
                unknown,
                read,
            } => write!(
                f,
                "connection {connection}: its counter read {read} after {acknowledged} was \
                 acknowledged{}",
                maybe(unknown)
            ),
            Violation::ListLength {
                connection,
                acknowledged,
                unknown,
                read,
            } => write!(
                f,
                "connection {connection}: its list is {read} long after {acknowledged} \
                 acknowledged pushes{}",
                maybe(unknown)
            ),
            Violation::ListContent { connection, detail } => {
                write!(f, "connection {connection}: its list {detail}")
            }
            Violation::SumChanged { expected, read } => write!(
                f,
                "the accounts add up to {read}, not the {expected} they started with"
            ),
            Violation::Malformed { connection, detail } => {
                write!(f, "connection {connection}: {detail}")
            }
        }
    }
}

/// The acknowledged history of one connection's own keys.
#[derive(Debug, Clone, Default)]
pub struct ConnectionLedger {
    connection: usize,
    counter: i64,
    /// An INCR whose reply was lost: applied or not, at most once.
    counter_unknown: bool,
    list: Vec<u64>,
    /// An element whose RPUSH reply was lost.
    list_unknown: Option<u64>,
    /// The list was found to break its history: reported once, not checked again (its content
    /// cannot be known from a length).
    list_broken: bool,
}

impl ConnectionLedger {
    pub fn new(connection: usize) -> ConnectionLedger {
        ConnectionLedger {
            connection,
            ..ConnectionLedger::default()
        }
    }

    /// The value INCR should answer next, at least.
    pub fn counter(&self) -> i64 {
        self.counter
    }

    pub fn list(&self) -> &[u64] {
        &self.list
    }

    /// INCR answered `value`.
    pub fn incremented(&mut self, value: i64) -> Result<(), Violation> {
        let next = self.counter + 1;
        let fits = value == next || (self.counter_unknown && value == next + 1);
        let answer = if fits {
            Ok(())
        } else {
            Err(Violation::IncrementOutOfStep {
                connection: self.connection,
                acknowledged: self.counter,
                unknown: self.counter_unknown,
                answered: value,
            })
        };
        // Whatever came before, the server's count is the one to go on from.
        self.counter = value;
        self.counter_unknown = false;
        answer
    }

    /// An INCR was sent and its reply lost.
    pub fn increment_unknown(&mut self) {
        self.counter_unknown = true;
    }

    /// RPUSH of `element` answered `length`.
    pub fn pushed(&mut self, element: u64, length: i64) -> Result<(), Violation> {
        let next = self.list.len() as i64 + 1;
        let unknown_applied = self.list_unknown.is_some() && length == next + 1;
        let answer = if length == next || unknown_applied || self.list_broken {
            Ok(())
        } else {
            self.list_broken = true;
            Err(Violation::PushOutOfStep {
                connection: self.connection,
                acknowledged: self.list.len(),
                unknown: self.list_unknown.is_some(),
                answered: length,
            })
        };
        if let Some(unknown) = self.list_unknown.take() {
            if unknown_applied {
                self.list.push(unknown);
            }
        }
        self.list.push(element);
        answer
    }

    /// An RPUSH of `element` was sent and its reply lost.
    pub fn push_unknown(&mut self, element: u64) {
        self.list_unknown = Some(element);
    }

    /// A read of the counter returned `value` (`None`: the key does not exist).
    pub fn counter_read(&self, value: Option<i64>) -> Result<(), Violation> {
        let read = value.unwrap_or(0);
        let high = self.counter + i64::from(self.counter_unknown);
        if (self.counter..=high).contains(&read) {
            Ok(())
        } else {
            Err(Violation::CounterRead {
                connection: self.connection,
                acknowledged: self.counter,
                unknown: self.counter_unknown,
                read,
            })
        }
    }

    /// LLEN of the list returned `length`.
    pub fn list_length_read(&mut self, length: i64) -> Result<(), Violation> {
        let low = self.list.len() as i64;
        let high = low + i64::from(self.list_unknown.is_some());
        if (low..=high).contains(&length) || self.list_broken {
            Ok(())
        } else {
            self.list_broken = true;
            Err(Violation::ListLength {
                connection: self.connection,
                acknowledged: self.list.len(),
                unknown: self.list_unknown.is_some(),
                read: length,
            })
        }
    }

    /// The whole list as read at the end (not checked once it broke its history).
    pub fn list_read(&self, read: &[u64]) -> Result<(), Violation> {
        if self.list_broken {
            return Ok(());
        }
        let content = |detail: String| Violation::ListContent {
            connection: self.connection,
            detail,
        };
        let acked = &self.list;
        let matches = read == acked.as_slice()
            || self.list_unknown.is_some_and(|unknown| {
                read.len() == acked.len() + 1
                    && read[..acked.len()] == acked[..]
                    && read[acked.len()] == unknown
            });
        if matches {
            return Ok(());
        }
        let first_difference = read
            .iter()
            .zip(acked)
            .position(|(got, want)| got != want)
            .unwrap_or(read.len().min(acked.len()));
        Err(content(format!(
            "holds {} elements where {} were acknowledged; they differ from element {} on",
            read.len(),
            acked.len(),
            first_difference
        )))
    }
}

/// Checks the sum of the shared accounts.
pub fn check_sum(expected: i64, balances: &[i64]) -> Result<(), Violation> {
    let read = balances.iter().sum();
    if read == expected {
        Ok(())
    } else {
        Err(Violation::SumChanged { expected, read })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_increments_and_reads_of_them_pass() {
        let mut ledger = ConnectionLedger::new(3);
        for value in 1..=5 {
            ledger.incremented(value).unwrap();
        }
        ledger.counter_read(Some(5)).unwrap();
        assert_eq!(ledger.counter(), 5);
    }

    #[test]
    fn a_lost_or_repeated_increment_is_out_of_step() {
        let mut ledger = ConnectionLedger::new(0);
        ledger.incremented(1).unwrap();
        // The service forgot the first increment (a failover to an empty replica).
        assert!(matches!(
            ledger.incremented(1),
            Err(Violation::IncrementOutOfStep { answered: 1, .. })
        ));
        // It then applied one twice.
        assert!(ledger.incremented(3).is_err());
    }

    #[test]
    fn an_increment_whose_reply_was_lost_may_count_once() {
        let mut applied = ConnectionLedger::new(0);
        applied.incremented(1).unwrap();
        applied.increment_unknown();
        applied.counter_read(Some(2)).unwrap();
        applied.counter_read(Some(1)).unwrap();
        assert!(applied.counter_read(Some(3)).is_err(), "never twice");
        applied.incremented(3).unwrap();
        let mut not_applied = ConnectionLedger::new(0);
        not_applied.incremented(1).unwrap();
        not_applied.increment_unknown();
        not_applied.incremented(2).unwrap();
        // Once known, the unknown one cannot count any more.
        assert!(not_applied.counter_read(Some(3)).is_err());
    }

    #[test]
    fn a_stale_read_is_a_violation() {
        let mut ledger = ConnectionLedger::new(1);
        ledger.incremented(1).unwrap();
        ledger.incremented(2).unwrap();
        assert_eq!(
            ledger.counter_read(Some(1)),
            Err(Violation::CounterRead {
                connection: 1,
                acknowledged: 2,
                unknown: false,
                read: 1
            })
        );
        assert!(
            ledger.counter_read(None).is_err(),
            "a missing key reads as 0"
        );
    }

    #[test]
    fn lists_keep_the_acknowledged_elements_in_order() {
        let mut ledger = ConnectionLedger::new(0);
        ledger.pushed(10, 1).unwrap();
        ledger.pushed(11, 2).unwrap();
        ledger.list_length_read(2).unwrap();
        ledger.list_read(&[10, 11]).unwrap();
        assert!(ledger.list_read(&[11, 10]).is_err(), "out of order");
        assert!(ledger.list_read(&[10]).is_err(), "an element lost");
        assert!(ledger.list_read(&[10, 11, 11]).is_err(), "an element twice");
        let err = ledger.list_read(&[10, 12]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "connection 0: its list holds 2 elements where 2 were acknowledged; they differ \
             from element 1 on"
        );
    }

    #[test]
    fn a_push_whose_reply_was_lost_may_appear_once_in_its_place() {
        let mut ledger = ConnectionLedger::new(0);
        ledger.pushed(1, 1).unwrap();
        ledger.push_unknown(2);
        ledger.list_length_read(2).unwrap();
        ledger.list_read(&[1, 2]).unwrap();
        ledger.list_read(&[1]).unwrap();
        // The next push tells: applied (length 3), so the element is in.
        ledger.pushed(3, 3).unwrap();
        ledger.list_read(&[1, 2, 3]).unwrap();
        assert!(ledger.list_read(&[1, 3]).is_err());
        let mut dropped = ConnectionLedger::new(0);
        dropped.pushed(1, 1).unwrap();
        dropped.push_unknown(2);
        dropped.pushed(3, 2).unwrap();
        dropped.list_read(&[1, 3]).unwrap();
        assert!(dropped.pushed(4, 5).is_err());
    }

    #[test]
    fn a_list_that_broke_its_history_is_reported_once() {
        let mut ledger = ConnectionLedger::new(0);
        ledger.pushed(1, 1).unwrap();
        ledger.pushed(2, 2).unwrap();
        // The service lost the list: it starts again.
        assert!(ledger.pushed(3, 1).is_err());
        ledger.pushed(4, 2).unwrap();
        ledger.list_length_read(2).unwrap();
        ledger.list_read(&[3, 4]).unwrap();
        let mut shortened = ConnectionLedger::new(0);
        shortened.pushed(1, 1).unwrap();
        assert!(shortened.list_length_read(0).is_err());
        shortened.list_length_read(0).unwrap();
    }

    #[test]
    fn the_accounts_must_add_up() {
        check_sum(300, &[100, 250, -50]).unwrap();
        assert_eq!(
            check_sum(300, &[100, 100, 50]),
            Err(Violation::SumChanged {
                expected: 300,
                read: 250
            })
        );
    }
}
