//! The configuration writer: whatever valid `Config` the lab builds, `to_toml` writes a file
//! that `parse` reads back to the same value.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use steadfast_core::active_order::{DeliveryStrategy, ReadPolicy};
use steadfast_core::config::{
    parse, to_toml, Arp, Config, Control, Group, HealthCheck, HealthCheckKind, Member, Metrics,
    Mode, Notify, Protocol, Service, MAX_HEARTBEAT_INTERVAL_MS, MAX_MISS_COUNT,
};

fn exists(_: &Path) -> bool {
    true
}

fn read_back(cfg: &Config) -> Config {
    let text = to_toml(cfg);
    match parse(&text, "written.toml", &exists, Path::new("/nowhere")) {
        Ok(again) => again,
        Err(e) => panic!("the writer's output was refused:\n{e}\n--- file ---\n{text}"),
    }
}

/// Any text, including quotes, backslashes, newlines and non-ASCII: TOML strings must escape it.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,12}",
        any::<String>(),
        Just("quote\" back\\slash\nnew line\ttab é ✓".to_string()),
    ]
}

fn program() -> impl Strategy<Value = Vec<String>> {
    ("/[a-z/]{1,20}", proptest::collection::vec(text(), 0..3))
        .prop_map(|(program, args)| std::iter::once(program).chain(args).collect())
}

fn absolute_path() -> impl Strategy<Value = PathBuf> {
    "(/[a-zA-Z0-9 ._é-]{1,10}){1,4}".prop_map(PathBuf::from)
}

fn millis() -> impl Strategy<Value = Duration> {
    (1u64..=i64::MAX as u64).prop_map(Duration::from_millis)
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Unreplicated),
        Just(Mode::Simplex),
        Just(Mode::Duplex),
        Just(Mode::Active),
    ]
}

fn check() -> impl Strategy<Value = HealthCheck> {
    let kind = prop_oneof![
        (socket_addr(), text(), any::<u16>()).prop_map(|(target, path, expect_status)| {
            HealthCheckKind::Http {
                target,
                path,
                expect_status,
            }
        }),
        socket_addr().prop_map(|target| HealthCheckKind::Tcp { target }),
        program().prop_map(|command| HealthCheckKind::Exec { command }),
    ];
    (kind, millis(), millis(), 1u32.., 1u32..).prop_map(|(kind, interval, timeout, rise, fall)| {
        HealthCheck {
            kind,
            interval,
            timeout,
            rise,
            fall,
        }
    })
}

