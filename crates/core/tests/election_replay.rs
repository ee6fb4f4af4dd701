//! Replays recorded event lists through one election state machine (the node under test) and
//! compares every action it returns with the expected ones.
//!
//! # Format of `tests/replays/*.txt`
//! One line each; `#` starts a comment; blank lines are ignored. Times are in milliseconds since
//! the replay's origin (up to three decimals: `29.999`). Epochs are written `TERM:NODE`
//! (`1:2` is term 1 won by node 2, that is 65538) or as a plain number.
//!
//! Events, in time order:
//! - `at T start me=2 members=1,2 witness=100 interval=10 miss=3 [preempt=0|1] [two-node=0|1]
//!   [holder-grace=MS]` creates the machine (`witness=-` for none; the holder grace defaults to
//!   `ElectionConfig::default_holder_grace`); a later `start` is a restart that forgets all.
//! - `at T tick`, `at T health up|down|pending`, `at T holds 1|0` (the node carries live connections
//!   or not), `at T shutdown`, `at T peer-dead id=N evidence=host|daemon` (the shell found a
//!   silent peer dead).
//! - `at T recv from=N epoch=E MESSAGE`, a frame from a peer, where MESSAGE is one of
//!   `heartbeat role=R healthy=0|1 quorum=0|1 seq=S following=N|- [holds=0|1] [starting=0|1]`,
//!   `ack primary=N seq=S`,
//!   `vote-request proposed=E`, `vote candidate=N proposed=E granted=0|1`, `release`,
//!   `handoff target=N`.
//! - `at T move-to N` (`steadfast move --to N`), `at T standby on|off`.
//! - `at T pause`: the node is frozen (SIGSTOP) until the next event, so the deadlines in
//!   between are not served. Without it, an event that comes after a deadline the machine
//!   asked for (`next_deadline`) without a tick at that deadline is an error: a recorded list
//!   shows every call a faithful shell makes, so no action can hide in a skipped call.
//!
//! Expectations, after the event they belong to:
//! - Actions, in the order the machine returns them: `expect send to=all|N epoch=E MESSAGE`,
//!   `expect take-address epoch=E`, `expect release-address`, `expect refresh-announcement`,
//!   `expect role ROLE epoch=E reason=R [votes=1,100] [from=N seen=E] [by=N]` with R one of
//!   `started election-won quorum-lost newer-epoch unhealthy preempted shutdown moved standby`
//!   (`moved` with `target=N`). A field left
//!   out is not checked; the words and the number of actions always are.
//!   `expect nothing` says that the event returns no action. The returned list must match the
//!   expected one exactly: an event with no action expectation must return nothing.
//! - State after the event: `expect role-is ROLE`, `expect epoch-is E`, `expect primary-is N|-`,
//!   `expect quorum-is 0|1`, `expect next-deadline T`, `expect disposition accepted|old-epoch|
//!   unknown-sender`. A received frame must be judged `accepted` unless a `disposition` line
//!   says otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use steadfast_core::election::{
    epoch_owner, epoch_term, Action, DeathEvidence, Destination, Disposition, Election,
    ElectionConfig, Event, Reason,
};
use steadfast_core::{Message, NodeId, Role};

const REPLAY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/replays");

// ---------------------------------------------------------------------------------------------
// Values

fn parse_ms(text: &str) -> Result<Duration, String> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let bad = || format!("`{text}` is not a time in ms (like `30` or `29.999`)");
    if whole.is_empty() || frac.len() > 3 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let ms: u64 = whole.parse().map_err(|_| bad())?;
    let frac_us: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().map_err(|_| bad())?
    };
    Ok(Duration::from_micros(ms * 1000 + frac_us))
}

fn show_ms(t: Duration) -> String {
    let us = t.as_micros();
    if us.is_multiple_of(1000) {
        format!("{}", us / 1000)
    } else {
        format!("{}.{:03}", us / 1000, us % 1000)
    }
}

fn parse_epoch(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not an epoch (`TERM:NODE` like `1:2`, or a number)");
    match text.split_once(':') {
        Some((term, node)) => {
            let term: u64 = term.parse().map_err(|_| bad())?;
            let node: NodeId = node.parse().map_err(|_| bad())?;
            if term >= 1 << 48 {
                return Err(bad());
            }
            Ok(term << 16 | u64::from(node))
        }
        None => text.parse().map_err(|_| bad()),
    }
}

fn show_epoch(epoch: u64) -> String {
    format!("{}:{}", epoch_term(epoch), epoch_owner(epoch))
}

fn parse_id(text: &str) -> Result<NodeId, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a node id (0-65535)"))
}

fn parse_optional_id(text: &str) -> Result<Option<NodeId>, String> {
    if text == "-" {
        Ok(None)
    } else {
        parse_id(text).map(Some)
    }
}

fn parse_ids(text: &str) -> Result<Vec<NodeId>, String> {
    text.split(',').map(parse_id).collect()
}

fn parse_flag(text: &str) -> Result<bool, String> {
    match text {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(format!("`{text}` is not a flag (0 or 1)")),
    }
}

fn parse_u64(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a whole number"))
}

