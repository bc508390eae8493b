//! The inventory task's picture of the host, and the immutable [`Inventory`] built from
//! it. Pure: the task feeds it what Docker and the kernel said; nothing here does I/O.
//!
//! A bridge port leads to a container through kernel facts (the port's peer namespace,
//! that namespace's container); Docker adds what only it knows (name, labels, the
//! addresses it assigned on each network), by container id.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use super::{ContainerId, Endpoint, Inventory};
use crate::ports::BridgePort;

/// What Docker assigned a container on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<String>,
}

/// A running container as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: ContainerId,
    /// Name without Docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The image it runs, as Docker names it (empty until an inspect or a list says).
    pub image: String,
    /// Its endpoints, by Docker network name.
    pub networks: BTreeMap<String, Addresses>,
    /// Its init process, where Docker said (an inspect does; a list does not).
    pub pid: Option<i64>,
}

/// A bridge port as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFacts {
    /// The bridge it is a port of.
    pub bridge: String,
    /// The id the host gives the namespace its peer lives in.
    pub nsid: i32,
    /// The peer's interface index in that namespace, where the kernel said.
    pub peer: Option<u32>,
}

/// Everything the inventory task knows.
#[derive(Debug, Clone, Default)]
pub struct State {
    containers: HashMap<ContainerId, Container>,
    /// Docker network name → the Linux bridge it uses (networks of the bridge driver).
    networks: HashMap<String, String>,
    /// Endpoints Docker lists on a network but not among the container's own networks:
    /// a Swarm container's endpoint on `docker_gwbridge`. By (bridge, container).
    hidden: HashMap<(String, ContainerId), Addresses>,
    /// Which container's processes live in the namespace with this id.
    nsids: HashMap<i32, ContainerId>,
    /// Bridge ports whose peer is in another namespace, by interface index.
    ports: HashMap<BridgePort, PortFacts>,
    /// Ports that were looked into and lead to no container Docker runs, and when.
    unowned: HashMap<BridgePort, Instant>,
    /// Name and labels of containers Docker reported created and not yet inspected.
    created: HashMap<ContainerId, (String, BTreeMap<String, String>)>,
}

impl State {
    /// A container Docker reported (by an inspect, or a list); replaces what was known.
    pub fn set_container(&mut self, c: Container) {
        self.created.remove(&c.id);
        self.containers.insert(c.id.clone(), c);
    }

    /// A container Docker reported created, with the name and labels of the event.
    pub fn set_created(&mut self, id: ContainerId, name: String, labels: BTreeMap<String, String>) {
        if !self.containers.contains_key(&id) {
            self.created.insert(id, (name, labels));
        }
    }

