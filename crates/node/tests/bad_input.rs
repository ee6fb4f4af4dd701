//! Bad input at a running node: garbage, forged (wrong key, unknown sender, spoofed source) and
//! replayed heartbeat frames are dropped and counted, and nobody changes role. A broken
//! configuration is refused with a message naming the field. Needs root for the lab part.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::Lab;
use steadfast_core::election_messages::Envelope;
use steadfast_core::heartbeat_wire::{encode, AuthKey};
use steadfast_core::replication_seal::{self, LinkEnd, Protection, Sealer};
use steadfast_core::{Message, Role};
use steadfast_lab::{BackendKind, Mode};

const N1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const HEARTBEAT_PORT: u16 = 7410;

fn send_from(namespace: &str, frames: Vec<Vec<u8>>) {
    steadfast_lab::run_in_namespace(namespace, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for frame in frames {
            socket
                .send_to(&frame, SocketAddr::new(N1.into(), HEARTBEAT_PORT))
                .expect("send");
        }
    })
    .expect("enter namespace");
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} in {status}"))
}

#[test]
fn garbage_forged_and_replayed_frames_are_dropped_and_counted() {
    let lab = Lab::up("bad", 2, true, BackendKind::Builtin, None);
    assert!(lab.wait_holder("n1", Duration::from_secs(5)));
    let key_bytes = std::fs::read(lab.info.state_dir.join("key")).expect("lab key");
    let key = AuthKey::from_file_contents(&key_bytes).expect("key");
    let wrong_key = AuthKey::from_file_contents(b"not the group key, but long enough").unwrap();
    let before = lab.daemon_status("n1");
    let n1_incarnation = before["incarnation"].as_u64().expect("n1's incarnation");
    let heartbeat = |sender, counter, role| Envelope {
        sender,
        epoch: u64::MAX / 2,
        counter,
        incarnation: 1,
        echo: n1_incarnation,
        message: Message::Heartbeat {
            role,
            healthy: true,
            has_quorum: true,
            seq: 1,
            following: None,
            holds_connections: false,
            starting: false,
        },
    };

    // Garbage of every length, from the client.
    let garbage: Vec<Vec<u8>> = (0..100u32)
        .map(|i| (0..(i % 90)).map(|j| (i * 31 + j * 7) as u8).collect())
        .collect();
    send_from(&lab.info.client_ns, garbage);
    // A newer-epoch "primary" signed with the wrong key: would make n1 step down if accepted.
    let forged: Vec<Vec<u8>> = (0..50)
        .map(|i| encode(&heartbeat(2, u64::MAX - 100 + i, Role::Primary), &wrong_key))
        .collect();
    send_from(&lab.info.client_ns, forged);
    // Right key, but from the client's address claiming to be node 2: spoofed sender.
    let spoofed: Vec<Vec<u8>> = (0..50)
        .map(|i| encode(&heartbeat(2, u64::MAX - 100 + i, Role::Primary), &key))
        .collect();
    send_from(&lab.info.client_ns, spoofed);
    // Right key, from the witness's own address, but with an old counter: a replay.
    let replayed: Vec<Vec<u8>> = (0..50)
        .map(|i| encode(&heartbeat(100, 1 + i, Role::Witness), &key))
        .collect();
    send_from(&format!("{}-w", lab.name()), replayed);

    // Every frame sent is counted once the daemon has read it.
    let all_counted = |after: &serde_json::Value| {
        counter(after, "dropped_malformed") >= counter(&before, "dropped_malformed") + 90
            && counter(after, "dropped_bad_mac") >= counter(&before, "dropped_bad_mac") + 50
            && counter(after, "dropped_unknown_node")
                >= counter(&before, "dropped_unknown_node") + 50
            && counter(after, "dropped_replay") >= counter(&before, "dropped_replay") + 50
    };
    assert!(
        wait_for(Duration::from_secs(5), || all_counted(
            &lab.daemon_status("n1")
        )),
        "every bad frame is dropped and counted: before {}, after {}",
        before["counters"],
        lab.daemon_status("n1")["counters"]
    );
    let after = lab.daemon_status("n1");
    assert_eq!(after["role"], "primary", "n1 must not change role: {after}");
    assert_eq!(after["epoch"], before["epoch"]);
    assert_eq!(
        counter(&after, "role_changes"),
        counter(&before, "role_changes")
    );
    assert_eq!(lab.holders(), vec!["n1"]);
    let n2 = lab.daemon_status("n2");
    assert_eq!(n2["role"], "backup");

    // A frame recorded before n1 started names an incarnation of n1 other than its current one.
    // With n2's daemon down, frames from n2's own address with counters newer than any n1 has
    // seen from n2: those that echo another incarnation are refused, one that echoes n1's is
    // taken (its old epoch keeps n1 as it is).
    steadfast_lab::crash(lab.name(), "n2", steadfast_lab::CrashKind::Process).expect("crash n2");
    let before = lab.daemon_status("n1");
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let from_n2 = |i: u64, echo: u64| {
        encode(
            &Envelope {
                sender: 2,
                epoch: 1,
                counter: now_micros + i,
                incarnation: 42,
                echo,
                message: Message::Release,
            },
            &key,
        )
    };
    let mut recorded: Vec<Vec<u8>> = (0..20)
        .map(|i| from_n2(i, n1_incarnation.wrapping_add(1 + i)))
        .collect();
    recorded.push(from_n2(100, n1_incarnation));
    send_from(&format!("{}-n2", lab.name()), recorded);
    assert!(
        wait_for(Duration::from_secs(5), || {
            let after = lab.daemon_status("n1");
            counter(&after, "dropped_unfresh") == counter(&before, "dropped_unfresh") + 20
                && counter(&after, "frames_received") > counter(&before, "frames_received")
                && counter(&after, "dropped_old_epoch") > counter(&before, "dropped_old_epoch")
        }),
        "frames naming another incarnation are refused and counted, and the one naming n1's \
         is refused for its stale epoch: before {}, after {}",
        before["counters"],
        lab.daemon_status("n1")["counters"]
    );
    // n2 restarts (a new incarnation, which n1 learns from its first heartbeats) and is back
    // in the group as its backup.
    steadfast_lab::heal(lab.name(), "n2").expect("heal n2");
    assert!(
        wait_for(Duration::from_secs(5), || lab.daemon_status("n2")["role"]
            == "backup"
            && lab.daemon_status("n2")["primary"] == 1),
        "n2 follows n1 again: {}",
        lab.daemon_status("n2")
    );
    assert_eq!(lab.daemon_status("n1")["role"], "primary");
}

