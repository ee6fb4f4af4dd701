//! What a client session's connection to a replica's redis-server was told that is not data:
//! the user it acts as, the protocol, the database, its name. Every replica runs a session's
//! requests on a connection of its own; a replica rebuilt from a copy opens those connections
//! anew, and they must be set up as the source's stood when the copy was taken, or the next
//! `SET` of a session that had run `SELECT 2` lands in database 0 there only.
//!
//! Only requests that succeeded count (a `SELECT 99` refused leaves the database as it was),
//! and only the last of each kind is kept: running them again in order sets the connection up
//! the same way. `RESET` forgets everything. Not covered: `WATCH` (a copy is never taken
//! inside MULTI, but may be between WATCH and MULTI; EXEC on the rebuilt replica then ignores
//! the watch and its reply may differ, which the reply comparison catches), and a setup
//! request queued inside MULTI (it takes effect at EXEC; not followed).

use std::collections::BTreeMap;

use crate::resp::{Direction, RespFramer, RespLimits};
use crate::resp_request::request_words;

/// One kind of setting; a later request of a kind replaces the earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setting {
    // Declared in the order they are run again: the user first (ACLs may limit the rest).
    Auth,
    Hello,
    Database,
    Name,
    LibraryName,
    LibraryVersion,
    ReadMode,
}

/// A request's effect on the session's setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Sets(Setting),
    Resets,
}

fn effect(words: &[Vec<u8>]) -> Option<Effect> {
    let word = |i: usize| words.get(i).map(|w| w.to_ascii_uppercase());
    let setting = match word(0)?.as_slice() {
        b"AUTH" => Setting::Auth,
        b"HELLO" => Setting::Hello,
        b"SELECT" => Setting::Database,
        b"READONLY" | b"READWRITE" => Setting::ReadMode,
        b"RESET" => return Some(Effect::Resets),
        b"CLIENT" => match (word(1)?.as_slice(), word(2).as_deref()) {
            (b"SETNAME", _) => Setting::Name,
            (b"SETINFO", Some(b"LIB-NAME")) => Setting::LibraryName,
            (b"SETINFO", Some(b"LIB-VER")) => Setting::LibraryVersion,
            _ => return None,
        },
        _ => return None,
    };
    Some(Effect::Sets(setting))
}

/// Whether `request` may change a session's setup: worth keeping until its reply says whether
/// it succeeded. Setup requests are short; a long request is never one. Every update on every
/// replica comes through here, so only a request whose command is one of the setup commands
/// is decoded whole.
pub fn sets_up_a_session(request: &[u8]) -> bool {
    const SETUP_COMMANDS: [&[u8]; 7] = [
        b"AUTH",
        b"HELLO",
        b"SELECT",
        b"READONLY",
        b"READWRITE",
        b"RESET",
        b"CLIENT",
    ];
    let named = command_name(request)
        .is_some_and(|name| SETUP_COMMANDS.iter().any(|c| name.eq_ignore_ascii_case(c)));
    named
        && request.len() <= 4096
        && request_words(request).is_some_and(|words| effect(&words).is_some())
}

/// The first word of a request, without decoding the rest: the first bulk string of an array,
/// or the first word of an inline line.
fn command_name(request: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = request.strip_prefix(b"*") {
        let after_count = &rest[rest.iter().position(|&b| b == b'\n')? + 1..];
        let header = after_count.strip_prefix(b"$")?;
        let header_end = header.iter().position(|&b| b == b'\r')?;
        let len: usize = std::str::from_utf8(&header[..header_end])
            .ok()?
            .parse()
            .ok()?;
        return header.get(header_end + 2..header_end + 2 + len);
    }
    request
        .split(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .find(|word| !word.is_empty())
}

/// A session's setup, as the requests that make it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSetup {
    steps: BTreeMap<Setting, Vec<u8>>,
}

impl SessionSetup {
    /// `request` ran and its reply was not an error.
    pub fn succeeded(&mut self, request: &[u8]) {
        let Some(words) = request_words(request) else {
            return;
        };
        match effect(&words) {
            Some(Effect::Sets(setting)) => {
                self.steps.insert(setting, request.to_vec());
            }
            Some(Effect::Resets) => self.steps.clear(),
            None => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The requests to run on a new connection, and how many.
    pub fn prelude(&self) -> (u64, Vec<u8>) {
        (
            self.steps.len() as u64,
            self.steps.values().flatten().copied().collect(),
        )
    }

    /// The setup a prelude (from [`prelude`](Self::prelude)) makes.
    pub fn from_prelude(requests: &[u8]) -> Result<SessionSetup, String> {
        let mut framer = RespFramer::new(Direction::Requests, RespLimits::default());
        let mut messages = Vec::new();
        framer
            .feed(requests, &mut messages)
            .map_err(|e| format!("a session prelude: {e}"))?;
        let mut setup = SessionSetup::default();
        let mut end = 0;
        for message in &messages {
            setup.succeeded(&requests[message.start as usize..message.end as usize]);
            end = message.end as usize;
        }
        if end != requests.len() {
            return Err(format!(
                "a session prelude: {} bytes after its last whole request",
                requests.len() - end
            ));
        }
        Ok(setup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp_request::encode_request;

    fn request(text: &str) -> Vec<u8> {
        encode_request(
            &text
                .split(' ')
                .map(|w| w.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn the_last_of_each_kind_is_run_again_user_first() {
        let mut setup = SessionSetup::default();
        for text in [
            "SELECT 2",
            "CLIENT SETNAME web",
            "select 3",
            "AUTH app secret",
            "CLIENT SETINFO LIB-NAME redis-py",
        ] {
            assert!(sets_up_a_session(&request(text)), "{text}");
            setup.succeeded(&request(text));
        }
        let (count, requests) = setup.prelude();
        assert_eq!(count, 4);
        let want: Vec<u8> = [
            "AUTH app secret",
            "select 3",
            "CLIENT SETNAME web",
            "CLIENT SETINFO LIB-NAME redis-py",
        ]
        .iter()
        .flat_map(|t| request(t))
        .collect();
        assert_eq!(requests, want);
        assert_eq!(SessionSetup::from_prelude(&requests).unwrap(), setup);
    }

    #[test]
    fn reset_forgets_everything_and_data_commands_are_not_setup() {
        let mut setup = SessionSetup::default();
        setup.succeeded(&request("SELECT 2"));
        setup.succeeded(&request("RESET"));
        assert!(setup.is_empty());
        for text in [
            "SET k v",
            "CLIENT LIST",
            "CLIENT SETINFO LIB-FOO x",
            "GET select",
        ] {
            assert!(!sets_up_a_session(&request(text)), "{text}");
            setup.succeeded(&request(text));
        }
        assert!(setup.is_empty());
        assert_eq!(setup.prelude(), (0, Vec::new()));
    }

    #[test]
    fn the_command_name_is_read_without_decoding_the_request() {
        assert_eq!(command_name(&request("select 3")), Some(&b"select"[..]));
        assert_eq!(command_name(b"  AUTH pw\r\n"), Some(&b"AUTH"[..]));
        assert_eq!(command_name(b"*1\r\n$3\r\nGE"), None, "cut short");
        assert_eq!(command_name(b""), None);
    }

    #[test]
    fn inline_requests_count_and_a_cut_prelude_is_refused() {
        let mut setup = SessionSetup::default();
        setup.succeeded(b"SELECT 4\r\n");
        assert_eq!(setup.prelude(), (1, b"SELECT 4\r\n".to_vec()));
        assert!(SessionSetup::from_prelude(b"*2\r\n$6\r\nSELECT\r\n$1\r\n").is_err());
    }
}
