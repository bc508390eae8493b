//! What a container's metadata traffic meets: the proxy and nothing else, other ports
//! and protocols refused at once, connections opened before start-up cut, bridges that
//! appear later intercepted, the proxy's own address answering only containers and the
//! host, the start-up order that never leaves a gap, and the proxy's link repaired.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::*;
use nix::sys::signal::Signal;

use super::QUICK;

#[test]
fn container_reaches_the_metadata_service_only_through_the_proxy() {
    require_root!();
    let tb = Testbed::new();
    // Without the daemon the container reaches the fake service directly: the test bed
    // is able to show a leak.
    let direct = http(&tb.container, IMDS, "GET", "/latest/meta-data/", &[]);
    assert_eq!(direct.0.expect("direct request").status, 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), "10.88.0.2");

    let d = tb.daemon(&[]);
    let (r, _) = http(
        &tb.container,
        IMDS,
        "GET",
        "/metadata/instance?api-version=2021-02-01",
        &[("Metadata", "true"), ("X-Custom", "kept")],
    );
    let a = r.expect("request through the proxy");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.contains("fake-imds"), "{a:?}");
    // The kernel stamped the connection with the container's own bridge port (the host
    // end of its veth), which is what the proxy identifies it by.
    let port = tb
        .host
        .exec(&["cat", "/sys/class/net/vc0/ifindex"])
        .trim()
        .to_owned();
    let flows = tb.host.exec(&["conntrack", "-L", "-d", IMDS, "-p", "tcp"]);
    assert!(
        flows
            .lines()
            .any(|l| l.contains("src=10.88.0.2") && l.contains(&format!(" mark={port} "))),
        "no flow from the container marked with its port {port}:\n{flows}"
    );
    d.wait_for(&format!("origin=Port({port})"), QUICK);
    // What reading the stamp back costs the proxy, once per accepted connection.
    let per_lookup = tb.host.run(|| {
        let local = "169.254.93.254:80".parse().unwrap();
        let t = std::time::Instant::now();
        for i in 0..1000u16 {
            let peer = std::net::SocketAddr::from(([10, 88, 0, 9], 20000 + i));
            let _ = imds_proxy::proxy::identify::origin::connection_mark(local, peer);
        }
        t.elapsed() / 1000
    });
    measure(
        "conntrack mark lookup, once per accepted connection (µs)",
        per_lookup.as_micros(),
    );
    let seen = tb.imds.last();
    // The upstream is reached from the host (the proxy), not from the container...
    assert_eq!(seen.peer.ip().to_string(), "10.99.0.1");
    // ...with the request intact and nothing that marks it as relayed.
    assert_eq!(seen.target, "/metadata/instance?api-version=2021-02-01");
    assert_eq!(seen.header("metadata"), Some("true"));
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("host"), Some("169.254.169.254"));
    for h in ["x-forwarded-for", "forwarded", "via", "x-real-ip"] {
        assert_eq!(seen.header(h), None, "{h} was added");
    }
    // The proxy knew who asked: the container's own address survives DNAT.
    d.wait_for("client=10.88.0.2", QUICK);

    // Tokens and query strings never reach the log.
    let (r, _) = http(
        &tb.container,
        IMDS,
        "GET",
        "/latest/meta-data/iam/security-credentials/role?sig=QUERYSECRET",
        &[
            ("X-aws-ec2-metadata-token", "HEADERSECRET"),
            ("Authorization", "Bearer AUTHSECRET"),
        ],
    );
    // A session token the proxy never issued is refused, as IMDS refuses it.
    assert_eq!(r.unwrap().status, 401);
    d.wait_for("security-credentials/role", QUICK);
    let log = d.log().join("\n");
    for secret in ["QUERYSECRET", "HEADERSECRET", "AUTHSECRET"] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }

    // The host keeps its direct path: its request does not pass through the proxy.
    let audited_before = d.log_count(AUDIT);
    let before = tb.imds.count();
    let (r, _) = http(&tb.host, IMDS, "GET", "/host-direct", &[]);
    assert_eq!(r.expect("host request").status, 200);
    assert_eq!(tb.imds.count(), before + 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        d.log_count(AUDIT),
        audited_before,
        "host request went through the proxy"
    );
}

