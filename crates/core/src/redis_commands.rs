//! Which Redis commands change data, which only read it, and which cannot be replicated: the
//! routing decision of active mode, where every member runs its own redis-server, updates are
//! ordered and sent to every replica, and a read goes to one.
//!
//! The table comes from the server itself (the reply of `COMMAND` or `COMMAND INFO name…`), so
//! that a newer redis-server, a module's commands or a renamed command are classified by what
//! that server says of them, not by what this file knew when it was written. Explicit lists are
//! kept only for the facts `COMMAND` does not state; they sit in `explicit_rule`, each with why.
//!
//! The reply of `COMMAND` (about 90 KiB, 240 commands in 7.0) is read once per connection to a
//! server and decoded whole by [`resp_value`](crate::resp_value).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::resp_value::{decode_whole_value, DecodeError, RespData, RespValue, ValueLimits};

// ---------------------------------------------------------------------------------------------
// The command table
// ---------------------------------------------------------------------------------------------

/// A command flag as `COMMAND` names it. Flags this file does not know are kept by name: a
/// newer server may add some, and classification must not fail on them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandFlag {
    Write,
    Readonly,
    Denyoom,
    Module,
    Admin,
    Pubsub,
    Noscript,
    Blocking,
    Loading,
    Stale,
    SkipMonitor,
    SkipSlowlog,
    Asking,
    Fast,
    NoAuth,
    MayReplicate,
    NoMandatoryKeys,
    NoAsyncLoading,
    NoMulti,
    Movablekeys,
    AllowBusy,
    /// Redis 6's mark of a command with a non-deterministic reply (7.0 says it with tips).
    Random,
    /// Redis 6's mark of a command whose reply a script sorts (7.0 dropped it).
    SortForScript,
    Other(String),
}

/// The flag names as `COMMAND` spells them.
const FLAG_NAMES: [(CommandFlag, &str); 23] = [
    (CommandFlag::Write, "write"),
    (CommandFlag::Readonly, "readonly"),
    (CommandFlag::Denyoom, "denyoom"),
    (CommandFlag::Module, "module"),
    (CommandFlag::Admin, "admin"),
    (CommandFlag::Pubsub, "pubsub"),
    (CommandFlag::Noscript, "noscript"),
    (CommandFlag::Blocking, "blocking"),
    (CommandFlag::Loading, "loading"),
    (CommandFlag::Stale, "stale"),
    (CommandFlag::SkipMonitor, "skip_monitor"),
    (CommandFlag::SkipSlowlog, "skip_slowlog"),
    (CommandFlag::Asking, "asking"),
    (CommandFlag::Fast, "fast"),
    (CommandFlag::NoAuth, "no_auth"),
    (CommandFlag::MayReplicate, "may_replicate"),
    (CommandFlag::NoMandatoryKeys, "no_mandatory_keys"),
    (CommandFlag::NoAsyncLoading, "no_async_loading"),
    (CommandFlag::NoMulti, "no_multi"),
    (CommandFlag::Movablekeys, "movablekeys"),
    (CommandFlag::AllowBusy, "allow_busy"),
    (CommandFlag::Random, "random"),
    (CommandFlag::SortForScript, "sort_for_script"),
];

impl CommandFlag {
    /// The flag `COMMAND` calls `name` (case-insensitive; unknown names become [`Other`],
    /// lower-cased).
    ///
    /// [`Other`]: CommandFlag::Other
    pub fn from_name(name: &str) -> CommandFlag {
        let lower = name.to_ascii_lowercase();
        FLAG_NAMES
            .iter()
            .find(|(_, known)| *known == lower)
            .map(|(flag, _)| flag.clone())
            .unwrap_or(CommandFlag::Other(lower))
    }

    pub fn name(&self) -> &str {
        match self {
            CommandFlag::Other(name) => name,
            known => FLAG_NAMES
                .iter()
                .find(|(flag, _)| flag == known)
                .map_or("", |(_, name)| name),
        }
    }
}

impl fmt::Display for CommandFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `COMMAND` says of one command or subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandInfo {
    /// Lower-case, as Redis gives it; a subcommand's is `container|sub` (`client|setname`).
    pub name: String,
    /// Number of words the request takes, the name included; negative: at least that many.
    pub arity: i64,
    pub flags: BTreeSet<CommandFlag>,
    /// Position of the first key word (0: none), of the last (negative: from the end), and
    /// the step between keys.
    pub first_key: i64,
    pub last_key: i64,
    pub key_step: i64,
    /// ACL categories, as given (`@read`); empty from a server older than 6.0.
    pub acl_categories: Vec<String>,
    /// Redis 7 command tips (`nondeterministic_output`, `request_policy:all_shards`); empty
    /// from older servers.
    pub tips: Vec<String>,
    pub subcommands: Vec<CommandInfo>,
}

