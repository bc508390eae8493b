//! The daemon's own link (which carries the proxy's listen address) and the container
//! bridges the host has, both through rtnetlink.
//!
//! The own link is a `dummy`; kernels built without the dummy driver get an empty bridge,
//! which behaves the same for a local /32 (and /128) address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{new_connection, Handle, LinkBridge, LinkDummy, LinkUnspec, MulticastGroup};
use tokio::sync::mpsc;

/// Errors of the link module.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("failed to open an rtnetlink connection")]
    Connect(#[source] std::io::Error),
    #[error("failed to {action} {name}")]
    Netlink {
        action: &'static str,
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("the listen address {addr} is already configured on interface {ifname}; choose another with --listen or --listen6")]
    AddressTaken { addr: IpAddr, ifname: String },
    #[error("failed to switch IPv6 on for the daemon's own link {name}")]
    Ipv6Sysctl {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {name} exists but is not the daemon's own link (its alias is not \"{OWN_ALIAS}\"); it is left alone: choose another --link-name")]
    NotOurs { name: String },
    #[error("not permitted to create network links: run as root (or with CAP_NET_ADMIN)")]
    NotPermitted,
}

/// The metadata addresses whose routes the macvlan guard follows by default.
pub const METADATA_ADDRESSES: [IpAddr; 2] = [
    IpAddr::V4(crate::firewall::plan::IMDS_V4),
    IpAddr::V6(crate::firewall::plan::IMDS_V6),
];

/// Where the kernel says whether IPv6 is switched off (absent: no IPv6 in this kernel).
const IPV6_ALL_DISABLED: &str = "/proc/sys/net/ipv6/conf/all/disable_ipv6";

/// What the host's IPv6 allows the daemon to do, given where the proxy would listen:
/// listen there; only refuse (IPv6 is switched off, so the link can hold no IPv6
/// address); or nothing (the kernel has no IPv6). Read from the current network
/// namespace at start-up.
pub fn ipv6_plan(listen6: SocketAddrV6) -> crate::firewall::plan::Ipv6Service {
    use crate::firewall::plan::Ipv6Service;
    match std::fs::read_to_string(IPV6_ALL_DISABLED) {
        Err(_) => Ipv6Service::Absent,
        Ok(v) if v.trim() == "0" => Ipv6Service::Listen(listen6),
        Ok(_) => Ipv6Service::RefuseOnly,
    }
}

/// The alias the daemon puts on its own link; it adopts or deletes only a link that
/// carries it, never an interface that merely has the configured name.
pub const OWN_ALIAS: &str = "imds-proxy";

fn link_alias(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The link called `name`, if any.
async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink_err("look up link", name)(e)),
    }
}

/// The index of our own link called `name`; an interface of that name without our
/// alias is an error.
async fn own_link_index(handle: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    match find_link(handle, name).await? {
        None => Ok(None),
        Some(m) if link_alias(&m) == Some(OWN_ALIAS) => Ok(Some(m.header.index)),
        Some(_) => Err(LinkError::NotOurs {
            name: name.to_owned(),
        }),
    }
}

/// An rtnetlink connection whose driver runs on the current tokio runtime.
pub fn connect() -> Result<Handle, LinkError> {
    let (conn, handle, _) = new_connection().map_err(LinkError::Connect)?;
    tokio::spawn(conn);
    Ok(handle)
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn netlink_err<'a>(
    action: &'static str,
    name: &'a str,
) -> impl FnOnce(rtnetlink::Error) -> LinkError + 'a {
    move |source| {
        if errno(&source) == Some(libc::EPERM) {
            LinkError::NotPermitted
        } else {
            LinkError::Netlink {
                action,
                name: name.to_owned(),
                source,
            }
        }
    }
}

fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    Ok(find_link(handle, name).await?.map(|m| m.header.index))
}

