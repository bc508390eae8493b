//! Cuts connections to the metadata address that were set up before the DNAT rule.
//!
//! NAT is decided on a flow's first packet; a container connection opened before the
//! rule existed keeps going wherever it went (kiam #284). At start-up the daemon dumps
//! the conntrack table of each address family and deletes every entry for the metadata
//! address (169.254.169.254, or fd00:ec2::254) that is not bound to its proxy and does
//! not come from the host itself. The flow's next packet then starts a new entry, which
//! the rules send to the proxy or refuse.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::nfnl::ct::{
    AF_INET, AF_INET6, CTA_IP_V4_DST, CTA_IP_V4_SRC, CTA_IP_V6_DST, CTA_IP_V6_SRC, CTA_TUPLE_IP,
    CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE, IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_GET,
    NFNL_SUBSYS_CTNETLINK,
};
use super::nfnl::{self, Attr};
use super::plan::{Ipv6Service, IMDS_V4, IMDS_V6};
use crate::addrs::local_addrs;

/// The addresses of one conntrack entry that the selection needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub reply_src: IpAddr,
}

/// Pure selection: a flow to the metadata address `imds`, from somewhere that is not
/// this host, that is not already going to the proxy (`None`: no proxy in this family,
/// so no such flow may stay).
pub fn is_stale_container_flow(
    e: &Entry,
    imds: IpAddr,
    proxy: Option<IpAddr>,
    local: &HashSet<IpAddr>,
) -> bool {
    e.orig_dst == imds && Some(e.reply_src) != proxy && !local.contains(&e.orig_src)
}

/// An address attribute of either family (4 or 16 bytes).
fn ip_of(v: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(v) {
        return Some(Ipv4Addr::from(b).into());
    }
    <[u8; 16]>::try_from(v)
        .ok()
        .map(|b| Ipv6Addr::from(b).into())
}