#[test]
fn other_ports_and_protocols_to_the_metadata_address_are_refused_fast() {
    require_root!();
    let tb = Testbed::new();
    let direct = http(&tb.container, "169.254.169.254:8080", "GET", "/", &[]);
    assert_eq!(
        direct
            .0
            .expect("port 8080 is reachable without the daemon")
            .status,
        200
    );
    let _d = tb.daemon(&[]);
    let before = tb.imds.count();
    let r = http(&tb.container, "169.254.169.254:8080", "GET", "/", &[]);
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
    assert!(r.1 < QUICK, "refusal took {:?}", r.1);

    // UDP gets an ICMP port unreachable, which a connected UDP socket reports at once.
    let udp_err = tb.container.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect("169.254.169.254:53").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"x").unwrap();
        let mut b = [0u8; 16];
        s.recv(&mut b).unwrap_err().kind()
    });
    assert_eq!(udp_err, ErrorKind::ConnectionRefused);
    assert_eq!(
        tb.imds.count(),
        before,
        "the fake service saw a container request"
    );
}

#[test]
fn a_connection_opened_before_start_up_is_cut() {
    require_root!();
    let tb = Testbed::new();
    // Docker's own rules use conntrack and NAT, so on a Docker host flows are tracked
    // and NAT bindings applied before the daemon starts; a fresh namespace does
    // neither until some rule needs it.
    tb.host.nft("table ip dockerlike { chain forward { type filter hook forward priority 0; ct state established,related accept; }; chain post { type nat hook postrouting priority 100; }; }");
    // An older tool's rule sent metadata traffic to its own server (kiam #284): NAT is
    // bound on a flow's first packet, so its connections outlive the rule, and this
    // daemon's filter rules never see 169.254.169.254 on them.
    let old_server = FakeImds::start(&tb.cloud, &["10.99.0.2:8081"]);
    tb.host.nft("table ip legacy { chain pre { type nat hook prerouting priority -150; iifname \"br0\" ip daddr 169.254.169.254 tcp dport 80 dnat to 10.99.0.2:8081; }; }");
    let mut conn = tb
        .container
        .run(|| TcpStream::connect("169.254.169.254:80").unwrap());
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut ask = |path: &str| -> std::io::Result<String> {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n").as_bytes())?;
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    assert!(ask("/first").unwrap().starts_with("HTTP/1.1 200"));
    assert_eq!(old_server.count(), 1);
    tb.host.nft("delete table ip legacy");
    assert!(
        ask("/still-old").unwrap().starts_with("HTTP/1.1 200"),
        "the flow outlives the rule"
    );
    assert_eq!(old_server.count(), 2);
    let conntrack = |ns: &Netns| {
        ns.try_exec(&["conntrack", "-L", "-s", "10.88.0.2", "-d", IMDS])
            .1
    };
    assert!(
        conntrack(&tb.host).contains("dport=80"),
        "the flow is tracked before start-up"
    );

    let d = tb.daemon(&[]);
    d.wait_for("cut pre-existing container connections", QUICK);
    assert!(
        !conntrack(&tb.host).contains("dport=80"),
        "stale conntrack entry survived start-up"
    );

    // The next request on the old connection reaches neither the old server nor the
    // metadata service.
    let r = ask("/after-start-up");
    assert!(
        matches!(&r, Ok(s) if s.is_empty()) || r.is_err(),
        "old connection still answered: {r:?}"
    );
    assert_eq!(
        old_server.count(),
        2,
        "the old connection bypassed interception"
    );
    assert_eq!(tb.imds.count(), 0);
}

#[test]
fn a_bridge_created_after_start_is_intercepted() {
    require_root!();
    let tb = Testbed::new();
    let d = tb.daemon(&[]);
    // A request in flight while the table is rewritten for the new bridge completes.
    let slow = tb.in_flight(800);
    tb.host.ip("link add br-late01 type bridge");
    tb.host.ip("addr add 10.89.0.1/24 dev br-late01");
    tb.host.ip("link set br-late01 up");
    let late = Netns::new("late");
    attach_container(
        &tb.host,
        &late,
        "br-late01",
        "vlate",
        "10.89.0.2/24",
        "10.89.0.1",
    );
    until(Duration::from_secs(2), "br-late01 in the set", || {
        tb.host.nft_table().unwrap().contains("br-late01")
    });
    assert_eq!(
        slow.join()
            .unwrap()
            .0
            .expect("in-flight request cut by the table update")
            .status,
        200
    );
    let a = http(&late, IMDS, "GET", "/late", &[])
        .0
        .expect("request from the new bridge");
    assert_eq!(a.status, 200);
    assert_eq!(
        tb.imds.last().peer.ip().to_string(),
        "10.99.0.1",
        "went through the proxy"
    );
    d.wait_for("client=10.89.0.2", QUICK);

    // A bridge that goes away leaves the set.
    drop(late);
    tb.host.ip("link del br-late01");
    until(Duration::from_secs(2), "br-late01 out of the set", || {
        !tb.host.nft_table().unwrap().contains("br-late01")
    });
}

#[test]
fn the_proxy_port_answers_only_containers_and_the_host() {
    require_root!();
    let tb = Testbed::new();
    let outsider = Netns::new("out");
    tb.host.ip(&format!(
        "link add vout type veth peer name eth0 netns {}",
        outsider.name
    ));
    tb.host.ip("addr add 10.77.0.1/30 dev vout");
    tb.host.ip("link set vout up");
    outsider.ip("addr add 10.77.0.2/30 dev eth0");
    outsider.ip("link set eth0 up");
    outsider.ip(&format!("route add {PROXY_ADDR}/32 via 10.77.0.1"));
    let _d = tb.daemon(&[]);
    assert_eq!(
        http(&tb.host, PROXY_ADDR, "GET", "/", &[])
            .0
            .unwrap()
            .status,
        200
    );
    let r = http(&outsider, PROXY_ADDR, "GET", "/", &[]);
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
    // Containers reach the proxy only as the metadata address, not by its own address.
    let r = http(&tb.container, PROXY_ADDR, "GET", "/", &[]);
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
    assert_eq!(tb.status("/"), 200);
}

#[test]
fn start_up_order_is_closed_table_then_listener_then_dnat() {
    require_root!();
    let tb = Testbed::new();
    let monitor = std::process::Command::new("ip")
        .args(["netns", "exec", &tb.host.name, "nft", "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let d = tb.daemon(&[]);
    std::thread::sleep(Duration::from_millis(200));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor.id() as i32),
        Signal::SIGTERM,
    );
    let out = monitor.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = events.lines().collect();
    let first = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{events}"))
    };
    // The first rules the kernel saw were refusals; the DNAT rule came in a later batch.
    assert!(first("reject") < first("dnat to"), "{events}");
    assert!(
        lines[..first("dnat to")]
            .iter()
            .any(|l| l.contains("delete table ip imds_proxy")),
        "{events}"
    );
    // And the proxy was listening before that.
    let log = d.log();
    let at = |needle: &str| log.iter().position(|l| l.contains(needle)).unwrap();
    assert!(at("interception closed") < at("proxy listening"));
    assert!(at("proxy listening") < at("interception live"));
}

