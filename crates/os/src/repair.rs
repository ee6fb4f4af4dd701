//! TCP_REPAIR: rebuilding an established connection's server socket from logged state, plus
//! the accept-side facts the backup needs to do it (the client's ISN from the saved SYN, the
//! options the kernel negotiated from TCP_INFO), and listeners on a not-yet-local address.
//!
//! The order of the rebuild is the one docs/design.md "Takeover" found to work on Linux 6.18;
//! each step's error names the step and the connection. No crate wraps TCP_REPAIR, so the socket
//! options are set by hand through libc.

use std::mem::size_of;
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `TCP_REPAIR_QUEUE` values (include/uapi/linux/tcp.h).
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
/// include/uapi/asm-generic/socket.h (libc does not export it for every target).
const SO_MEMINFO: libc::c_int = 55;
/// The smallest segment size the kernel accepts for TCP_MAXSEG (include/net/tcp.h).
const TCP_MIN_MSS: libc::c_int = 88;
/// TCP option kinds as `TCP_REPAIR_OPTIONS` takes them.
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// `tcpi_options` bits.
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

#[repr(C)]
struct TcpRepairOpt {
    opt_code: u32,
    opt_val: u32,
}

/// A step of the rebuild (or of reading accept-side facts) that the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("{step} on {local} <- {remote}: {source}")]
pub struct RepairError {
    pub step: &'static str,
    pub local: String,
    pub remote: String,
    #[source]
    pub source: std::io::Error,
}

impl RepairError {
    fn last(step: &'static str, local: impl ToString, remote: impl ToString) -> RepairError {
        RepairError {
            step,
            local: local.to_string(),
            remote: remote.to_string(),
            source: std::io::Error::last_os_error(),
        }
    }

    fn on_fd(step: &'static str, fd: RawFd) -> RepairError {
        let source = std::io::Error::last_os_error();
        let (local, remote) = endpoints(fd);
        RepairError {
            step,
            local,
            remote,
            source,
        }
    }

    fn invalid(step: &'static str, fd: RawFd, what: &str) -> RepairError {
        let (local, remote) = endpoints(fd);
        RepairError {
            step,
            local,
            remote,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
        }
    }
}

fn endpoints(fd: RawFd) -> (String, String) {
    let local = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(fd)
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let remote = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrIn>(fd)
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    (local, remote)
}

/// The state of one connection to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairTarget {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// The first reply byte the client has not acknowledged: the send queue's sequence.
    pub snd_una: u32,
    /// The next client byte expected: the receive queue's sequence.
    pub rcv_nxt: u32,
    pub mss: u16,
    /// (snd, rcv) window scale shifts as TCP_INFO names them: snd = the client's, rcv = ours.
    pub window_scales: Option<(u8, u8)>,
    pub sack: bool,
    /// The `TCP_TIMESTAMP` value (our timestamp clock now), when timestamps are on.
    pub timestamp: Option<u32>,
    /// The client's receive window in bytes (scaled).
    pub client_window: u32,
}