    /// A container known so far only from its create event, on `bridge`'s port with
    /// the addresses its namespace holds on that port's peer: it is named and labelled
    /// as the event said, until Docker's inspect replaces it with what Docker assigned.
    /// Returns whether it was known from its event.
    pub fn set_provisional(
        &mut self,
        id: &ContainerId,
        bridge: &str,
        addresses: &[IpAddr],
    ) -> bool {
        let Some((name, labels)) = self.created.get(id) else {
            return false;
        };
        let ipv4 = addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            _ => None,
        });
        let ipv6 = addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80 => Some(*v6),
            _ => None,
        });
        let Some(ipv4) = ipv4 else {
            return false;
        };
        let network = self.network_of_bridge(bridge).unwrap_or(bridge).to_owned();
        let c = Container {
            id: id.clone(),
            name: name.clone(),
            labels: labels.clone(),
            image: String::new(),
            networks: [(
                network,
                Addresses {
                    ipv4,
                    ipv6,
                    mac: None,
                },
            )]
            .into(),
            pid: None,
        };
        self.containers.insert(id.clone(), c);
        true
    }

    pub fn container(&self, id: &ContainerId) -> Option<&Container> {
        self.containers.get(id)
    }

    /// A container that stopped: it and everything that led to it are forgotten (its
    /// namespace id may be given to another namespace from now on).
    pub fn remove_container(&mut self, id: &ContainerId) -> bool {
        self.created.remove(id);
        self.nsids.retain(|_, c| c != id);
        self.hidden.retain(|(_, c), _| c != id);
        self.containers.remove(id).is_some()
    }

    /// The whole list of running containers (a resync): those not in it are gone, but
    /// for `newer` ones (reported since the list was asked for).
    pub fn set_containers(&mut self, list: Vec<Container>, newer: &HashSet<ContainerId>) {
        let mut keep: HashSet<ContainerId> = list.iter().map(|c| c.id.clone()).collect();
        keep.extend(newer.iter().cloned());
        let gone: Vec<ContainerId> = self
            .containers
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove_container(&id);
        }
        for c in list {
            // A list carries no pid: keep the one an inspect gave.
            let pid = c
                .pid
                .or_else(|| self.containers.get(&c.id).and_then(|o| o.pid));
            self.set_container(Container { pid, ..c });
        }
    }

    /// Docker's bridge networks and their bridges.
    pub fn set_networks(&mut self, networks: HashMap<String, String>) {
        self.networks = networks;
    }

    /// The Linux bridges Docker's networks use.
    pub fn docker_bridges(&self) -> BTreeSet<String> {
        self.networks.values().cloned().collect()
    }

    /// The Docker network that uses `bridge`, if any.
    pub fn network_of_bridge(&self, bridge: &str) -> Option<&str> {
        self.networks
            .iter()
            .find(|(_, b)| *b == bridge)
            .map(|(n, _)| n.as_str())
    }

    /// The bridge Docker's network `network` uses.
    pub fn bridge_of_network(&self, network: &str) -> Option<String> {
        self.networks.get(network).cloned()
    }

    /// Networks with a port whose container is known but has no endpoint there that
    /// the container itself lists.
    pub fn networks_missing_endpoints(&self) -> BTreeSet<(String, ContainerId)> {
        self.ports
            .iter()
            .filter_map(|(p, f)| {
                let network = self.lacks_addresses(*p)?.to_owned();
                Some((network, self.nsids.get(&f.nsid)?.clone()))
            })
            .collect()
    }

    /// The container namespace `nsid` was tied to, with that container's init process
    /// (where Docker said), to check the tie against the kernel.
    pub fn nsid_pid(&self, nsid: i32) -> Option<(ContainerId, i64)> {
        let id = self.nsids.get(&nsid)?;
        let pid = self.containers.get(id)?.pid?;
        Some((id.clone(), pid))
    }

    /// Endpoints Docker lists on `bridge`'s network, for containers that do not list that
    /// network themselves.
    pub fn set_hidden(&mut self, bridge: &str, endpoints: Vec<(ContainerId, Addresses)>) {
        self.hidden.retain(|(b, _), _| b != bridge);
        for (id, a) in endpoints {
            self.hidden.insert((bridge.to_owned(), id), a);
        }
    }

    /// The namespace with id `nsid` is container `id`'s.
    pub fn set_nsid(&mut self, nsid: i32, id: ContainerId) {
        self.nsids.insert(nsid, id);
    }

    /// The container whose namespace has id `nsid`, as last established.
    pub fn container_of_nsid(&self, nsid: i32) -> Option<&ContainerId> {
        self.nsids.get(&nsid)
    }

    /// Namespace ids with no container known behind them any more.
    pub fn forget_nsid(&mut self, nsid: i32) {
        self.nsids.remove(&nsid);
    }

    pub fn set_port(&mut self, index: BridgePort, facts: PortFacts) {
        self.unowned.remove(&index);
        self.ports.insert(index, facts);
    }

    /// A link that is no bridge port (any more), or is gone.
    pub fn remove_port(&mut self, index: BridgePort) {
        self.ports.remove(&index);
    }

    pub fn port(&self, index: BridgePort) -> Option<&PortFacts> {
        self.ports.get(&index)
    }

    /// Every port of a full link listing: ports not in it are gone.
    pub fn set_ports(&mut self, ports: HashMap<BridgePort, PortFacts>) {
        self.unowned.retain(|p, _| !ports.contains_key(p));
        self.ports = ports;
    }

    /// Port `index` was looked into at `at` and leads to no container.
    pub fn set_unowned(&mut self, index: BridgePort, at: Instant) {
        self.unowned.insert(index, at);
    }

    /// Whether port `index`, whose container is known, lacks that container's addresses
    /// on its bridge: the endpoint is one Docker lists only on the network itself.
    pub fn lacks_addresses(&self, index: BridgePort) -> Option<&str> {
        let facts = self.ports.get(&index)?;
        let c = self.containers.get(self.nsids.get(&facts.nsid)?)?;
        match self.addresses(c, &facts.bridge) {
            Some(_) => None,
            None => self.network_of_bridge(&facts.bridge),
        }
    }

    fn addresses<'a>(&'a self, c: &'a Container, bridge: &str) -> Option<&'a Addresses> {
        c.networks
            .iter()
            .find(|(net, _)| self.networks.get(*net).map(String::as_str) == Some(bridge))
            .map(|(_, a)| a)
            .or_else(|| self.hidden.get(&(bridge.to_owned(), c.id.clone())))
    }

    /// The inventory request handlers read: every port that leads to a container with
    /// an endpoint on that port's bridge. `connected`: Docker answered last time.
    pub fn inventory(&self, connected: bool) -> Inventory {
        let mut by_port = HashMap::new();
        for (index, facts) in &self.ports {
            let Some(c) = self
                .nsids
                .get(&facts.nsid)
                .and_then(|id| self.containers.get(id))
            else {
                continue;
            };
            let Some(a) = self.addresses(c, &facts.bridge) else {
                continue;
            };
            let network = self
                .network_of_bridge(&facts.bridge)
                .unwrap_or(&facts.bridge)
                .to_owned();
            by_port.insert(
                *index,
                Arc::new(Endpoint {
                    container: c.id.clone(),
                    name: c.name.clone(),
                    labels: c.labels.clone(),
                    image: c.image.clone(),
                    network,
                    ipv4: a.ipv4,
                    ipv6: a.ipv6,
                    mac: a.mac.clone(),
                    port: Some(*index),
                }),
            );
        }
        Inventory {
            by_port,
            containers: self.containers.len(),
            unowned: self.unowned.clone(),
            connected,
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