fn parse_role(text: &str) -> Result<Role, String> {
    [Role::Backup, Role::Candidate, Role::Primary, Role::Witness]
        .into_iter()
        .find(|r| r.as_str() == text)
        .ok_or_else(|| format!("`{text}` is not a role (backup, candidate, primary, witness)"))
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

fn parse_disposition(text: &str) -> Result<Disposition, String> {
    match text {
        "accepted" => Ok(Disposition::Accepted),
        "old-epoch" => Ok(Disposition::OldEpoch),
        "unknown-sender" => Ok(Disposition::UnknownSender),
        _ => Err(format!(
            "`{text}` is not a disposition (accepted, old-epoch, unknown-sender)"
        )),
    }
}

const REASONS: &[&str] = &[
    "started",
    "election-won",
    "quorum-lost",
    "newer-epoch",
    "unhealthy",
    "preempted",
    "shutdown",
    "moved",
    "standby",
];

/// Brings a field value of an expectation to the form `describe` gives the actual one.
fn canonical_value(key: &str, value: &str) -> Result<String, String> {
    Ok(match key {
        "epoch" | "proposed" | "seen" => show_epoch(parse_epoch(value)?),
        "to" if value == "all" => value.to_string(),
        "to" | "from" | "primary" | "candidate" | "by" | "target" => parse_id(value)?.to_string(),
        "following" => match parse_optional_id(value)? {
            Some(id) => id.to_string(),
            None => "-".to_string(),
        },
        "healthy" | "quorum" | "granted" => flag(parse_flag(value)?),
        "seq" => parse_u64(value)?.to_string(),
        "role" => parse_role(value)?.as_str().to_string(),
        "votes" => join_ids(&parse_ids(value)?),
        "reason" if REASONS.contains(&value) => value.to_string(),
        "reason" => {
            return Err(format!(
                "`{value}` is not a reason ({})",
                REASONS.join(", ")
            ))
        }
        _ => return Err(format!("unknown field `{key}`")),
    })
}

fn join_ids(ids: &[NodeId]) -> String {
    ids.iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------------
// Actions as words and fields

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Field(String, String),
}

/// An action written as tokens: the words name it, the fields describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape(Vec<Token>);

impl Shape {
    fn words(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|t| match t {
                Token::Word(w) => Some(w.as_str()),
                Token::Field(..) => None,
            })
            .collect()
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|t| match t {
            Token::Field(k, v) if k == key => Some(v.as_str()),
            _ => None,
        })
    }

    /// Same words, and every field of `self` has the same value in `actual`.
    fn matches(&self, actual: &Shape) -> bool {
        self.words() == actual.words()
            && self.0.iter().all(|t| match t {
                Token::Field(k, v) => actual.field(k) == Some(v.as_str()),
                Token::Word(_) => true,
            })
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, token) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match token {
                Token::Word(w) => f.write_str(w)?,
                Token::Field(k, v) => write!(f, "{k}={v}")?,
            }
        }
        Ok(())
    }
}

struct ShapeBuilder(Vec<Token>);

impl ShapeBuilder {
    fn word(mut self, w: &str) -> Self {
        self.0.push(Token::Word(w.to_string()));
        self
    }
    fn field(mut self, k: &str, v: impl ToString) -> Self {
        self.0.push(Token::Field(k.to_string(), v.to_string()));
        self
    }
    fn done(self) -> Shape {
        Shape(self.0)
    }
}

fn shape() -> ShapeBuilder {
    ShapeBuilder(Vec::new())
}

fn describe_message(b: ShapeBuilder, message: &Message) -> ShapeBuilder {
    let b = b.word(message.kind_name());
    match message {
        Message::Heartbeat {
            role,
            healthy,
            has_quorum,
            seq,
            following,
            holds_connections,
            starting,
        } => b
            .field("role", role.as_str())
            .field("healthy", flag(*healthy))
            .field("quorum", flag(*has_quorum))
            .field("seq", seq)
            .field(
                "following",
                following.map_or_else(|| "-".to_string(), |id| id.to_string()),
            )
            .field("holds", flag(*holds_connections))
            .field("starting", flag(*starting)),
        Message::Ack { primary, seq } => b.field("primary", primary).field("seq", seq),
        Message::VoteRequest { proposed_epoch } => b.field("proposed", show_epoch(*proposed_epoch)),
        Message::Vote {
            candidate,
            proposed_epoch,
            granted,
        } => b
            .field("candidate", candidate)
            .field("proposed", show_epoch(*proposed_epoch))
            .field("granted", flag(*granted)),
        Message::Release => b,
        Message::Handoff { to } => b.field("target", to),
    }
}

