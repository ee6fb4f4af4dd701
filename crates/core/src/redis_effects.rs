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
//! - **Random effects** (`SPOP`): the primary runs the command, and the other replicas are sent
//!   its effect (`SREM` of the members its reply names), as Redis' own replication propagates it.
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

/// What the other replicas run for a command the primary ran whose effect chance decided:
/// `SPOP key [count]` becomes `SREM key` of the members the primary's reply names (`reply`:
/// the members, `None` for a null reply). `None`: nothing to run (no member popped, or not
/// such a command).
pub fn random_effect(words: &[Vec<u8>], reply: Option<&[Vec<u8>]>) -> Option<Words> {
    let name = words.first()?;
    if !is(name, "spop") {
        return None;
    }
    let members = reply?;
    if members.is_empty() {
        return None;
    }
    let mut out: Words = vec![b"SREM".to_vec(), words.get(1)?.clone()];
    out.extend(members.iter().cloned());
    Some(out)
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
        assert_eq!(
            random_effect(&words("SPOP s 2"), Some(&members)),
            Some(words("SREM s a b"))
        );
        assert_eq!(random_effect(&words("spop s"), None), None);
        assert_eq!(random_effect(&words("SPOP s 3"), Some(&[])), None);
        assert_eq!(random_effect(&words("SREM s a"), Some(&members)), None);
    }
}
