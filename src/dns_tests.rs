use super::*;
use std::net::Ipv4Addr;

/// A query for `name` (dotted, no trailing dot) of type `qtype`, class IN, with RD set,
/// and an OPT record of `edns` version if given.
fn query(id: u16, name: &str, qtype: u16, edns: Option<u8>) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&FLAG_RD.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(version) = edns {
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, version, 0x80, 0, 0, 0]);
    }
    q
}

const AAAA: u16 = 28;
const MX: u16 = 15;

/// The parts of an answer a client looks at.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    id: u16,
    flags: u16,
    rcode: u8,
    counts: [u16; 4],
    /// A records: (TTL, address).
    a: Vec<(u32, Ipv4Addr)>,
    /// The OPT record's extended RCODE, if there is one.
    ext_rcode: Option<u8>,
}

fn read(r: &[u8], q: &[u8]) -> Parsed {
    let u16_ = |at: usize| u16::from_be_bytes([r[at], r[at + 1]]);
    let counts = [u16_(4), u16_(6), u16_(8), u16_(10)];
    let mut at = 12;
    if counts[0] == 1 {
        // The question comes back exactly as asked.
        let qlen = name_end(q, 12).unwrap() + 4 - 12;
        assert_eq!(&r[12..12 + qlen], &q[12..12 + qlen]);
        at += qlen;
    }
    let mut a = Vec::new();
    for _ in 0..counts[1] {
        assert_eq!(
            &r[at..at + 2],
            &[0xC0, 12],
            "the name points at the question"
        );
        assert_eq!((u16_(at + 2), u16_(at + 4), u16_(at + 10)), (1, 1, 4));
        let ttl = u32::from_be_bytes(r[at + 6..at + 10].try_into().unwrap());
        let ip = Ipv4Addr::new(r[at + 12], r[at + 13], r[at + 14], r[at + 15]);
        a.push((ttl, ip));
        at += 16;
    }
    let mut ext_rcode = None;
    if counts[3] == 1 {
        assert_eq!((r[at], u16_(at + 1), u16_(at + 3)), (0, 41, EDNS_PAYLOAD));
        ext_rcode = Some(r[at + 5]);
        assert_eq!(u16_(at + 9), 0);
        at += 11;
    }
    assert_eq!(at, r.len(), "nothing after the records");
    Parsed {
        id: u16_(0),
        flags: u16_(2) & 0xFFF0,
        rcode: r[3] & 0xF,
        counts,
        a,
        ext_rcode,
    }
}

fn ask(q: &[u8]) -> Parsed {
    read(&answer(q).expect("an answer"), q)
}

const ANSWERED: u16 = FLAG_QR | FLAG_AA | FLAG_RD | FLAG_RA;

#[test]
fn a_queries_for_the_metadata_names_get_the_metadata_address() {
    for name in ["metadata.google.internal", "metadata"] {
        let q = query(0xbeef, name, TYPE_A, None);
        assert_eq!(
            ask(&q),
            Parsed {
                id: 0xbeef,
                flags: ANSWERED,
                rcode: 0,
                counts: [1, 1, 0, 0],
                a: vec![(TTL_SECS, Ipv4Addr::new(169, 254, 169, 254))],
                ext_rcode: None,
            },
            "{name}"
        );
    }
    // ANY gets the A record too.
    assert_eq!(
        ask(&query(1, "metadata.google.internal", TYPE_ANY, None))
            .a
            .len(),
        1
    );
}

#[test]
fn other_types_for_the_metadata_names_get_no_data() {
    for qtype in [AAAA, MX] {
        let p = ask(&query(7, "metadata.google.internal", qtype, None));
        assert_eq!((p.rcode, p.counts, p.flags), (0, [1, 0, 0, 0], ANSWERED));
    }
}

#[test]
fn the_wire_names_the_firewall_matches_are_the_answered_names_in_lowercase() {
    assert_eq!(
        &query(0, "metadata.google.internal", 1, None)[12..38],
        NAMES[0]
    );
    assert_eq!(&query(0, "metadata", 1, None)[12..22], NAMES[1]);
    // Asked directly (not through the firewall, which only redirects lowercase), any
    // case is the same name.
    assert_eq!(
        ask(&query(2, "Metadata.Google.Internal", TYPE_A, None))
            .a
            .len(),
        1
    );
}

