//! The netlink socket to nf_tables: transactions (batches) and reads (dumps, gets), blocking,
//! in the network namespace of the thread that opens it.
//!
//! netlink-packet-netfilter has the messages but no transport; this file frames batches
//! (NFNL_MSG_BATCH_BEGIN with res_id NFNL_SUBSYS_NFTABLES, the changes, NFNL_MSG_BATCH_END),
//! sends each batch in one datagram (the kernel takes a batch from one datagram only), asks an
//! acknowledgement of every change and reads every answer, and reads the extended ack (the
//! kernel's message and the offset of the attribute it refused).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    ChainMessage, GenAttribute, GenMessage, NfTablesMessage, RuleMessage, SetElementList,
    SetElementMessage, SetMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::batch::{nul_terminated, Batch, NFTA_OBJ_NAME, NFTA_OBJ_TABLE, NFTA_OBJ_TYPE};
use super::decode::{self, Object};
use super::model::{ChainContents, Counter, Family, Ruleset, Table, TableContents, OBJECT_COUNTER};
use super::NftError;

/// How long the kernel may take to answer. A transaction waits for RCU grace periods and for
/// the per-namespace nf_tables mutex: tens of milliseconds on a loaded host, never seconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
/// The receive buffer a batch's acknowledgements need: the kernel queues them all before the
/// send returns, each in a buffer of about this size.
const BYTES_PER_ACK: usize = 1024;
const ATTEMPTS_AT_A_STEADY_READ: usize = 5;

/// A netlink socket speaking nf_tables. Closing it deletes the tables it owns
/// ([`super::model::TABLE_OWNER`]).
pub struct NftSocket {
    socket: Socket,
    port: u32,
    sequence: u32,
    receive_buffer: usize,
    /// Whether the kernel sends only the header of a refused request back (NETLINK_CAP_ACK).
    capped_acks: bool,
}

/// A message read back, with the family its header names.
type Reply = (Family, NfTablesMessage);

fn io(what: impl Into<String>, source: std::io::Error) -> NftError {
    NftError::Io {
        what: what.into(),
        source,
    }
}

fn netfilter(family: Family, inner: impl Into<NetfilterMessageInner>) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::from(family.code()), 0, 0),
        inner,
    )
}

fn control(message: ControlMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
        message,
    )
}

fn append(buffer: &mut Vec<u8>, message: NetfilterMessage, flags: u16, sequence: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let start = buffer.len();
    buffer.resize(start + message.buffer_len(), 0);
    message.serialize(&mut buffer[start..]);
}

/// The kernel's extended ack of a refused request: its message and the offset, in the request,
/// of the attribute at fault.
fn extended_ack(flags: u16, after_code: &[u8], capped: bool) -> (Option<String>, Option<u32>) {
    if flags & NLM_F_ACK_TLVS == 0 || after_code.len() < 16 {
        return (None, None);
    }
    let request_len = if capped || flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes(after_code[0..4].try_into().expect("4 bytes")) as usize;
        (len + 3) & !3
    };
    let Some(tlvs) = after_code.get(request_len..) else {
        return (None, None);
    };
    let (mut message, mut offset) = (None, None);
    for nla in NlasIterator::new(tlvs).flatten() {
        match nla.kind() {
            NLMSGERR_ATTR_MSG => {
                let text = nla.value().split(|b| *b == 0).next().unwrap_or_default();
                message = Some(String::from_utf8_lossy(text).into_owned());
            }
            NLMSGERR_ATTR_OFFS => offset = nla.value().try_into().ok().map(u32::from_ne_bytes),
            _ => {}
        }
    }
    (message, offset)
}

/// A change of a batch the kernel refused (`None`: the batch itself).
struct Refusal {
    change: Option<usize>,
    errno: i32,
    message: Option<String>,
    offset: Option<u32>,
}

