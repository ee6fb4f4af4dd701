//! A replica's executor against a model RESP server that runs its connections' requests in any
//! interleaving (as redis-server may), answering in pieces of any size: updates run in their
//! numbers whatever the interleaving, each reply is matched to what it answers, a read runs
//! only after every update up to its barrier, and a session's replies come in its own order.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use steadfast_core::active_executor::{ExecAction, ExecError, ReplicaExecutor, SessionId, Work};
use steadfast_core::resp::RespLimits;

/// What the model server ran: per request, its session, and (updates) its number or (reads)
/// the updates run before it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ran {
    Update {
        session: SessionId,
        number: u64,
    },
    Read {
        session: SessionId,
        updates_before: u64,
        barrier: u64,
    },
}

/// A RESP server holding counters: `INCR key tag` (an update, tagged with its number) and
/// `GET key barrier` (a read). Requests wait per connection; `step` runs the front request of
/// a connection chosen by the test.
#[derive(Default)]
struct ModelServer {
    inbound: BTreeMap<SessionId, VecDeque<Vec<String>>>,
    outbound: BTreeMap<SessionId, Vec<u8>>,
    counters: BTreeMap<String, i64>,
    ran: Vec<Ran>,
    updates_run: u64,
    /// What it answered each update (by number) and each read (by session, in order).
    update_replies: BTreeMap<u64, Vec<u8>>,
}

fn command(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend_from_slice(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
    }
    out
}

impl ModelServer {
    fn take(&mut self, session: SessionId, request: &[u8]) {
        let text = String::from_utf8_lossy(request);
        let words: Vec<String> = text
            .split("\r\n")
            .skip(2)
            .step_by(2)
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        self.inbound.entry(session).or_default().push_back(words);
    }

    fn busy(&self) -> Vec<SessionId> {
        self.inbound
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(s, _)| *s)
            .collect()
    }

    fn step(&mut self, session: SessionId) {
        let words = self
            .inbound
            .get_mut(&session)
            .and_then(VecDeque::pop_front)
            .expect("a request waits");
        let reply = match words[0].as_str() {
            "INCR" => {
                let value = self.counters.entry(words[1].clone()).or_default();
                *value += 1;
                let number: u64 = words[2].parse().unwrap();
                self.updates_run += 1;
                self.ran.push(Ran::Update { session, number });
                let reply = format!(":{value}\r\n").into_bytes();
                self.update_replies.insert(number, reply.clone());
                reply
            }
            "GET" => {
                self.ran.push(Ran::Read {
                    session,
                    updates_before: self.updates_run,
                    barrier: words[2].parse().unwrap(),
                });
                match self.counters.get(&words[1]) {
                    Some(v) => {
                        let v = v.to_string();
                        format!("${}\r\n{v}\r\n", v.len()).into_bytes()
                    }
                    None => b"$-1\r\n".to_vec(),
                }
            }
            other => panic!("the model knows no {other}"),
        };
        self.outbound.entry(session).or_default().extend(reply);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Update { session: SessionId, key: u8 },
    Read { session: SessionId, key: u8 },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (any::<bool>(), 1u64..5, 0u8..3).prop_map(|(update, session, key)| {
            if update {
                Op::Update { session, key }
            } else {
                Op::Read { session, key }
            }
        }),
        1..60,
    )
}