/// A rebuilt socket still in repair mode: it sends nothing until [`RepairedSocket::leave_repair`].
pub struct RepairedSocket {
    fd: OwnedFd,
    target: RepairTarget,
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> bool {
    // SAFETY: `value` points to a live T of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        ) == 0
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Rebuilds the server socket of `target`, in repair mode.
pub fn rebuild(target: &RepairTarget) -> Result<RepairedSocket, RepairError> {
    let fail = |step| RepairError::last(step, target.local, target.remote);
    // SAFETY: plain socket(2); the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail("socket"));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    if !setsockopt(raw, libc::IPPROTO_TCP, libc::TCP_REPAIR, &one) {
        return Err(fail("TCP_REPAIR=1"));
    }
    if !setsockopt(raw, libc::IPPROTO_IP, libc::IP_FREEBIND, &one) {
        return Err(fail("IP_FREEBIND"));
    }
    // Without it connect() fails with ENETUNREACH while the VIP is not local yet.
    if !setsockopt(raw, libc::IPPROTO_IP, libc::IP_TRANSPARENT, &one) {
        return Err(fail("IP_TRANSPARENT"));
    }
    // No SO_REUSEADDR here: TCP_REPAIR already set the socket's reuse mode to "force" (it may
    // share VIP:port with the listener), and SO_REUSEADDR would downgrade it.
    let local = sockaddr(target.local);
    // SAFETY: a valid sockaddr_in of the size passed.
    if unsafe {
        libc::bind(
            raw,
            &local as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(fail("bind"));
    }
    for (queue, seq, step) in [
        (
            TCP_RECV_QUEUE,
            target.rcv_nxt,
            "TCP_QUEUE_SEQ (receive queue)",
        ),
        (TCP_SEND_QUEUE, target.snd_una, "TCP_QUEUE_SEQ (send queue)"),
    ] {
        if !setsockopt(raw, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, &queue) {
            return Err(fail("TCP_REPAIR_QUEUE"));
        }
        if !setsockopt(raw, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, &seq) {
            return Err(fail(step));
        }
    }
    // Before connect(): connect() computes the segment size the socket sends from the clamp
    // in force then, and the TCPOPT_MAXSEG repair option below, which can only come after it,
    // raises the clamp without recomputing it. Without this the rebuilt socket sends 536-byte
    // segments (less the options), and its first flight (ten segments) covers under a third
    // of what it would: a client whose acknowledgement lies beyond that flight is never heard.
    // (The kernel refuses a clamp below 88 bytes; such a client keeps the default.)
    let mss = libc::c_int::from(target.mss);
    if mss >= TCP_MIN_MSS && !setsockopt(raw, libc::IPPROTO_TCP, libc::TCP_MAXSEG, &mss) {
        return Err(fail("TCP_MAXSEG"));
    }
    let remote = sockaddr(target.remote);
    // SAFETY: a valid sockaddr_in; in repair mode connect() only records the peer.
    if unsafe {
        libc::connect(
            raw,
            &remote as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(fail("connect"));
    }
    let mut options = vec![TcpRepairOpt {
        opt_code: TCPOPT_MAXSEG,
        opt_val: u32::from(target.mss),
    }];
    if target.sack {
        options.push(TcpRepairOpt {
            opt_code: TCPOPT_SACK_PERM,
            opt_val: 0,
        });
    }
    if let Some((snd, rcv)) = target.window_scales {
        options.push(TcpRepairOpt {
            opt_code: TCPOPT_WINDOW,
            opt_val: u32::from(snd) | (u32::from(rcv) << 16),
        });
    }
    if target.timestamp.is_some() {
        options.push(TcpRepairOpt {
            opt_code: TCPOPT_TIMESTAMP,
            opt_val: 0,
        });
    }
    // SAFETY: an array of repr(C) option records of the length passed.
    if unsafe {
        libc::setsockopt(
            raw,
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_OPTIONS,
            options.as_ptr() as *const libc::c_void,
            (options.len() * size_of::<TcpRepairOpt>()) as libc::socklen_t,
        )
    } != 0
    {
        return Err(fail("TCP_REPAIR_OPTIONS"));
    }
    set_send_window(raw, target).map_err(|()| fail("TCP_REPAIR_WINDOW"))?;
    if let Some(ts) = target.timestamp {
        // Bit 0 selects microsecond timestamps since 6.7: the clock here counts milliseconds.
        let ts = ts & !1;
        if !setsockopt(raw, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP, &ts) {
            return Err(fail("TCP_TIMESTAMP"));
        }
    }
    Ok(RepairedSocket {
        fd,
        target: *target,
    })
}

/// `struct tcp_repair_window` (include/uapi/linux/tcp.h).
#[repr(C)]
#[derive(Default)]
struct TcpRepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}
const TCP_REPAIR_WINDOW: libc::c_int = 29;

/// Gives the rebuilt socket the client's window. Without it the socket starts with a zero
/// send window and sends nothing until the client answers its window probe; a client that
/// drops that probe (PAWS, or a lost frame) leaves the connection silent until the kernel's
/// zero-window probe timer, a second or more later. The receive side keeps what the kernel
/// chose.
fn set_send_window(fd: RawFd, target: &RepairTarget) -> Result<(), ()> {
    let mut window = TcpRepairWindow::default();
    let mut len = size_of::<TcpRepairWindow>() as libc::socklen_t;
    // SAFETY: `window` has `len` writable bytes.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            TCP_REPAIR_WINDOW,
            &mut window as *mut TcpRepairWindow as *mut libc::c_void,
            &mut len,
        )
    } != 0
    {
        return Err(());
    }
    window.snd_wl1 = target.rcv_nxt;
    window.snd_wnd = target.client_window;
    window.max_window = window.max_window.max(target.client_window);
    if setsockopt(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &window) {
        Ok(())
    } else {
        Err(())
    }
}