#[test]
fn broken_config_is_refused_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("steadfast-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("n1.toml");
    std::fs::write(
        &file,
        "node_id = 1\n[group]\nauth_key_file = \"missing-key\"\n\n[[group.member]]\nid = 1\naddress = \"10.1.0.1/24\"\n\n[[service]]\nname = \"web\"\nvip = \"10.9.0.1\"\nports = [80]\nmode = \"unreplicated\"\nbackend = \"127.0.0.1:80\"\n",
    )
    .unwrap();
    let out = Command::new(common::daemon_exe())
        .args(["check-config", file.to_str().unwrap()])
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!out.status.success(), "a broken config must be refused");
    assert!(
        stderr.contains("service[0].vip"),
        "names the VIP field: {stderr}"
    );
    assert!(
        stderr.contains("group.auth_key_file"),
        "names the key file: {stderr}"
    );
    assert!(stderr.contains("n1.toml:"), "names the file: {stderr}");
}

/// Removes its directory when dropped, so a failing test leaves nothing behind.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The group key authenticates every message between the nodes: check-config (which loads
/// the configuration as the daemon does) refuses a key file other users may read, naming the
/// file, its mode and the fix, and accepts it once it is its owner's alone.
#[test]
fn a_group_key_that_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir =
        TempDir(std::env::temp_dir().join(format!("steadfast-keymode-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let key = dir.0.join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let file = dir.0.join("n1.toml");
    std::fs::write(
        &file,
        "node_id = 1\n[group]\nauth_key_file = \"key\"\ntwo_node = true\n\n[[group.member]]\nid = 1\naddress = \"10.1.0.1/24\"\n\n[[group.member]]\nid = 2\naddress = \"10.1.0.2/24\"\n\n[[service]]\nname = \"web\"\nvip = \"10.1.0.100\"\nports = [80]\nmode = \"unreplicated\"\nbackend = \"127.0.0.1:80\"\n",
    )
    .unwrap();
    let check = || {
        let out = Command::new(common::daemon_exe())
            .args(["check-config", file.to_str().unwrap()])
            .output()
            .expect("run check-config");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, stderr) = check();
    assert!(!ok, "a world-readable key is refused");
    for needle in [
        "group.auth_key_file",
        key.to_str().unwrap(),
        "0644",
        "chmod 600",
    ] {
        assert!(stderr.contains(needle), "names {needle:?}: {stderr}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, stderr) = check();
    assert!(ok, "a key only its owner may read is accepted: {stderr}");
}

/// An Ethernet + IPv4 + TCP frame from the client to the VIP's port 80, correct in every
/// field; the cases below break one field each.
fn client_frame(dst: [u8; 6], src: [u8; 6], tcp_options: &[u8]) -> Vec<u8> {
    let vip = steadfast_lab::topology::VIP.octets();
    let client = Ipv4Addr::new(10, 77, 0, 2).octets();
    let tcp_len = 20 + tcp_options.len();
    let total = 20 + tcp_len;
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    f.extend_from_slice(&client);
    f.extend_from_slice(&vip);
    f.extend_from_slice(&[0xc3, 0x50, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0]);
    f.push(((tcp_len / 4) as u8) << 4);
    f.extend_from_slice(&[0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(tcp_options);
    set_ip_checksum(&mut f);
    f
}

fn set_ip_checksum(frame: &mut [u8]) {
    frame[24] = 0;
    frame[25] = 0;
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let mut sum: u32 = 0;
    for pair in frame[14..14 + ihl.min(frame.len() - 14)].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !(sum as u16);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC"))
        .collect();
    bytes.try_into().expect("six bytes")
}

/// Sends raw Ethernet frames out of a namespace's service interface (AF_PACKET).
fn send_raw_frames(namespace: &str, frames: Vec<Vec<u8>>) {
    steadfast_lab::run_in_namespace(namespace, move || {
        let ifindex = nix::net::if_::if_nametoindex(steadfast_lab::topology::HOST_INTERFACE)
            .expect("interface index");
        // SAFETY: a plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "socket(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        for frame in frames {
            // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = ifindex as i32;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: the buffer and address are live for the call.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                sent,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    })
    .expect("enter namespace");
}

fn plane_counter(status: &serde_json::Value, name: &str) -> u64 {
    status["data_plane"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("data plane counter {name} in {status}"))
}

/// Duplex bad input. At the backup's logger: frames whose IPv4 or TCP headers lie (lengths,
/// offsets, checksum, options) are dropped and counted by reason, and none is forwarded. On
/// the replication channel: a stranger, garbage, a silent peer, a forged proof and an older
/// epoch are refused and counted, and the real primary's protection goes on untouched.
#[test]
fn duplex_refuses_malformed_client_frames_and_bad_replication_peers() {
    let lab = Lab::up_in_mode("bd", 2, true, BackendKind::Builtin, None, Mode::Duplex);
    let primary = lab.holders().pop().expect("a primary");
    let backup = if primary == "n1" { "n2" } else { "n1" };
    assert!(
        wait_for(Duration::from_secs(10), || plane_counter(
            &lab.daemon_status(&primary),
            "backups_joined"
        ) > 0),
        "a backup joins"
    );
    let backup_ns = format!("{}-{backup}", lab.name());
    let primary_ns = format!("{}-{primary}", lab.name());
    let backup_mac = parse_mac(&common::mac_of(&backup_ns));
    let client_mac = parse_mac(&common::mac_of(&lab.info.client_ns));

    // The logger.
    let good = client_frame(backup_mac, client_mac, &[]);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    let mut long_total = good.clone();
    long_total[17] = 200; // total length beyond the frame
    set_ip_checksum(&mut long_total);
    cases.push(long_total);
    let mut bad_checksum = good.clone();
    bad_checksum[25] ^= 0xff;
    cases.push(bad_checksum);
    let mut small_offset = good.clone();
    small_offset[46] = 4 << 4; // TCP data offset below 5 words
    cases.push(small_offset);
    let mut big_offset = good.clone();
    big_offset[46] = 15 << 4; // TCP header beyond the segment
    cases.push(big_offset);
    // An MSS option claiming 10 bytes inside a 4-byte option area.
    cases.push(client_frame(backup_mac, client_mac, &[2, 10, 5, 0xb4]));
    // An option running past the header.
    cases.push(client_frame(backup_mac, client_mac, &[1, 1, 1, 8]));
    let before = lab.daemon_status(backup);
    send_raw_frames(&lab.info.client_ns, cases.clone());
    let dropped_before = plane_counter(&before, "frames_dropped");
    assert!(
        wait_for(Duration::from_secs(5), || plane_counter(
            &lab.daemon_status(backup),
            "frames_dropped"
        ) >= dropped_before
            + cases.len() as u64),
        "every malformed frame is dropped and counted: {}",
        lab.daemon_status(backup)["data_plane"]
    );
    let after = lab.daemon_status(backup);
    assert_eq!(
        plane_counter(&after, "frames_forwarded"),
        plane_counter(&before, "frames_forwarded"),
        "none is forwarded: {}",
        after["data_plane"]
    );
    let reasons = after["data_plane"]["drop_reasons"]
        .as_object()
        .expect("drop reasons");
    assert!(
        reasons.len() >= 4,
        "drops are counted by reason: {reasons:?}"
    );

    // The replication channel.
    let backup_ip = std::net::IpAddr::from(Ipv4Addr::new(
        10,
        77,
        0,
        10 + backup[1..].parse::<u8>().unwrap(),
    ));
    let replication = SocketAddr::new(backup_ip, HEARTBEAT_PORT + 1);
    let refused_before = plane_counter(&lab.daemon_status(backup), "handshakes_refused");
    let forged_before = plane_counter(&lab.daemon_status(backup), "forged_frames");
    let old_before = plane_counter(&lab.daemon_status(backup), "replication_old_epoch");
    // A stranger (the client) and garbage from the primary's own address.
    speak_replication(&lab.info.client_ns, replication, Speech::Garbage);
    speak_replication(&primary_ns, replication, Speech::Garbage);
    // A peer that connects and says nothing: refused at the handshake timeout.
    speak_replication(&primary_ns, replication, Speech::Silence);
    let key_bytes = std::fs::read(lab.info.state_dir.join("key")).expect("lab key");
    let key = AuthKey::from_file_contents(&key_bytes).expect("key");
    let wrong_key = AuthKey::from_file_contents(b"not the group key, but long enough").unwrap();
    let primary_id: u16 = primary[1..].parse().unwrap();
    let epoch = lab.daemon_status(backup)["epoch"].as_u64().unwrap();
    speak_replication(
        &primary_ns,
        replication,
        Speech::Handshake {
            key: wrong_key,
            node: primary_id,
            epoch,
        },
    );
    speak_replication(
        &primary_ns,
        replication,
        Speech::Handshake {
            key,
            node: primary_id,
            epoch: 1,
        },
    );
    let status = lab.daemon_status(backup);
    assert!(
        plane_counter(&status, "handshakes_refused") >= refused_before + 4,
        "stranger, garbage, silence and forgery are refused: {}",
        status["data_plane"]
    );
    assert_eq!(
        plane_counter(&status, "forged_frames"),
        forged_before + 1,
        "{}",
        status["data_plane"]
    );
    assert_eq!(
        plane_counter(&status, "replication_old_epoch"),
        old_before + 1,
        "{}",
        status["data_plane"]
    );
    let primary_status = lab.daemon_status(&primary);
    assert_eq!(plane_counter(&primary_status, "backups_joined"), 1);
    assert_eq!(plane_counter(&primary_status, "backup_losses"), 0);
    // The group still serves, protected.
    assert_vip_answers(&lab);

    // A peer that holds the key (an insider, or a primary's stream tampered with on the way):
    // after the handshake every frame must carry its tag, in order. Each of these streams
    // takes the backup from the real primary for a moment (a valid handshake from its address
    // is a newer stream of it); the primary links again.
    let forged_before = plane_counter(&lab.daemon_status(backup), "forged_frames");
    let old_before = plane_counter(&lab.daemon_status(backup), "replication_old_epoch");
    let joined_before = plane_counter(&lab.daemon_status(&primary), "backups_joined");
    let tampers = [
        Tamper::FlippedBit,
        Tamper::Replayed,
        Tamper::Reordered,
        Tamper::Unsealed,
        Tamper::StaleEpoch,
    ];
    for (i, tamper) in tampers.into_iter().enumerate() {
        speak_replication(
            &primary_ns,
            replication,
            Speech::Sealed {
                key: AuthKey::from_file_contents(&key_bytes).unwrap(),
                node: primary_id,
                epoch: lab.daemon_status(backup)["epoch"].as_u64().unwrap(),
                incarnation: 0x5eed_0000 + i as u64,
                tamper,
            },
        );
    }
    let status = lab.daemon_status(backup);
    assert_eq!(
        plane_counter(&status, "forged_frames"),
        forged_before + 4,
        "a flipped bit, a replay, a reordering and an unsealed frame are refused as forged: {}",
        status["data_plane"]
    );
    assert_eq!(
        plane_counter(&status, "replication_old_epoch"),
        old_before + 1,
        "a sealed frame of an older epoch is refused: {}",
        status["data_plane"]
    );
    // The backup hung up on the real primary's stream when each of these replaced it; the
    // primary links again, and serves meanwhile.
    assert_vip_answers(&lab);
    assert!(
        wait_for(Duration::from_secs(10), || plane_counter(
            &lab.daemon_status(&primary),
            "backups_joined"
        ) > joined_before),
        "the primary links its backup again: {}",
        lab.daemon_status(&primary)["data_plane"]
    );
}

/// A request to the VIP from the client gets its 200.
fn assert_vip_answers(lab: &Lab) {
    let reply = steadfast_lab::http_get_in_namespace(
        &lab.info.client_ns,
        SocketAddr::new(lab.info.vip.into(), lab.info.port),
        "/uuid",
        Duration::from_secs(2),
    )
    .expect("the VIP answers");
    assert_eq!(reply.status, 200);
}

enum Speech {
    Garbage,
    Silence,
    Handshake {
        key: AuthKey,
        node: u16,
        epoch: u64,
    },
    /// A valid handshake, the backup's first sealed frame read, then `tamper`.
    Sealed {
        key: AuthKey,
        node: u16,
        epoch: u64,
        incarnation: u64,
        tamper: Tamper,
    },
}

/// What a peer with the key does to its sealed frames.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// One bit of a sealed frame's body flipped.
    FlippedBit,
    /// A sealed frame sent twice.
    Replayed,
    /// Two sealed frames sent in the other order.
    Reordered,
    /// A plain frame with a tag of zeros where a sealed one is due.
    Unsealed,
    /// A well-sealed frame from the epoch before the stream's.
    StaleEpoch,
}

/// Opens a replication stream to `to` from `namespace` and says `speech`; returns once the
/// backup has hung up (or 5 s passed).
fn speak_replication(namespace: &str, to: SocketAddr, speech: Speech) {
    use std::io::{Read, Write};
    use steadfast_core::replication_wire::encode_sealed;
    use steadfast_core::replication_wire::{encode as encode_frame, ReplicationFrame};
    steadfast_lab::run_in_namespace(namespace, move || {
        let mut stream =
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        match speech {
            Speech::Garbage => {
                let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
                let _ = stream.write_all(&garbage);
            }
            Speech::Silence => {}
            Speech::Handshake { key, node, epoch } => {
                handshake(&mut stream, &key, node, epoch, 1);
            }
            Speech::Sealed {
                key,
                node,
                epoch,
                incarnation,
                tamper,
            } => {
                let (mut sealer, mut reader) =
                    handshake(&mut stream, &key, node, epoch, incarnation);
                // The backup's first sealed frame opens with this stream's keys.
                let ready = next_frame(&mut stream, &mut reader);
                assert!(
                    matches!(ready, Some(ReplicationFrame::BackupReady { .. })),
                    "{ready:?}"
                );
                let closed = |port| ReplicationFrame::Closed {
                    tuple: steadfast_core::image::FourTuple {
                        client: std::net::SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 250), port),
                        server: std::net::SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 100), 80),
                    },
                };
                let mut seal = |frame: &ReplicationFrame, epoch: u64| {
                    let mut out = Vec::new();
                    encode_sealed(frame, epoch, &mut sealer, &mut out).unwrap();
                    out
                };
                let out = match tamper {
                    Tamper::FlippedBit => {
                        let mut forged = seal(&closed(1000), epoch);
                        forged[15] ^= 0x10;
                        forged
                    }
                    Tamper::Replayed => {
                        let frame = seal(&closed(1000), epoch);
                        [frame.clone(), frame].concat()
                    }
                    Tamper::Reordered => {
                        let first = seal(&closed(1000), epoch);
                        let second = seal(&closed(1001), epoch);
                        [second, first].concat()
                    }
                    Tamper::Unsealed => {
                        let mut plain = Vec::new();
                        encode_frame(&closed(1000), epoch, &mut plain);
                        plain.extend_from_slice(&[0; 16]);
                        let len = (plain.len() - 4) as u32;
                        plain[..4].copy_from_slice(&len.to_be_bytes());
                        plain
                    }
                    Tamper::StaleEpoch => seal(&closed(1000), epoch - 1),
                };
                stream.write_all(&out).expect("the tampered frames");
                if let Tamper::StaleEpoch = tamper {
                    // Refused and counted, but no reason to hang up: this end does.
                    return;
                }
            }
        }
        // The backup hangs up on every one of these.
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                // Closing with our bytes unread makes its kernel send a reset: a hang-up too.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the backup did not hang up: {e}"),
            }
        }
    })
    .expect("enter namespace");
}

/// Says `Hello` and proves `key` as node `node` of epoch `epoch` (a primary's attempt of
/// process `incarnation`); returns this end's sealer and a reader that opens the backup's
/// sealed frames, whether or not the backup accepted.
fn handshake(
    stream: &mut std::net::TcpStream,
    key: &AuthKey,
    node: u16,
    epoch: u64,
    incarnation: u64,
) -> (Sealer, steadfast_core::replication_wire::FrameReader) {
    use std::io::Write;
    use steadfast_core::replication_wire::{
        encode as encode_frame, handshake_proof, FrameReader, LinkAttempt, ReplicationFrame,
        NONCE_LEN,
    };
    let mut nonce = [7u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&incarnation.to_be_bytes());
    let attempt = LinkAttempt {
        incarnation,
        number: 1,
    };
    let mut out = Vec::new();
    encode_frame(
        &ReplicationFrame::Hello {
            node,
            nonce,
            attempt,
            protection: Protection::Encrypted,
        },
        epoch,
        &mut out,
    );
    stream.write_all(&out).expect("hello");
    let mut reader = FrameReader::new();
    let (peer, peer_nonce) = match next_frame(stream, &mut reader) {
        Some(ReplicationFrame::Hello { node, nonce, .. }) => (node, nonce),
        other => panic!("expected a hello, got {other:?}"),
    };
    out.clear();
    encode_frame(
        &ReplicationFrame::Proof {
            mac: handshake_proof(key, node, attempt, &nonce, &peer_nonce),
        },
        epoch,
        &mut out,
    );
    stream.write_all(&out).expect("proof");
    // The backup's proof is the last plain frame; one refusing this end hangs up after it.
    if let Some(frame) = next_frame(stream, &mut reader) {
        assert!(
            matches!(frame, ReplicationFrame::Proof { .. }),
            "{}",
            frame.label()
        );
    }
    let (sealer, opener) = replication_seal::channel(
        key,
        Protection::Encrypted,
        &LinkEnd {
            node,
            nonce,
            attempt,
        },
        &LinkEnd {
            node: peer,
            nonce: peer_nonce,
            attempt: LinkAttempt::NONE,
        },
    );
    reader.open_with(opener);
    (sealer, reader)
}

/// The backup's next frame on `stream`, or `None` once it hung up.
fn next_frame(
    stream: &mut std::net::TcpStream,
    reader: &mut steadfast_core::replication_wire::FrameReader,
) -> Option<steadfast_core::replication_wire::ReplicationFrame> {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    loop {
        if let Some((_, frame)) = reader.next_frame().expect("the backup's frames") {
            return Some(frame);
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => reader.push(&buf[..n]),
            _ => return None,
        }
    }
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Active mode's `delivery` and `read_policy`: `check-config` shows what the group will run
/// (the defaults when left out), and refuses a misspelled value naming file, line and field.
/// Needs no root.
#[test]
fn check_config_shows_and_checks_active_modes_choices() {
    use std::os::unix::fs::PermissionsExt;
    let dir =
        TempDir(std::env::temp_dir().join(format!("steadfast-activecfg-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let key = dir.0.join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = dir.0.join("n1.toml");
    let check = |choices: &str| {
        std::fs::write(
            &file,
            format!(
                "node_id = 1\n[group]\nauth_key_file = \"key\"\ntwo_node = true\n\n\
                 [[group.member]]\nid = 1\naddress = \"10.1.0.1/24\"\n\n[[group.member]]\n\
                 id = 2\naddress = \"10.1.0.2/24\"\n\n[[service]]\nname = \"cache\"\n\
                 vip = \"10.1.0.100\"\nports = [6379]\nmode = \"active\"\n\
                 backend = \"127.0.0.1:6379\"\n{choices}"
            ),
        )
        .unwrap();
        let out = Command::new(common::daemon_exe())
            .args(["check-config", file.to_str().unwrap()])
            .output()
            .expect("run check-config");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = check("");
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "service cache: mode active, delivery = \"best-effort\", read_policy = \"with-primary\""
        ),
        "the defaults shown: {out}"
    );
    let (ok, out, err) = check("delivery = \"safe\"\nread_policy = \"without-primary\"\n");
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "service cache: mode active, delivery = \"safe\", read_policy = \"without-primary\""
        ),
        "the choices shown: {out}"
    );
    let (ok, _, err) = check("delivery = \"safe-ish\"\n");
    assert!(!ok, "a misspelled delivery is refused");
    assert!(
        err.contains("n1.toml:20:12: service[0].delivery: unknown value \"safe-ish\"")
            && err.contains("expected \"best-effort\" or \"safe\""),
        "{err}"
    );
}
