//! Which host bridge port belongs to which container, seen from the host only.
//!
//! A container's interface on a bridge network is one end of a veth pair; the other end
//! is a port of the network's bridge in the host namespace. The host end carries the
//! container namespace's id (`IFLA_LINK_NETNSID`) and its bridge (`IFLA_MASTER`), so
//! the port of (container, network) is the port of that network's bridge whose peer
//! lives in the container's namespace. Nothing inside the container is consulted: a
//! container can rename, re-address or add interfaces in its own namespace, but it
//! cannot create or move a port of a host bridge.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

/// Errors of the port lookup.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    #[error("could not open a route netlink connection")]
    Connect(#[source] std::io::Error),
    #[error("could not list the host's links")]
    Links(#[source] rtnetlink::Error),
}

/// A bridge port: the interface index of a container's veth on the host's side, which
/// the ruleset stamps the container's metadata connections with. Not just any link
/// index: only a port of a container bridge is one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BridgePort(pub u32);

/// The bare index, as logs have always shown a connection's origin (`Port(7)`).
impl std::fmt::Debug for BridgePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for BridgePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One bridge port whose peer is in another namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub index: BridgePort,
    /// Name of the bridge the port belongs to.
    pub bridge: String,
    /// Id (in the host namespace) of the namespace the peer lives in.
    pub peer_nsid: i32,
    /// Interface index of the peer in its own namespace, where the link says.
    pub peer_index: Option<u32>,
}

/// The bridge ports of the host, for matching against containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMap {
    ports: Vec<Port>,
}

impl PortMap {
    pub fn new(ports: Vec<Port>) -> Self {
        Self { ports }
    }

    /// Every port, in no particular order.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// The port of `bridge` whose peer is in the namespace `nsid`. Pure. Two such ports
    /// (never made by Docker) identify no one.
    pub fn port_of(&self, bridge: &str, nsid: i32) -> Option<BridgePort> {
        let mut found = self
            .ports
            .iter()
            .filter(|p| p.bridge == bridge && p.peer_nsid == nsid);
        let first = found.next()?;
        found.next().is_none().then_some(first.index)
    }
}

/// What a link notification says, for the inventory's picture of bridge ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFacts {
    /// A link as it is now: its name, its bridge (by index) if it is a port, and the
    /// namespace and index of its peer if that lives elsewhere.
    Link {
        index: u32,
        name: String,
        master: Option<u32>,
        peer_nsid: Option<i32>,
        peer_index: Option<u32>,
    },
    Gone(u32),
    /// Notifications were lost: everything must be listed again.
    Resync,
}

fn link_facts(m: &LinkMessage) -> Option<LinkFacts> {
    let (mut name, mut master, mut peer_nsid, mut peer_index) = (None, None, None, None);
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(c) => master = Some(*c),
            LinkAttribute::LinkNetNsId(id) => peer_nsid = Some(*id),
            LinkAttribute::Link(p) => peer_index = Some(*p),
            _ => {}
        }
    }
    Some(LinkFacts::Link {
        index: m.header.index,
        name: name?,
        master,
        peer_nsid,
        peer_index,
    })
}

/// Follows the kernel's link notifications and sends every link's facts, after one
/// listing of the links present (subscribed first, so nothing in between is missed).
/// The kernel sends these as links change: reading them costs the request path
/// nothing, where asking for a link while many containers start waits on the lock
/// their network set-up holds.
pub fn watch_links(tx: tokio::sync::mpsc::UnboundedSender<LinkFacts>) -> Result<(), PortsError> {
    let (conn, handle, mut events) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .map_err(PortsError::Connect)?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        let mut links = handle.link().get().execute();
        loop {
            match links.try_next().await {
                Ok(Some(m)) => {
                    if let Some(f) = link_facts(&m) {
                        if tx.send(f).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let _ = tx.send(LinkFacts::Resync);
                    break;
                }
            }
        }
        while let Some((msg, _)) = futures::StreamExt::next(&mut events).await {
            let f = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => link_facts(&m),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    Some(LinkFacts::Gone(m.header.index))
                }
                NetlinkPayload::Overrun(_) | NetlinkPayload::Error(_) => Some(LinkFacts::Resync),
                _ => None,
            };
            if let Some(f) = f {
                if tx.send(f).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(LinkFacts::Resync);
    });
    Ok(())
}

/// Talks to the kernel for the inventory task.
pub struct PortReader {
    handle: Handle,
}