fn describe(action: &Action) -> Shape {
    match action {
        Action::Send { to, epoch, message } => {
            let to = match to {
                Destination::AllVoters => "all".to_string(),
                Destination::Voter(id) => id.to_string(),
            };
            let b = shape()
                .word("send")
                .field("to", to)
                .field("epoch", show_epoch(*epoch));
            describe_message(b, message).done()
        }
        Action::TakeAddress { epoch } => shape()
            .word("take-address")
            .field("epoch", show_epoch(*epoch))
            .done(),
        Action::ReleaseAddress => shape().word("release-address").done(),
        Action::RefreshAnnouncement => shape().word("refresh-announcement").done(),
        Action::RoleChanged {
            role,
            epoch,
            reason,
        } => {
            let b = shape()
                .word("role")
                .word(role.as_str())
                .field("epoch", show_epoch(*epoch));
            match reason {
                Reason::Started => b.field("reason", "started"),
                Reason::ElectionWon { votes } => b
                    .field("reason", "election-won")
                    .field("votes", join_ids(votes)),
                Reason::QuorumLost => b.field("reason", "quorum-lost"),
                Reason::NewerEpochSeen { from, epoch } => b
                    .field("reason", "newer-epoch")
                    .field("from", from)
                    .field("seen", show_epoch(*epoch)),
                Reason::Unhealthy => b.field("reason", "unhealthy"),
                Reason::Preempted { by } => b.field("reason", "preempted").field("by", by),
                Reason::Shutdown => b.field("reason", "shutdown"),
                Reason::Moved { to } => b.field("reason", "moved").field("target", to),
                Reason::Standby => b.field("reason", "standby"),
            }
            .done()
        }
    }
}