/// All interfaces of this network namespace: index to name.
pub async fn list_links(handle: &Handle) -> Result<HashMap<u32, String>, LinkError> {
    let mut out = HashMap::new();
    let mut links = handle.link().get().execute();
    while let Some(m) = links
        .try_next()
        .await
        .map_err(netlink_err("list", "links"))?
    {
        if let Some(n) = link_name(&m) {
            out.insert(m.header.index, n.to_owned());
        }
    }
    Ok(out)
}

/// The hardware address of each of the interfaces `names` that exists now and has an
/// Ethernet address: the plan tells a macvlan parent's own packets from its children's
/// by it. One lookup per name, not a dump of every link (the host may have hundreds of
/// container veths).
pub async fn link_macs(
    handle: &Handle,
    names: &[String],
) -> Result<HashMap<String, [u8; 6]>, LinkError> {
    let mut out = HashMap::new();
    for name in names {
        let Some(m) = find_link(handle, name).await? else {
            continue;
        };
        let mac = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(a) => <[u8; 6]>::try_from(a.as_slice()).ok(),
            _ => None,
        });
        if let Some(mac) = mac {
            out.insert(name.clone(), mac);
        }
    }
    Ok(out)
}

/// The interfaces the host's own packets to `dests` leave by, as the kernel's route
/// lookup (RTM_GETROUTE, policy routing included) answers now, in the order of `dests`,
/// without repeats. A destination with no route (or no IPv6 on the host) adds none, nor
/// does one the host holds itself (a local route: loopback).
pub async fn route_devices(handle: &Handle, dests: &[IpAddr]) -> Result<Vec<String>, LinkError> {
    let mut out: Vec<String> = Vec::new();
    for dest in dests {
        let Some(index) = route_oif(handle, *dest).await? else {
            continue;
        };
        let mut links = handle.link().get().match_index(index).execute();
        let link = match links.try_next().await {
            Ok(m) => m,
            // Gone between the lookup and now: the next link event asks again.
            Err(e) if errno(&e) == Some(libc::ENODEV) => None,
            Err(e) => {
                return Err(netlink_err(
                    "look up the link of the route to",
                    "the metadata address",
                )(e))
            }
        };
        // Read to the end, so no answer is left for the next request.
        while let Ok(Some(_)) = links.try_next().await {}
        if let Some(name) = link.as_ref().and_then(link_name) {
            if !out.iter().any(|n| n == name) {
                out.push(name.to_owned());
            }
        }
    }
    Ok(out)
}

/// The output interface of the route the kernel picks for `dest`: `None` if there is no
/// route, or it is not a unicast route out of an interface (local, blackhole, ...).
async fn route_oif(handle: &Handle, dest: IpAddr) -> Result<Option<u32>, LinkError> {
    let prefix = if dest.is_ipv4() { 32 } else { 128 };
    let message = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dest, prefix)
        .expect("an address and its host prefix are one family")
        .build();
    // With a destination, the request is a lookup, not a dump.
    let answers: Result<Vec<RouteMessage>, _> =
        handle.route().get(message).execute().try_collect().await;
    let routes = match answers {
        Ok(r) => r,
        // No route, an unreachable or prohibit route, or no IPv6: nothing leaves.
        Err(e)
            if matches!(
                errno(&e),
                Some(
                    libc::ENETUNREACH
                        | libc::EHOSTUNREACH
                        | libc::EINVAL
                        | libc::EACCES
                        | libc::EAFNOSUPPORT
                        | libc::ENETDOWN
                        | libc::ENODEV
                )
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(netlink_err("look up the route to", "the metadata address")(
                e,
            ))
        }
    };
    Ok(routes
        .iter()
        .filter(|r| r.header.kind == RouteType::Unicast)
        .find_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })
        }))
}