impl RepairedSocket {
    /// Leaves repair mode: the kernel sends a window probe and the connection is live.
    pub fn leave_repair(self) -> Result<TcpStream, RepairError> {
        let raw = self.fd.as_raw_fd();
        let zero: libc::c_int = 0;
        if !setsockopt(raw, libc::IPPROTO_TCP, libc::TCP_REPAIR, &zero) {
            return Err(RepairError::last(
                "TCP_REPAIR=0",
                self.target.local,
                self.target.remote,
            ));
        }
        Ok(TcpStream::from(self.fd))
    }
}

/// Leaves repair mode without the window probe (include/uapi/linux/tcp.h).
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;

/// The exact sequence numbers of a live connection: (rcv_nxt, write_seq) — the next client
/// byte expected and the sequence number of the next byte this socket will queue. Briefly puts
/// the socket in repair mode and leaves it without a probe. Meanwhile (a few microseconds) it
/// sends nothing: a segment an acknowledgement would have let out in that moment is counted as
/// sent without leaving (the send queue is the repair queue then), and the connection's loss
/// recovery (RACK, tail loss probe) sends it again milliseconds later.
pub fn live_sequences(stream: &impl AsRawFd) -> Result<(u32, u32), RepairError> {
    let fd = stream.as_raw_fd();
    let one: libc::c_int = 1;
    if !setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, &one) {
        return Err(RepairError::on_fd("TCP_REPAIR=1 (live)", fd));
    }
    let read = |queue: libc::c_int, step: &'static str| -> Result<u32, RepairError> {
        if !setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, &queue) {
            return Err(RepairError::on_fd("TCP_REPAIR_QUEUE", fd));
        }
        let mut seq: u32 = 0;
        let mut len = size_of::<u32>() as libc::socklen_t;
        // SAFETY: `seq` has `len` writable bytes.
        if unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUEUE_SEQ,
                &mut seq as *mut u32 as *mut libc::c_void,
                &mut len,
            )
        } != 0
        {
            return Err(RepairError::on_fd(step, fd));
        }
        Ok(seq)
    };
    let result = read(TCP_RECV_QUEUE, "TCP_QUEUE_SEQ (receive)")
        .and_then(|rcv| read(TCP_SEND_QUEUE, "TCP_QUEUE_SEQ (send)").map(|snd| (rcv, snd)));
    if !setsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        &TCP_REPAIR_OFF_NO_WP,
    ) {
        return Err(RepairError::on_fd("TCP_REPAIR off (live)", fd));
    }
    result
}

/// The connection's TCP timestamp clock now (`TCP_TIMESTAMP`: the value its next segment would
/// carry), whether or not the connection uses timestamps.
pub fn timestamp_now(stream: &impl AsRawFd) -> Result<u32, RepairError> {
    let fd = stream.as_raw_fd();
    let mut value: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: `value` has `len` writable bytes.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_TIMESTAMP,
            &mut value as *mut u32 as *mut libc::c_void,
            &mut len,
        )
    } != 0
    {
        return Err(RepairError::on_fd("TCP_TIMESTAMP (read)", fd));
    }
    Ok(value)
}

/// Puts a live connection's socket in repair mode for good, so that closing it sends nothing
/// — no FIN, no RST, no queued data (the kernel drops it as if the connection had moved
/// away, which it has: another node carries it on).
pub fn silence(stream: &impl AsRawFd) -> Result<(), RepairError> {
    let fd = stream.as_raw_fd();
    let one: libc::c_int = 1;
    if !setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, &one) {
        return Err(RepairError::on_fd("TCP_REPAIR=1 (silencing)", fd));
    }
    Ok(())
}

/// Bytes in the socket's receive queue not read yet (FIONREAD) and in its send queue not
/// acknowledged yet (SIOCOUTQ).
pub fn queued_bytes(stream: &impl AsRawFd) -> Result<(usize, usize), RepairError> {
    let fd = stream.as_raw_fd();
    let mut unread: libc::c_int = 0;
    let mut unacked: libc::c_int = 0;
    // SAFETY: both ioctls write one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) } != 0 {
        return Err(RepairError::on_fd("FIONREAD", fd));
    }
    // SAFETY: as above (SIOCOUTQ = TIOCOUTQ).
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacked) } != 0 {
        return Err(RepairError::on_fd("SIOCOUTQ", fd));
    }
    Ok((unread.max(0) as usize, unacked.max(0) as usize))
}

