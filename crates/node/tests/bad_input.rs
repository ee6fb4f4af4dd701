//! Bad input at a running node: garbage, forged (wrong key, unknown sender, spoofed source) and
//! replayed heartbeat frames are dropped and counted, and nobody changes role. A broken
//! configuration is refused with a message naming the field. Needs root for the lab part.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::Lab;
use steadfast_core::frame::{encode, AuthKey};
use steadfast_core::protocol::Envelope;
use steadfast_core::{Message, Role};
use steadfast_lab::BackendKind;

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
    let heartbeat = |sender, counter, role| Envelope {
        sender,
        epoch: u64::MAX / 2,
        counter,
        message: Message::Heartbeat {
            role,
            healthy: true,
            has_quorum: true,
            seq: 1,
            following: None,
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

    std::thread::sleep(Duration::from_millis(300));
    let after = lab.daemon_status("n1");
    assert!(counter(&after, "dropped_malformed") >= counter(&before, "dropped_malformed") + 90);
    assert!(counter(&after, "dropped_bad_mac") >= counter(&before, "dropped_bad_mac") + 50);
    assert!(
        counter(&after, "dropped_unknown_node") >= counter(&before, "dropped_unknown_node") + 50
    );
    assert!(counter(&after, "dropped_replay") >= counter(&before, "dropped_replay") + 50);
    assert_eq!(after["role"], "primary", "n1 must not change role: {after}");
    assert_eq!(after["epoch"], before["epoch"]);
    assert_eq!(
        counter(&after, "role_changes"),
        counter(&before, "role_changes")
    );
    assert_eq!(lab.holders(), vec!["n1"]);
    let n2 = lab.daemon_status("n2");
    assert_eq!(n2["role"], "backup");
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
    let out = Command::new(common::exe())
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