/// Whether route message `m` (added or deleted) covers one of `dests`: a change to it
/// may move where the host's packets to them leave.
fn route_covers(m: &RouteMessage, dests: &[IpAddr]) -> bool {
    let len = m.header.destination_prefix_length;
    let dest = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    dests.iter().any(|d| match (dest, d) {
        // No destination: a default route of its family.
        (None, IpAddr::V4(_)) => m.header.address_family == AddressFamily::Inet,
        (None, IpAddr::V6(_)) => m.header.address_family == AddressFamily::Inet6,
        (Some(IpAddr::V4(net)), IpAddr::V4(d)) => {
            len <= 32 && (len == 0 || u32::from(net) >> (32 - len) == u32::from(*d) >> (32 - len))
        }
        (Some(IpAddr::V6(net)), IpAddr::V6(d)) => {
            len <= 128
                && (len == 0 || u128::from(net) >> (128 - len) == u128::from(*d) >> (128 - len))
        }
        _ => false,
    })
}

/// Creates (or reuses) the daemon's link, brings it up and puts `addr/32` on it, and
/// `addr6/128` if given. Returns the link index and the kind of link ("dummy" or
/// "bridge").
pub async fn ensure_own_link(
    handle: &Handle,
    name: &str,
    addr: Ipv4Addr,
    addr6: Option<Ipv6Addr>,
) -> Result<(u32, &'static str), LinkError> {
    let existing = own_link_index(handle, name).await?;
    // Check before creating anything, so a refusal leaves the host as it was.
    for a in [Some(IpAddr::V4(addr)), addr6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
    {
        if let Some((holder, ifname)) = address_holder(handle, a).await? {
            if Some(holder) != existing {
                return Err(LinkError::AddressTaken { addr: a, ifname });
            }
        }
    }
    let mut kind = "existing";
    let index = match existing {
        Some(i) => i,
        None => {
            kind = "dummy";
            if let Err(e) = handle
                .link()
                .add(LinkDummy::new(name).build())
                .execute()
                .await
            {
                if errno(&e) != Some(libc::EOPNOTSUPP) {
                    return Err(netlink_err("create dummy link", name)(e));
                }
                kind = "bridge";
                handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .map_err(netlink_err("create bridge link", name))?;
            }
            link_index(handle, name)
                .await?
                .ok_or_else(|| LinkError::Netlink {
                    action: "find the link just created",
                    name: name.to_owned(),
                    source: rtnetlink::Error::RequestFailed,
                })?
        }
    };
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .up()
                .alias(OWN_ALIAS)
                .build(),
        )
        .execute()
        .await
        .map_err(netlink_err("bring up link", name))?;
    handle
        .address()
        .add(index, IpAddr::V4(addr), 32)
        .replace()
        .execute()
        .await
        .map_err(netlink_err("add the listen address to", name))?;
    if let Some(addr6) = addr6 {
        add_ipv6_address(handle, name, index, addr6).await?;
    }
    Ok((index, kind))
}

/// Puts a further `addr/32` on the daemon's link `index` (the emulator's
/// 169.254.169.254, so host processes reach it too); refused if another interface
/// holds it.
pub async fn add_own_address(
    handle: &Handle,
    name: &str,
    index: u32,
    addr: Ipv4Addr,
) -> Result<(), LinkError> {
    if let Some((holder, ifname)) = address_holder(handle, IpAddr::V4(addr)).await? {
        if holder != index {
            return Err(LinkError::AddressTaken {
                addr: IpAddr::V4(addr),
                ifname,
            });
        }
    }
    handle
        .address()
        .add(index, IpAddr::V4(addr), 32)
        .replace()
        .execute()
        .await
        .map_err(netlink_err("add an address to", name))
}