impl CommandInfo {
    pub fn has_flag(&self, flag: &CommandFlag) -> bool {
        self.flags.contains(flag)
    }

    pub fn has_tip(&self, tip: &str) -> bool {
        self.tips.iter().any(|t| t.eq_ignore_ascii_case(tip))
    }

    /// The subcommand `sub` (case-insensitive, without the container's name).
    pub fn subcommand(&self, sub: &str) -> Option<&CommandInfo> {
        self.subcommands.iter().find(|s| {
            s.name
                .split_once('|')
                .is_some_and(|(_, name)| name.eq_ignore_ascii_case(sub))
        })
    }
}

/// Why a reply of `COMMAND` could not be made a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandTableError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The server answered an error (an unknown `COMMAND`, a renamed one, NOAUTH…).
    #[error("the server answered an error: {0}")]
    ServerError(String),
    /// A well-formed value that is not what `COMMAND` sends.
    #[error("COMMAND reply at byte {offset}: {what}")]
    Shape { offset: usize, what: String },
}

/// Every command a server knows, by lower-case name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandTable {
    commands: BTreeMap<String, CommandInfo>,
}

impl CommandTable {
    /// The table in the reply of `COMMAND` or `COMMAND INFO name…` (RESP2 or RESP3), which must
    /// be the whole of `reply`. Nulls in it (`COMMAND INFO` of an unknown name) are skipped.
    pub fn from_reply(reply: &[u8]) -> Result<CommandTable, CommandTableError> {
        CommandTable::from_reply_with_limits(reply, ValueLimits::default())
    }

    pub fn from_reply_with_limits(
        reply: &[u8],
        limits: ValueLimits,
    ) -> Result<CommandTable, CommandTableError> {
        CommandTable::from_value(&decode_whole_value(reply, limits)?)
    }

    /// The table in an already decoded reply.
    pub fn from_value(reply: &RespValue) -> Result<CommandTable, CommandTableError> {
        let entries = match &reply.data {
            RespData::SimpleError(text) | RespData::BulkError(text) => {
                return Err(CommandTableError::ServerError(
                    String::from_utf8_lossy(text).into_owned(),
                ))
            }
            data => data.as_list().ok_or_else(|| {
                shape(
                    reply,
                    format!("expected an array of commands, found {}", data.type_name()),
                )
            })?,
        };
        let mut commands = BTreeMap::new();
        for entry in entries {
            if entry.data == RespData::Null {
                continue;
            }
            let info = command_entry(entry)?;
            // `COMMAND INFO get get` names a command twice, alike both times.
            commands.insert(info.name.clone(), info);
        }
        Ok(CommandTable { commands })
    }

    /// A command by name, case-insensitive (a subcommand by `container|sub`).
    pub fn get(&self, name: &str) -> Option<&CommandInfo> {
        let lower = name.to_ascii_lowercase();
        match lower.split_once('|') {
            Some((container, sub)) => self.commands.get(container)?.subcommand(sub),
            None => self.commands.get(&lower),
        }
    }

    /// Number of top-level commands (subcommands not counted).
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The top-level commands in name order.
    pub fn iter(&self) -> impl Iterator<Item = &CommandInfo> {
        self.commands.values()
    }

    /// How the request `command first_argument …` must be routed. `first_argument` names the
    /// subcommand of a container command (`CLIENT SETNAME`); pass it whenever the request has
    /// one, as a few plain commands are also told apart by it (`DEBUG DIGEST`).
    pub fn classify(&self, command: &[u8], first_argument: Option<&[u8]>) -> Classification {
        let Some(name) = lower_word(command) else {
            return Classification::Unknown;
        };
        let Some(mut info) = self.commands.get(&name) else {
            return Classification::Unknown;
        };
        let argument = first_argument.and_then(lower_word);
        if !info.subcommands.is_empty() {
            match &argument {
                Some(sub) => match info.subcommand(sub) {
                    Some(found) => info = found,
                    // redis-server answers an unknown subcommand with its own error.
                    None => return Classification::Unknown,
                },
                // A container alone is a request only where its arity allows one word
                // (`COMMAND`); otherwise the server answers it with an arity error.
                None if info.arity == 1 || info.arity == -1 => {}
                None => return Classification::Unknown,
            }
        }
        classify_info(info, argument.as_deref())
    }
}

