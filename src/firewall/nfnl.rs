//! Just enough nfnetlink framing to read nf_tables notifications and to dump and delete
//! conntrack entries: netlink headers, the nfgenmsg header and attribute walking.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

pub const NLMSG_HDRLEN: usize = 16;
pub const NFGENMSG_LEN: usize = 4;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// One netlink message borrowed from a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// Everything after the netlink header.
    pub payload: &'a [u8],
}

impl<'a> Msg<'a> {
    /// nfgenmsg family (for nfnetlink messages).
    pub fn family(&self) -> Option<u8> {
        self.payload.first().copied()
    }
    /// Attributes after the nfgenmsg header.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs(self.payload.get(NFGENMSG_LEN..).unwrap_or(&[]))
    }
    /// For NLMSG_ERROR: the (negative) errno, 0 for an ACK.
    pub fn error_code(&self) -> Option<i32> {
        (self.ty == NLMSG_ERROR)
            .then(|| {
                self.payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            })
            .flatten()
    }
}

/// Iterates the netlink messages in a buffer, stopping at the first malformed one.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let msg = Msg {
            ty: u16::from_ne_bytes(rest[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(rest[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(rest[8..12].try_into().ok()?),
            pid: u32::from_ne_bytes(rest[12..16].try_into().ok()?),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(msg)
    })
}

/// An attribute: its type (flags masked off), value and the whole TLV as sent.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub ty: u16,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

impl<'a> Attr<'a> {
    pub fn nested(&self) -> Attrs<'a> {
        Attrs(self.value)
    }
    pub fn str(&self) -> &'a str {
        let v = self.value.split(|b| *b == 0).next().unwrap_or(&[]);
        std::str::from_utf8(v).unwrap_or("")
    }
}

/// Iterator over netlink attributes.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a>(&'a [u8]);

impl<'a> Attrs<'a> {
    /// The first attribute of this type.
    pub fn get(self, ty: u16) -> Option<Attr<'a>> {
        self.into_iter().find(|a| a.ty == ty)
    }
}

impl<'a> IntoIterator for Attrs<'a> {
    type Item = Attr<'a>;
    type IntoIter = Box<dyn Iterator<Item = Attr<'a>> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        let mut rest = self.0;
        Box::new(std::iter::from_fn(move || {
            if rest.len() < 4 {
                return None;
            }
            let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
            let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
            if len < 4 || len > rest.len() {
                return None;
            }
            let a = Attr {
                ty,
                value: &rest[4..len],
                raw: &rest[..len],
            };
            rest = rest.get(align4(len)..).unwrap_or(&[]);
            Some(a)
        }))
    }
}

/// `NLA_F_NESTED`: the attribute holds attributes.
pub const NLA_F_NESTED: u16 = 0x8000;

/// Appends one attribute (padded to 4 bytes) to `out`.
pub fn put_attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one nfnetlink request: header, nfgenmsg (version 0, res_id 0) and attributes.
pub fn request(ty: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

/// A netfilter netlink socket bound to an automatic port id.
pub fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_NETFILTER)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

/// ctnetlink's message types and attributes (linux/netfilter/nfnetlink_conntrack.h):
/// the start-up flow cut dumps and deletes entries, the proxy reads one entry's mark.
pub mod ct {
    pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    pub const IPCTNL_MSG_CT_GET: u16 = 1;
    pub const IPCTNL_MSG_CT_DELETE: u16 = 2;
    pub const AF_INET: u8 = libc::AF_INET as u8;
    pub const AF_INET6: u8 = libc::AF_INET6 as u8;
    pub const CTA_TUPLE_ORIG: u16 = 1;
    pub const CTA_TUPLE_REPLY: u16 = 2;
    pub const CTA_ZONE: u16 = 18;
    pub const CTA_TUPLE_IP: u16 = 1;
    pub const CTA_IP_V4_SRC: u16 = 1;
    pub const CTA_IP_V4_DST: u16 = 2;
    pub const CTA_IP_V6_SRC: u16 = 3;
    pub const CTA_IP_V6_DST: u16 = 4;

    pub const CTA_TUPLE_PROTO: u16 = 2;
    pub const CTA_PROTO_NUM: u16 = 1;
    pub const CTA_PROTO_SRC_PORT: u16 = 2;
    pub const CTA_PROTO_DST_PORT: u16 = 3;
    pub const CTA_MARK: u16 = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_the_parser() {
        let attr = [8u8, 0, 1, 0, b'a', b'b', 0, 0];
        let m = request(0x0a02, NLM_F_REQUEST, 7, 2, &attr);
        let msgs: Vec<_> = messages(&m).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, 0x0a02);
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(msgs[0].family(), Some(2));
        assert_eq!(msgs[0].attrs().get(1).unwrap().str(), "ab");
    }

    #[test]
    fn truncated_input_yields_nothing_rather_than_panicking() {
        let m = request(1, 0, 0, 2, &[200, 0, 1, 0]);
        assert_eq!(messages(&m[..10]).count(), 0);
        let msg = messages(&m).next().unwrap();
        assert_eq!(
            msg.attrs().into_iter().count(),
            0,
            "attribute longer than buffer is ignored"
        );
    }
}
