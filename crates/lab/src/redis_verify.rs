//! A verifying Redis client: many connections issue increments, pushes, transfers between
//! shared accounts and reads of their own writes, record every acknowledged reply in a
//! [`ConnectionLedger`], and at the end read everything back. It reports client errors,
//! reconnects, what the replies showed that must not happen, and the latency of every command.
//!
//! Its connections never close on their own: a connection that fails is counted and opened
//! anew, so that one run says both whether clients saw failures and whether the data kept what
//! was acknowledged. The command in flight at a failure is "unknown" to the ledger: applied at
//! most once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use steadfast_core::latency::{LatencyHistogram, LatencySummary};
use steadfast_core::resp_value::{decode_value, DecodeErrorKind, RespData, RespValue, ValueLimits};

use crate::generator;
use crate::redis_ledger::{check_sum, ConnectionLedger, Violation};
use crate::LabError;

/// What every account holds at the start.
const OPENING_BALANCE: i64 = 1_000;
/// The most errors and violations a report lists (all are counted).
const LISTED: usize = 20;
/// How long a connection waits after a failed command before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub connections: usize,
    /// How long the connections issue commands.
    pub duration: Duration,
    /// A bound on each connection's commands, whatever the duration.
    pub max_commands_per_connection: u64,
    /// Shared accounts the transfers move amounts between.
    pub accounts: usize,
    /// How long one exchange may take before the connection counts as failed.
    pub exchange_timeout: Duration,
    /// Seeds the choice of commands; also names the run's keys.
    pub seed: u64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            connections: 50,
            duration: Duration::from_secs(10),
            max_commands_per_connection: 100_000,
            accounts: 8,
            exchange_timeout: Duration::from_secs(2),
            seed: 1,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub commands: u64,
    pub increments: u64,
    pub pushes: u64,
    pub transfers: u64,
    pub reads: u64,
    /// Exchanges that failed: no reply in time, a closed connection, an error reply.
    pub client_errors: u64,
    /// Connections opened anew after one failed.
    pub reconnects: u64,
    /// The first client errors, each saying what and where.
    pub errors: Vec<String>,
    pub violation_count: u64,
    /// The first violations.
    pub violations: Vec<Violation>,
    /// Whether the data was read back whole at the end.
    pub final_check: bool,
    /// Every command's time, from sending it to its whole reply.
    pub latency: LatencySummary,
}

impl VerifyReport {
    /// Nothing failed and nothing acknowledged was lost.
    pub fn is_clean(&self) -> bool {
        self.client_errors == 0
            && self.reconnects == 0
            && self.violation_count == 0
            && self.final_check
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} commands ({} INCR, {} RPUSH, {} transfers, {} reads): {} client errors, {} \
             reconnects, {} violations, final check {}; latency p50 {} µs, p99 {} µs, max {} µs",
            self.commands,
            self.increments,
            self.pushes,
            self.transfers,
            self.reads,
            self.client_errors,
            self.reconnects,
            self.violation_count,
            if self.final_check { "done" } else { "not done" },
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.max_us
        )?;
        for error in &self.errors {
            writeln!(f, "  error: {error}")?;
        }
        for violation in &self.violations {
            writeln!(f, "  violation: {violation}")?;
        }
        Ok(())
    }
}

/// Runs the verifying load against `target` from `namespace` (`None`: this one) and reads the
/// data back at the end.
pub fn run(
    namespace: Option<&str>,
    target: SocketAddr,
    options: &VerifyOptions,
) -> Result<VerifyReport, LabError> {
    match namespace {
        Some(namespace) => crate::run_in_namespace(namespace, || run_here(target, options))?,
        None => run_here(target, options),
    }
}

/// The shared state of one run.
struct Run<'a> {
    options: &'a VerifyOptions,
    target: SocketAddr,
    keys: Keys,
    latency: LatencyHistogram,
    counts: Counts,
    findings: Mutex<Findings>,
}