/// A word lower-cased, when it could be a command or subcommand name at all.
fn lower_word(word: &[u8]) -> Option<String> {
    if word.is_empty() || word.len() > crate::resp::MAX_COMMAND_NAME {
        return None;
    }
    std::str::from_utf8(word).ok().map(str::to_ascii_lowercase)
}

fn shape(value: &RespValue, what: String) -> CommandTableError {
    CommandTableError::Shape {
        offset: value.offset,
        what,
    }
}

/// One entry: `[name, arity, flags, first key, last key, step, ACL categories, tips, key
/// specs, subcommands]`. Redis 2.8-5 send the first six, 6.x seven; later fields beyond the
/// ten are ignored so that a newer server's additions do not break the table.
fn command_entry(entry: &RespValue) -> Result<CommandInfo, CommandTableError> {
    let fields = entry.data.as_list().ok_or_else(|| {
        shape(
            entry,
            format!(
                "expected a command entry (an array), found {}",
                entry.data.type_name()
            ),
        )
    })?;
    if fields.len() < 6 {
        return Err(shape(
            entry,
            format!(
                "a command entry of {} fields, fewer than the 6 of any Redis",
                fields.len()
            ),
        ));
    }
    let name = string_field(&fields[0], "name")?.to_ascii_lowercase();
    let context = |what: &str| format!("command {name:?}: {what}");
    let integer = |index: usize, what: &str| match fields[index].data {
        RespData::Integer(value) => Ok(value),
        ref other => Err(shape(
            &fields[index],
            context(&format!(
                "{what}: expected an integer, found {}",
                other.type_name()
            )),
        )),
    };
    let strings = |index: usize, what: &str| -> Result<Vec<String>, CommandTableError> {
        match fields.get(index) {
            None => Ok(Vec::new()),
            Some(field) => string_list(field, &context(what)),
        }
    };
    let arity = integer(1, "arity")?;
    let flags = strings(2, "flags")?
        .iter()
        .map(|flag| CommandFlag::from_name(flag))
        .collect();
    let first_key = integer(3, "first key")?;
    let last_key = integer(4, "last key")?;
    let key_step = integer(5, "key step")?;
    let acl_categories = strings(6, "ACL categories")?;
    let tips = strings(7, "tips")?;
    // Field 8, key specs: decoded (so malformed ones are refused) but not kept; routing needs
    // no key positions beyond the first/last/step above.
    let subcommands = match fields.get(9) {
        None => Vec::new(),
        Some(field) => field
            .data
            .as_list()
            .ok_or_else(|| {
                shape(
                    field,
                    context(&format!(
                        "subcommands: expected an array, found {}",
                        field.data.type_name()
                    )),
                )
            })?
            .iter()
            .map(command_entry)
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(CommandInfo {
        name,
        arity,
        flags,
        first_key,
        last_key,
        key_step,
        acl_categories,
        tips,
        subcommands,
    })
}

fn string_field(value: &RespValue, what: &str) -> Result<String, CommandTableError> {
    let bytes = value.data.as_bytes().ok_or_else(|| {
        shape(
            value,
            format!(
                "{what}: expected a string, found {}",
                value.data.type_name()
            ),
        )
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| shape(value, format!("{what}: not UTF-8: {bytes:?}")))
}

fn string_list(value: &RespValue, what: &str) -> Result<Vec<String>, CommandTableError> {
    let items = value.data.as_list().ok_or_else(|| {
        shape(
            value,
            format!(
                "{what}: expected an array or a set, found {}",
                value.data.type_name()
            ),
        )
    })?;
    items.iter().map(|item| string_field(item, what)).collect()
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// How a request is routed in active mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// Changes data: ordered, and sent to every replica.
    Update,
    /// Reads data, the same on every replica: one replica answers.
    Read,
    /// Changes the connection's state, not the data: every replica's session must see it, in
    /// order with the requests around it.
    SessionState,
    /// Its reply (or, when `writes`, its effect) differs between replicas running it alike:
    /// a read may still go to one replica; a write cannot simply run everywhere.
    NonDeterministic {
        writes: bool,
        source: NonDeterminismSource,
    },
    /// Not served in active mode.
    Refused { reason: RefusalReason },
    /// Not in the server's table (or an unknown subcommand): the caller lets one replica
    /// answer it with redis-server's own error.
    Unknown,
}

/// Where the knowledge that a command is non-deterministic comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonDeterminismSource {
    /// A Redis 7 tip: `nondeterministic_output` or `nondeterministic_output_order`.
    Tip,
    /// Redis 6's `random` flag.
    RandomFlag,
    /// This file's list (`explicit_rule`): `COMMAND` does not say it.
    KnownCommand,
}

/// Why a command is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The `admin` flag: it manages one redis-server (persistence, ACLs, configuration,
    /// clients, latency and slow logs), not the replicated data.
    Administrative,
    /// DEBUG: crashes, reloads, sleeps or alters one server.
    Debug,
    /// SHUTDOWN: would stop a replica under the service.
    Shutdown,
    /// Redis' own replication (REPLICAOF, SLAVEOF, FAILOVER, SYNC, PSYNC, REPLCONF, WAIT):
    /// active replication replaces it, and a server made a Redis replica would refuse writes.
    RedisReplication,
    /// CLUSTER: each replica is a standalone server, never a cluster node.
    Cluster,
    /// MONITOR: turns the connection into a stream of every server's requests.
    Monitor,
    /// The `pubsub` flag: subscribers and publishers on different replicas would not meet, and
    /// a subscribed connection receives pushes no request asked for.
    PubSub,
    /// The `blocking` flag: whether and when it returns depends on later writes by other
    /// clients, which the order of requests on this connection does not fix.
    Blocking,
    /// CLIENT REPLY: changes which requests get a reply, which the proxy counts to match
    /// replies to requests.
    ReplyMode,
    /// CLIENT TRACKING / CACHING: invalidation messages arrive outside any reply.
    ClientSideCaching,
    /// SCRIPT KILL / FUNCTION KILL: stops a script on a replica part way, where the others may
    /// have finished it: the replicas' data would differ.
    ScriptKill,
    /// SCRIPT DEBUG: the Lua debugger, an interactive session with one server.
    ScriptDebugger,
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalReason::Administrative => {
                "an administrative command manages one redis-server, not the replicated data: \
                 run it against each server"
            }
            RefusalReason::Debug => "DEBUG acts on one redis-server",
            RefusalReason::Shutdown => "SHUTDOWN would stop a replica under the service",
            RefusalReason::RedisReplication => "Redis' own replication is not used in active mode",
            RefusalReason::Cluster => "Redis Cluster is not used in active mode",
            RefusalReason::Monitor => "MONITOR streams one server's requests",
            RefusalReason::PubSub => "publish/subscribe is not replicated yet",
            RefusalReason::Blocking => "blocking commands are not replicated yet",
            RefusalReason::ReplyMode => {
                "CLIENT REPLY would break the pairing of requests and replies"
            }
            RefusalReason::ClientSideCaching => "client-side caching is not replicated yet",
            RefusalReason::ScriptKill => "killing a script would make the replicas differ",
            RefusalReason::ScriptDebugger => "the Lua debugger runs on one server",
        })
    }
}

