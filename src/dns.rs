//! A DNS responder for the one name Google's libraries use for the metadata service.
//!
//! google-auth, gcp_auth and google-cloud-auth reach the metadata service as
//! `metadata.google.internal` (some also try the bare `metadata`), which resolves only on
//! GCE. The firewall plan sends container DNS queries for exactly those names, and no
//! others, to this responder (see `firewall::plan`), which answers A with
//! 169.254.169.254 (the address the proxy intercepts) and every other type with no data:
//! GCE has no IPv6 metadata address that containers could use instead.
//!
//! Parsing is strict and bounded by the datagram: one pass over at most one question and
//! one OPT record, no name decompression, no allocation beyond the answer. Responses
//! are never answered (no loops), malformed queries get FORMERR, other opcodes NOTIMP,
//! other names and classes REFUSED.

use std::future::Future;

use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::addrs::IMDS_V4;

/// The port the responder listens on and the firewall redirects.
pub const PORT: u16 = 53;

/// The question names answered, in wire form (length-prefixed labels, lowercase). The
/// firewall matches these bytes at the start of the question, so a name typed with an
/// upper-case letter is not redirected (and resolves as it would without the daemon).
pub const NAMES: [&[u8]; 2] = [
    b"\x08metadata\x06google\x08internal\x00",
    b"\x08metadata\x00",
];

/// Offset of the question section in a DNS message.
pub const QUESTION_OFFSET: usize = 12;
/// Offset of QDCOUNT in a DNS message.
pub const QDCOUNT_OFFSET: usize = 4;

/// Time to live of the answer: short, so a container that moves to a host without the
/// daemon does not keep the address long.
pub const TTL_SECS: u32 = 60;

/// The largest datagram read; anything longer arrives cut and is answered FORMERR.
const MAX_QUERY: usize = 4096;
/// The UDP payload size announced in EDNS answers.
const EDNS_PAYLOAD: u16 = 1232;

const TYPE_A: u16 = 1;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

const RCODE_FORMERR: u8 = 1;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;
/// BADVERS (16): 0 in the header, 1 in the OPT record's extended RCODE.
const EXT_RCODE_BADVERS: u8 = 1;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

/// What a query asked, once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Question<'a> {
    /// The question section as received (name, type, class), echoed in the answer.
    raw: &'a [u8],
    /// The name in wire form.
    name: &'a [u8],
    qtype: u16,
    qclass: u16,
}

/// The EDNS record of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edns {
    version: u8,
}

/// Why a query is refused before its question is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    /// Answer FORMERR.
    Format,
    /// Answer NOTIMP (an opcode other than QUERY).
    NotImplemented,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The end of the uncompressed name starting at `at` (one past its root label).
fn name_end(b: &[u8], mut at: usize) -> Option<usize> {
    let start = at;
    loop {
        let len = *b.get(at)? as usize;
        // 0xC0: compression pointer, 0x40/0x80: obsolete label types; none belongs in a
        // query's first name.
        if len & 0xC0 != 0 {
            return None;
        }
        at += 1 + len;
        if at - start > 255 {
            return None;
        }
        if len == 0 {
            return (at <= b.len()).then_some(at);
        }
    }
}

/// Parses a query: `Ok(None)` if it must not be answered at all (too short to carry an
/// ID, or a response).
fn parse(msg: &[u8]) -> Result<Option<(Question<'_>, Option<Edns>)>, Malformed> {
    let Some(flags) = u16_at(msg, 2).filter(|_| msg.len() >= QUESTION_OFFSET) else {
        return Ok(None);
    };
    if flags & FLAG_QR != 0 {
        return Ok(None);
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(Malformed::NotImplemented);
    }
    let count = |at| u16_at(msg, at).unwrap_or(0);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return Err(Malformed::Format);
    }
    let name_to = name_end(msg, QUESTION_OFFSET).ok_or(Malformed::Format)?;
    let qtype = u16_at(msg, name_to).ok_or(Malformed::Format)?;
    let qclass = u16_at(msg, name_to + 2).ok_or(Malformed::Format)?;
    let question_to = name_to + 4;
    let question = Question {
        raw: &msg[QUESTION_OFFSET..question_to],
        name: &msg[QUESTION_OFFSET..name_to],
        qtype,
        qclass,
    };
    let mut at = question_to;
    let mut edns = None;
    if ar == 1 {
        // The one additional record a query may carry: OPT, owned by the root.
        if msg.get(at) != Some(&0) || u16_at(msg, at + 1) != Some(TYPE_OPT) {
            return Err(Malformed::Format);
        }
        let version = *msg.get(at + 6).ok_or(Malformed::Format)?;
        let rdlen = u16_at(msg, at + 9).ok_or(Malformed::Format)? as usize;
        at += 11 + rdlen;
        edns = Some(Edns { version });
    }
    if at != msg.len() {
        return Err(Malformed::Format);
    }
    Ok(Some((question, edns)))
}

/// Whether `name` (wire form) is one of [`NAMES`], ignoring ASCII case.
fn is_metadata_name(name: &[u8]) -> bool {
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// A response header: the query's ID, QR, the query's RD, RA, and `rcode`.
fn header(query: &[u8], aa: bool, rcode: u8, counts: [u16; 4]) -> Vec<u8> {
    let rd = u16_at(query, 2).unwrap_or(0) & FLAG_RD;
    let flags = FLAG_QR | rd | FLAG_RA | if aa { FLAG_AA } else { 0 } | u16::from(rcode & 0xF);
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out
}

/// The answer to one datagram, or `None` to stay silent.
pub fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let (question, edns) = match parse(query) {
        Ok(Some(q)) => q,
        Ok(None) => return None,
        Err(Malformed::Format) => return Some(header(query, false, RCODE_FORMERR, [0; 4])),
        Err(Malformed::NotImplemented) => return Some(header(query, false, RCODE_NOTIMP, [0; 4])),
    };
    let badvers = edns.is_some_and(|e| e.version != 0);
    let ours = is_metadata_name(question.name) && question.qclass == CLASS_IN;
    let a = ours && !badvers && matches!(question.qtype, TYPE_A | TYPE_ANY);
    let rcode = if ours { 0 } else { RCODE_REFUSED };
    let mut out = header(
        query,
        ours,
        rcode,
        [1, u16::from(a), 0, u16::from(edns.is_some())],
    );
    out.extend_from_slice(question.raw);
    if a {
        // The name by a pointer to the question's, type A, class IN, TTL, 4 bytes.
        out.extend_from_slice(&[0xC0, QUESTION_OFFSET as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL_SECS.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&IMDS_V4.octets());
    }
    if edns.is_some() {
        // Root name, OPT, our payload size, extended RCODE, version 0, no flags, no data.
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[if badvers { EXT_RCODE_BADVERS } else { 0 }, 0, 0, 0]);
        out.extend_from_slice(&0u16.to_be_bytes());
    }
    Some(out)
}

/// Answers queries on `socket` until `shutdown` completes, one datagram at a time.
pub async fn serve(socket: UdpSocket, shutdown: impl Future<Output = ()>) {
    let mut buf = vec![0u8; MAX_QUERY];
    tokio::pin!(shutdown);
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // An ICMP error for an earlier answer, or a shortage: not fatal.
                    debug!(error = %e, "DNS receive failed");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let Some(reply) = answer(&buf[..n]) else {
            continue;
        };
        debug!(client = %peer.ip(), bytes = n, rcode = reply[3] & 0xF, answers = reply[7], "dns");
        if let Err(e) = socket.send_to(&reply, peer).await {
            warn!(client = %peer.ip(), error = %e, "failed to send a DNS answer");
        }
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