#[derive(Default)]
struct Counts {
    commands: AtomicU64,
    increments: AtomicU64,
    pushes: AtomicU64,
    transfers: AtomicU64,
    reads: AtomicU64,
    client_errors: AtomicU64,
    reconnects: AtomicU64,
}

#[derive(Default)]
struct Findings {
    errors: Vec<String>,
    violation_count: u64,
    violations: Vec<Violation>,
    /// The last wrong sum reported: a sum that stays wrong is one violation, not one per read.
    wrong_sum: Option<i64>,
}

/// The run's key names: its own, so that runs never meet.
struct Keys {
    prefix: String,
    accounts: Vec<String>,
}

impl Keys {
    fn new(seed: u64, accounts: usize) -> Keys {
        let prefix = format!("sfv:{seed:x}:{}", std::process::id());
        let accounts = (0..accounts)
            .map(|i| format!("{prefix}:account:{i}"))
            .collect();
        Keys { prefix, accounts }
    }

    fn counter(&self, connection: usize) -> String {
        format!("{}:c{connection}:counter", self.prefix)
    }

    fn list(&self, connection: usize) -> String {
        format!("{}:c{connection}:list", self.prefix)
    }
}

fn run_here(target: SocketAddr, options: &VerifyOptions) -> Result<VerifyReport, LabError> {
    let keys = Keys::new(options.seed, options.accounts.max(2));
    let run = Run {
        options,
        target,
        keys,
        latency: LatencyHistogram::new(),
        counts: Counts::default(),
        findings: Mutex::new(Findings::default()),
    };
    open_accounts(&run).map_err(|detail| LabError::Redis {
        namespace: String::from("(the verifying client's)"),
        target,
        source: std::io::Error::other(format!("opening the accounts: {detail}")),
    })?;
    let deadline = Instant::now() + options.duration;
    let ledgers: Vec<ConnectionLedger> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..options.connections)
            .map(|connection| {
                let run = &run;
                scope.spawn(move || drive(run, connection, deadline))
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a verifying connection panicked"))
            .collect()
    });
    let final_check = read_back(&run, &ledgers);
    let findings = run.findings.into_inner().expect("findings lock");
    let counts = &run.counts;
    Ok(VerifyReport {
        commands: counts.commands.load(Ordering::Relaxed),
        increments: counts.increments.load(Ordering::Relaxed),
        pushes: counts.pushes.load(Ordering::Relaxed),
        transfers: counts.transfers.load(Ordering::Relaxed),
        reads: counts.reads.load(Ordering::Relaxed),
        client_errors: counts.client_errors.load(Ordering::Relaxed),
        reconnects: counts.reconnects.load(Ordering::Relaxed),
        errors: findings.errors,
        violation_count: findings.violation_count,
        violations: findings.violations,
        final_check,
        latency: run.latency.summary(),
    })
}

impl Run<'_> {
    fn violation(&self, violation: Violation) {
        let mut findings = self.findings.lock().expect("findings lock");
        if let Violation::SumChanged { read, .. } = violation {
            if findings.wrong_sum.replace(read) == Some(read) {
                return;
            }
        }
        findings.violation_count += 1;
        if findings.violations.len() < LISTED {
            findings.violations.push(violation);
        }
    }

    fn error(&self, error: String) {
        self.counts.client_errors.fetch_add(1, Ordering::Relaxed);
        let mut findings = self.findings.lock().expect("findings lock");
        if findings.errors.len() < LISTED {
            findings.errors.push(error);
        }
    }

    fn check(&self, result: Result<(), Violation>) {
        if let Err(violation) = result {
            self.violation(violation);
        }
    }
}

fn open_accounts(run: &Run<'_>) -> Result<(), String> {
    let mut client = Connection::new(run.target, run.options.exchange_timeout);
    let balance = OPENING_BALANCE.to_string();
    let commands: Vec<Vec<&[u8]>> = run
        .keys
        .accounts
        .iter()
        .map(|key| vec![&b"SET"[..], key.as_bytes(), balance.as_bytes()])
        .collect();
    for reply in client.exchange(&commands)? {
        if reply.data != RespData::SimpleString(b"OK".to_vec()) {
            return Err(format!("SET answered {}", describe(&reply)));
        }
    }
    Ok(())
}

