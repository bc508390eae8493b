//! Cuts connections to the metadata address that were set up before the DNAT rule.
//!
//! NAT is decided on a flow's first packet; a container connection opened before the
//! rule existed keeps going wherever it went (kiam #284). At start-up the daemon dumps
//! the IPv4 conntrack table and deletes every entry for 169.254.169.254 that is not
//! bound to its proxy and does not come from the host itself. The flow's next packet
//! then starts a new entry, which the rules send to the proxy or refuse.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::nfnl::{self, Attr};
use super::plan::IMDS_V4;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const AF_INET: u8 = libc::AF_INET as u8;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;

/// The addresses of one conntrack entry that the selection needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig_src: Ipv4Addr,
    pub orig_dst: Ipv4Addr,
    pub reply_src: Ipv4Addr,
}

/// Pure selection: a flow to the metadata address, from somewhere that is not this host,
/// that is not already going to the proxy.
pub fn is_stale_container_flow(e: &Entry, proxy: Ipv4Addr, local: &HashSet<Ipv4Addr>) -> bool {
    e.orig_dst == IMDS_V4 && e.reply_src != proxy && !local.contains(&e.orig_src)
}

fn tuple_addrs(t: Attr<'_>) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let ip = t.nested().get(CTA_TUPLE_IP)?.nested();
    let v4 = |ty| -> Option<Ipv4Addr> {
        let v = ip.get(ty)?.value;
        Some(Ipv4Addr::new(
            *v.first()?,
            *v.get(1)?,
            *v.get(2)?,
            *v.get(3)?,
        ))
    };
    Some((v4(CTA_IP_V4_SRC)?, v4(CTA_IP_V4_DST)?))
}

/// Deletes stale container flows; returns how many entries were deleted.
pub fn cut_stale_flows(proxy: Ipv4Addr, local: &HashSet<Ipv4Addr>) -> io::Result<usize> {
    // A dump the kernel marks as interrupted (the table changed under it) may have
    // missed entries: go again, a few times at most.
    let mut total = 0;
    for _ in 0..3 {
        let (cut, interrupted) = cut_once(proxy, local)?;
        total += cut;
        if !interrupted {
            break;
        }
    }
    Ok(total)
}

fn cut_once(proxy: Ipv4Addr, local: &HashSet<Ipv4Addr>) -> io::Result<(usize, bool)> {
    let sock = nfnl::socket()?;
    let mut interrupted = false;
    let dump = nfnl::request(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        nfnl::NLM_F_REQUEST | nfnl::NLM_F_DUMP,
        1,
        AF_INET,
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
            AF_INET,
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

const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_MARK: u16 = 8;

/// The conntrack request for the TCP connection whose reply direction goes from
/// `local` (the proxy's end) to `peer`: after DNAT that is the one unique key of the
/// container's connection.
fn mark_request(local: SocketAddrV4, peer: SocketAddrV4) -> Vec<u8> {
    let mut ip = Vec::new();
    nfnl::put_attr(&mut ip, CTA_IP_V4_SRC, &local.ip().octets());
    nfnl::put_attr(&mut ip, CTA_IP_V4_DST, &peer.ip().octets());
    let mut proto = Vec::new();
    nfnl::put_attr(&mut proto, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
    nfnl::put_attr(&mut proto, CTA_PROTO_SRC_PORT, &local.port().to_be_bytes());
    nfnl::put_attr(&mut proto, CTA_PROTO_DST_PORT, &peer.port().to_be_bytes());
    let mut tuple = Vec::new();
    nfnl::put_attr(&mut tuple, CTA_TUPLE_IP | nfnl::NLA_F_NESTED, &ip);
    nfnl::put_attr(&mut tuple, CTA_TUPLE_PROTO | nfnl::NLA_F_NESTED, &proto);
    let mut body = Vec::new();
    nfnl::put_attr(&mut body, CTA_TUPLE_REPLY | nfnl::NLA_F_NESTED, &tuple);
    nfnl::request(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        nfnl::NLM_F_REQUEST,
        1,
        AF_INET,
        &body,
    )
}

/// The connection mark of the TCP connection accepted at `local` from `peer`; `None`
/// if conntrack has no such connection (a host process on loopback may not be
/// tracked). The bridge table stamps container connections with their bridge port.
pub fn connection_mark(local: SocketAddrV4, peer: SocketAddrV4) -> io::Result<Option<u32>> {
    let sock = nfnl::socket()?;
    let timeout = nix::sys::time::TimeVal::new(1, 0);
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(io::Error::from)?;
    sock.send(&mark_request(local, peer), 0)?;
    let mut buf = vec![0u8; 8192];
    let n = sock.recv(&mut &mut buf[..], 0)?;
    let Some(m) = nfnl::messages(&buf[..n]).next() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "conntrack sent no answer",
        ));
    };
    match m.error_code() {
        Some(code) if -code == libc::ENOENT => return Ok(None),
        Some(code) => return Err(io::Error::from_raw_os_error(-code)),
        None => {}
    }
    let mark = m
        .attrs()
        .get(CTA_MARK)
        .and_then(|a| a.value.get(..4))
        .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
    Ok(Some(mark.unwrap_or(0)))
}

/// IPv4 addresses configured on this host (in the current network namespace).
pub fn local_ipv4_addrs() -> io::Result<HashSet<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter_map(|a| {
            a.address
                .and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROXY: Ipv4Addr = Ipv4Addr::new(169, 254, 93, 254);

    fn local() -> HashSet<Ipv4Addr> {
        [Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::LOCALHOST].into()
    }

    #[test]
    fn container_flow_straight_to_the_metadata_service_is_cut() {
        let e = Entry {
            orig_src: Ipv4Addr::new(172, 17, 0, 2),
            orig_dst: IMDS_V4,
            reply_src: IMDS_V4,
        };
        assert!(is_stale_container_flow(&e, PROXY, &local()));
    }

    #[test]
    fn flow_dnated_elsewhere_by_an_older_rule_is_cut() {
        let e = Entry {
            orig_src: Ipv4Addr::new(172, 17, 0, 2),
            orig_dst: IMDS_V4,
            reply_src: Ipv4Addr::new(172, 17, 0, 1),
        };
        assert!(is_stale_container_flow(&e, PROXY, &local()));
    }

    #[test]
    fn flows_already_at_the_proxy_host_flows_and_other_destinations_are_kept() {
        let to_proxy = Entry {
            orig_src: Ipv4Addr::new(172, 17, 0, 2),
            orig_dst: IMDS_V4,
            reply_src: PROXY,
        };
        let host = Entry {
            orig_src: Ipv4Addr::new(10, 0, 0, 5),
            orig_dst: IMDS_V4,
            reply_src: IMDS_V4,
        };
        let other = Entry {
            orig_src: Ipv4Addr::new(172, 17, 0, 2),
            orig_dst: Ipv4Addr::new(1, 1, 1, 1),
            reply_src: Ipv4Addr::new(1, 1, 1, 1),
        };
        for e in [to_proxy, host, other] {
            assert!(!is_stale_container_flow(&e, PROXY, &local()), "{e:?}");
        }
    }
}
