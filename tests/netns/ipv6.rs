//! AWS's IPv6 metadata address: reached only through the proxy, refused after SIGKILL
//! and with IPv6 switched off, and connections opened before start-up cut.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::*;

use super::QUICK;

#[test]
fn a_container_reaches_the_ipv6_metadata_address_only_through_the_proxy() {
    require_root!();
    let tb = Testbed::new();
    let imds6 = tb.enable_ipv6();
    // Without the daemon the container reaches the IPv6 fake service directly.
    let direct = http(&tb.container, IMDS6_HTTP, "GET", "/latest/meta-data/", &[]);
    assert_eq!(direct.0.expect("direct IPv6 request").status, 200);
    assert_eq!(imds6.last().peer.ip().to_string(), "fd00:dead:beef::2");

    let d = tb.daemon(&[]);
    d.wait_for(&format!("listen=[{PROXY_ADDR6}]:80"), QUICK);
    let before6 = imds6.count();
    let a = http(&tb.container, IMDS6_HTTP, "GET", "/latest/meta-data/", &[])
        .0
        .expect("IPv6 request through the proxy");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.contains("fake-imds"), "{a:?}");
    // Forwarded by the proxy to its (IPv4) upstream; the IPv6 service saw nothing.
    let seen = tb.imds.last();
    assert_eq!(seen.peer.ip().to_string(), "10.99.0.1");
    assert_eq!(seen.target, "/latest/meta-data/");
    assert_eq!(
        imds6.count(),
        before6,
        "the container reached fd00:ec2::254 directly"
    );
    // Identified by its bridge port, read back from the IPv6 conntrack entry.
    let port = tb
        .host
        .exec(&["cat", "/sys/class/net/vc0/ifindex"])
        .trim()
        .to_owned();
    let flows = tb
        .host
        .exec(&["conntrack", "-L", "-f", "ipv6", "-d", IMDS6, "-p", "tcp"]);
    assert!(
        flows
            .lines()
            .any(|l| l.contains("src=fd00:dead:beef::2") && l.contains(&format!(" mark={port} "))),
        "no IPv6 flow from the container marked with its port {port}:\n{flows}"
    );
    d.wait_for(&format!("origin=Port({port})"), QUICK);
    d.wait_for("client=fd00:dead:beef::2", QUICK);

    // Other ports of the IPv6 metadata address are refused at once.
    let r = http(&tb.container, &format!("[{IMDS6}]:8080"), "GET", "/", &[]);
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
    assert!(r.1 < QUICK, "refusal took {:?}", r.1);
    // The proxy's IPv6 address answers the host, not the container by its own address.
    let host = http(&tb.host, &format!("[{PROXY_ADDR6}]:80"), "GET", "/", &[]);
    assert_eq!(host.0.expect("host request to the proxy").status, 200);
    let r = http(
        &tb.container,
        &format!("[{PROXY_ADDR6}]:80"),
        "GET",
        "/",
        &[],
    );
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);

    // The IPv6 address is put back if someone removes it.
    tb.host
        .ip(&format!("addr del {PROXY_ADDR6}/128 dev imdsproxy0"));
    d.wait_for("own link restored", Duration::from_secs(2));
    until(
        Duration::from_secs(2),
        "the IPv6 proxy to answer again",
        || {
            http(&tb.container, IMDS6_HTTP, "GET", "/", &[])
                .0
                .is_ok_and(|a| a.status == 200)
        },
    );

    // What `rules` prints is what the kernel lists, ip6 table included.
    let printed = tb.host.exec(&[bin(), "rules", "--bridges", "br0,br-*"]);
    assert!(printed.contains("table ip6 imds_proxy {"), "{printed}");
    assert_eq!(tb.host.nft_table().unwrap(), printed);
}