/// The fields an expected action with these words may name.
fn allowed_fields(words: &[&str]) -> Result<&'static [&'static str], String> {
    Ok(match words {
        ["send", "heartbeat"] => &[
            "to",
            "epoch",
            "role",
            "healthy",
            "quorum",
            "seq",
            "following",
        ],
        ["send", "ack"] => &["to", "epoch", "primary", "seq"],
        ["send", "vote-request"] => &["to", "epoch", "proposed"],
        ["send", "vote"] => &["to", "epoch", "candidate", "proposed", "granted"],
        ["send", "release"] => &["to", "epoch"],
        ["send", "handoff"] => &["to", "epoch", "target"],
        ["take-address"] => &["epoch"],
        ["release-address"] | ["refresh-announcement"] => &[],
        ["role", role] => {
            parse_role(role)?;
            &["epoch", "reason", "votes", "from", "seen", "by", "target"]
        }
        _ => {
            return Err(format!(
                "`{}` is not an action (send … heartbeat|ack|vote-request|vote|release|handoff, \
                 take-address, release-address, refresh-announcement, role ROLE)",
                words.join(" ")
            ))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Recorded lists

#[derive(Debug)]
enum Input {
    Start(ElectionConfig),
    Pause,
    Machine(Event),
}

#[derive(Debug)]
enum Check {
    RoleIs(Role),
    EpochIs(u64),
    PrimaryIs(Option<NodeId>),
    QuorumIs(bool),
    NextDeadline(Duration),
    Disposition(Disposition),
}

#[derive(Debug)]
struct Expected {
    line: usize,
    shape: Shape,
}

#[derive(Debug)]
struct Step {
    line: usize,
    text: String,
    at: Duration,
    input: Input,
    actions: Vec<Expected>,
    nothing: Option<usize>,
    checks: Vec<(usize, Check)>,
}

/// `key=value` fields of one line, each to be taken once.
struct Fields(BTreeMap<String, String>);

impl Fields {
    fn of(tokens: &[&str]) -> Result<Fields, String> {
        let mut map = BTreeMap::new();
        for token in tokens {
            let (k, v) = token
                .split_once('=')
                .ok_or_else(|| format!("`{token}` is not a `key=value` field"))?;
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("field `{k}` given twice"));
            }
        }
        Ok(Fields(map))
    }

    fn take<T>(&mut self, key: &str, parse: fn(&str) -> Result<T, String>) -> Result<T, String> {
        let value = self
            .0
            .remove(key)
            .ok_or_else(|| format!("missing field `{key}=`"))?;
        parse(&value).map_err(|e| format!("field `{key}`: {e}"))
    }

    fn take_or<T>(
        &mut self,
        key: &str,
        default: T,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, String> {
        if self.0.contains_key(key) {
            self.take(key, parse)
        } else {
            Ok(default)
        }
    }

    fn finish(self) -> Result<(), String> {
        match self.0.keys().next() {
            Some(k) => Err(format!("unknown field `{k}`")),
            None => Ok(()),
        }
    }
}

fn parse_start(args: &[&str]) -> Result<ElectionConfig, String> {
    let mut f = Fields::of(args)?;
    let heartbeat_interval = f.take("interval", parse_ms)?;
    let miss_count = f.take("miss", |v| {
        parse_u64(v)?
            .try_into()
            .map_err(|_| format!("`{v}` is too large"))
    })?;
    let cfg = ElectionConfig {
        me: f.take("me", parse_id)?,
        members: f.take("members", parse_ids)?,
        witness: f.take("witness", parse_optional_id)?,
        heartbeat_interval,
        miss_count,
        preempt: f.take_or("preempt", false, parse_flag)?,
        two_node: f.take_or("two-node", false, parse_flag)?,
        holder_grace: f.take_or(
            "holder-grace",
            ElectionConfig::default_holder_grace(heartbeat_interval, miss_count),
            parse_ms,
        )?,
    };
    f.finish()?;
    Ok(cfg)
}

fn parse_recv(args: &[&str]) -> Result<Event, String> {
    let kind_at = args
        .iter()
        .position(|t| !t.contains('='))
        .ok_or("`recv` needs a message kind (heartbeat, ack, vote-request, vote, release)")?;
    let mut envelope = Fields::of(&args[..kind_at])?;
    let from = envelope.take("from", parse_id)?;
    let epoch = envelope.take("epoch", parse_epoch)?;
    envelope.finish()?;
    let mut f = Fields::of(&args[kind_at + 1..])?;
    let message = match args[kind_at] {
        "heartbeat" => Message::Heartbeat {
            role: f.take("role", parse_role)?,
            healthy: f.take("healthy", parse_flag)?,
            has_quorum: f.take("quorum", parse_flag)?,
            seq: f.take("seq", parse_u64)?,
            following: f.take("following", parse_optional_id)?,
            holds_connections: f.take_or("holds", false, parse_flag)?,
            starting: f.take_or("starting", false, parse_flag)?,
        },
        "ack" => Message::Ack {
            primary: f.take("primary", parse_id)?,
            seq: f.take("seq", parse_u64)?,
        },
        "vote-request" => Message::VoteRequest {
            proposed_epoch: f.take("proposed", parse_epoch)?,
        },
        "vote" => Message::Vote {
            candidate: f.take("candidate", parse_id)?,
            proposed_epoch: f.take("proposed", parse_epoch)?,
            granted: f.take("granted", parse_flag)?,
        },
        "release" => Message::Release,
        "handoff" => Message::Handoff {
            to: f.take("target", parse_id)?,
        },
        other => {
            return Err(format!(
                "`{other}` is not a message kind (heartbeat, ack, vote-request, vote, release, \
                 handoff)"
            ))
        }
    };
    f.finish()?;
    Ok(Event::Received {
        from,
        epoch,
        message,
    })
}

fn parse_event(words: &[&str]) -> Result<(Duration, Input), String> {
    let [_at, time, kind, args @ ..] = words else {
        return Err("an event line is `at T EVENT …`".to_string());
    };
    let at = parse_ms(time)?;
    let no_args = |input: Input| {
        if args.is_empty() {
            Ok(input)
        } else {
            Err(format!("`{kind}` takes no arguments"))
        }
    };
    let input = match *kind {
        "start" => Input::Start(parse_start(args)?),
        "tick" => no_args(Input::Machine(Event::Tick))?,
        "shutdown" => no_args(Input::Machine(Event::Shutdown))?,
        "move-to" => match args {
            [id] => Input::Machine(Event::MoveTo(parse_id(id)?)),
            _ => return Err("`move-to` takes a node id".to_string()),
        },
        "standby" => match args {
            ["on"] => Input::Machine(Event::Standby(true)),
            ["off"] => Input::Machine(Event::Standby(false)),
            _ => return Err("`standby` takes `on` or `off`".to_string()),
        },
        "pause" => no_args(Input::Pause)?,
        "health" => match args {
            ["up"] => Input::Machine(Event::HealthChanged(true)),
            ["down"] => Input::Machine(Event::HealthChanged(false)),
            ["pending"] => Input::Machine(Event::HealthPending),
            _ => return Err("`health` takes `up`, `down` or `pending`".to_string()),
        },
        "holds" => match args {
            ["1"] => Input::Machine(Event::HoldsConnectionsChanged(true)),
            ["0"] => Input::Machine(Event::HoldsConnectionsChanged(false)),
            _ => return Err("`holds` takes `1` or `0`".to_string()),
        },
        "recv" => Input::Machine(parse_recv(args)?),
        "peer-dead" => {
            let mut f = Fields::of(args)?;
            let id = f.take("id", parse_id)?;
            let evidence = f.take("evidence", |v| match v {
                "host" => Ok(DeathEvidence::HostUnreachable),
                "daemon" => Ok(DeathEvidence::DaemonGone),
                _ => Err(format!("`{v}` is not a death evidence (host, daemon)")),
            })?;
            f.finish()?;
            Input::Machine(Event::PeerDead { id, evidence })
        }
        other => {
            return Err(format!(
                "`{other}` is not an event (start, tick, recv, health, holds, peer-dead, shutdown, pause)"
            ))
        }
    };
    Ok((at, input))
}

fn parse_check(words: &[&str]) -> Result<Check, String> {
    let [kind, value] = words else {
        return Err(format!("`{}` needs exactly one value", words[0]));
    };
    Ok(match *kind {
        "role-is" => Check::RoleIs(parse_role(value)?),
        "epoch-is" => Check::EpochIs(parse_epoch(value)?),
        "primary-is" => Check::PrimaryIs(parse_optional_id(value)?),
        "quorum-is" => Check::QuorumIs(parse_flag(value)?),
        "next-deadline" => Check::NextDeadline(parse_ms(value)?),
        "disposition" => Check::Disposition(parse_disposition(value)?),
        _ => unreachable!("caller passes only check words"),
    })
}

fn parse_expected_action(words: &[&str]) -> Result<Shape, String> {
    let mut tokens = Vec::new();
    for word in words {
        match word.split_once('=') {
            Some((k, v)) => tokens.push(Token::Field(k.to_string(), v.to_string())),
            None => tokens.push(Token::Word(word.to_string())),
        }
    }
    let mut shape = Shape(tokens);
    let allowed = allowed_fields(&shape.words())?;
    let mut seen = Vec::new();
    for token in &mut shape.0 {
        if let Token::Field(k, v) = token {
            if !allowed.contains(&k.as_str()) {
                return Err(format!(
                    "`{}` has no field `{k}` (it has: {})",
                    shape_words(words),
                    allowed.join(", ")
                ));
            }
            if seen.contains(k) {
                return Err(format!("field `{k}` given twice"));
            }
            seen.push(k.clone());
            *v = canonical_value(k, v).map_err(|e| format!("field `{k}`: {e}"))?;
        }
    }
    Ok(shape)
}

fn shape_words(words: &[&str]) -> String {
    words
        .iter()
        .filter(|w| !w.contains('='))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_replay(name: &str, text: &str) -> Result<Vec<Step>, String> {
    let mut steps: Vec<Step> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let words: Vec<&str> = content.split_whitespace().collect();
        let at_line = |e: String| format!("{name}:{line}: {e}\n  {line:>4} | {raw}");
        match words[0] {
            "at" => {
                let (at, input) = parse_event(&words).map_err(at_line)?;
                steps.push(Step {
                    line,
                    text: content.to_string(),
                    at,
                    input,
                    actions: Vec::new(),
                    nothing: None,
                    checks: Vec::new(),
                });
            }
            "expect" => {
                let step = steps
                    .last_mut()
                    .ok_or_else(|| at_line("an `expect` line before any event".to_string()))?;
                let rest = &words[1..];
                match rest.first().copied() {
                    None => return Err(at_line("`expect` needs something to expect".into())),
                    Some("nothing") => {
                        if rest.len() > 1 {
                            return Err(at_line("`expect nothing` takes no arguments".into()));
                        }
                        step.nothing = Some(line);
                    }
                    Some(
                        "role-is" | "epoch-is" | "primary-is" | "quorum-is" | "next-deadline"
                        | "disposition",
                    ) => step
                        .checks
                        .push((line, parse_check(rest).map_err(at_line)?)),
                    Some(_) => {
                        let shape = parse_expected_action(rest).map_err(at_line)?;
                        step.actions.push(Expected { line, shape });
                    }
                }
                if step.nothing.is_some() && !step.actions.is_empty() {
                    return Err(at_line(
                        "`expect nothing` and an expected action for the same event".into(),
                    ));
                }
                if matches!(step.input, Input::Pause | Input::Start(_)) && !step.actions.is_empty()
                {
                    return Err(at_line(
                        "`start` and `pause` return no action; expect only state after them".into(),
                    ));
                }
            }
            other => {
                return Err(at_line(format!(
                    "a line starts with `at` (an event) or `expect`, not `{other}`"
                )))
            }
        }
    }
    if steps.is_empty() {
        return Err(format!("{name}: no events"));
    }
    Ok(steps)
}

// ---------------------------------------------------------------------------------------------
// Replaying

fn show_actions(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "    (nothing)\n".to_string();
    }
    actions
        .iter()
        .map(|a| format!("    expect {}\n", describe(a)))
        .collect()
}

fn check_state(
    election: &Election,
    at: Duration,
    disposition: Disposition,
    check: &Check,
) -> Result<(), String> {
    let mismatch = |what: &str, expected: String, actual: String| {
        Err(format!("{what} is {actual}, expected {expected}"))
    };
    match check {
        Check::RoleIs(role) if election.role() != *role => mismatch(
            "the role",
            role.as_str().into(),
            election.role().as_str().into(),
        ),
        Check::EpochIs(epoch) if election.epoch() != *epoch => mismatch(
            "the epoch",
            show_epoch(*epoch),
            show_epoch(election.epoch()),
        ),
        Check::PrimaryIs(primary) if election.primary() != *primary => mismatch(
            "the known primary",
            format!("{primary:?}"),
            format!("{:?}", election.primary()),
        ),
        Check::QuorumIs(quorum) if election.has_quorum(at) != *quorum => mismatch(
            "having quorum",
            quorum.to_string(),
            election.has_quorum(at).to_string(),
        ),
        Check::NextDeadline(deadline) if election.next_deadline(at) != *deadline => mismatch(
            "the next deadline",
            show_ms(*deadline),
            show_ms(election.next_deadline(at)),
        ),
        Check::Disposition(expected) if disposition != *expected => mismatch(
            "the disposition",
            format!("{expected:?}"),
            format!("{disposition:?}"),
        ),
        _ => Ok(()),
    }
}

/// Replays one recorded list; returns the number of events, or what differed and where.
fn run_replay(name: &str, text: &str) -> Result<usize, String> {
    let steps = parse_replay(name, text)?;
    let mut election: Option<Election> = None;
    let mut last: Option<Duration> = None;
    let mut paused = false;
    for step in &steps {
        let here = format!("{name}:{}: `{}`", step.line, step.text);
        if let Some(prev) = last {
            if step.at < prev {
                return Err(format!(
                    "{here}: time goes back (the previous event was at {} ms)",
                    show_ms(prev)
                ));
            }
            if let (Some(e), false) = (&election, paused) {
                let deadline = e.next_deadline(prev);
                if step.at > deadline {
                    return Err(format!(
                        "{here}: the machine asked to run at {} ms and no event is recorded \
                         then (add `at {} tick`, or `pause` if the node is frozen)",
                        show_ms(deadline),
                        show_ms(deadline)
                    ));
                }
            }
        }
        paused = false;
        let (actions, disposition) = match &step.input {
            Input::Start(cfg) => {
                election = Some(Election::new(cfg.clone(), step.at));
                (Vec::new(), Disposition::Accepted)
            }
            Input::Pause => {
                paused = true;
                (Vec::new(), Disposition::Accepted)
            }
            Input::Machine(event) => {
                let e = election
                    .as_mut()
                    .ok_or_else(|| format!("{here}: an event before `start`"))?;
                e.handle(event.clone(), step.at)
            }
        };
        let shapes: Vec<Shape> = actions.iter().map(describe).collect();
        let same = shapes.len() == step.actions.len()
            && step
                .actions
                .iter()
                .zip(&shapes)
                .all(|(expected, actual)| expected.shape.matches(actual));
        if !same {
            let first_wrong = step
                .actions
                .iter()
                .zip(&shapes)
                .position(|(expected, actual)| !expected.shape.matches(actual))
                .unwrap_or(step.actions.len().min(shapes.len()));
            let expected: String = if step.actions.is_empty() {
                "    (nothing)\n".to_string()
            } else {
                step.actions
                    .iter()
                    .map(|e| format!("    line {}: expect {}\n", e.line, e.shape))
                    .collect()
            };
            return Err(format!(
                "{here}: the actions differ from the expected ones (first difference at \
                 position {})\n  expected:\n{expected}  actual:\n{}",
                first_wrong + 1,
                show_actions(&actions)
            ));
        }
        let e = election.as_ref();
        let expects_disposition = step
            .checks
            .iter()
            .any(|(_, c)| matches!(c, Check::Disposition(_)));
        if disposition != Disposition::Accepted && !expects_disposition {
            return Err(format!(
                "{here}: the frame was judged {disposition:?}, and no `expect disposition` line \
                 says so"
            ));
        }
        for (line, check) in &step.checks {
            let e = e.ok_or_else(|| format!("{name}:{line}: a state check before `start`"))?;
            check_state(e, step.at, disposition, check)
                .map_err(|err| format!("{name}:{line}: after {here}: {err}"))?;
        }
        last = Some(step.at);
    }
    Ok(steps.len())
}

fn replay_file(file: &str) {
    let path = Path::new(REPLAY_DIR).join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the replay {}: {e}", path.display()));
    let name = format!("tests/replays/{file}");
    if let Err(e) = run_replay(&name, &text) {
        panic!("replay failed: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The recorded lists

/// One test per recorded list, and the list of them all.
macro_rules! replays {
    ($($test:ident => $file:literal,)*) => {
        /// Every recorded list in `tests/replays`; a test below checks that none is left out.
        const REPLAYS: &[&str] = &[$($file),*];
        $(
            #[test]
            fn $test() {
                replay_file($file);
            }
        )*
    };
}

replays! {
    // 1. Simultaneous start.
    simultaneous_start_node1_stands_and_wins => "simultaneous_start_node1.txt",
    simultaneous_start_node2_defers_and_votes => "simultaneous_start_node2.txt",
    simultaneous_start_competing_candidates => "simultaneous_start_competing_candidates.txt",
    // 2. Partition.
    partition_primary_steps_down_when_its_lease_ends => "partition_primary.txt",
    partition_backup_takes_over_when_its_promise_ends => "partition_backup_takes_over.txt",
    // 3. Flapping links.
    flapping_links_at_a_backup => "flapping_links_backup.txt",
    flapping_links_at_the_primary => "flapping_links_primary.txt",
    // 4. A higher epoch seen; old epochs refused.
    higher_epoch_seen_by_a_thawed_primary => "higher_epoch_primary.txt",
    higher_epoch_seen_during_the_lease => "higher_epoch_during_lease.txt",
    old_epoch_frames_at_a_backup => "old_epoch_at_backup.txt",
    // 5. Witness loss.
    witness_loss_at_the_primary => "witness_loss_primary.txt",
    witness_loss_at_a_backup => "witness_loss_backup.txt",
    // 6. Healthy without quorum; unhealthy with it.
    healthy_without_quorum_never_stands => "healthy_without_quorum.txt",
    unhealthy_primary_releases => "unhealthy_primary.txt",
    // 7. Vote rules.
    vote_rules => "vote_rules.txt",
    vote_rules_after_a_restart => "vote_rules_restart.txt",
    // Planned switchover, two_node mode, shutdown.
    release_lets_the_backup_stand_at_once => "release_switchover.txt",
    two_node_split_brain_heals => "two_node_split_brain_heals.txt",
    shutdown_while_candidate => "shutdown_while_candidate.txt",
    preemption_gives_the_address_back => "preemption.txt",
    // Control: a move to a named member, standby.
    a_move_gives_the_address_to_the_named_member => "move_to_a_named_member.txt",
    a_handoff_keeps_other_members_from_standing => "handoff_at_another_member.txt",
    a_handoff_lets_its_target_stand_at_once => "handoff_at_its_target.txt",
    a_node_in_standby_never_stands_and_still_votes => "standby.txt",
    // Duplex: a holder of open connections is waited for.
    a_paused_holder_that_wakes_without_quorum_is_waited_for => "paused_holder_wakes_without_quorum.txt",
}

#[test]
fn every_replay_file_is_run_by_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(REPLAY_DIR)
        .unwrap_or_else(|e| panic!("cannot list {REPLAY_DIR}: {e}"))
        .map(|entry| entry.expect("directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".txt"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = REPLAYS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "tests/replays and REPLAYS differ");
}

// ---------------------------------------------------------------------------------------------
// The checker itself: it must fail where a replay is wrong, and say where.

const SMALL_START: &str = "at 0 start me=1 members=1,2 witness=100 interval=10 miss=3\n";

#[test]
fn the_checker_accepts_a_correct_list() {
    let text = format!(
        "{SMALL_START}at 0 tick\n\
         expect send to=all epoch=0:0 heartbeat role=backup healthy=1 quorum=0 seq=1 following=-\n\
         at 5 recv from=2 epoch=0 heartbeat role=backup healthy=1 quorum=0 seq=1 following=-\n\
         expect nothing\nexpect quorum-is 1\nexpect next-deadline 10\n"
    );
    assert_eq!(run_replay("inline", &text), Ok(3));
}

#[test]
fn the_checker_rejects_an_unexpected_action() {
    let text = format!("{SMALL_START}at 0 tick\n");
    let err = run_replay("inline", &text).unwrap_err();
    assert!(err.starts_with("inline:2:"), "{err}");
    assert!(
        err.contains("expect send to=all epoch=0:0 heartbeat"),
        "{err}"
    );
}

#[test]
fn the_checker_rejects_a_wrong_field() {
    let text = format!("{SMALL_START}at 0 tick\nexpect send to=all heartbeat seq=2\n");
    let err = run_replay("inline", &text).unwrap_err();
    assert!(
        err.contains("line 3: expect send to=all heartbeat seq=2"),
        "{err}"
    );
}

#[test]
fn the_checker_rejects_a_missing_action() {
    let text = format!(
        "{SMALL_START}at 0 tick\nexpect send to=all heartbeat\nexpect take-address epoch=1:1\n"
    );
    let err = run_replay("inline", &text).unwrap_err();
    assert!(err.contains("first difference at position 2"), "{err}");
}

#[test]
fn the_checker_rejects_a_skipped_deadline() {
    let text = format!("{SMALL_START}at 0 tick\nexpect send heartbeat\nat 15 tick\n");
    let err = run_replay("inline", &text).unwrap_err();
    assert!(err.starts_with("inline:4:"), "{err}");
    assert!(err.contains("asked to run at 10 ms"), "{err}");
}

#[test]
fn the_checker_rejects_an_unexpected_disposition() {
    let text = format!(
        "{SMALL_START}at 0 tick\nexpect send heartbeat\n\
         at 1 recv from=7 epoch=0 release\n"
    );
    let err = run_replay("inline", &text).unwrap_err();
    assert!(err.contains("UnknownSender"), "{err}");
}

#[test]
fn the_checker_rejects_a_wrong_state() {
    let text = format!("{SMALL_START}expect role-is primary\n");
    let err = run_replay("inline", &text).unwrap_err();
    assert!(err.starts_with("inline:2:"), "{err}");
    assert!(
        err.contains("the role is backup, expected primary"),
        "{err}"
    );
}

#[test]
fn parse_errors_name_the_line() {
    let cases = [
        ("at 0 tock\n", "`tock` is not an event"),
        ("at x tick\n", "`x` is not a time"),
        (
            "at 0 start me=1 members=1,2 witness=100 interval=10\n",
            "missing field `miss=`",
        ),
        (
            "at 0 start me=1 members=1,2 witness=- interval=10 miss=3 colour=red\n",
            "unknown field `colour`",
        ),
        (
            "at 0 recv from=2 epoch=0 heartbeat role=backup\n",
            "missing field",
        ),
        ("at 0 recv from=2 epoch=1:x release\n", "is not an epoch"),
        (
            "at 0 tick\nexpect send to=all heartbeat sequence=1\n",
            "has no field `sequence`",
        ),
        ("at 0 tick\nexpect launch-rockets\n", "is not an action"),
        (
            "at 0 tick\nexpect nothing\nexpect release-address\n",
            "`expect nothing` and",
        ),
        ("expect nothing\n", "before any event"),
        ("at 0 tick\nexpect role-is boss\n", "`boss` is not a role"),
    ];
    for (text, wanted) in cases {
        let err = parse_replay("inline", text).map(|_| ()).unwrap_err();
        let line = text.lines().count();
        assert!(
            err.starts_with(&format!("inline:{line}: ")) && err.contains(wanted),
            "for {text:?}: {err}"
        );
    }
}

#[test]
fn epochs_and_times_parse_both_ways() {
    assert_eq!(parse_epoch("1:2"), Ok(65538));
    assert_eq!(parse_epoch("65538"), Ok(65538));
    assert_eq!(show_epoch(65538), "1:2");
    assert_eq!(parse_ms("29.999"), Ok(Duration::from_micros(29_999)));
    assert_eq!(parse_ms("29.5"), Ok(Duration::from_micros(29_500)));
    assert_eq!(show_ms(Duration::from_micros(29_500)), "29.500");
    assert!(parse_ms("1.2345").is_err());
}

// ---------------------------------------------------------------------------------------------
// Direct checks

fn two_node_config(me: NodeId) -> ElectionConfig {
    ElectionConfig {
        me,
        members: vec![1, 2],
        witness: None,
        heartbeat_interval: Duration::from_millis(10),
        miss_count: 3,
        preempt: false,
        two_node: true,
        holder_grace: ElectionConfig::default_holder_grace(Duration::from_millis(10), 3),
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn frames_from_unknown_senders_and_from_ourselves_change_nothing() {
    // Alone in a two_node group, node 1 is a quorum by itself and serves after one lease.
    let mut e = Election::new(two_node_config(1), ms(0));
    e.handle(Event::Tick, ms(0));
    for t in [10, 20] {
        e.handle(Event::Tick, ms(t));
    }
    let (actions, _) = e.handle(Event::Tick, ms(30));
    assert!(
        actions.contains(&Action::TakeAddress { epoch: 65537 }),
        "{actions:?}"
    );
    assert!(e.is_primary());
    let peers_before = e.peers().clone();

    let newer = 100 << 16 | 2;
    for from in [1, 3, 100, 65535] {
        for message in [
            Message::Heartbeat {
                role: Role::Primary,
                healthy: true,
                has_quorum: true,
                seq: 9,
                following: None,
                holds_connections: false,
                starting: false,
            },
            Message::Release,
            Message::Handoff { to: 2 },
            Message::VoteRequest {
                proposed_epoch: newer,
            },
            Message::Ack { primary: 1, seq: 1 },
        ] {
            let (actions, disposition) = e.handle(
                Event::Received {
                    from,
                    epoch: newer,
                    message: message.clone(),
                },
                ms(31),
            );
            assert_eq!(
                disposition,
                Disposition::UnknownSender,
                "{from} {message:?}"
            );
            assert_eq!(actions, vec![], "{from} {message:?}");
        }
    }
    assert!(
        e.is_primary(),
        "an unknown sender's newer epoch is no reason to step down"
    );
    assert_eq!(e.epoch(), 65537);
    assert_eq!(
        e.peers(),
        &peers_before,
        "no peer view was touched or added"
    );
}

#[test]
fn epoch_term_and_owner_split_an_epoch() {
    assert_eq!((epoch_term(0), epoch_owner(0)), (0, 0));
    assert_eq!((epoch_term(65537), epoch_owner(65537)), (1, 1));
    assert_eq!((epoch_term(65538), epoch_owner(65538)), (1, 2));
    assert_eq!(
        (epoch_term(3 << 16 | 100), epoch_owner(3 << 16 | 100)),
        (3, 100)
    );
    assert_eq!(epoch_owner(7 << 16 | 65535), 65535);
    assert_eq!(epoch_term(7 << 16 | 65535), 7);
    // Term and owner together are the whole epoch.
    for epoch in [0, 1, 65535, 65536, 65537, 3 << 16 | 100, u64::MAX] {
        assert_eq!(
            epoch_term(epoch) << 16 | u64::from(epoch_owner(epoch)),
            epoch
        );
    }
}

#[test]
fn a_candidate_proposes_the_next_term_with_its_own_id() {
    // Node 2 alone in a two_node group; it has seen epoch 5:1 from node 1 before node 1 went
    // quiet, so it proposes term 6 with its own id.
    let mut e = Election::new(two_node_config(2), ms(0));
    e.handle(Event::Tick, ms(0));
    let (actions, _) = e.handle(
        Event::Received {
            from: 1,
            epoch: 5 << 16 | 1,
            message: Message::Heartbeat {
                role: Role::Backup,
                healthy: false,
                has_quorum: true,
                seq: 1,
                following: None,
                holds_connections: false,
                starting: false,
            },
        },
        ms(1),
    );
    assert_eq!(actions, vec![]);
    for t in [10, 20] {
        e.handle(Event::Tick, ms(t));
    }
    let (actions, _) = e.handle(Event::Tick, ms(30));
    let proposed = 6 << 16 | 2;
    assert_eq!(
        actions.first(),
        Some(&Action::Send {
            to: Destination::AllVoters,
            epoch: 5 << 16 | 1,
            message: Message::VoteRequest {
                proposed_epoch: proposed
            },
        })
    );
    assert_eq!(e.epoch(), proposed);
    assert_eq!((epoch_term(e.epoch()), epoch_owner(e.epoch())), (6, 2));
}