/// Bytes in the socket's send queue not acknowledged yet (SIOCOUTQ): one ioctl where
/// [`queued_bytes`] takes two.
pub fn unacknowledged_bytes(stream: &impl AsRawFd) -> Result<usize, RepairError> {
    let fd = stream.as_raw_fd();
    let mut unacked: libc::c_int = 0;
    // SAFETY: the ioctl writes one int (SIOCOUTQ = TIOCOUTQ).
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacked) } != 0 {
        return Err(RepairError::on_fd("SIOCOUTQ", fd));
    }
    Ok(unacked.max(0) as usize)
}

/// Whether the kernel holds received bytes that are not in the socket's in-order receive queue:
/// bytes beyond a gap (the out-of-order queue), which no read returns until the gap is filled.
/// Read the receive queue empty first: the answer counts all receive memory, so unread in-order
/// bytes (or a segment that arrives between the two looks) also answer true, which only makes a
/// caller wait.
///
/// The kernel has no call that shows the out-of-order queue; what it does show
/// (`SO_MEMINFO`'s receive allocation) covers both queues, and it uncharges a read segment at
/// once (`tcp_eat_recv_skb`), so with the in-order queue empty it is the out-of-order one.
pub fn holds_bytes_beyond_a_gap(stream: &impl AsRawFd) -> Result<bool, RepairError> {
    let fd = stream.as_raw_fd();
    // Room for the kernel's SK_MEMINFO_VARS (9 in 6.x) and more; it writes what fits.
    let mut meminfo = [0u32; 16];
    let mut len = std::mem::size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: `meminfo` has `len` writable bytes; the kernel writes at most that many.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            meminfo.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    } != 0
    {
        return Err(RepairError::on_fd("SO_MEMINFO", fd));
    }
    let (unread, _) = queued_bytes(stream)?;
    Ok(unread > 0 || meminfo[libc::SK_MEMINFO_RMEM_ALLOC as usize] > 0)
}

/// Asks the kernel to keep each connection's SYN for [`saved_syn`] (on a listening socket).
pub fn enable_saved_syn(listener: &impl AsRawFd) -> Result<(), RepairError> {
    let one: libc::c_int = 1;
    let fd = listener.as_raw_fd();
    if !setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_SAVE_SYN, &one) {
        return Err(RepairError::on_fd("TCP_SAVE_SYN", fd));
    }
    Ok(())
}

/// What the client's SYN said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedSyn {
    pub client_isn: u32,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: bool,
}

/// The SYN of an accepted connection (its listener had [`enable_saved_syn`]). The kernel hands
/// it out once.
pub fn saved_syn(stream: &impl AsRawFd) -> Result<SavedSyn, RepairError> {
    let fd = stream.as_raw_fd();
    let mut buf = [0u8; 512];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` has `len` writable bytes; the kernel writes at most that many.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_SAVED_SYN,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    } != 0
    {
        return Err(RepairError::on_fd("TCP_SAVED_SYN", fd));
    }
    parse_syn_headers(&buf[..len as usize])
        .ok_or_else(|| RepairError::invalid("TCP_SAVED_SYN", fd, "not an IPv4/TCP SYN header"))
}

/// The client's ISN of a connection accepted with nothing read from it yet, from its live
/// receive sequence: where the receive queue's next byte goes, less the bytes waiting unread,
/// less the SYN. For a connection that has no saved SYN: a listener whose SYN queue overflowed
/// (a SYN flood) completes handshakes with SYN cookies, which keep no SYN to save. A client
/// that already sent its FIN makes this one too high (the FIN takes a sequence number).
pub fn client_isn_of_unread_socket(stream: &impl AsRawFd) -> Result<u32, RepairError> {
    // Bytes that arrive between the looks would count twice: look until they agree.
    for _ in 0..4 {
        let (unread_before, _) = queued_bytes(stream)?;
        let (rcv_nxt, _) = live_sequences(stream)?;
        let (unread_after, _) = queued_bytes(stream)?;
        if unread_before == unread_after {
            return Ok(rcv_nxt.wrapping_sub(unread_before as u32).wrapping_sub(1));
        }
    }
    Err(RepairError::invalid(
        "TCP_QUEUE_SEQ (receive)",
        stream.as_raw_fd(),
        "client bytes kept arriving while the receive sequence was read",
    ))
}

/// Parses the IPv4 + TCP headers of a SYN (as TCP_SAVED_SYN returns them).
pub fn parse_syn_headers(bytes: &[u8]) -> Option<SavedSyn> {
    if bytes.len() < 20 || bytes[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(bytes[0] & 0x0f) * 4;
    let tcp = bytes.get(ihl..)?;
    if tcp.len() < 20 {
        return None;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset < 20 || tcp.len() < data_offset {
        return None;
    }
    let mut syn = SavedSyn {
        client_isn: u32::from_be_bytes(tcp[4..8].try_into().ok()?),
        mss: None,
        window_scale: None,
        sack_permitted: false,
        timestamps: false,
    };
    let mut options = &tcp[20..data_offset];
    while let Some(&kind) = options.first() {
        match kind {
            0 => break,
            1 => options = &options[1..],
            _ => {
                let len = usize::from(*options.get(1)?);
                if len < 2 || len > options.len() {
                    return None;
                }
                let body = &options[2..len];
                match (kind, body.len()) {
                    (2, 2) => syn.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                    (3, 1) => syn.window_scale = Some(body[0]),
                    (4, 0) => syn.sack_permitted = true,
                    (8, 8) => syn.timestamps = true,
                    _ => {}
                }
                options = &options[len..];
            }
        }
    }
    Some(syn)
}

/// The options the kernel negotiated on an established socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfoOptions {
    /// (snd, rcv) shifts: snd applies to the peer's windows, rcv to ours.
    pub window_scales: Option<(u8, u8)>,
    pub sack: bool,
    pub timestamps: bool,
    pub snd_mss: u16,
    pub rcv_mss: u16,
}

/// TCP_INFO of a connected socket, reduced to the negotiated options.
pub fn tcp_info_options(stream: &impl AsRawFd) -> Result<TcpInfoOptions, RepairError> {
    let fd = stream.as_raw_fd();
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` has `len` writable bytes.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    } != 0
    {
        return Err(RepairError::on_fd("TCP_INFO", fd));
    }
    let scales = info.tcpi_snd_rcv_wscale;
    Ok(TcpInfoOptions {
        window_scales: (info.tcpi_options & TCPI_OPT_WSCALE != 0)
            .then_some((scales & 0x0f, scales >> 4)),
        sack: info.tcpi_options & TCPI_OPT_SACK != 0,
        timestamps: info.tcpi_options & TCPI_OPT_TIMESTAMPS != 0,
        snd_mss: u16::try_from(info.tcpi_snd_mss).unwrap_or(u16::MAX),
        rcv_mss: u16::try_from(info.tcpi_rcv_mss).unwrap_or(u16::MAX),
    })
}