#[test]
fn a_deleted_proxy_link_is_recreated_and_never_leaks_meanwhile() {
    require_root!();
    let tb = Testbed::new();
    let d = tb.daemon(&[]);
    tb.host.ip("link del imdsproxy0");
    d.wait_for("own link restored", Duration::from_secs(2));
    until(Duration::from_secs(2), "the proxy to answer again", || {
        http(&tb.container, IMDS, "GET", "/", &[])
            .0
            .is_ok_and(|a| a.status == 200)
    });
    std::thread::sleep(Duration::from_millis(100));
    let restored = d.log_count("own link restored");
    tb.host
        .ip(&format!("addr del {PROXY_ADDR}/32 dev imdsproxy0"));
    d.wait_for_nth("own link restored", restored + 1, Duration::from_secs(2));
    assert_eq!(tb.status("/"), 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), "10.99.0.1");

    // Even while the address is missing, DNATed traffic is refused, not routed on: give
    // the host a default route to a network where that address answers, as a leak would.
    tb.host.ip("route add default via 10.99.0.2");
    tb.cloud.ip(&format!("addr add {PROXY_ADDR}/32 dev lo"));
    let elsewhere = FakeImds::start(&tb.cloud, &[&format!("{PROXY_ADDR}:80")]);
    let frozen = d.pid();
    nix::sys::signal::kill(frozen, Signal::SIGSTOP).unwrap();
    tb.host.ip("link del imdsproxy0");
    let r = http(&tb.container, IMDS, "GET", "/", &[]);
    nix::sys::signal::kill(frozen, Signal::SIGCONT).unwrap();
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
    assert_eq!(
        elsewhere.count(),
        0,
        "DNATed traffic was routed off the host"
    );

    // uninstall refuses to pull the table from under the running daemon.
    let (ok, _, err) = tb.host.try_exec(&[bin(), "uninstall"]);
    assert!(!ok && err.contains("stop it first"), "{err}");
    assert!(tb.host.nft_table().is_some());
}
