//! The metadata service's own addresses and port, which the firewall plan, the DNS
//! responder and the probe all name, and the host's own addresses. A leaf: it
//! imports nothing of ours.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The metadata service address every cloud uses.
pub const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// AWS's IPv6 metadata address (Nitro instances, IPv6-enabled subnets).
pub const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// The metadata service port that is intercepted.
pub const IMDS_PORT: u16 = 80;

/// IPv4 and IPv6 addresses configured on this host (in the current network namespace).
pub fn local_addrs() -> std::io::Result<HashSet<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(addrs
        .filter_map(|a| {
            let s = a.address?;
            s.as_sockaddr_in()
                .map(|sin| IpAddr::V4(sin.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|sin6| IpAddr::V6(sin6.ip())))
        })
        .collect())
}