#[test]
fn other_names_and_classes_are_refused_with_the_question() {
    for name in [
        "example.com",
        "metadata.google.internal.example.com",
        "google.internal",
        "metadat",
        "",
    ] {
        let p = ask(&query(3, name, TYPE_A, None));
        assert_eq!((p.rcode, p.counts), (RCODE_REFUSED, [1, 0, 0, 0]), "{name}");
        assert_eq!(p.flags & FLAG_AA, 0, "{name}");
    }
    let mut chaos = query(4, "metadata.google.internal", TYPE_A, None);
    let class_at = chaos.len() - 2;
    chaos[class_at..].copy_from_slice(&3u16.to_be_bytes());
    assert_eq!(ask(&chaos).rcode, RCODE_REFUSED);
}

#[test]
fn edns_queries_get_an_opt_record_and_unknown_versions_badvers() {
    let p = ask(&query(5, "metadata.google.internal", TYPE_A, Some(0)));
    assert_eq!((p.rcode, p.counts, p.ext_rcode), (0, [1, 1, 0, 1], Some(0)));
    let p = ask(&query(5, "metadata.google.internal", TYPE_A, Some(1)));
    assert_eq!(
        (p.rcode, p.counts, p.ext_rcode),
        (0, [1, 0, 0, 1], Some(EXT_RCODE_BADVERS))
    );
    // EDNS options are carried over without being read.
    let mut q = query(5, "metadata", TYPE_A, Some(0));
    let rdlen_at = q.len() - 2;
    q[rdlen_at..].copy_from_slice(&4u16.to_be_bytes());
    q.extend_from_slice(&[0, 10, 0, 0]);
    assert_eq!(ask(&q).a.len(), 1);
}

#[test]
fn responses_and_scraps_are_never_answered() {
    let good = query(6, "metadata.google.internal", TYPE_A, None);
    for n in 0..12 {
        assert_eq!(answer(&good[..n]), None, "{n} bytes");
    }
    let mut response = good.clone();
    response[2] |= 0x80;
    assert_eq!(answer(&response), None);
    // Our own answer fed back is a response too: no loop between two responders.
    assert_eq!(answer(&answer(&good).unwrap()), None);
}

#[test]
fn malformed_queries_get_formerr_and_other_opcodes_notimp() {
    let good = query(8, "metadata.google.internal", TYPE_A, None);
    let formerr = |q: &[u8]| {
        let p = ask(q);
        assert_eq!(
            (p.id, p.rcode, p.counts),
            (8, RCODE_FORMERR, [0; 4]),
            "{q:?}"
        );
    };
    // Cut anywhere inside the question.
    for n in 12..good.len() {
        formerr(&good[..n]);
    }
    // Trailing bytes, two questions, none, an answer or authority record.
    let mut trailing = good.clone();
    trailing.push(0);
    formerr(&trailing);
    for (at, v) in [(5, 2), (5, 0), (7, 1), (9, 1)] {
        let mut q = good.clone();
        q[at] = v;
        formerr(&q);
    }
    // A compression pointer in the question's name.
    let mut pointer = good.clone();
    pointer[12 + 9] = 0xC0;
    pointer[12 + 10] = 12;
    formerr(&pointer);
    // A name longer than 255 bytes.
    let long = query(8, &vec!["a".repeat(63); 5].join("."), TYPE_A, None);
    formerr(&long);
    // An additional record that is not OPT, or an OPT with a wrong length.
    let mut not_opt = query(8, "metadata", TYPE_A, Some(0));
    let t = not_opt.len() - 10;
    not_opt[t] = 1;
    formerr(&not_opt);
    let mut bad_len = query(8, "metadata", TYPE_A, Some(0));
    let l = bad_len.len() - 1;
    bad_len[l] = 9;
    formerr(&bad_len);

    let mut update = good.clone();
    update[2] |= 5 << 3;
    let p = ask(&update);
    assert_eq!((p.rcode, p.counts), (RCODE_NOTIMP, [0; 4]));
}

#[test]
fn arbitrary_bytes_never_panic_and_answers_stay_small() {
    // Every single-byte change of a valid query, then pseudo-random datagrams.
    let good = query(9, "metadata.google.internal", TYPE_A, Some(0));
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for at in 0..good.len() {
        for v in [0u8, 1, 0x3f, 0x40, 0x80, 0xc0, 0xff] {
            let mut q = good.clone();
            q[at] = v;
            cases.push(q);
        }
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let len = (next() % 80) as usize;
        let mut q: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Often a plausible header, so that the parser gets past it.
        if len >= 12 && next() % 2 == 0 {
            q[2] &= 0x07;
            q[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, (next() % 2) as u8]);
        }
        cases.push(q);
    }
    for q in cases {
        if let Some(r) = answer(&q) {
            assert!(r.len() <= q.len() + 16 + 11, "{q:?} -> {r:?}");
            assert_eq!(&r[..2], &q[..2], "the ID is kept");
            assert_ne!(r[2] & 0x80, 0, "an answer is a response");
        }
    }
}