/// One answer of the kernel, as far as the reading loops care.
enum Answer {
    Ack,
    Refused {
        errno: i32,
        message: Option<String>,
        offset: Option<u32>,
    },
    Done,
    Message(Reply, bool),
}

impl NftSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<NftSocket, NftError> {
        let socket_error = |what: &'static str| move |source| NftError::Socket { what, source };
        let mut socket =
            Socket::new(NETLINK_NETFILTER).map_err(socket_error("opening a netfilter socket"))?;
        let address = socket
            .bind_auto()
            .map_err(socket_error("binding the netfilter socket"))?;
        socket
            .set_ext_ack(true)
            .map_err(socket_error("asking for extended acks (NETLINK_EXT_ACK)"))?;
        let capped_acks = socket.set_cap_ack(true).is_ok();
        let timeout = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a valid timeval of the size passed, on a socket this function owns.
        if unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const libc::timeval as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        } != 0
        {
            return Err(NftError::Socket {
                what: "setting the netfilter socket's receive timeout",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(NftSocket {
            socket,
            port: address.port_number(),
            sequence: 0,
            receive_buffer: 0,
            capped_acks,
        })
    }

    /// Moves the socket to the highest descriptor number the process may open (below a cap),
    /// so that it is the first of the process's descriptors the kernel closes when the
    /// process dies.
    ///
    /// Why: a dying process's descriptors are closed in ascending order, but each close's
    /// release is queued as task work and the queue runs last in, first out; so the highest
    /// descriptor is released first. The tables this socket owns are deleted in its release.
    /// A socket opened at start (a low number) would outlive every connection the process
    /// opened later, and each of those would send its FIN or RST while the tables still let
    /// it out. Descriptors are handed out lowest first, so one at the top stays above every
    /// connection. The cap keeps the descriptor table small (8 bytes a slot) when the limit
    /// is huge; a process with more descriptors than that open loses the ordering for the
    /// ones above it.
    pub fn move_to_top_descriptor(&mut self) -> Result<(), NftError> {
        const CAP: libc::rlim_t = 1 << 20;
        let socket_error = |what: &'static str| move |source| NftError::Socket { what, source };
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid rlimit to write into.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(socket_error("reading the open-files limit")(
                std::io::Error::last_os_error(),
            ));
        }
        let top = limit.rlim_cur.min(CAP) as libc::c_int - 1;
        // The top slot may be taken (by another moved socket, or by whoever set up the
        // process): F_DUPFD takes the lowest free slot from the one asked, so ask lower and
        // lower until one is free.
        let mut last_error = None;
        for wanted in (top.saturating_sub(64).max(0)..=top).rev() {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor this value owns; the new descriptor is
            // owned by the socket built from it below.
            let moved =
                unsafe { libc::fcntl(self.socket.as_raw_fd(), libc::F_DUPFD_CLOEXEC, wanted) };
            if moved < 0 {
                last_error = Some(std::io::Error::last_os_error());
                continue;
            }
            // SAFETY: `moved` is a fresh descriptor of the same open socket, owned by no one
            // else; the old descriptor closes when the old Socket drops (the socket, its
            // port and its tables stay: another descriptor still refers to them).
            self.socket = unsafe { <Socket as std::os::fd::FromRawFd>::from_raw_fd(moved) };
            return Ok(());
        }
        Err(socket_error("moving the socket to the top descriptor")(
            last_error.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EMFILE)),
        ))
    }

    /// The netlink port the kernel knows this socket by (a table it owns names it).
    pub fn port(&self) -> u32 {
        self.port
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    fn grow_receive_buffer(&mut self, bytes: usize) -> Result<(), NftError> {
        if bytes <= self.receive_buffer {
            return Ok(());
        }
        let size = bytes as libc::c_int;
        let set = |option| {
            // SAFETY: a valid int of the size passed.
            unsafe {
                libc::setsockopt(
                    self.socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    &size as *const libc::c_int as *const libc::c_void,
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        // FORCE passes net.core.rmem_max (root only); without it the limit caps the size.
        if set(libc::SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
            return Err(NftError::Socket {
                what: "growing the netfilter socket's receive buffer",
                source: std::io::Error::last_os_error(),
            });
        }
        self.receive_buffer = bytes;
        Ok(())
    }

    fn send(&self, buffer: &[u8], what: &str) -> Result<(), NftError> {
        let sent = loop {
            match self.socket.send(buffer, 0) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.map_err(|e| io(format!("sending {what}"), e))?,
            }
        };
        if sent != buffer.len() {
            return Err(NftError::Unexpected {
                what: format!("sending {what}: {sent} of {} bytes went", buffer.len()),
            });
        }
        Ok(())
    }

    /// The answers of one datagram, with their sequence numbers.
    fn receive(&self, what: &str) -> Result<Vec<(u32, Answer)>, NftError> {
        // A signal interrupts a receive with a timeout even under SA_RESTART (signal(7)):
        // the daemon's signals (SIGCHLD of its hooks, SIGTERM) must not fail a transaction.
        let datagram = loop {
            match self.socket.recv_from_full() {
                Ok((datagram, _)) => break datagram,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NftError::NoAnswer {
                        what: what.to_string(),
                        waited: ANSWER_TIMEOUT,
                    })
                }
                Err(e) => return Err(io(format!("reading the kernel's answer to {what}"), e)),
            }
        };
        let mut answers = Vec::new();
        let mut offset = 0;
        while offset < datagram.len() {
            let rest = &datagram[offset..];
            let length = NetlinkBuffer::new_checked(rest)
                .map(|b| b.length() as usize)
                .map_err(|e| NftError::Decode {
                    what: what.to_string(),
                    detail: e.to_string(),
                })?;
            if length < 16 || length > rest.len() {
                return Err(NftError::Decode {
                    what: what.to_string(),
                    detail: format!("a message of {length} bytes in {} left", rest.len()),
                });
            }
            let bytes = &rest[..length];
            offset += (length + 3) & !3;
            let message = NetlinkMessage::<NetfilterMessage>::deserialize(bytes).map_err(|e| {
                NftError::Decode {
                    what: what.to_string(),
                    detail: e.to_string(),
                }
            })?;
            let sequence = message.header.sequence_number;
            let flags = message.header.flags;
            let answer = match message.payload {
                NetlinkPayload::Error(error) => match error.code {
                    None => Answer::Ack,
                    Some(code) => {
                        let (text, at) = extended_ack(flags, &error.header, self.capped_acks);
                        Answer::Refused {
                            errno: -code.get(),
                            message: text,
                            offset: at,
                        }
                    }
                },
                NetlinkPayload::Done(_) => Answer::Done,
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    header,
                    inner: NetfilterMessageInner::NfTables(inner),
                    ..
                }) => Answer::Message(
                    (Family::from_code(header.family.into()), inner),
                    flags & NLM_F_DUMP_INTR != 0,
                ),
                other => {
                    return Err(NftError::Decode {
                        what: what.to_string(),
                        detail: format!("an answer that is not nf_tables': {other:?}"),
                    })
                }
            };
            answers.push((sequence, answer));
        }
        Ok(answers)
    }

    /// Applies the batch as one transaction: every change or none. `what` says what it is for
    /// (errors name it and the change the kernel refused).
    pub fn apply(&mut self, batch: &Batch, what: &str) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut buffer = Vec::new();
        let begin = self.next_sequence();
        append(
            &mut buffer,
            control(ControlMessage::BatchBegin),
            NLM_F_REQUEST,
            begin,
        );
        let mut pending: HashMap<u32, usize> = HashMap::new();
        for (index, op) in batch.ops.iter().enumerate() {
            let sequence = self.next_sequence();
            let (message, flags) = op.encode();
            append(
                &mut buffer,
                netfilter(op.family(), message),
                NLM_F_REQUEST | NLM_F_ACK | flags,
                sequence,
            );
            pending.insert(sequence, index);
        }
        let end = self.next_sequence();
        append(
            &mut buffer,
            control(ControlMessage::BatchEnd),
            NLM_F_REQUEST,
            end,
        );
        self.grow_receive_buffer((batch.len() + 2) * BYTES_PER_ACK + 64 * 1024)?;
        self.send(&buffer, what)?;

        let mut refusals: Vec<Refusal> = Vec::new();
        'reading: while !pending.is_empty() {
            let answers = self.receive(what).map_err(|e| match e {
                NftError::NoAnswer { waited, .. } => NftError::NoAnswer {
                    what: format!(
                        "{what} ({} of its {} changes unanswered)",
                        pending.len(),
                        batch.len()
                    ),
                    waited,
                },
                other => other,
            })?;
            for (sequence, answer) in answers {
                let change = if sequence == begin || sequence == end {
                    None
                } else if let Some(index) = pending.remove(&sequence) {
                    Some(index)
                } else {
                    // An answer to an earlier request given up on.
                    continue;
                };
                if let Answer::Refused {
                    errno,
                    message,
                    offset,
                } = answer
                {
                    refusals.push(Refusal {
                        change,
                        errno,
                        message,
                        offset,
                    });
                    // The batch as a whole was refused (or its commit failed): the changes'
                    // own answers may never come.
                    if change.is_none() {
                        break 'reading;
                    }
                }
            }
        }
        let Some(first) = refusals.first() else {
            return Ok(());
        };
        let change = match first.change {
            Some(index) => batch.ops[index].describe(),
            None => "the transaction as a whole".to_string(),
        };
        Err(NftError::Refused {
            what: format!("{what}: {change}"),
            errno: first.errno,
            message: match (&first.message, first.offset) {
                (Some(m), Some(o)) => Some(format!("{m} (at byte {o} of the request)")),
                (Some(m), None) => Some(m.clone()),
                (None, Some(o)) => Some(format!("the attribute at byte {o} of the request")),
                (None, None) => None,
            },
            others: refusals.len() - 1,
        })
    }

    /// Sends a request and collects what comes back until its end (a dump's DONE, or the
    /// acknowledgement of a single get).
    fn exchange(
        &mut self,
        family: Family,
        message: NfTablesMessage,
        dump: bool,
        what: &str,
    ) -> Result<(Vec<Reply>, bool), NftError> {
        let sequence = self.next_sequence();
        let mut buffer = Vec::new();
        let flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST | NLM_F_ACK
        };
        append(&mut buffer, netfilter(family, message), flags, sequence);
        self.send(&buffer, what)?;
        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            for (seq, answer) in self.receive(what)? {
                if seq != sequence {
                    continue;
                }
                match answer {
                    Answer::Message(reply, intr) => {
                        interrupted |= intr;
                        replies.push(reply);
                    }
                    Answer::Done | Answer::Ack => return Ok((replies, interrupted)),
                    Answer::Refused {
                        errno,
                        message,
                        offset,
                    } => {
                        return Err(NftError::Refused {
                            what: what.to_string(),
                            errno,
                            message: message.or(offset.map(|o| format!("at byte {o}"))),
                            others: 0,
                        })
                    }
                }
            }
        }
    }

    /// The ruleset generation: it changes with every committed transaction.
    pub fn generation(&mut self) -> Result<u32, NftError> {
        let what = "reading the ruleset generation";
        let (replies, _) = self.exchange(
            Family::Other(0),
            NfTablesMessage::GetGen(GenMessage { attributes: vec![] }),
            false,
            what,
        )?;
        replies
            .iter()
            .find_map(|(_, message)| match message {
                NfTablesMessage::NewGen(GenMessage { attributes }) => {
                    attributes.iter().find_map(|a| match a {
                        GenAttribute::Id(id) => Some(*id),
                        _ => None,
                    })
                }
                _ => None,
            })
            .ok_or_else(|| NftError::Decode {
                what: what.to_string(),
                detail: "no generation id in the answer".to_string(),
            })
    }

    /// The table as the kernel holds it; `None` if there is none.
    pub fn table(&mut self, family: Family, name: &str) -> Result<Option<Table>, NftError> {
        let what = format!("reading table {family} {name}");
        let request = NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(name.to_string())],
        });
        let replies = match self.exchange(family, request, false, &what) {
            Ok((replies, _)) => replies,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        for (family, reply) in replies {
            if let NfTablesMessage::NewTable(TableMessage { attributes }) = reply {
                return decode::table(family, &attributes)
                    .map(Some)
                    .map_err(|detail| NftError::Decode { what, detail });
            }
        }
        Ok(None)
    }

    /// The named counter's count, read from the kernel.
    pub fn counter(
        &mut self,
        family: Family,
        table: &str,
        name: &str,
    ) -> Result<Counter, NftError> {
        let what = format!("reading counter {name} of table {family} {table}");
        let request = NfTablesMessage::GetObject(vec![
            netlink_packet_core::DefaultNla::new(NFTA_OBJ_TABLE, nul_terminated(table)),
            netlink_packet_core::DefaultNla::new(NFTA_OBJ_NAME, nul_terminated(name)),
            netlink_packet_core::DefaultNla::new(
                NFTA_OBJ_TYPE,
                OBJECT_COUNTER.to_be_bytes().to_vec(),
            ),
        ]);
        let (replies, _) = self.exchange(family, request, false, &what)?;
        for (family, reply) in replies {
            if let NfTablesMessage::NewObject(attributes) = reply {
                match decode::object(family, &attributes) {
                    Ok(Object::Counter(counter)) => return Ok(counter),
                    Ok(Object::Other(_)) => {}
                    Err(detail) => return Err(NftError::Decode { what, detail }),
                }
            }
        }
        Err(NftError::Decode {
            what,
            detail: "the kernel's answer holds no counter".to_string(),
        })
    }

    fn dump(
        &mut self,
        family: Family,
        message: NfTablesMessage,
        what: &str,
        interrupted: &mut bool,
    ) -> Result<Vec<Reply>, NftError> {
        let (replies, intr) = self.exchange(family, message, true, what)?;
        *interrupted |= intr;
        Ok(replies)
    }

    /// The tables `keep` accepts (by family and name), whole: their counters, sets with their
    /// elements, and chains with their rules, as the kernel holds them at one generation.
    pub fn read_ruleset(
        &mut self,
        keep: &dyn Fn(Family, &str) -> bool,
    ) -> Result<Ruleset, NftError> {
        for _ in 0..ATTEMPTS_AT_A_STEADY_READ {
            let generation = self.generation()?;
            let mut interrupted = false;
            let ruleset = self.read_once(keep, &mut interrupted)?;
            if !interrupted && self.generation()? == generation {
                return Ok(ruleset);
            }
        }
        Err(NftError::Unexpected {
            what: format!(
                "the ruleset changed during each of {ATTEMPTS_AT_A_STEADY_READ} attempts to read it"
            ),
        })
    }

    fn read_once(
        &mut self,
        keep: &dyn Fn(Family, &str) -> bool,
        interrupted: &mut bool,
    ) -> Result<Ruleset, NftError> {
        let any = Family::Other(0);
        let decode_error = |what: &str| {
            let what = what.to_string();
            move |detail| NftError::Decode {
                what: what.clone(),
                detail,
            }
        };
        let mut tables: Vec<TableContents> = Vec::new();
        let what = "listing the tables";
        for (family, message) in self.dump(
            any,
            NfTablesMessage::GetTable(TableMessage { attributes: vec![] }),
            what,
            interrupted,
        )? {
            if let NfTablesMessage::NewTable(TableMessage { attributes }) = message {
                let table = decode::table(family, &attributes).map_err(decode_error(what))?;
                if keep(table.family, &table.name) {
                    tables.push(TableContents {
                        table,
                        counters: Vec::new(),
                        other_objects: Vec::new(),
                        sets: Vec::new(),
                        chains: Vec::new(),
                    });
                }
            }
        }
        let find = |tables: &mut Vec<TableContents>, family: Family, name: &str| {
            tables
                .iter_mut()
                .position(|t| t.table.family == family && t.table.name == name)
        };

        let what = "listing the named objects";
        for (family, message) in
            self.dump(any, NfTablesMessage::GetObject(vec![]), what, interrupted)?
        {
            if let NfTablesMessage::NewObject(attributes) = message {
                let object = decode::object(family, &attributes).map_err(decode_error(what))?;
                let (object_table, object) = match object {
                    Object::Counter(c) => (c.table.clone(), Object::Counter(c)),
                    Object::Other(o) => (o.table.clone(), Object::Other(o)),
                };
                if let Some(i) = find(&mut tables, family, &object_table) {
                    match object {
                        Object::Counter(c) => tables[i].counters.push(c),
                        Object::Other(o) => tables[i].other_objects.push(o),
                    }
                }
            }
        }

        let what = "listing the sets";
        for (family, message) in self.dump(
            any,
            NfTablesMessage::GetSet(SetMessage { attributes: vec![] }),
            what,
            interrupted,
        )? {
            if let NfTablesMessage::NewSet(SetMessage { attributes }) = message {
                let set = decode::set(family, &attributes).map_err(decode_error(what))?;
                if let Some(i) = find(&mut tables, family, &set.table) {
                    tables[i].sets.push(set);
                }
            }
        }
        for table in &mut tables {
            for set in &mut table.sets {
                let what = format!(
                    "listing the elements of set {} of table {} {}",
                    set.name, set.family, set.table
                );
                let request = NfTablesMessage::GetSetElement(SetElementMessage {
                    attributes: vec![
                        SetElementList::Table(set.table.clone()),
                        SetElementList::Set(set.name.clone()),
                    ],
                });
                for (_, message) in self.dump(set.family, request, &what, interrupted)? {
                    if let NfTablesMessage::NewSetElement(SetElementMessage { attributes }) =
                        message
                    {
                        let (_, _, elements) =
                            decode::elements(&attributes).map_err(decode_error(&what))?;
                        set.elements.extend(elements);
                    }
                }
            }
        }

        let what = "listing the chains";
        for (family, message) in self.dump(
            any,
            NfTablesMessage::GetChain(ChainMessage { attributes: vec![] }),
            what,
            interrupted,
        )? {
            if let NfTablesMessage::NewChain(ChainMessage { attributes }) = message {
                let chain = decode::chain(family, &attributes).map_err(decode_error(what))?;
                if let Some(i) = find(&mut tables, family, &chain.table) {
                    tables[i].chains.push(ChainContents {
                        chain,
                        rules: Vec::new(),
                    });
                }
            }
        }

        let what = "listing the rules";
        for (family, message) in self.dump(
            any,
            NfTablesMessage::GetRule(RuleMessage { attributes: vec![] }),
            what,
            interrupted,
        )? {
            if let NfTablesMessage::NewRule(RuleMessage { attributes }) = message {
                let rule = decode::rule(family, &attributes).map_err(decode_error(what))?;
                let Some(i) = find(&mut tables, family, &rule.table) else {
                    continue;
                };
                match tables[i]
                    .chains
                    .iter_mut()
                    .find(|c| c.chain.name == rule.chain)
                {
                    Some(chain) => chain.rules.push(rule),
                    // A chain added between the two dumps: the generation tells, read again.
                    None => *interrupted = true,
                }
            }
        }
        Ok(Ruleset { tables })
    }
}