#[test]
fn after_sigkill_ipv6_callers_are_refused_fast_never_passed_through() {
    require_root!();
    let tb = Testbed::new();
    let imds6 = tb.enable_ipv6();
    let d = tb.daemon(&[]);
    let ok = http(&tb.container, IMDS6_HTTP, "GET", "/", &[]);
    assert_eq!(ok.0.expect("IPv6 request through the proxy").status, 200);
    d.kill9();
    for _ in 0..3 {
        let r = http(
            &tb.container,
            IMDS6_HTTP,
            "GET",
            "/latest/meta-data/iam/security-credentials/",
            &[],
        );
        assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
        assert!(r.1 < QUICK, "refusal took {:?}", r.1);
    }
    assert_eq!(imds6.count(), 0, "a container reached fd00:ec2::254");
    // The tables outlive the process: the DNAT rule still sends IPv6 callers to the
    // proxy's address, where nothing listens and the input chain resets them.
    let table = tb.host.nft_table().unwrap();
    assert!(table.contains("table ip6 imds_proxy"), "{table}");
    // The host keeps its own direct IPv6 path.
    assert_eq!(
        http(&tb.host, IMDS6_HTTP, "GET", "/", &[])
            .0
            .unwrap()
            .status,
        200
    );
}

#[test]
fn with_ipv6_switched_off_the_daemon_serves_ipv4_and_still_refuses_ipv6() {
    require_root!();
    let tb = Testbed::new();
    let imds6 = tb.enable_ipv6();
    tb.host.sysctl("net.ipv6.conf.all.disable_ipv6=1");
    let d = tb.daemon(&[]);
    assert_eq!(d.log_count("IPv6 is switched off"), 1, "{:?}", d.log());
    assert_eq!(tb.status("/"), 200);
    let table = tb.host.nft_table().unwrap();
    let ip6 = &table[table.find("table ip6 imds_proxy").expect("an ip6 table")..];
    let ip6 = &ip6[..ip6.find("table bridge").unwrap()];
    assert!(ip6.contains("ip6 daddr fd00:ec2::254 reject"), "{ip6}");
    assert!(!ip6.contains("dnat") && !ip6.contains(PROXY_ADDR6), "{ip6}");
    assert!(!tb
        .host
        .ip("-6 addr show dev imdsproxy0")
        .contains(PROXY_ADDR6));

    // IPv6 switched back on while the daemon runs: containers are refused over IPv6,
    // not passed to the metadata service.
    tb.host.sysctl("net.ipv6.conf.all.disable_ipv6=0");
    tb.host.ip("addr add fd00:dead:beef::1/64 dev br0 nodad");
    tb.host.ip("addr add fd99:0:0:1::1/64 dev vcloud nodad");
    tb.host
        .ip(&format!("-6 route add {IMDS6}/128 via fd99:0:0:1::2"));
    let r = http(&tb.container, IMDS6_HTTP, "GET", "/", &[]);
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
    assert_eq!(imds6.count(), 0, "a container reached fd00:ec2::254");
    assert_eq!(tb.status("/"), 200);
}

#[test]
fn an_ipv6_connection_opened_before_start_up_is_cut() {
    require_root!();
    let tb = Testbed::new();
    let imds6 = tb.enable_ipv6();
    // As on a Docker host, something tracks connections before the daemon starts.
    tb.host.nft("table ip6 dockerlike { chain forward { type filter hook forward priority 0; ct state established,related accept; }; }");
    let mut conn = tb.container.run(|| TcpStream::connect(IMDS6_HTTP).unwrap());
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut ask = |path: &str| -> std::io::Result<String> {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: [{IMDS6}]\r\n\r\n").as_bytes())?;
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    assert!(ask("/first").unwrap().starts_with("HTTP/1.1 200"));
    let conntrack = || {
        tb.host
            .try_exec(&["conntrack", "-L", "-f", "ipv6", "-s", "fd00:dead:beef::2"])
            .1
    };
    assert!(
        conntrack().contains("dport=80"),
        "the flow is tracked before start-up"
    );

    let d = tb.daemon(&[]);
    d.wait_for("cut pre-existing container connections", QUICK);
    assert!(
        !conntrack().contains("dport=80"),
        "stale IPv6 conntrack entry survived start-up"
    );
    let r = ask("/after-start-up");
    assert!(
        matches!(&r, Ok(s) if s.is_empty()) || r.is_err(),
        "old connection still answered: {r:?}"
    );
    assert_eq!(
        imds6.count(),
        1,
        "the old connection reached the metadata service"
    );
}
