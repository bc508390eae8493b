//! Who is calling: the bridge port the kernel stamped the connection with, checked
//! against the inventory, never the source address alone.
//!
//! The bridge table marks every metadata packet with the interface index of the bridge
//! port it entered by (the container's own veth), and the DNAT rule copies that mark
//! onto the connection; [`Origins`] reads it back for each accepted connection. A
//! container can forge its source address, and even its MAC, but not the port its
//! frames enter the bridge by. So a caller is the container whose port the connection
//! came in by, and only if the source address is that container's own on that network;
//! an address that belongs to another container is refused, never served as the other
//! container.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::docker::{Endpoint, Inventory};

pub mod origin;

pub use origin::{ConntrackOrigins, EveryoneIsHost, Origin, Origins};

/// Who the caller is, for policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Container(Arc<Endpoint>),
    Host,
    /// No container owns the port (or Docker is unreachable): the unknown-caller policy.
    Unknown,
    /// The source address is not the address of the container on that port: refused.
    Forged {
        port_owner: Arc<Endpoint>,
        claimed: IpAddr,
    },
    /// Docker has not said in time who owns the port: answer 503 and let the SDK retry.
    NotYetReported,
}

/// What one look at the inventory says. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Decided(Caller),
    /// Not known yet: worth waiting for a fresher inventory.
    Wait,
}

/// Decides from one inventory.
pub fn lookup(inv: Option<&Inventory>, origin: Origin, peer: IpAddr) -> Lookup {
    let port = match origin {
        Origin::Host => return Lookup::Decided(Caller::Host),
        Origin::Elsewhere => return Lookup::Decided(Caller::Unknown),
        Origin::Unreadable => return Lookup::Decided(Caller::NotYetReported),
        Origin::Port(p) => p,
    };
    let Some(inv) = inv else {
        return Lookup::Decided(Caller::Unknown);
    };
    // The container's IPv4 address on that network, or its IPv6 address if the network
    // has IPv6 (a caller of the IPv6 metadata address).
    let owns = |e: &Endpoint| IpAddr::V4(e.ipv4) == peer || e.ipv6.map(IpAddr::V6) == Some(peer);
    match inv.by_port(port) {
        Some(e) if owns(e) => Lookup::Decided(Caller::Container(e.clone())),
        Some(e) => Lookup::Decided(Caller::Forged {
            port_owner: e.clone(),
            claimed: peer,
        }),
        // Docker is away: no news is coming.
        None if !inv.connected => Lookup::Decided(Caller::Unknown),
        None => Lookup::Wait,
    }
}