/// A valid configuration: distinct voter ids, this node among them, VIPs inside this member's
/// subnet, a witness or `two_node` for two members, at least one service on a member.
fn config() -> impl Strategy<Value = Config> {
    (
        proptest::collection::btree_set(any::<u16>(), 2..7),
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<[u8; 4]>(),
        0u8..=32,
        any::<bool>(),
    )
        .prop_flat_map(|(ids, with_witness, me, base, prefix_len, two_node)| {
            let ids: Vec<u16> = ids.into_iter().collect();
            let (member_ids, witness_id) = if with_witness {
                (ids[1..].to_vec(), Some(ids[0]))
            } else {
                (ids.clone(), None)
            };
            let node_id = ids[me.index(ids.len())];
            let members: Vec<Member> = member_ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let address = Ipv4Addr::from(u32::from_be_bytes(base).wrapping_add(i as u32));
                    Member::new(*id, address, prefix_len)
                })
                .collect();
            let witness = witness_id.map(|id| Member::new(id, Ipv4Addr::new(192, 0, 2, 9), 24));
            let two_node = two_node || (members.len() == 2 && witness.is_none());
            let local = members.iter().find(|m| m.id == node_id).cloned();
            let host_bits = 32 - u32::from(prefix_len);
            let vip = (any::<u32>(), any::<[u8; 4]>()).prop_map(move |(host, anywhere)| {
                match &local {
                    Some(local) => {
                        let mask = if host_bits == 32 {
                            0
                        } else {
                            u32::MAX << host_bits
                        };
                        let host_mask = !mask;
                        Ipv4Addr::from((u32::from(local.address) & mask) | (host & host_mask))
                    }
                    // A witness's services are not checked against any subnet.
                    None => Ipv4Addr::from(anywhere),
                }
            });
            let service = (
                text(),
                vip,
                "[a-z][a-z0-9.]{0,14}",
                proptest::collection::vec(1u16.., 1..4),
                mode(),
                socket_addr(),
                any::<bool>(),
                0u64..=1 << 40,
                (100u64..=86_400_000, 100u64..=86_400_000),
                (
                    (proptest::option::of(1u32..), proptest::option::of(1u32..)),
                    (
                        proptest::option::of(1u32..),
                        proptest::option::of(0u64..=1 << 40),
                        proptest::option::of(1000u64..=86_400_000),
                    ),
                ),
                (
                    proptest::sample::select(DeliveryStrategy::ALL.to_vec()),
                    proptest::sample::select(ReadPolicy::ALL.to_vec()),
                ),
            )
                .prop_map(
                    |(
                        name,
                        vip,
                        interface,
                        ports,
                        mode,
                        backend,
                        raw_tcp,
                        stream_above,
                        (header_ms, idle_ms),
                        (
                            (max_connections, max_connections_per_source),
                            (
                                max_half_open_per_source,
                                max_request_bytes_held,
                                half_open_lifetime_ms,
                            ),
                        ),
                        (delivery, read_policy),
                    )| {
                        Service {
                            name,
                            vip,
                            interface,
                            ports,
                            mode,
                            backend,
                            // Simplex and duplex frame HTTP, active mode RESP: only
                            // unreplicated carries raw TCP.
                            protocol: match mode {
                                Mode::Active => Protocol::Resp,
                                Mode::Unreplicated if raw_tcp => Protocol::Tcp,
                                _ => Protocol::Http,
                            },
                            stream_replies_above: stream_above,
                            client_header_timeout: Duration::from_millis(header_ms),
                            client_idle_timeout: Duration::from_millis(idle_ms),
                            max_connections,
                            max_connections_per_source,
                            max_half_open_per_source,
                            max_request_bytes_held,
                            half_open_lifetime_ms,
                            // Active mode's own settings: always there in that mode (the
                            // reader fills in the defaults), never in the others.
                            delivery: (mode == Mode::Active).then_some(delivery),
                            read_policy: (mode == Mode::Active).then_some(read_policy),
                        }
                    },
                );
            let min_services = if witness_id == Some(node_id) { 0 } else { 1 };
            let group = (
                // A group name names nftables tables: the characters the reader allows.
                "[A-Za-z0-9._-]{1,64}",
                absolute_path(),
                1u16..,
                (1u64..=MAX_HEARTBEAT_INTERVAL_MS).prop_map(Duration::from_millis),
                2u32..=MAX_MISS_COUNT,
                0u64..=i32::MAX as u64,
                any::<bool>(),
            )
                .prop_map(
                    move |(
                        name,
                        auth_key_file,
                        port,
                        heartbeat_interval,
                        miss_count,
                        grace_beyond_lease,
                        preempt,
                    )| {
                        Group {
                            name,
                            auth_key_file,
                            port,
                            heartbeat_interval,
                            miss_count,
                            holder_grace: heartbeat_interval * miss_count
                                + Duration::from_millis(grace_beyond_lease),
                            replication_stall: Duration::from_millis(
                                200 + grace_beyond_lease % 10_000,
                            ),
                            replication_encryption: grace_beyond_lease % 3 != 0,
                            preempt,
                            two_node,
                            members: members.clone(),
                            witness: witness.clone(),
                        }
                    },
                );
            let arp = (any::<u32>(), millis(), any::<bool>()).prop_map(
                |(gratuitous_count, gratuitous_spacing, refresh_on_heal)| Arp {
                    gratuitous_count,
                    gratuitous_spacing,
                    refresh_on_heal,
                },
            );
            let notify = proptest::option::of(
                (program(), millis()).prop_map(|(command, timeout)| Notify { command, timeout }),
            );
            (
                group,
                proptest::collection::vec(service, min_services..3),
                proptest::collection::vec(check(), 0..3),
                arp,
                notify,
                absolute_path(),
                proptest::option::of(socket_addr().prop_map(|listen| Metrics { listen })),
            )
                .prop_map(
                    move |(group, services, health_checks, arp, notify, socket, metrics)| Config {
                        node_id,
                        group,
                        services,
                        health_checks,
                        arp,
                        notify,
                        control: Control { socket },
                        metrics,
                        relay: None,
                    },
                )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn every_valid_config_round_trips(cfg in config()) {
        prop_assert_eq!(read_back(&cfg), cfg);
    }
}

#[test]
fn a_witness_file_round_trips_without_services() {
    let cfg = Config {
        node_id: 9,
        group: Group {
            name: "web".into(),
            auth_key_file: "/etc/steadfast/key".into(),
            port: 7410,
            heartbeat_interval: Duration::from_millis(10),
            miss_count: 4,
            holder_grace: Duration::from_millis(400),
            replication_stall: Duration::from_millis(750),
            replication_encryption: false,
            preempt: true,
            two_node: false,
            members: vec![
                Member::new(1, Ipv4Addr::new(10, 77, 0, 11), 24),
                Member::new(2, Ipv4Addr::new(10, 77, 0, 12), 24),
            ],
            witness: Some(Member::new(9, Ipv4Addr::new(10, 77, 0, 19), 24)),
        },
        services: vec![],
        health_checks: vec![],
        arp: Arp::default(),
        notify: None,
        control: Control {
            socket: "/run/steadfast/w.sock".into(),
        },
        metrics: None,
        relay: None,
    };
    let text = to_toml(&cfg);
    assert!(!text.contains("service"), "{text}");
    assert!(!text.contains("notify"), "{text}");
    assert!(text.contains("address = \"10.77.0.19/24\""), "{text}");
    assert_eq!(read_back(&cfg), cfg);
}
