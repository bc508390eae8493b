//! Where an accepted connection came from, as the kernel recorded it: the conntrack
//! mark the ruleset stamped it with (the bridge port its packets entered by), read per
//! connection over ctnetlink; or, unstamped, whether its peer is this host.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use tracing::warn;

use crate::addrs::local_addrs;
use crate::firewall::nfnl;
use crate::firewall::nfnl::ct::{
    AF_INET, AF_INET6, CTA_IP_V4_DST, CTA_IP_V4_SRC, CTA_IP_V6_DST, CTA_IP_V6_SRC, CTA_MARK,
    CTA_PROTO_DST_PORT, CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_TUPLE_IP, CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY, IPCTNL_MSG_CT_GET, NFNL_SUBSYS_CTNETLINK,
};
use crate::ports::BridgePort;

/// Where a connection came from, as the kernel recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Through a container bridge, by this bridge port (its interface index).
    Port(BridgePort),
    /// From this host (loopback, no port stamp): a host process, or a container on
    /// `--network host`.
    Host,
    /// Neither (no stamp and not a local address): trusted with nothing.
    Elsewhere,
    /// The kernel could not be asked: nobody is named, the caller is told to retry.
    Unreadable,
}

/// Reads the origin of an accepted connection: a kernel side effect behind a trait so
/// the proxy can be tested without conntrack.
pub trait Origins: Send + Sync + std::fmt::Debug + 'static {
    fn origin(&self, local: SocketAddr, peer: SocketAddr) -> Origin;
}

/// The real one: the conntrack mark of the connection.
#[derive(Debug)]
pub struct ConntrackOrigins;

impl Origins for ConntrackOrigins {
    fn origin(&self, local: SocketAddr, peer: SocketAddr) -> Origin {
        let (local, peer) = (unmapped(local), unmapped(peer));
        if local.is_ipv4() != peer.is_ipv4() {
            return Origin::Elsewhere;
        }
        match connection_mark(local, peer) {
            Ok(Some(mark)) if mark != 0 => Origin::Port(BridgePort(mark)),
            Ok(_) => host_or_elsewhere(peer.ip()),
            Err(e) => {
                warn!(error = %e, "cannot read the connection's conntrack mark; the caller is told to retry");
                Origin::Unreadable
            }
        }
    }
}

/// `imds-proxy emulate`: no interception, no containers; every caller is the host.
#[derive(Debug)]
pub struct EveryoneIsHost;

impl Origins for EveryoneIsHost {
    fn origin(&self, _local: SocketAddr, _peer: SocketAddr) -> Origin {
        Origin::Host
    }
}

/// An IPv4-mapped IPv6 socket address is the IPv4 address it maps (conntrack tracks it
/// as IPv4); any other address stays as it is.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddrV4::new(ip, v6.port()).into(),
            None => a,
        },
        v4 => v4,
    }
}

/// Unstamped connections reach the proxy only over loopback (the ruleset refuses the
/// rest); a peer address of this host is a host process.
fn host_or_elsewhere(peer: IpAddr) -> Origin {
    if peer.is_loopback() || local_addrs().unwrap_or_default().contains(&peer) {
        Origin::Host
    } else {
        Origin::Elsewhere
    }
}