/// After the wait: the port was looked into after the request arrived and leads to no
/// container, so it is no container's; otherwise nobody could say in time.
pub fn give_up(inv: Option<&Inventory>, origin: Origin, arrived: Instant) -> Caller {
    match (inv, origin) {
        (Some(inv), Origin::Port(p)) if inv.unowned_since(p, arrived) => Caller::Unknown,
        _ => Caller::NotYetReported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::BridgePort;
    use bollard::models::{ContainerSummary, ContainerSummaryNetworkSettings, EndpointSettings};

    /// Containers `a` (172.17.0.2 and fd00:dead:beef::2, port 10) and `b` (172.17.0.3,
    /// port 11), and `c` (172.17.0.4) whose port could not be found.
    fn inventory(connected: bool) -> Inventory {
        let c = |id: char, ip: &str| ContainerSummary {
            id: Some(id.to_string().repeat(64)),
            names: Some(vec![format!("/{id}")]),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: Some(
                    [(
                        "bridge".to_string(),
                        EndpointSettings {
                            ip_address: Some(ip.into()),
                            global_ipv6_address: (id == 'a').then(|| "fd00:dead:beef::2".into()),
                            ..Default::default()
                        },
                    )]
                    .into(),
                ),
            }),
            ..Default::default()
        };
        let mut inv = Inventory::from_summaries(
            &[
                c('a', "172.17.0.2"),
                c('b', "172.17.0.3"),
                c('c', "172.17.0.4"),
            ],
            |id, _| match &id[..1] {
                "a" => Some(BridgePort(10)),
                "b" => Some(BridgePort(11)),
                _ => None,
            },
        );
        inv.connected = connected;
        inv
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn name(l: Lookup) -> String {
        match l {
            Lookup::Decided(Caller::Container(e)) => e.name.clone(),
            Lookup::Decided(Caller::Forged {
                port_owner,
                claimed,
            }) => {
                format!("forged {claimed} on {}'s port", port_owner.name)
            }
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn the_port_and_the_address_must_both_be_the_containers() {
        let inv = inventory(true);
        let cases = [
            (Origin::Port(BridgePort(10)), "172.17.0.2", "a"),
            (Origin::Port(BridgePort(11)), "172.17.0.3", "b"),
            // b's port, a's address: b forging a's source address (with or without a's
            // MAC: the port is what counts).
            (
                Origin::Port(BridgePort(11)),
                "172.17.0.2",
                "forged 172.17.0.2 on b's port",
            ),
            (
                Origin::Port(BridgePort(10)),
                "172.17.0.9",
                "forged 172.17.0.9 on a's port",
            ),
            // A port nobody owns yet: wait for Docker, whatever the address claims.
            (Origin::Port(BridgePort(12)), "172.17.0.2", "Wait"),
            // c's port was never found: c's address alone identifies no one.
            (Origin::Port(BridgePort(13)), "172.17.0.4", "Wait"),
            // IPv6 callers (the IPv6 metadata address): the same rule, with the
            // container's IPv6 address on that network.
            (Origin::Port(BridgePort(10)), "fd00:dead:beef::2", "a"),
            (
                Origin::Port(BridgePort(11)),
                "fd00:dead:beef::2",
                "forged fd00:dead:beef::2 on b's port",
            ),
            (
                Origin::Port(BridgePort(10)),
                "fd00:dead:beef::3",
                "forged fd00:dead:beef::3 on a's port",
            ),
            (Origin::Host, "172.17.0.2", "Decided(Host)"),
            (Origin::Elsewhere, "172.17.0.2", "Decided(Unknown)"),
            (Origin::Unreadable, "172.17.0.2", "Decided(NotYetReported)"),
        ];
        for (origin, peer, want) in cases {
            assert_eq!(
                name(lookup(Some(&inv), origin, ip(peer))),
                want,
                "{origin:?} {peer}"
            );
        }
    }

    #[test]
    fn without_docker_unknown_ports_are_unknown_at_once() {
        let inv = inventory(false);
        assert_eq!(
            name(lookup(
                Some(&inv),
                Origin::Port(BridgePort(12)),
                ip("172.17.0.2")
            )),
            "Decided(Unknown)"
        );
        // Known containers keep being served during the outage.
        assert_eq!(
            name(lookup(
                Some(&inv),
                Origin::Port(BridgePort(10)),
                ip("172.17.0.2")
            )),
            "a"
        );
        assert_eq!(
            name(lookup(None, Origin::Port(BridgePort(10)), ip("172.17.0.2"))),
            "Decided(Unknown)"
        );
    }

    #[test]
    fn after_the_wait_a_port_found_empty_means_no_container_and_no_answer_means_retry() {
        use crate::docker::state::State;
        let arrived = Instant::now();
        let ms = std::time::Duration::from_millis(5);
        let at = |t: Instant| {
            let mut st = State::default();
            st.set_unowned(BridgePort(12), t);
            st.inventory(true)
        };
        let port = Origin::Port(BridgePort(12));
        // Looked into before the request arrived: that answer may be stale.
        assert_eq!(
            give_up(Some(&at(arrived - ms)), port, arrived),
            Caller::NotYetReported
        );
        assert_eq!(
            give_up(Some(&at(arrived + ms)), port, arrived),
            Caller::Unknown
        );
        // Another port's answer says nothing about this one.
        assert_eq!(
            give_up(
                Some(&at(arrived + ms)),
                Origin::Port(BridgePort(13)),
                arrived
            ),
            Caller::NotYetReported
        );
        assert_eq!(give_up(None, port, arrived), Caller::NotYetReported);
    }
}