/// Removes `addr` from the daemon's link if it is there (left by an emulator run);
/// returns whether it was.
pub async fn remove_own_address(
    handle: &Handle,
    name: &str,
    addr: Ipv4Addr,
) -> Result<bool, LinkError> {
    let Some(index) = own_link_index(handle, name).await? else {
        return Ok(false);
    };
    let found = addresses(handle, Some(index))
        .await?
        .into_iter()
        .find(|m| m.header.index == index && holds(m, IpAddr::V4(addr)));
    let Some(m) = found else {
        return Ok(false);
    };
    handle
        .address()
        .del(m)
        .execute()
        .await
        .map_err(netlink_err("remove an address from", name))?;
    Ok(true)
}

/// Puts `addr6/128` on the daemon's link, usable at once: no duplicate address
/// detection (the link is the daemon's own, nobody else can hold the address there,
/// and an address still being checked cannot be bound or DNATed to).
async fn add_ipv6_address(
    handle: &Handle,
    name: &str,
    index: u32,
    addr6: Ipv6Addr,
) -> Result<(), LinkError> {
    // A link created while new links get IPv6 switched off (`default.disable_ipv6`)
    // refuses IPv6 addresses; the host has IPv6 on (`all`), and this link is ours.
    let sysctl = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if std::fs::read_to_string(&sysctl).is_ok_and(|v| v.trim() != "0") {
        std::fs::write(&sysctl, "0").map_err(|source| LinkError::Ipv6Sysctl {
            name: name.to_owned(),
            source,
        })?;
    }
    let mut request = handle
        .address()
        .add(index, IpAddr::V6(addr6), 128)
        .replace();
    let message = request.message_mut();
    message.header.flags = AddressHeaderFlags::Nodad;
    message
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    request
        .execute()
        .await
        .map_err(netlink_err("add the IPv6 listen address to", name))
}

/// Every address of link `index` (or of every link), read whole before anyone acts on
/// it: a dump dropped half-read leaves the netlink connection with answers nobody
/// waits for (and a warning per message).
async fn addresses(handle: &Handle, index: Option<u32>) -> Result<Vec<AddressMessage>, LinkError> {
    let mut request = handle.address().get();
    if let Some(i) = index {
        request = request.set_link_index_filter(i);
    }
    request
        .execute()
        .try_collect()
        .await
        .map_err(netlink_err("list", "addresses"))
}

/// Whether address message `m` is `addr`.
fn holds(m: &AddressMessage, addr: IpAddr) -> bool {
    m.attributes.iter().any(
        |a| matches!(a, AddressAttribute::Local(a) | AddressAttribute::Address(a) if *a == addr),
    )
}

/// Which interface, if any, already has `addr`.
async fn address_holder(handle: &Handle, addr: IpAddr) -> Result<Option<(u32, String)>, LinkError> {
    let links = list_links(handle).await?;
    Ok(addresses(handle, None)
        .await?
        .into_iter()
        .find(|m| holds(m, addr))
        .map(|m| {
            let idx = m.header.index;
            let name = links
                .get(&idx)
                .cloned()
                .unwrap_or_else(|| format!("#{idx}"));
            (idx, name)
        }))
}

