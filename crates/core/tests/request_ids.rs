//! The connection ids of `Steadfast-Request-Id`: the same for a connection on every member of a
//! group, unpredictable without the group key, and not something a client can aim at another
//! client's by choosing its address, port and ISN.

use std::collections::HashSet;
use std::net::SocketAddrV4;

use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::image::FourTuple;
use steadfast_core::reply_log::RequestIdKey;

fn key(bytes: &[u8]) -> RequestIdKey {
    RequestIdKey::derive(&AuthKey::new(bytes).expect("a long enough key"))
}

fn tuple(client: &str) -> FourTuple {
    FourTuple {
        client: client.parse::<SocketAddrV4>().unwrap(),
        server: "10.0.0.100:80".parse().unwrap(),
    }
}

const GROUP: &[u8] = b"the group key of this test, long enough";

#[test]
fn every_member_gives_a_connection_the_same_id() {
    // Two members read the same key file; the id depends on nothing else they hold.
    let (primary, backup) = (key(GROUP), key(GROUP));
    let connection = tuple("10.0.0.2:40000");
    assert_eq!(
        primary.connection_id(&connection, 12345),
        backup.connection_id(&connection, 12345)
    );
    // The server side does not enter it: the backup may see the VIP on another port mapping.
    let mut elsewhere = connection;
    elsewhere.server.set_port(8080);
    assert_eq!(
        primary.connection_id(&connection, 12345),
        primary.connection_id(&elsewhere, 12345)
    );
}

#[test]
fn address_port_isn_and_group_key_each_change_the_id() {
    let ids = key(GROUP);
    let base = ids.connection_id(&tuple("10.0.0.2:40000"), 12345);
    assert_ne!(base, ids.connection_id(&tuple("10.0.0.3:40000"), 12345));
    assert_ne!(base, ids.connection_id(&tuple("10.0.0.2:40001"), 12345));
    assert_ne!(base, ids.connection_id(&tuple("10.0.0.2:40000"), 12346));
    let other_group = key(b"another group's key, also long enough");
    assert_ne!(
        base,
        other_group.connection_id(&tuple("10.0.0.2:40000"), 12345)
    );
}

/// The ids used to be the ISN beside a mix of address and port that clients in different /16s
/// could make equal by choosing their ports (10.1.0.5:p and 10.2.0.5:p^3 collided at the same
/// ISN). Keyed, such pairs and a whole range of ports and ISNs give distinct ids.
#[test]
fn chosen_addresses_ports_and_isns_give_distinct_ids() {
    let ids = key(GROUP);
    let mut connections = HashSet::new();
    for port in 1024u16..1024 + 2000 {
        for (a, b) in [(1u8, 2u8), (1, 3), (200, 201)] {
            let first = format!("10.{a}.0.5:{port}");
            let second = format!("10.{b}.0.5:{}", port ^ u16::from(a ^ b));
            for isn in [0u32, 1, u32::MAX] {
                connections.insert((first.clone(), isn));
                connections.insert((second.clone(), isn));
            }
        }
    }
    let distinct: HashSet<u64> = connections
        .iter()
        .map(|(client, isn)| ids.connection_id(&tuple(client), *isn))
        .collect();
    assert!(connections.len() > 25_000, "{}", connections.len());
    assert_eq!(
        distinct.len(),
        connections.len(),
        "no two connections share an id"
    );
}

#[test]
fn the_key_never_reaches_a_log() {
    let shown = format!("{:?}", key(GROUP));
    assert!(!shown.contains("group key"), "{shown}");
    assert_eq!(shown, "RequestIdKey(<secret>)");
}
