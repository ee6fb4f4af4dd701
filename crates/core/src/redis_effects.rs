//! Redis updates whose effect depends on when or where they run, rewritten into forms every
//! replica executes alike (active mode: each replica runs every update itself).
//!
//! - **Relative expiries** (`EXPIRE k 10`, `SET k v PX 500`, `SETEX`, `PSETEX`, `GETEX … EX`,
//!   `RESTORE` with a TTL) set a deadline from the clock of the server that runs them: replicas
//!   running them a few milliseconds apart would hold different deadlines. The primary turns
//!   them into absolute ones (`PEXPIREAT`, `SET … PXAT`, `GETEX … PXAT`, `RESTORE … ABSTTL`) at
//!   its own clock before ordering them; the reply is the same as the original's. A command whose
//!   expiry Redis would refuse (zero, negative, not a number, overflowing) is left as it is, so
//!   every replica refuses it alike.
//! - **Random effects** (`SPOP`): one replica (the primary's own) runs the command while
//!   nothing else is ordered, and then every replica, that one included, is sent its effect:
//!   the removal of the members its reply names, as Redis' own replication propagates it, in a
//!   script whose reply is the same whether the members were still there or not (the replicas'
//!   replies to every update are compared).
//!
//! Commands are handled as their words (the request's bulk strings); names and options are
//! matched without regard to case, as Redis does.

/// A request's words, the command name first.
pub type Words = Vec<Vec<u8>>;

fn is(word: &[u8], name: &str) -> bool {
    word.eq_ignore_ascii_case(name.as_bytes())
}

/// A positive decimal integer as Redis parses one (no sign, no spaces), within `i64`.
fn positive(word: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(word).ok()?;
    let value: i64 = text.parse().ok()?;
    (value > 0 && !text.starts_with('+')).then_some(value)
}

/// Any decimal integer as Redis parses one, within `i64`.
fn integer(word: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(word).ok()?;
    if text.starts_with('+') {
        return None;
    }
    text.parse().ok()
}

/// `now_ms + amount * unit_ms`, if it fits where Redis keeps deadlines (`i64` milliseconds).
fn deadline(now_ms: i64, amount: i64, unit_ms: i64) -> Option<i64> {
    amount.checked_mul(unit_ms)?.checked_add(now_ms)
}

fn number(value: i64) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// The form of `words` that sets the same deadline on every replica, given the primary's clock
/// (`now_ms`, Unix milliseconds): `None` when the command sets no relative deadline (or one
/// Redis would refuse, which every replica then refuses alike).
pub fn absolute_expiry(words: &[Vec<u8>], now_ms: i64) -> Option<Words> {
    let name = words.first()?;
    if is(name, "expire") || is(name, "pexpire") {
        // EXPIRE key seconds [NX|XX|GT|LT]: any integer (0 and below delete the key, which a
        // deadline in the past does too).
        let unit = if is(name, "expire") { 1000 } else { 1 };
        let amount = integer(words.get(2)?)?;
        let at = deadline(now_ms, amount, unit)?;
        let mut out: Words = vec![b"PEXPIREAT".to_vec(), words.get(1)?.clone(), number(at)];
        out.extend(words[3..].iter().cloned());
        return Some(out);
    }
    if is(name, "setex") || is(name, "psetex") {
        // SETEX key seconds value: the same reply (+OK) as SET key value PXAT.
        if words.len() != 4 {
            return None;
        }
        let unit = if is(name, "setex") { 1000 } else { 1 };
        let at = deadline(now_ms, positive(&words[2])?, unit)?;
        return Some(vec![
            b"SET".to_vec(),
            words[1].clone(),
            words[3].clone(),
            b"PXAT".to_vec(),
            number(at),
        ]);
    }
    if is(name, "set") || is(name, "getex") {
        // SET key value [NX|XX] [GET] [EX s|PX ms|EXAT|PXAT|KEEPTTL]; GETEX key [EX|PX|…]:
        // options follow the key (and the value).
        let first_option = if is(name, "set") { 3 } else { 2 };
        let mut out: Words = words.to_vec();
        let mut i = first_option;
        let mut rewrote = false;
        while i < out.len() {
            let option = &out[i];
            let unit = if is(option, "ex") {
                Some(1000)
            } else if is(option, "px") {
                Some(1)
            } else {
                None
            };
            if let Some(unit) = unit {
                let at = deadline(now_ms, positive(out.get(i + 1)?)?, unit)?;
                out[i] = b"PXAT".to_vec();
                out[i + 1] = number(at);
                rewrote = true;
                i += 2;
            } else {
                i += 1;
            }
        }
        return rewrote.then_some(out);
    }
    if is(name, "restore") {
        // RESTORE key ttl serialized [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]: ttl 0 is no
        // expiry; with ABSTTL it is already a deadline.
        if words.len() < 4 || words[4..].iter().any(|w| is(w, "absttl")) {
            return None;
        }
        let ttl = positive(&words[2])?;
        let at = deadline(now_ms, ttl, 1)?;
        let mut out: Words = words.to_vec();
        out[2] = number(at);
        out.push(b"ABSTTL".to_vec());
        return Some(out);
    }
    None
}