proptest! {
    #[test]
    fn updates_run_in_their_order_whatever_the_server_interleaves(
        ops in ops(),
        choices in proptest::collection::vec(any::<u16>(), 400),
    ) {
        let mut executor = ReplicaExecutor::new(0, RespLimits::default());
        let mut server = ModelServer::default();
        let mut choice = choices.into_iter().cycle();
        let mut pick = |n: usize| usize::from(choice.next().unwrap()) % n.max(1);
        let mut replied: BTreeMap<SessionId, Vec<Option<u64>>> = BTreeMap::new();
        let mut expected: BTreeMap<SessionId, Vec<Option<u64>>> = BTreeMap::new();
        let mut read_replies = Vec::new();
        let mut number = 0u64;
        let mut pending = ops.into_iter().collect::<VecDeque<_>>();
        let handle = |actions: Vec<ExecAction>,
                          server: &mut ModelServer,
                          replied: &mut BTreeMap<SessionId, Vec<Option<u64>>>,
                          read_replies: &mut Vec<Vec<u8>>| {
            for action in actions {
                match action {
                    ExecAction::Write { session, bytes } => server.take(session, &bytes),
                    ExecAction::Replied { session, number, reply } => {
                        if let Some(n) = number {
                            assert_eq!(Some(&reply), server.update_replies.get(&n), "update {n}");
                        } else {
                            read_replies.push(reply);
                        }
                        replied.entry(session).or_default().push(number);
                    }
                }
            }
        };
        for _ in 0..5000 {
            let busy = server.busy();
            let answering: Vec<SessionId> = server
                .outbound
                .iter()
                .filter(|(_, b)| !b.is_empty())
                .map(|(s, _)| *s)
                .collect();
            if pending.is_empty() && busy.is_empty() && answering.is_empty() {
                break;
            }
            match pick(3) {
                0 if !pending.is_empty() => {
                    let work = match pending.pop_front().unwrap() {
                        Op::Update { session, key } => {
                            number += 1;
                            expected.entry(session).or_default().push(Some(number));
                            let key = format!("k{key}");
                            let tag = number.to_string();
                            Work::Update { number, session, request: command(&["INCR", &key, &tag]) }
                        }
                        Op::Read { session, key } => {
                            expected.entry(session).or_default().push(None);
                            let key = format!("k{key}");
                            let barrier = number.to_string();
                            Work::Read { session, barrier: number, request: command(&["GET", &key, &barrier]) }
                        }
                    };
                    let actions = executor.submit(work).unwrap();
                    handle(actions, &mut server, &mut replied, &mut read_replies);
                }
                1 if !busy.is_empty() => server.step(busy[pick(busy.len())]),
                _ if !answering.is_empty() => {
                    let session = answering[pick(answering.len())];
                    let bytes = server.outbound.get_mut(&session).unwrap();
                    let n = 1 + pick(bytes.len());
                    let piece: Vec<u8> = bytes.drain(..n).collect();
                    let actions = executor.server_bytes(session, &piece).unwrap();
                    handle(actions, &mut server, &mut replied, &mut read_replies);
                }
                _ => {}
            }
        }
        prop_assert!(pending.is_empty() && server.busy().is_empty(), "the run ends");
        let updates: Vec<u64> = server
            .ran
            .iter()
            .filter_map(|r| match r {
                Ran::Update { number, .. } => Some(*number),
                Ran::Read { .. } => None,
            })
            .collect();
        prop_assert_eq!(updates, (1..=number).collect::<Vec<_>>());
        for ran in &server.ran {
            if let Ran::Read { updates_before, barrier, .. } = ran {
                prop_assert!(updates_before >= barrier, "a read ran before its barrier: {ran:?}");
            }
        }
        prop_assert_eq!(replied, expected);
        prop_assert_eq!(executor.answered_up_to(), number);
        for session in 1..5 {
            prop_assert_eq!(executor.end_session(session), Ok(()));
        }
    }
}

#[test]
fn updates_out_of_order_and_busy_sessions_are_refused() {
    let mut executor = ReplicaExecutor::new(4, RespLimits::default());
    let skipped = executor
        .submit(Work::Update {
            number: 6,
            session: 1,
            request: command(&["INCR", "k"]),
        })
        .unwrap_err();
    assert_eq!(skipped, ExecError::OutOfOrder { got: 6, last: 4 });
    let actions = executor
        .submit(Work::Update {
            number: 5,
            session: 1,
            request: command(&["INCR", "k"]),
        })
        .unwrap();
    assert_eq!(actions.len(), 1);
    let busy = executor.end_session(1).unwrap_err();
    assert!(
        busy.to_string().contains("1 requests not yet answered"),
        "{busy}"
    );
    assert_eq!(
        executor.server_bytes(2, b":1\r\n").unwrap_err(),
        ExecError::UnexpectedReply { session: 2 }
    );
    let replied = executor.server_bytes(1, b":1\r\n:2\r\n").unwrap_err();
    assert_eq!(replied, ExecError::UnexpectedReply { session: 1 });
}

/// Two sessions' updates are never at the server at once; one session's are pipelined.
#[test]
fn one_sessions_updates_are_pipelined_two_sessions_wait_for_each_other() {
    let mut executor = ReplicaExecutor::new(0, RespLimits::default());
    let update = |number, session| Work::Update {
        number,
        session,
        request: command(&["INCR", "k"]),
    };
    assert_eq!(executor.submit(update(1, 1)).unwrap().len(), 1);
    assert_eq!(executor.submit(update(2, 1)).unwrap().len(), 1, "pipelined");
    assert!(
        executor.submit(update(3, 2)).unwrap().is_empty(),
        "waits for session 1"
    );
    let after_one = executor.server_bytes(1, b":1\r\n").unwrap();
    assert_eq!(
        after_one.len(),
        1,
        "update 2 still outstanding: {after_one:?}"
    );
    let after_two = executor.server_bytes(1, b":2\r\n").unwrap();
    assert!(
        after_two.contains(&ExecAction::Write {
            session: 2,
            bytes: command(&["INCR", "k"])
        }),
        "{after_two:?}"
    );
}
