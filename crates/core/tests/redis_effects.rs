//! Updates whose effect depends on when or where they run, against two real redis-servers (the
//! interop tier) standing for two replicas: each replica runs the rewritten form (a relative
//! expiry made absolute at the primary's clock) at its own moment, or the primary runs SPOP and
//! both replicas its effect; afterwards both hold the same data and the same deadlines.
//! The same commands run unrewritten a few milliseconds apart leave different deadlines, which
//! the comparison sees.

mod redis_support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_support::{ask, Server};
use steadfast_core::redis_effects::{absolute_expiry, popped_members, random_effect, Words};
use steadfast_core::resp_value::{decode_whole_value, RespData, ValueLimits};

fn request(words: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
        out.extend_from_slice(word);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn words(text: &str) -> Words {
    text.split(' ').map(|w| w.as_bytes().to_vec()).collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

fn value(reply: &[u8]) -> RespData {
    decode_whole_value(reply, ValueLimits::default())
        .expect("a reply")
        .data
}

/// A key, the digest of its value (DEBUG DIGEST-VALUE) and its deadline (PEXPIRETIME), as
/// the server answered them.
type KeyState = (Vec<u8>, Vec<u8>, Vec<u8>);

/// The whole dataset's digest, and every key's state.
fn snapshot(server: &Server) -> (Vec<u8>, Vec<KeyState>) {
    let mut connection = server.connect();
    let digest = ask(&mut connection, &request(&words("DEBUG DIGEST")));
    let keys = ask(&mut connection, &request(&words("KEYS *")));
    let mut keys: Vec<Vec<u8>> = value(&keys)
        .as_list()
        .expect("KEYS answers a list")
        .iter()
        .map(|k| k.data.as_bytes().expect("a key").to_vec())
        .collect();
    keys.sort();
    let each = keys
        .into_iter()
        .map(|key| {
            let value = ask(
                &mut connection,
                &request(&[b"DEBUG".to_vec(), b"DIGEST-VALUE".to_vec(), key.clone()]),
            );
            let deadline = ask(
                &mut connection,
                &request(&[b"PEXPIRETIME".to_vec(), key.clone()]),
            );
            (key, value, deadline)
        })
        .collect();
    (digest, each)
}

/// A seeded mix of updates with relative expiries, pops and plain writes.
fn workload(seed: u64, steps: usize) -> Vec<Words> {
    let mut state = seed | 1;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    (0..steps)
        .map(|_| {
            let k = next(6);
            let t = 100 + next(900);
            let text = match next(11) {
                0 => format!("SET k{k} v{t} EX {t}"),
                1 => format!("SET k{k} v{t} PX {t}000"),
                2 => format!("SETEX k{k} {t} v{t}"),
                3 => format!("PSETEX k{k} {t}000 v{t}"),
                4 => format!("EXPIRE k{k} {t}"),
                5 => format!("PEXPIRE k{k} {t}000 GT"),
                6 => format!("GETEX k{k} EX {t}"),
                7 => format!("SADD s{k} a b c d e f{t}"),
                8 => format!("SPOP s{k}"),
                9 => format!("SPOP s{k} {}", 1 + next(3)),
                _ => format!("SET k{k} plain{t}"),
            };
            words(&text)
        })
        .collect()
}

/// Runs `workload` on both servers, the second a little later each time: rewritten (as active
/// mode does) when `rewrite`, as sent by the client otherwise.
fn run_on_two_replicas(primary: &Server, replica: &Server, workload: &[Words], rewrite: bool) {
    let (mut a, mut b) = (primary.connect(), replica.connect());
    for command in workload {
        if rewrite && command[0] == b"SPOP" {
            let reply = ask(&mut a, &request(command));
            let popped = popped_members(&reply).expect("a SPOP reply");
            if let Some(effect) = random_effect(command, popped.as_deref()) {
                // Every replica runs the effect, the one that popped too, and all answer alike.
                let (on_primary, on_replica) = (
                    ask(&mut a, &request(&effect)),
                    ask(&mut b, &request(&effect)),
                );
                assert_eq!(on_primary, on_replica, "the effect's replies");
            }
            continue;
        }
        let form = if rewrite {
            absolute_expiry(command, now_ms()).unwrap_or_else(|| command.clone())
        } else {
            command.clone()
        };
        let from_primary = ask(&mut a, &request(&form));
        std::thread::sleep(Duration::from_millis(2));
        let from_replica = ask(&mut b, &request(&form));
        if command[0] != b"SPOP" {
            assert_eq!(
                from_primary,
                from_replica,
                "{:?}",
                String::from_utf8_lossy(&form.concat())
            );
        }
    }
}

#[test]
#[ignore = "needs redis-server (the interop tier)"]
fn replicas_running_the_rewritten_forms_hold_the_same_data_and_deadlines() {
    let updates = workload(7, 200);
    let (primary, replica) = (Server::start(), Server::start());
    run_on_two_replicas(&primary, &replica, &updates, true);
    let (a, b) = (snapshot(&primary), snapshot(&replica));
    assert!(!a.1.is_empty(), "the workload left keys");
    assert!(
        a.1.iter().any(|(_, _, deadline)| deadline != b":-1\r\n"),
        "some keys have deadlines"
    );
    assert_eq!(a, b);
}

/// The comparison is not blind: relative expiries run 2 ms apart leave different deadlines.
#[test]
#[ignore = "needs redis-server (the interop tier)"]
fn relative_expiries_run_apart_leave_different_deadlines() {
    let updates: Vec<Words> = workload(7, 200)
        .into_iter()
        .filter(|w| w[0] != b"SPOP")
        .collect();
    let (primary, replica) = (Server::start(), Server::start());
    run_on_two_replicas(&primary, &replica, &updates, false);
    let (a, b) = (snapshot(&primary), snapshot(&replica));
    assert_eq!(a.1.len(), b.1.len());
    assert_ne!(a.1, b.1, "deadlines set 2 ms apart differ");
}