impl PortReader {
    /// Opens a route netlink connection (its task runs on the current runtime).
    pub fn open() -> Result<Self, PortsError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(PortsError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Every bridge port of the host whose peer is in another namespace.
    pub async fn ports(&self) -> Result<PortMap, PortsError> {
        let mut names: HashMap<u32, String> = HashMap::new();
        let mut raw: Vec<(u32, u32, i32, Option<u32>)> = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(PortsError::Links)? {
            let index = l.header.index;
            let (mut master, mut nsid, mut peer) = (None, None, None);
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => {
                        names.insert(index, n.clone());
                    }
                    LinkAttribute::Controller(m) => master = Some(*m),
                    LinkAttribute::LinkNetNsId(id) => nsid = Some(*id),
                    LinkAttribute::Link(p) => peer = Some(*p),
                    _ => {}
                }
            }
            if let (Some(m), Some(id)) = (master, nsid) {
                raw.push((index, m, id, peer));
            }
        }
        Ok(PortMap::new(
            raw.into_iter()
                .filter_map(|(index, master, peer_nsid, peer_index)| {
                    Some(Port {
                        index: BridgePort(index),
                        bridge: names.get(&master)?.clone(),
                        peer_nsid,
                        peer_index,
                    })
                })
                .collect(),
        ))
    }

    /// The bridge port with interface index `index`, if it is one whose peer lives in
    /// another namespace: its bridge, the peer's namespace id and the peer's own index
    /// there. One request for the link and one for its bridge's name.
    pub async fn port(&self, index: BridgePort) -> Result<Option<Port>, PortsError> {
        let Some(l) = self.link(index.0).await? else {
            return Ok(None);
        };
        let (mut master, mut nsid, mut peer) = (None, None, None);
        for a in &l.attributes {
            match a {
                LinkAttribute::Controller(m) => master = Some(*m),
                LinkAttribute::LinkNetNsId(id) => nsid = Some(*id),
                LinkAttribute::Link(p) => peer = Some(*p),
                _ => {}
            }
        }
        let (Some(master), Some(peer_nsid)) = (master, nsid) else {
            return Ok(None);
        };
        let bridge = self.link(master).await?.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        });
        Ok(bridge.map(|bridge| Port {
            index,
            bridge,
            peer_nsid,
            peer_index: peer,
        }))
    }

    async fn link(&self, index: u32) -> Result<Option<LinkMessage>, PortsError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(l) => Ok(l),
            // The link is gone (ENODEV): not an error, nobody is behind it.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(PortsError::Links(e)),
        }
    }

    /// The id the host gives the network namespace of process `pid`, if that process
    /// still belongs to container `container_id` (a pid is checked against the
    /// container's cgroup after its namespace is opened, so a recycled pid never
    /// lends its namespace to the container).
    pub async fn nsid_of(&self, pid: i64, container_id: &str) -> Option<i32> {
        let ns = crate::netns::open_netns(pid)?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        if crate::netns::container_id_in_cgroup(&cgroup).as_deref() != Some(container_id) {
            return None;
        }
        self.nsid_of_netns(&ns).await
    }

    /// The id the host gives an open network namespace (`None` if it has none yet: no
    /// link of the host has a peer there).
    pub async fn nsid_of_netns(&self, ns: &File) -> Option<i32> {
        let mut msg = NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(ns.as_raw_fd() as u32)];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut answers = self.handle.clone().request(req).ok()?;
        while let Some(m) = futures::StreamExt::next(&mut answers).await {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) = m.payload {
                return m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(index: BridgePort, bridge: &str, peer_nsid: i32) -> Port {
        Port {
            index,
            bridge: bridge.into(),
            peer_nsid,
            peer_index: None,
        }
    }

    #[test]
    fn the_port_is_the_one_on_the_network_bridge_with_the_peer_in_the_container() {
        let map = PortMap::new(vec![
            port(BridgePort(10), "docker0", 1),
            port(BridgePort(11), "br-aaa", 1),
            port(BridgePort(12), "docker0", 2),
        ]);
        assert_eq!(map.port_of("docker0", 1), Some(BridgePort(10)));
        assert_eq!(map.port_of("br-aaa", 1), Some(BridgePort(11)));
        assert_eq!(map.port_of("docker0", 2), Some(BridgePort(12)));
        assert_eq!(map.port_of("br-aaa", 2), None);
        assert_eq!(map.port_of("docker0", 3), None);
    }

    #[test]
    fn two_candidate_ports_identify_no_one() {
        let map = PortMap::new(vec![
            port(BridgePort(10), "docker0", 1),
            port(BridgePort(13), "docker0", 1),
        ]);
        assert_eq!(map.port_of("docker0", 1), None);
    }
}