/// The conntrack request for the TCP connection whose reply direction goes from
/// `local` (the proxy's end) to `peer`: after DNAT that is the one unique key of the
/// container's connection. `None` if the two are of different families.
fn mark_request(local: SocketAddr, peer: SocketAddr, seq: u32) -> Option<Vec<u8>> {
    let mut ip = Vec::new();
    let family = match (local.ip(), peer.ip()) {
        (IpAddr::V4(l), IpAddr::V4(p)) => {
            nfnl::put_attr(&mut ip, CTA_IP_V4_SRC, &l.octets());
            nfnl::put_attr(&mut ip, CTA_IP_V4_DST, &p.octets());
            AF_INET
        }
        (IpAddr::V6(l), IpAddr::V6(p)) => {
            nfnl::put_attr(&mut ip, CTA_IP_V6_SRC, &l.octets());
            nfnl::put_attr(&mut ip, CTA_IP_V6_DST, &p.octets());
            AF_INET6
        }
        _ => return None,
    };
    let mut proto = Vec::new();
    nfnl::put_attr(&mut proto, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
    nfnl::put_attr(&mut proto, CTA_PROTO_SRC_PORT, &local.port().to_be_bytes());
    nfnl::put_attr(&mut proto, CTA_PROTO_DST_PORT, &peer.port().to_be_bytes());
    let mut tuple = Vec::new();
    nfnl::put_attr(&mut tuple, CTA_TUPLE_IP | nfnl::NLA_F_NESTED, &ip);
    nfnl::put_attr(&mut tuple, CTA_TUPLE_PROTO | nfnl::NLA_F_NESTED, &proto);
    let mut body = Vec::new();
    nfnl::put_attr(&mut body, CTA_TUPLE_REPLY | nfnl::NLA_F_NESTED, &tuple);
    Some(nfnl::request(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        nfnl::NLM_F_REQUEST,
        seq,
        family,
        &body,
    ))
}

/// The connection mark of the TCP connection accepted at `local` from `peer` (both
/// IPv4 or both IPv6); `None` if conntrack has no such connection (a host process on
/// loopback may not be tracked). The bridge table stamps container connections with
/// their bridge port.
pub fn connection_mark(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u32>> {
    thread_local! {
        /// One socket per thread, kept: opening, binding and closing one per request
        /// was a tenth of the proxy's time under load. Dropped after any error.
        static SOCKET: std::cell::RefCell<Option<(netlink_sys::Socket, u32)>> =
            const { std::cell::RefCell::new(None) };
    }
    SOCKET.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let sock = nfnl::socket()?;
            let timeout = nix::sys::time::TimeVal::new(1, 0);
            nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::ReceiveTimeout,
                &timeout,
            )
            .map_err(io::Error::from)?;
            *slot = Some((sock, 0));
        }
        let (sock, seq) = slot.as_mut().expect("set above");
        *seq = seq.wrapping_add(1);
        let result = ask_mark(sock, local, peer, *seq);
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// One conntrack GET on `sock`; answers to other sequence numbers (a request that
/// timed out earlier) are skipped, never read as this connection's.
fn ask_mark(
    sock: &netlink_sys::Socket,
    local: SocketAddr,
    peer: SocketAddr,
    seq: u32,
) -> io::Result<Option<u32>> {
    let request = mark_request(local, peer, seq).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{local} and {peer} are of different address families"),
        )
    })?;
    sock.send(&request, 0)?;
    let mut buf = [0u8; 8192];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let Some(m) = nfnl::messages(&buf[..n]).find(|m| m.seq == seq) else {
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "conntrack sent no answer",
                ));
            }
            continue;
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
        return Ok(Some(mark.unwrap_or(0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_request_names_the_family_of_its_addresses() {
        let v4 = mark_request(
            "169.254.93.254:80".parse().unwrap(),
            "10.88.0.2:40000".parse().unwrap(),
            7,
        )
        .unwrap();
        let v6 = mark_request(
            "[fdf3:6f62:ab7c::254]:80".parse().unwrap(),
            "[fd00:dead:beef::2]:40000".parse().unwrap(),
            8,
        )
        .unwrap();
        let family = |m: &[u8]| nfnl::messages(m).next().unwrap().family();
        assert_eq!(family(&v4), Some(AF_INET));
        assert_eq!(family(&v6), Some(AF_INET6));
        // Answers are matched to their request by sequence number.
        assert_eq!(nfnl::messages(&v4).next().unwrap().seq, 7);
        // The reply tuple carries 16-byte addresses under the IPv6 attribute types.
        let msg = nfnl::messages(&v6).next().unwrap();
        let reply = msg.attrs().get(CTA_TUPLE_REPLY).unwrap();
        let (src, dst) = crate::firewall::conntrack::tuple_addrs(reply).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            (src, dst),
            (ip("fdf3:6f62:ab7c::254"), ip("fd00:dead:beef::2"))
        );
        assert!(mark_request(
            "169.254.93.254:80".parse().unwrap(),
            "[fd00:dead:beef::2]:40000".parse().unwrap(),
            9
        )
        .is_none());
    }
}
