//! DNS for `metadata.google.internal`: the daemon answers containers' queries for that
//! name (and only those) with the metadata address, and with `gce_dns` off leaves every
//! query alone.

use std::time::Duration;

use harness::*;
use nix::sys::signal::Signal;

use super::QUICK;

/// A DNS query for `name` of type `qtype` (class IN, recursion desired).
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// The RCODE and the A records of a DNS answer to a query without compression in its
/// question (answers may point at it).
fn dns_a_records(r: &[u8]) -> (u8, Vec<std::net::Ipv4Addr>) {
    let mut at = 12;
    while r[at] != 0 {
        at += 1 + r[at] as usize;
    }
    at += 5;
    let mut out = Vec::new();
    for _ in 0..u16::from_be_bytes([r[6], r[7]]) {
        at += if r[at] & 0xC0 == 0xC0 {
            2
        } else {
            unreachable!()
        };
        let ty = u16::from_be_bytes([r[at], r[at + 1]]);
        let len = u16::from_be_bytes([r[at + 8], r[at + 9]]) as usize;
        if ty == 1 && len == 4 {
            out.push(std::net::Ipv4Addr::new(
                r[at + 10],
                r[at + 11],
                r[at + 12],
                r[at + 13],
            ));
        }
        at += 10 + len;
    }
    (r[3] & 0xF, out)
}

/// A stand-in for the resolver containers use: answers every A query with 192.0.2.53
/// and records every datagram it receives, with its sender.
#[derive(Clone, Default)]
struct FakeResolver {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Datagram>>>,
}

/// A datagram as received: sender and bytes.
type Datagram = (std::net::SocketAddr, Vec<u8>);

const FAKE_ANSWER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 53);

impl FakeResolver {
    fn start(ns: &Netns, addr: &str) -> Self {
        let fake = Self::default();
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let socket = ns.run(move || std::net::UdpSocket::bind(addr).expect("fake resolver bind"));
        let f = fake.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let q = buf[..n].to_vec();
                f.seen.lock().unwrap().push((peer, q.clone()));
                let mut r = q.clone();
                r[2] |= 0x80; // QR
                r[3] = 0x80; // RA, NOERROR
                r[6..8].copy_from_slice(&[0, 1]);
                r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
                r.extend_from_slice(&FAKE_ANSWER.octets());
                let _ = socket.send_to(&r, peer);
            }
        });
        fake
    }

    fn seen(&self) -> Vec<Datagram> {
        self.seen.lock().unwrap().clone()
    }
}

/// Sends `queries` one after another from one UDP socket in `ns` to `server`, and
/// returns each answer (None: no answer within two seconds).
fn ask_dns(ns: &Netns, server: &str, queries: Vec<Vec<u8>>) -> Vec<Option<Vec<u8>>> {
    let server: std::net::SocketAddr = server.parse().unwrap();
    ns.run(move || {
        let s = std::net::UdpSocket::bind(if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })
        .unwrap();
        s.connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        queries
            .into_iter()
            .map(|q| {
                s.send(&q).ok()?;
                let mut buf = [0u8; 1500];
                let n = s.recv(&mut buf).ok()?;
                Some(buf[..n].to_vec())
            })
            .collect()
    })
}

/// Adds a resolver namespace at 10.66.0.53 (and fd66::53 if `v6`), routed from the host
/// over a veth, as a container's upstream resolver would be.
fn resolver_namespace(tb: &Testbed, v6: bool) -> Netns {
    let ns = Netns::new("dns");
    tb.host.ip(&format!(
        "link add vdns type veth peer name eth0 netns {}",
        ns.name
    ));
    tb.host.ip("addr add 10.66.0.1/24 dev vdns");
    tb.host.ip("link set vdns up");
    ns.ip("addr add 10.66.0.53/24 dev eth0");
    ns.ip("link set eth0 up");
    ns.ip("route add default via 10.66.0.1");
    if v6 {
        tb.host.ip("addr add fd66::1/64 dev vdns nodad");
        ns.ip("addr add fd66::53/64 dev eth0 nodad");
        ns.ip("-6 route add default via fd66::1");
    }
    ns
}

const A: u16 = 1;
const AAAA: u16 = 28;
const METADATA_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);

