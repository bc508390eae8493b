//! The metadata service's own addresses and port, which the firewall plan, the DNS
//! responder and the probe all name. A leaf: it imports nothing of ours.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The metadata service address every cloud uses.
pub const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// AWS's IPv6 metadata address (Nitro instances, IPv6-enabled subnets).
pub const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// The metadata service port that is intercepted.
pub const IMDS_PORT: u16 = 80;