/// One connection's commands until the deadline.
fn drive(run: &Run<'_>, connection: usize, deadline: Instant) -> ConnectionLedger {
    let options = run.options;
    let mut ledger = ConnectionLedger::new(connection);
    let mut client = Connection::new(run.target, options.exchange_timeout);
    let counter = run.keys.counter(connection);
    let list = run.keys.list(connection);
    let seed = options.seed ^ ((connection as u64) << 40);
    let mut next_element = (connection as u64) << 32;
    for n in 0..options.max_commands_per_connection {
        if Instant::now() >= deadline {
            break;
        }
        let draw = generator::word(seed, n);
        let started = Instant::now();
        let outcome = match draw % 100 {
            0..=29 => {
                run.counts.increments.fetch_add(1, Ordering::Relaxed);
                let asked = client.ask(vec![b"INCR", counter.as_bytes()], integer);
                if let Err(Failed::Lost(_)) = asked {
                    ledger.increment_unknown();
                }
                asked.map(|value| run.check(ledger.incremented(value)))
            }
            30..=54 => {
                run.counts.pushes.fetch_add(1, Ordering::Relaxed);
                next_element += 1;
                let element = next_element.to_string();
                let command = vec![&b"RPUSH"[..], list.as_bytes(), element.as_bytes()];
                let asked = client.ask(command, integer);
                if let Err(Failed::Lost(_)) = asked {
                    ledger.push_unknown(next_element);
                }
                asked.map(|length| run.check(ledger.pushed(next_element, length)))
            }
            55..=74 => {
                run.counts.transfers.fetch_add(1, Ordering::Relaxed);
                transfer(run, &mut client, connection, draw).map_err(Failed::Lost)
            }
            75..=84 => {
                run.counts.reads.fetch_add(1, Ordering::Relaxed);
                client
                    .ask(vec![b"GET", counter.as_bytes()], optional_integer)
                    .map(|value| run.check(ledger.counter_read(value)))
            }
            85..=89 => {
                run.counts.reads.fetch_add(1, Ordering::Relaxed);
                client
                    .ask(vec![b"LLEN", list.as_bytes()], integer)
                    .map(|length| run.check(ledger.list_length_read(length)))
            }
            _ => {
                run.counts.reads.fetch_add(1, Ordering::Relaxed);
                read_sum(run, &mut client, connection).map_err(Failed::Lost)
            }
        };
        run.latency.record(started.elapsed());
        run.counts.commands.fetch_add(1, Ordering::Relaxed);
        if let Err(failed) = outcome {
            run.error(format!("connection {connection}, command {n}: {failed}"));
            if client.close() {
                run.counts.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            // A service that refuses connections is not hammered while it comes back.
            std::thread::sleep(RETRY_PAUSE);
        }
    }
    ledger
}

/// Moves an amount between two accounts in one transaction.
fn transfer(
    run: &Run<'_>,
    client: &mut Connection,
    connection: usize,
    draw: u64,
) -> Result<(), String> {
    let accounts = &run.keys.accounts;
    let from = (draw >> 8) as usize % accounts.len();
    let to = (from + 1 + (draw >> 16) as usize % (accounts.len() - 1)) % accounts.len();
    let amount = ((draw >> 24) % 50 + 1).to_string();
    let replies = client
        .exchange(&[
            vec![&b"MULTI"[..]],
            vec![b"DECRBY", accounts[from].as_bytes(), amount.as_bytes()],
            vec![b"INCRBY", accounts[to].as_bytes(), amount.as_bytes()],
            vec![b"EXEC"],
        ])
        .map_err(|e| format!("MULTI/EXEC transfer: {e}"))?;
    let shape = |detail: String| {
        run.violation(Violation::Malformed { connection, detail });
        Ok(())
    };
    if replies[0].data != RespData::SimpleString(b"OK".to_vec()) {
        return Err(format!("MULTI answered {}", describe(&replies[0])));
    }
    for queued in &replies[1..3] {
        if queued.data != RespData::SimpleString(b"QUEUED".to_vec()) {
            return Err(format!("a queued command answered {}", describe(queued)));
        }
    }
    match replies[3].data.as_list() {
        Some(results) if results.len() == 2 && results.iter().all(|r| integer(r).is_some()) => {
            Ok(())
        }
        _ => shape(format!(
            "EXEC of a transfer answered {}, not two balances",
            describe(&replies[3])
        )),
    }
}

/// Reads every account at once (MGET is atomic) and checks their sum.
fn read_sum(run: &Run<'_>, client: &mut Connection, connection: usize) -> Result<(), String> {
    let mut command: Vec<&[u8]> = vec![b"MGET"];
    command.extend(run.keys.accounts.iter().map(|key| key.as_bytes()));
    let replies = client
        .exchange(&[command])
        .map_err(|e| format!("MGET of the accounts: {e}"))?;
    match balances(&replies[0], run.keys.accounts.len()) {
        Some(balances) => {
            let expected = OPENING_BALANCE * run.keys.accounts.len() as i64;
            run.check(check_sum(expected, &balances));
            Ok(())
        }
        None => {
            run.violation(Violation::Malformed {
                connection,
                detail: format!("MGET of the accounts answered {}", describe(&replies[0])),
            });
            Ok(())
        }
    }
}

/// Reads every connection's keys and the accounts back, and checks them against the ledgers.
fn read_back(run: &Run<'_>, ledgers: &[ConnectionLedger]) -> bool {
    let mut client = Connection::new(run.target, run.options.exchange_timeout);
    for (connection, ledger) in ledgers.iter().enumerate() {
        let counter = run.keys.counter(connection);
        let list = run.keys.list(connection);
        let replies = match client.exchange(&[
            vec![&b"GET"[..], counter.as_bytes()],
            vec![b"LRANGE", list.as_bytes(), b"0", b"-1"],
        ]) {
            Ok(replies) => replies,
            Err(e) => {
                run.error(format!("reading back connection {connection}'s keys: {e}"));
                return false;
            }
        };
        match optional_integer(&replies[0]) {
            Some(value) => run.check(ledger.counter_read(value)),
            None => run.violation(Violation::Malformed {
                connection,
                detail: format!("GET at the end answered {}", describe(&replies[0])),
            }),
        }
        let elements: Option<Vec<u64>> = replies[1].data.as_list().and_then(|items| {
            items
                .iter()
                .map(|item| {
                    std::str::from_utf8(item.data.as_bytes()?)
                        .ok()?
                        .parse()
                        .ok()
                })
                .collect()
        });
        match elements {
            Some(elements) => run.check(ledger.list_read(&elements)),
            None => run.violation(Violation::Malformed {
                connection,
                detail: format!("LRANGE at the end answered {}", describe(&replies[1])),
            }),
        }
    }
    // The reader is numbered after the load's connections.
    match read_sum(run, &mut client, ledgers.len()) {
        Ok(()) => true,
        Err(e) => {
            run.error(format!("reading back the accounts: {e}"));
            false
        }
    }
}

fn integer(value: &RespValue) -> Option<i64> {
    match value.data {
        RespData::Integer(n) => Some(n),
        _ => None,
    }
}

/// A GET of a number: `Some(None)` for a missing key.
fn optional_integer(value: &RespValue) -> Option<Option<i64>> {
    match &value.data {
        RespData::Null => Some(None),
        data => Some(Some(
            std::str::from_utf8(data.as_bytes()?).ok()?.parse().ok()?,
        )),
    }
}

fn balances(value: &RespValue, accounts: usize) -> Option<Vec<i64>> {
    let items = value.data.as_list()?;
    if items.len() != accounts {
        return None;
    }
    // A missing account is a balance of 0: its sum then tells what was lost.
    items
        .iter()
        .map(|item| optional_integer(item).map(|balance| balance.unwrap_or(0)))
        .collect()
}

/// A reply, as an error message shows it.
fn describe(value: &RespValue) -> String {
    match &value.data {
        RespData::SimpleError(text) | RespData::BulkError(text) => {
            format!("the error {:?}", String::from_utf8_lossy(text))
        }
        RespData::Array(items) | RespData::Set(items) | RespData::Push(items) => {
            format!("{} of {} elements", value.data.type_name(), items.len())
        }
        data => format!("{} {:?}", data.type_name(), data),
    }
}

/// Why a command got no answer the ledger can take.
#[derive(Debug)]
enum Failed {
    /// No reply came: the command may have run or not.
    Lost(String),
    /// A reply came that is not what the command answers.
    Shape(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Lost(why) | Failed::Shape(why) => f.write_str(why),
        }
    }
}