/// A listener on `addr` that may be bound before `addr` is local (IP_FREEBIND), keeps SYNs
/// for [`saved_syn`], and reuses the address of a previous life.
pub fn listener_on_foreign_address(
    addr: SocketAddrV4,
    backlog: i32,
) -> Result<TcpListener, RepairError> {
    let fail = |step| RepairError::last(step, addr, "*");
    // SAFETY: plain socket(2); the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail("socket"));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    if !setsockopt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one) {
        return Err(fail("SO_REUSEADDR"));
    }
    if !setsockopt(raw, libc::IPPROTO_IP, libc::IP_FREEBIND, &one) {
        return Err(fail("IP_FREEBIND"));
    }
    if !setsockopt(raw, libc::IPPROTO_TCP, libc::TCP_SAVE_SYN, &one) {
        return Err(fail("TCP_SAVE_SYN"));
    }
    let local = sockaddr(addr);
    // SAFETY: a valid sockaddr_in of the size passed.
    if unsafe {
        libc::bind(
            raw,
            &local as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(fail("bind"));
    }
    // SAFETY: listen(2) on our bound socket.
    if unsafe { libc::listen(raw, backlog) } != 0 {
        return Err(fail("listen"));
    }
    Ok(TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_headers_give_isn_and_options() {
        let mut syn = vec![
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let mut tcp = vec![
            0x9c, 0x40, 0, 80, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0xa0, 0x02,
        ];
        tcp.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
        tcp.extend_from_slice(&[
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        syn.extend_from_slice(&tcp);
        let parsed = parse_syn_headers(&syn).unwrap();
        assert_eq!(parsed.client_isn, 0xdeadbeef);
        assert_eq!(parsed.mss, Some(1460));
        assert_eq!(parsed.window_scale, Some(7));
        assert!(parsed.sack_permitted && parsed.timestamps);
    }

    #[test]
    fn lying_option_lengths_are_refused() {
        let mut syn = vec![
            0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let tcp = [
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xfa, 0xf0, 0, 0, 0, 0, 2, 9, 0,
            0,
        ];
        syn.extend_from_slice(&tcp);
        assert_eq!(parse_syn_headers(&syn), None);
        assert_eq!(parse_syn_headers(&syn[..30]), None);
        assert_eq!(parse_syn_headers(&[0x65; 40]), None);
    }
}