/// The source and destination addresses of a conntrack tuple attribute.
pub fn tuple_addrs(t: Attr<'_>) -> Option<(IpAddr, IpAddr)> {
    let ip = t.nested().get(CTA_TUPLE_IP)?.nested();
    let addr = |v4, v6| ip_of(ip.get(v4).or_else(|| ip.get(v6))?.value);
    Some((
        addr(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
        addr(CTA_IP_V4_DST, CTA_IP_V6_DST)?,
    ))
}

/// Cuts stale container flows to the metadata addresses of every family the daemon
/// intercepts: IPv4 to the proxy at `listen`, and IPv6 as `v6` says. Returns how many
/// entries were deleted.
pub fn cut_stale_container_flows(listen: Ipv4Addr, v6: Ipv6Service) -> io::Result<usize> {
    let local = local_addrs()?;
    let mut cut = cut_stale_flows(IMDS_V4.into(), Some(listen.into()), &local)?;
    match v6 {
        Ipv6Service::Absent => {}
        Ipv6Service::RefuseOnly => cut += cut_stale_flows(IMDS_V6.into(), None, &local)?,
        Ipv6Service::Listen(a) => {
            cut += cut_stale_flows(IMDS_V6.into(), Some((*a.ip()).into()), &local)?
        }
    }
    Ok(cut)
}

/// Deletes stale container flows to `imds` (see [`is_stale_container_flow`]); returns
/// how many entries were deleted.
pub fn cut_stale_flows(
    imds: IpAddr,
    proxy: Option<IpAddr>,
    local: &HashSet<IpAddr>,
) -> io::Result<usize> {
    // A dump the kernel marks as interrupted (the table changed under it) may have
    // missed entries: go again, a few times at most.
    let mut total = 0;
    for _ in 0..3 {
        let (cut, interrupted) = cut_once(imds, proxy, local)?;
        total += cut;
        if !interrupted {
            break;
        }
    }
    Ok(total)
}

fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn cut_once(
    imds: IpAddr,
    proxy: Option<IpAddr>,
    local: &HashSet<IpAddr>,
) -> io::Result<(usize, bool)> {
    let sock = nfnl::socket()?;
    let mut interrupted = false;
    let family = family_of(imds);
    // The kernel dumps only the entries of the family the request names.
    let dump = nfnl::request(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        nfnl::NLM_F_REQUEST | nfnl::NLM_F_DUMP,
        1,
        family,
        &[],
    );
    sock.send(&dump, 0)?;
    // Collect the delete requests first: the dump must finish before we write.
    let mut deletes: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    'dump: loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        for m in nfnl::messages(&buf[..n]) {
            interrupted |= m.flags & nfnl::NLM_F_DUMP_INTR != 0;
            match m.ty {
                nfnl::NLMSG_DONE => break 'dump,
                nfnl::NLMSG_ERROR => match m.error_code() {
                    Some(0) | None => {}
                    Some(code) => return Err(io::Error::from_raw_os_error(-code)),
                },
                _ => {
                    let attrs = m.attrs();
                    let (Some(orig), Some(reply)) =
                        (attrs.get(CTA_TUPLE_ORIG), attrs.get(CTA_TUPLE_REPLY))
                    else {
                        continue;
                    };
                    let (Some((orig_src, orig_dst)), Some((reply_src, _))) =
                        (tuple_addrs(orig), tuple_addrs(reply))
                    else {
                        continue;
                    };
                    if is_stale_container_flow(
                        &Entry {
                            orig_src,
                            orig_dst,
                            reply_src,
                        },
                        imds,
                        proxy,
                        local,
                    ) {
                        let mut body = orig.raw.to_vec();
                        body.resize(nfnl::align4(body.len()), 0);
                        if let Some(zone) = attrs.get(CTA_ZONE) {
                            body.extend_from_slice(zone.raw);
                            body.resize(nfnl::align4(body.len()), 0);
                        }
                        deletes.push(body);
                    }
                }
            }
        }
    }
    let mut deleted = 0;
    for (i, body) in deletes.iter().enumerate() {
        let seq = 2 + i as u32;
        let req = nfnl::request(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
            nfnl::NLM_F_REQUEST | nfnl::NLM_F_ACK,
            seq,
            family,
            body,
        );
        sock.send(&req, 0)?;
        let n = sock.recv(&mut &mut buf[..], 0)?;
        for m in nfnl::messages(&buf[..n]) {
            match m.error_code() {
                Some(0) => deleted += 1,
                // Gone already (the flow ended meanwhile): nothing to cut.
                Some(code) if -code == libc::ENOENT => {}
                Some(code) => return Err(io::Error::from_raw_os_error(-code)),
                None => {}
            }
        }
    }
    Ok((deleted, interrupted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn entry(orig_src: &str, orig_dst: &str, reply_src: &str) -> Entry {
        Entry {
            orig_src: ip(orig_src),
            orig_dst: ip(orig_dst),
            reply_src: ip(reply_src),
        }
    }

    const PROXY: &str = "169.254.93.254";
    const PROXY6: &str = "fdf3:6f62:ab7c::254";

    fn local() -> HashSet<IpAddr> {
        [
            ip("10.0.0.5"),
            ip("127.0.0.1"),
            ip("2001:db8::5"),
            ip("::1"),
        ]
        .into()
    }

    fn stale4(e: &Entry) -> bool {
        is_stale_container_flow(e, IMDS_V4.into(), Some(ip(PROXY)), &local())
    }

    fn stale6(e: &Entry) -> bool {
        is_stale_container_flow(e, IMDS_V6.into(), Some(ip(PROXY6)), &local())
    }

    #[test]
    fn container_flow_straight_to_the_metadata_service_is_cut() {
        assert!(stale4(&entry(
            "172.17.0.2",
            "169.254.169.254",
            "169.254.169.254"
        )));
        assert!(stale6(&entry(
            "fd00:dead:beef::2",
            "fd00:ec2::254",
            "fd00:ec2::254"
        )));
    }

    #[test]
    fn flow_dnated_elsewhere_by_an_older_rule_is_cut() {
        assert!(stale4(&entry(
            "172.17.0.2",
            "169.254.169.254",
            "172.17.0.1"
        )));
        assert!(stale6(&entry(
            "fd00:dead:beef::2",
            "fd00:ec2::254",
            "fd00:dead:beef::1"
        )));
    }

    #[test]
    fn flows_already_at_the_proxy_host_flows_and_other_destinations_are_kept() {
        for e in [
            entry("172.17.0.2", "169.254.169.254", PROXY),
            entry("10.0.0.5", "169.254.169.254", "169.254.169.254"),
            entry("172.17.0.2", "1.1.1.1", "1.1.1.1"),
        ] {
            assert!(!stale4(&e), "{e:?}");
        }
        for e in [
            entry("fd00:dead:beef::2", "fd00:ec2::254", PROXY6),
            entry("2001:db8::5", "fd00:ec2::254", "fd00:ec2::254"),
            entry("fd00:dead:beef::2", "2001:db8::1", "2001:db8::1"),
        ] {
            assert!(!stale6(&e), "{e:?}");
        }
    }

    #[test]
    fn without_a_proxy_in_the_family_every_container_flow_is_stale() {
        let e = entry("fd00:dead:beef::2", "fd00:ec2::254", "fd00:ec2::254");
        assert!(is_stale_container_flow(&e, IMDS_V6.into(), None, &local()));
    }
}