/// The tips by which Redis 7 marks a reply that differs between servers holding the same data.
const NONDETERMINISTIC_TIPS: [&str; 2] =
    ["nondeterministic_output", "nondeterministic_output_order"];

/// The classification of a request naming `info` (a subcommand's entry for a container
/// command); `argument` is the request's first argument, lower-cased. All rules are here and
/// in `explicit_rule`, first match wins.
fn classify_info(info: &CommandInfo, argument: Option<&str>) -> Classification {
    use Classification::*;
    let writes = info.has_flag(&CommandFlag::Write) || info.has_flag(&CommandFlag::MayReplicate);
    if let Some(explicit) = explicit_rule(&info.name, argument, writes) {
        return explicit;
    }
    if info.has_flag(&CommandFlag::Pubsub) {
        return Refused {
            reason: RefusalReason::PubSub,
        };
    }
    if info.has_flag(&CommandFlag::Blocking) {
        return Refused {
            reason: RefusalReason::Blocking,
        };
    }
    // Before the tips: an administrative read (CLIENT LIST, SLOWLOG GET) describes one server
    // and is refused with the rest of its kind rather than answered by whichever replica.
    if info.has_flag(&CommandFlag::Admin) {
        return Refused {
            reason: RefusalReason::Administrative,
        };
    }
    if NONDETERMINISTIC_TIPS.iter().any(|tip| info.has_tip(tip)) {
        return NonDeterministic {
            writes,
            source: NonDeterminismSource::Tip,
        };
    }
    if info.has_flag(&CommandFlag::Random) {
        return NonDeterministic {
            writes,
            source: NonDeterminismSource::RandomFlag,
        };
    }
    // `may_replicate`: Redis itself propagates it to its replicas (in 7.0 the flag exists in
    // the server but COMMAND does not show it; see the scripts and PFCOUNT in explicit_rule).
    if writes {
        return Update;
    }
    if info.has_flag(&CommandFlag::Readonly) {
        return Read;
    }
    // Neither `write` nor `readonly`: PING, ECHO, SCRIPT LOAD, SCRIPT FLUSH, MEMORY PURGE,
    // FUNCTION DUMP, COMMAND COUNT… Redis does not promise it leaves the server as it was
    // (SCRIPT LOAD fills the script cache EVALSHA needs on every replica), so every replica
    // gets it, in order: a wasted round for PING, never a divergence.
    Update
}