/// Removes `ARGV` from the set `KEYS[1]` and answers nothing, whatever was there: the replica
/// that ran the SPOP already lost the members, the others still hold them, and all must
/// answer alike. `unpack` goes a thousand at a time, below Lua's stack limit.
pub const REMOVE_MEMBERS_SCRIPT: &str = "for i = 1, #ARGV, 1000 do \
redis.call('SREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))) end return nil";

/// Whether the update is one whose effect chance decides and active mode replicates as its
/// effect ([`random_effect`]): `SPOP`.
pub fn is_random_write(words: &[Vec<u8>]) -> bool {
    words.first().is_some_and(|name| is(name, "spop"))
}

/// What every replica runs once one ran a command whose effect chance decided: `SPOP key
/// [count]` becomes [`REMOVE_MEMBERS_SCRIPT`] over the members its reply names (`reply`: the
/// members, `None` for a null reply). `None`: nothing to run (nothing popped, or not such a
/// command).
pub fn random_effect(words: &[Vec<u8>], reply: Option<&[Vec<u8>]>) -> Option<Words> {
    if !is_random_write(words) {
        return None;
    }
    let members = reply?;
    if members.is_empty() {
        return None;
    }
    let mut out: Words = vec![
        b"EVAL".to_vec(),
        REMOVE_MEMBERS_SCRIPT.as_bytes().to_vec(),
        b"1".to_vec(),
        words.get(1)?.clone(),
    ];
    out.extend(members.iter().cloned());
    Some(out)
}