/// One client connection, opened when needed.
struct Connection {
    target: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Connection {
    fn new(target: SocketAddr, timeout: Duration) -> Connection {
        Connection {
            target,
            timeout,
            stream: None,
            buffer: Vec::new(),
        }
    }

    /// Drops the connection after a failure; true when one was open (the next command opens
    /// it anew: a reconnect).
    fn close(&mut self) -> bool {
        self.buffer.clear();
        self.stream.take().is_some()
    }

    /// Sends one command and reads its reply with `read`, which says whether the reply is of
    /// the shape the command answers.
    fn ask<T>(
        &mut self,
        command: Vec<&[u8]>,
        read: impl Fn(&RespValue) -> Option<T>,
    ) -> Result<T, Failed> {
        let name = String::from_utf8_lossy(command[0]).into_owned();
        let replies = self
            .exchange(&[command])
            .map_err(|e| Failed::Lost(format!("{name}: {e}")))?;
        read(&replies[0])
            .ok_or_else(|| Failed::Shape(format!("{name} answered {}", describe(&replies[0]))))
    }

    /// Sends `commands` at once (pipelined) and reads one reply to each. An error reply is an
    /// error too.
    fn exchange(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<RespValue>, String> {
        let deadline = Instant::now() + self.timeout;
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.target, self.timeout)
                .map_err(|e| format!("connect to {}: {e}", self.target))?;
            stream.set_nodelay(true).ok();
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected");
        let mut request = Vec::new();
        for command in commands {
            request.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
            for arg in command {
                request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                request.extend_from_slice(arg);
                request.extend_from_slice(b"\r\n");
            }
        }
        stream
            .set_write_timeout(Some(self.timeout))
            .and_then(|()| stream.write_all(&request))
            .map_err(|e| format!("send to {}: {e}", self.target))?;
        let mut replies = Vec::with_capacity(commands.len());
        let mut piece = [0u8; 16 * 1024];
        while replies.len() < commands.len() {
            match decode_value(&self.buffer, ValueLimits::default()) {
                Ok((value, used)) => {
                    self.buffer.drain(..used);
                    if let RespData::SimpleError(text) | RespData::BulkError(text) = &value.data {
                        return Err(format!(
                            "{} answered the error {:?}",
                            self.target,
                            String::from_utf8_lossy(text)
                        ));
                    }
                    replies.push(value);
                    continue;
                }
                Err(e) if e.kind == DecodeErrorKind::Truncated => {}
                Err(e) => return Err(format!("{}: {e}", self.target)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no whole reply from {} within {:?}",
                    self.target, self.timeout
                ));
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(|e| format!("{}: {e}", self.target))?;
            match stream.read(&mut piece) {
                Ok(0) => return Err(format!("{} closed the connection", self.target)),
                Ok(n) => self.buffer.extend_from_slice(&piece[..n]),
                Err(e) => return Err(format!("read from {}: {e}", self.target)),
            }
        }
        Ok(replies)
    }
}