/// The facts `COMMAND` does not state, by command (`container|sub` for subcommands) and, for a
/// few plain commands, first argument. `writes` is what the flags say.
fn explicit_rule(name: &str, argument: Option<&str>, writes: bool) -> Option<Classification> {
    use Classification::*;
    let refused = |reason| Some(Refused { reason });
    let known_nondeterministic = Some(NonDeterministic {
        writes,
        source: NonDeterminismSource::KnownCommand,
    });
    match (name, argument) {
        // DEBUG is one entry in COMMAND, flagged admin, with no subcommands; DIGEST and
        // DIGEST-VALUE only hash the dataset (or keys), which is what comparing replicas needs.
        ("debug", Some("digest" | "digest-value")) => Some(Read),
        ("debug", _) => refused(RefusalReason::Debug),
        ("shutdown", _) => refused(RefusalReason::Shutdown),
        ("replicaof" | "slaveof" | "failover" | "sync" | "psync" | "replconf", _) => {
            refused(RefusalReason::RedisReplication)
        }
        // WAIT counts Redis replicas, which active mode has none of: `WAIT 1 0` would block for
        // ever. Not flagged `blocking` in 7.0.
        ("wait", _) => refused(RefusalReason::RedisReplication),
        _ if name == "cluster" || name.starts_with("cluster|") => refused(RefusalReason::Cluster),
        ("monitor", _) => refused(RefusalReason::Monitor),
        ("client|reply", _) => refused(RefusalReason::ReplyMode),
        ("client|tracking" | "client|caching", _) => refused(RefusalReason::ClientSideCaching),
        ("script|kill" | "function|kill", _) => refused(RefusalReason::ScriptKill),
        ("script|debug", _) => refused(RefusalReason::ScriptDebugger),

        // Flagged `admin`, but only reads the server's configuration: client libraries ask for
        // it when they connect (`CONFIG GET maxmemory-policy`, `databases`), and every replica
        // is configured alike, so one answers. CONFIG SET, REWRITE and RESETSTAT stay refused
        // by the admin rule: they would change one replica's configuration.
        ("config|get", _) => Some(Read),

        // Session state: none of these touches data, and COMMAND has no flag for "changes the
        // connection", so each replica's session must be kept in step by sending them all.
        // SELECT: the database later requests use.
        // AUTH, HELLO: the user the session acts as (and HELLO's protocol and name).
        // CLIENT SETNAME, CLIENT SETINFO (7.2): the name and library shown by CLIENT LIST and
        // checked by CLIENT KILL.
        // RESET: clears all of the above, MULTI and WATCH.
        // READONLY, READWRITE, ASKING: cluster-mode connection flags; sent to every replica so
        // that each answers them alike (with an error on a standalone server).
        // MULTI, EXEC, DISCARD: a transaction's queue is per connection; EXEC runs it, so it
        // reaches every replica like an update.
        // WATCH, UNWATCH: whether EXEC runs depends on keys watched by this connection.
        // QUIT: ends the connection on every replica, not just one.
        (
            "select" | "auth" | "hello" | "client|setname" | "client|setinfo" | "reset"
            | "readonly" | "readwrite" | "asking" | "multi" | "exec" | "discard" | "watch"
            | "unwatch" | "quit",
            _,
        ) => Some(SessionState),

        // Scripts and functions: not flagged `write` (7.0 hides their `may_replicate`), and a
        // script may write. Redis runs them once and replicates their effects; active mode has
        // no primary to run them first, so for now they run on every replica in order, which
        // is right while they call deterministic commands only. EVAL_RO, EVALSHA_RO, FCALL_RO
        // are flagged `readonly` and are Reads by the flags.
        ("eval" | "evalsha" | "fcall", _) => Some(Update),
        // Flagged `readonly`, but it stores the cardinality it computes in the key's value (its
        // `may_replicate`, hidden in 7.0): run on one replica, the key's bytes (GET, DUMP)
        // would then differ between replicas.
        ("pfcount", _) => Some(Update),

        // Replies that differ between servers with no tip to say so (7.0).
        // CLIENT ID: each server numbers its own connections.
        // ACL GENPASS: random bytes.
        // ROLE: the replication offset is each server's own.
        ("client|id" | "acl|genpass" | "role", _) => known_nondeterministic,
        _ => None,
    }
}