/// What a SPOP reply says was popped: `Ok(None)` for a null reply, the members of a bulk
/// string or of an array or set of them; an error reply (a wrong type, a bad count) is
/// `Err` with its text: nothing was popped.
pub fn popped_members(reply: &[u8]) -> Result<Option<Vec<Vec<u8>>>, String> {
    use crate::resp_value::{decode_whole_value, RespData, ValueLimits};
    // The reply comes from the replica's own server, whole: only its shape is checked.
    let limits = ValueLimits {
        max_bulk: u64::MAX,
        max_elements: u64::MAX,
        ..ValueLimits::default()
    };
    let value = decode_whole_value(reply, limits).map_err(|e| format!("a SPOP reply: {e}"))?;
    match value.data {
        RespData::Null => Ok(None),
        RespData::BulkString(member) => Ok(Some(vec![member])),
        RespData::SimpleError(text) | RespData::BulkError(text) => {
            Err(String::from_utf8_lossy(&text).into_owned())
        }
        ref other => {
            let list = other
                .as_list()
                .ok_or_else(|| "a SPOP reply neither a member, a list nor null".to_string())?;
            list.iter()
                .map(|m| {
                    m.data
                        .as_bytes()
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| "a SPOP reply listing a member that is not a string".into())
                })
                .collect::<Result<Vec<_>, String>>()
                .map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Words {
        text.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn relative_expiries_become_deadlines_at_the_primarys_clock() {
        let now = 1_700_000_000_000;
        let cases = [
            ("EXPIRE k 10", Some("PEXPIREAT k 1700000010000")),
            ("expire k 10 NX", Some("PEXPIREAT k 1700000010000 NX")),
            ("PEXPIRE k 250 GT", Some("PEXPIREAT k 1700000000250 GT")),
            ("EXPIRE k -5", Some("PEXPIREAT k 1699999995000")),
            ("SETEX k 3 v", Some("SET k v PXAT 1700000003000")),
            ("PSETEX k 3 v", Some("SET k v PXAT 1700000000003")),
            ("SETEX k 0 v", None),
            ("SETEX k -1 v", None),
            ("SETEX k x v", None),
            ("SET k v", None),
            ("SET k v NX EX 2", Some("SET k v NX PXAT 1700000002000")),
            ("set k v px 7 get", Some("set k v PXAT 1700000000007 get")),
            ("SET k v EX 0", None),
            ("SET k v EXAT 9", None),
            ("SET k v KEEPTTL", None),
            ("GETEX k EX 1", Some("GETEX k PXAT 1700000001000")),
            ("GETEX k PERSIST", None),
            (
                "RESTORE k 500 blob REPLACE",
                Some("RESTORE k 1700000000500 blob REPLACE ABSTTL"),
            ),
            ("RESTORE k 0 blob", None),
            ("RESTORE k 5 blob ABSTTL", None),
            ("EXPIRE k 9223372036854775807", None),
            ("EXPIREAT k 5", None),
            ("GET k", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                absolute_expiry(&words(input), now),
                want.map(words),
                "{input}"
            );
        }
    }

    #[test]
    fn a_pop_becomes_the_removal_of_what_it_popped() {
        let members = [b"a".to_vec(), b"b".to_vec()];
        let mut want = vec![
            b"EVAL".to_vec(),
            REMOVE_MEMBERS_SCRIPT.as_bytes().to_vec(),
            b"1".to_vec(),
        ];
        want.extend(words("s a b"));
        assert_eq!(
            random_effect(&words("SPOP s 2"), Some(&members)),
            Some(want)
        );
        assert_eq!(random_effect(&words("spop s"), None), None);
        assert_eq!(random_effect(&words("SPOP s 3"), Some(&[])), None);
        assert_eq!(random_effect(&words("SREM s a"), Some(&members)), None);
    }

    #[test]
    fn a_pop_reply_names_what_was_popped_in_either_protocol() {
        let some = |m: &[&str]| Ok(Some(m.iter().map(|m| m.as_bytes().to_vec()).collect()));
        assert_eq!(popped_members(b"$1\r\na\r\n"), some(&["a"]));
        assert_eq!(
            popped_members(b"*2\r\n$1\r\na\r\n$2\r\nbc\r\n"),
            some(&["a", "bc"])
        );
        assert_eq!(popped_members(b"~1\r\n$1\r\nz\r\n"), some(&["z"]));
        assert_eq!(popped_members(b"*0\r\n"), some(&[]));
        assert_eq!(popped_members(b"$-1\r\n"), Ok(None));
        assert_eq!(popped_members(b"_\r\n"), Ok(None));
        assert!(popped_members(b"-WRONGTYPE Operation against a key\r\n")
            .unwrap_err()
            .starts_with("WRONGTYPE"));
        assert!(popped_members(b":3\r\n").is_err());
        assert!(popped_members(b"*1\r\n:3\r\n").is_err());
        assert!(popped_members(b"$5\r\nab").is_err(), "cut short");
    }
}