#[test]
fn dns_queries_for_the_gce_metadata_name_and_only_those_are_answered_by_the_daemon() {
    require_root!();
    let tb = Testbed::new();
    let resolver_ns = resolver_namespace(&tb, false);
    let resolver = FakeResolver::start(&resolver_ns, "10.66.0.53:53");
    let server = "10.66.0.53:53";
    let ask = |queries: Vec<Vec<u8>>| ask_dns(&tb.container, server, queries);
    let a_records = |r: &Option<Vec<u8>>| dns_a_records(r.as_ref().expect("an answer"));

    // Without the daemon the resolver answers everything, the metadata name included.
    let before = ask(vec![dns_query(1, "metadata.google.internal", A)]);
    assert_eq!(a_records(&before[0]), (0, vec![FAKE_ANSWER]));
    assert_eq!(resolver.seen().len(), 1);

    let d = tb.daemon(&[]);
    d.wait_for("answering DNS for metadata.google.internal", QUICK);
    let seen_before = resolver.seen().len();
    for name in ["metadata.google.internal", "metadata"] {
        let r = ask(vec![dns_query(2, name, A), dns_query(3, name, AAAA)]);
        assert_eq!(a_records(&r[0]), (0, vec![METADATA_V4]), "{name}");
        // No IPv6 address: no data, not an error, so clients use the A record.
        assert_eq!(a_records(&r[1]), (0, vec![]), "{name}");
        let id = u16::from_be_bytes([r[0].as_ref().unwrap()[0], r[0].as_ref().unwrap()[1]]);
        assert_eq!(id, 2);
    }
    assert_eq!(
        resolver.seen().len(),
        seen_before,
        "the resolver saw a metadata query"
    );

    // Every other query reaches the resolver unchanged, from the container itself.
    let others = [
        dns_query(4, "example.com", A),
        dns_query(5, "metadata.google.internal.example.com", A),
        dns_query(6, "google.internal", A),
        // Upper case is not matched (documented): it resolves as without the daemon.
        dns_query(7, "METADATA.GOOGLE.INTERNAL", A),
    ];
    for q in &others {
        let r = ask(vec![q.clone()]);
        assert_eq!(a_records(&r[0]), (0, vec![FAKE_ANSWER]));
        let (peer, bytes) = resolver.seen().last().unwrap().clone();
        assert_eq!(&bytes, q, "the query was changed on its way");
        assert_eq!(peer.ip().to_string(), "10.88.0.2");
    }

    // One socket, both orders: a metadata query and another query to the same server
    // from the same port never share a flow (their own conntrack zone).
    let r = ask(vec![
        dns_query(8, "metadata.google.internal", A),
        dns_query(9, "example.org", A),
        dns_query(10, "metadata.google.internal", A),
    ]);
    assert_eq!(a_records(&r[0]), (0, vec![METADATA_V4]));
    assert_eq!(a_records(&r[1]), (0, vec![FAKE_ANSWER]));
    assert_eq!(a_records(&r[2]), (0, vec![METADATA_V4]));
    let r = ask(vec![
        dns_query(11, "example.net", A),
        dns_query(12, "metadata", A),
    ]);
    assert_eq!(a_records(&r[0]), (0, vec![FAKE_ANSWER]));
    assert_eq!(a_records(&r[1]), (0, vec![METADATA_V4]));
    // Of all the queries since start-up, the resolver saw exactly the others.
    let since: Vec<Vec<u8>> = resolver.seen()[seen_before..]
        .iter()
        .map(|(_, q)| q.clone())
        .collect();
    let mut expected = others.to_vec();
    expected.extend([
        dns_query(9, "example.org", A),
        dns_query(11, "example.net", A),
    ]);
    assert_eq!(since, expected);

    // Real clients: busybox's resolver, and glibc's (getaddrinfo) through a
    // resolv.conf that names the resolver.
    let out = tb.container.exec(&[
        "busybox",
        "nslookup",
        "metadata.google.internal",
        "10.66.0.53",
    ]);
    assert!(out.contains("Address: 169.254.169.254"), "{out}");
    let etc = format!("/etc/netns/{}", tb.container.name);
    let _cleanup = RemoveDir(etc.clone());
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(format!("{etc}/resolv.conf"), "nameserver 10.66.0.53\n").unwrap();
    for name in ["metadata.google.internal", "metadata"] {
        let out = tb.container.exec(&["getent", "ahostsv4", name]);
        assert!(out.starts_with("169.254.169.254 "), "{name}: {out}");
        let out = tb.container.exec(&["getent", "ahosts", name]);
        assert!(out.starts_with("169.254.169.254 "), "{name}: {out}");
    }
    // And the name leads to the metadata service through the proxy.
    let out = tb.container.exec(&[
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "--header",
        "Metadata-Flavor: Google",
        "http://metadata.google.internal/computeMetadata/v1/instance/id",
    ]);
    assert!(out.contains("fake-imds"), "{out}");
    assert_eq!(tb.imds.last().target, "/computeMetadata/v1/instance/id");

    // Closed (SIGTERM), queries take their own path again.
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    let r = ask(vec![dns_query(13, "metadata.google.internal", A)]);
    assert_eq!(a_records(&r[0]), (0, vec![FAKE_ANSWER]));
}

#[test]
fn gce_dns_off_leaves_every_query_alone_and_ipv6_queries_are_answered_too() {
    require_root!();
    let tb = Testbed::new();
    tb.enable_ipv6();
    let resolver_ns = resolver_namespace(&tb, true);
    let resolver = FakeResolver::start(&resolver_ns, "10.66.0.53:53");
    let resolver6 = FakeResolver::start(&resolver_ns, "[fd66::53]:53");
    let a_records = |r: &Option<Vec<u8>>| dns_a_records(r.as_ref().expect("an answer"));

    let d = tb.daemon(&["--gce-dns", "false"]);
    let r = ask_dns(
        &tb.container,
        "10.66.0.53:53",
        vec![dns_query(1, "metadata.google.internal", A)],
    );
    assert_eq!(a_records(&r[0]), (0, vec![FAKE_ANSWER]));
    assert_eq!(resolver.seen().len(), 1);
    assert!(!tb.host.nft_table().unwrap().contains("port 53"));
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());

    // On by default, over IPv6 as well (a resolver the container reaches over IPv6).
    let _d = tb.daemon(&[]);
    let r = ask_dns(
        &tb.container,
        "[fd66::53]:53",
        vec![
            dns_query(2, "metadata.google.internal", A),
            dns_query(3, "example.com", A),
        ],
    );
    assert_eq!(a_records(&r[0]), (0, vec![METADATA_V4]));
    assert_eq!(a_records(&r[1]), (0, vec![FAKE_ANSWER]));
    let seen6 = resolver6.seen();
    assert_eq!(seen6.len(), 1, "{seen6:?}");
    assert_eq!(seen6[0].1, dns_query(3, "example.com", A));
    assert_eq!(seen6[0].0.ip().to_string(), "fd00:dead:beef::2");
}

/// Removes a directory when dropped.
struct RemoveDir(String);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