/// Whether the daemon's link exists, is up and holds `addr` (and `addr6`, if given).
pub async fn own_link_ok(
    handle: &Handle,
    name: &str,
    addr: Ipv4Addr,
    addr6: Option<Ipv6Addr>,
) -> Result<bool, LinkError> {
    let Some(link) = find_link(handle, name).await? else {
        return Ok(false);
    };
    if !link.header.flags.contains(LinkFlags::Up) || link_alias(&link) != Some(OWN_ALIAS) {
        return Ok(false);
    }
    for a in [Some(IpAddr::V4(addr)), addr6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
    {
        let holder = address_holder(handle, a).await?.map(|(i, _)| i);
        if holder != Some(link.header.index) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Deletes the daemon's link; returns whether it existed.
pub async fn remove_own_link(handle: &Handle, name: &str) -> Result<bool, LinkError> {
    match own_link_index(handle, name).await? {
        None => Ok(false),
        Some(i) => {
            handle
                .link()
                .del(i)
                .execute()
                .await
                .map_err(netlink_err("delete link", name))?;
            Ok(true)
        }
    }
}

/// A link appeared (or changed) or disappeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Up(String),
    Gone(String),
    /// A link is administratively down.
    Down(String),
    /// An address was removed from some link.
    AddressGone(IpAddr),
    /// A route that covers a metadata address was added, changed or removed.
    MetadataRoute,
    /// The kernel dropped notifications: the receiver should re-list links.
    Resync,
}

/// Subscribes to link, address and route notifications and forwards them as
/// [`LinkEvent`]s (of routes, only those that cover a metadata address).
/// Subscribing happens before this returns, so a caller that lists links afterwards
/// misses nothing.
pub fn watch_links(tx: mpsc::UnboundedSender<LinkEvent>) -> Result<(), LinkError> {
    let (conn, _handle, mut events) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .map_err(LinkError::Connect)?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        let mut names: HashMap<u32, String> = HashMap::new();
        while let Some((msg, _)) = events.next().await {
            let out = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    let Some(name) = link_name(&m).map(str::to_owned) else {
                        continue;
                    };
                    let mut out = Vec::new();
                    if let Some(old) = names.insert(m.header.index, name.clone()) {
                        if old != name {
                            out.push(LinkEvent::Gone(old));
                        }
                    }
                    let up = m.header.flags.contains(LinkFlags::Up);
                    out.push(if up {
                        LinkEvent::Up(name)
                    } else {
                        LinkEvent::Down(name)
                    });
                    out
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    let name = link_name(&m)
                        .map(str::to_owned)
                        .or_else(|| names.get(&m.header.index).cloned());
                    names.remove(&m.header.index);
                    name.map(LinkEvent::Gone).into_iter().collect()
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => m
                    .attributes
                    .iter()
                    .filter_map(|a| match a {
                        // IPv4 addresses carry their own address as `Local`, IPv6 ones
                        // only as `Address`.
                        AddressAttribute::Local(ip @ IpAddr::V4(_))
                        | AddressAttribute::Address(ip @ IpAddr::V6(_)) => {
                            Some(LinkEvent::AddressGone(*ip))
                        }
                        _ => None,
                    })
                    .collect(),
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m),
                ) if route_covers(&m, &METADATA_ADDRESSES) => vec![LinkEvent::MetadataRoute],
                NetlinkPayload::Overrun(_) | NetlinkPayload::Error(_) => vec![LinkEvent::Resync],
                _ => continue,
            };
            for e in out {
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(LinkEvent::Resync);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(family: AddressFamily, dest: Option<IpAddr>, len: u8) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        m.header.destination_prefix_length = len;
        if let Some(d) = dest {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(d)));
        }
        m
    }

    #[test]
    fn only_routes_that_cover_a_metadata_address_are_followed() {
        let v4 = |d: &str, len| route(AddressFamily::Inet, Some(d.parse().unwrap()), len);
        let v6 = |d: &str, len| route(AddressFamily::Inet6, Some(d.parse().unwrap()), len);
        let covers = |m: &RouteMessage| route_covers(m, &METADATA_ADDRESSES);
        assert!(covers(&route(AddressFamily::Inet, None, 0)), "IPv4 default");
        assert!(
            covers(&route(AddressFamily::Inet6, None, 0)),
            "IPv6 default"
        );
        assert!(covers(&v4("169.254.169.254", 32)));
        assert!(covers(&v4("169.254.0.0", 16)));
        assert!(covers(&v6("fd00:ec2::254", 128)));
        assert!(covers(&v6("fd00::", 8)));
        // A container's address, a bridge's subnet, a link-local IPv6 route: not.
        assert!(!covers(&v4("10.88.0.2", 32)));
        assert!(!covers(&v4("169.254.93.254", 32)));
        assert!(!covers(&v4("172.17.0.0", 16)));
        assert!(!covers(&v6("fe80::", 64)));
    }
}
