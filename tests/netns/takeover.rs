//! A metadata connection's segments that enter the bridge by another port than its first
//! packet did are dropped by the kernel, before the proxy; new connections are not.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::http::read_head;
use harness::*;

use super::QUICK;

/// How long a request on the taken-over connection is given to draw any answer.
const SILENCE: Duration = Duration::from_millis(2500);

/// Sends a keep-alive GET of `path` on `conn`: the status of the answer read from
/// `answers`, or the read's error.
fn ask(conn: &mut TcpStream, answers: &mut impl BufRead, path: &str) -> std::io::Result<u16> {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {IMDS}\r\n\r\n").as_bytes())?;
    // Nothing within the read timeout is an error here; read_head would take it for
    // the end of the connection.
    if answers.fill_buf()?.is_empty() {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    let head = read_head(answers).ok_or(ErrorKind::UnexpectedEof)?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a content-length");
    answers.read_exact(&mut vec![0u8; length])?;
    Ok(head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line"))
}

/// The packets of the host's nftables counter `name` in table `ip probe`.
fn counted(host: &Netns, name: &str) -> u64 {
    let out = host.exec(&["nft", "list", "counter", "ip", "probe", name]);
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {out}"))
}

#[test]
fn segments_of_a_connection_that_arrive_by_another_bridge_port_are_dropped_by_the_kernel() {
    require_root!();
    let tb = Testbed::new();
    // The container has a second link on the bridge: port P2 (vc0b) beside its own
    // P1 (vc0). Its first connection leaves by eth0, through P1.
    tb.host.ip(&format!(
        "link add vc0b type veth peer name eth1 netns {}",
        tb.container.name
    ));
    tb.host.ip("link set vc0b master br0");
    tb.host.ip("link set vc0b up");
    let ifindex = |link: &str| {
        tb.host
            .exec(&["cat", &format!("/sys/class/net/{link}/ifindex")])
            .trim()
            .to_owned()
    };
    let (p1, p2) = (ifindex("vc0"), ifindex("vc0b"));
    let d = tb.daemon(&[]);
    // Test-side counters around the guard (priority mangle): metadata segments stamped
    // with P2 as they reach the host's IP layer, and those still there after it.
    tb.host.nft(&format!(
        "table ip probe {{
            counter seen {{}}
            counter passed {{}}
            chain before {{ type filter hook prerouting priority mangle - 10; ip daddr {IMDS} tcp dport 80 meta mark {p2} counter name seen; }}
            chain after {{ type filter hook prerouting priority mangle + 10; ip daddr {IMDS} tcp dport 80 meta mark {p2} counter name passed; }}
        }}"
    ));

    let mut conn = tb
        .container
        .run(|| TcpStream::connect_timeout(&format!("{IMDS}:80").parse().unwrap(), QUICK).unwrap());
    conn.set_read_timeout(Some(SILENCE)).unwrap();
    let mut answers = BufReader::new(conn.try_clone().unwrap());
    assert_eq!(ask(&mut conn, &mut answers, "/before").unwrap(), 200);
    d.wait_for(&format!("origin=Port({p1})"), QUICK);
    let audited = d.log_count(AUDIT);
    let upstream = tb.imds.count();

    // The same established connection now leaves by P2: eth1 takes eth0's MAC, address
    // and route, as a container that poisoned the bridge's forwarding table with
    // another's MAC would inject segments into that container's open connection.
    let mac = tb
        .container
        .exec(&["cat", "/sys/class/net/eth0/address"])
        .trim()
        .to_owned();
    tb.container.ip("link set eth0 down");
    tb.container.ip("addr del 10.88.0.2/24 dev eth0");
    tb.container.ip(&format!("link set eth1 address {mac}"));
    tb.container.ip("addr add 10.88.0.2/24 dev eth1");
    tb.container.ip("link set eth1 up");
    tb.container.ip("route add default via 10.88.0.1 dev eth1");

    let r = ask(&mut conn, &mut answers, "/after-takeover");
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the taken-over connection was answered: {r:?}"
    );
    // The segments reached the host by P2 and went no further than the guard: the
    // proxy saw no request, and the connection still carries P1.
    assert!(counted(&tb.host, "seen") > 0, "no segment came in by P2");
    assert_eq!(
        counted(&tb.host, "passed"),
        0,
        "segments from P2 passed the guard"
    );
    assert_eq!(d.log_count(AUDIT), audited, "the proxy answered a request");
    assert_eq!(tb.imds.count(), upstream);
    let flows = tb.host.exec(&["conntrack", "-L", "-d", IMDS, "-p", "tcp"]);
    assert!(
        flows
            .lines()
            .any(|l| l.contains("ESTABLISHED") && l.contains(&format!(" mark={p1} "))),
        "the connection no longer records P1:\n{flows}"
    );
    drop((conn, answers));

    // A new connection, through P2 now, is served and identified by P2.
    let (a, _) = http(&tb.container, IMDS, "GET", "/after", &[]);
    assert_eq!(a.expect("a new connection is answered").status, 200);
    d.wait_for(&format!("origin=Port({p2})"), QUICK);
    assert_eq!(tb.imds.last().target, "/after");
}
