//! Namespaces behind interfaces the daemon was never told about (a bridge whose name
//! matches no pattern, a routed veth with no bridge, a bridge named like Swarm's
//! `docker_gwbridge`, a bridge that passes frames port to port) never reach the
//! metadata service directly: while it runs, after SIGKILL and after SIGTERM; only the
//! interfaces named as direct are opened.

use std::io::ErrorKind;
use std::time::Duration;

use harness::*;
use nix::sys::signal::Signal;

use super::QUICK;

/// Namespaces that reach the host by paths the bridge patterns (`br0,br-*`) do not name.
struct Strangers {
    /// (what it stands for, namespace, its address)
    paths: Vec<(&'static str, Netns, &'static str)>,
}

impl Strangers {
    fn new(tb: &Testbed) -> Self {
        let host = &tb.host;
        // (a) A plain Linux bridge with a name no pattern matches (libvirt, LXD, Podman).
        let lxc = Netns::new("lxc");
        host.ip("link add lxcbr9 type bridge");
        host.ip("addr add 10.77.1.1/24 dev lxcbr9");
        host.ip("link set lxcbr9 up");
        attach_container(host, &lxc, "lxcbr9", "vlxc", "10.77.1.2/24", "10.77.1.1");
        // (b) A routed veth, no bridge: a /32 route to the namespace (Calico style).
        let routed = Netns::new("cali");
        host.ip(&format!(
            "link add cali9 type veth peer name eth0 netns {}",
            routed.name
        ));
        host.ip("addr add 10.77.2.1/32 dev cali9");
        host.ip("link set cali9 up");
        host.ip("route add 10.77.2.2/32 dev cali9");
        routed.ip("addr add 10.77.2.2/32 dev eth0");
        routed.ip("link set eth0 up");
        routed.ip("route add 10.77.2.1/32 dev eth0");
        routed.ip("route add default via 10.77.2.1");
        // (c) A bridge named like Swarm's: overlay containers go out by it.
        let swarm = Netns::new("gwb");
        host.ip("link add docker_gwbridge type bridge");
        host.ip("addr add 10.77.3.1/24 dev docker_gwbridge");
        host.ip("link set docker_gwbridge up");
        attach_container(
            host,
            &swarm,
            "docker_gwbridge",
            "vgwb",
            "10.77.3.2/24",
            "10.77.3.1",
        );
        Self {
            paths: vec![
                ("a bridge no pattern names", lxc, "10.77.1.2"),
                ("a routed veth", routed, "10.77.2.2"),
                ("docker_gwbridge", swarm, "10.77.3.2"),
            ],
        }
    }

    /// Every namespace, on port 80 and on another port, is refused at once (TCP reset),
    /// UDP with a port unreachable, and the fake cloud sees nothing.
    fn all_refused_fast(&self, tb: &Testbed, when: &str) {
        let before = tb.imds.count();
        let mut slowest = Duration::ZERO;
        for (what, ns, _) in &self.paths {
            for addr in [IMDS, "169.254.169.254:8080"] {
                let r = http(ns, addr, "GET", "/latest/meta-data/", &[]);
                assert_eq!(
                    refused(&r),
                    ErrorKind::ConnectionRefused,
                    "{what}, {addr}, {when}"
                );
                assert!(
                    r.1 < QUICK,
                    "{what}, {addr}, {when}: refusal took {:?}",
                    r.1
                );
                slowest = slowest.max(r.1);
            }
            assert_eq!(
                udp_error(ns),
                ErrorKind::ConnectionRefused,
                "{what}, UDP, {when}"
            );
        }
        assert_eq!(
            tb.imds.count(),
            before,
            "the metadata service saw a request {when}"
        );
        measure(
            &format!("slowest refusal of an unnamed path {when} (µs)"),
            slowest.as_micros(),
        );
    }
}

/// What a connected UDP socket reports for a datagram to the metadata address.
fn udp_error(ns: &Netns) -> ErrorKind {
    ns.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect("169.254.169.254:53").unwrap();
        s.set_read_timeout(Some(QUICK)).unwrap();
        s.send(b"x").unwrap();
        s.recv(&mut [0u8; 16]).unwrap_err().kind()
    })
}

#[test]
fn paths_no_pattern_names_are_refused_running_after_sigkill_and_after_sigterm() {
    require_root!();
    let tb = Testbed::new();
    let strangers = Strangers::new(&tb);
    // Without the daemon every one of them reaches the metadata service directly (the
    // host forwards): the test bed can show a leak.
    for (what, ns, addr) in &strangers.paths {
        let r = http(ns, IMDS, "GET", "/", &[]);
        assert_eq!(r.0.expect(what).status, 200, "{what}");
        assert_eq!(tb.imds.last().peer.ip().to_string(), *addr, "{what}");
    }

    let d = tb.daemon(&[]);
    strangers.all_refused_fast(&tb, "while the daemon runs");
    // The container on the configured bridge is still served, the host still direct.
    assert_eq!(tb.status("/"), 200);
    let host_before = tb.imds.count();
    assert_eq!(http(&tb.host, IMDS, "GET", "/", &[]).0.unwrap().status, 200);
    assert_eq!(tb.imds.count(), host_before + 1);

    d.kill9();
    strangers.all_refused_fast(&tb, "after SIGKILL");

    let d = tb.daemon(&[]);
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    strangers.all_refused_fast(&tb, "after SIGTERM");
    assert_eq!(http(&tb.host, IMDS, "GET", "/", &[]).0.unwrap().status, 200);
}

#[test]
fn ipv6_from_a_bridge_no_pattern_names_is_refused_too() {
    require_root!();
    let tb = Testbed::new();
    let imds6 = tb.enable_ipv6();
    let strangers = Strangers::new(&tb);
    let (_, lxc, _) = &strangers.paths[0];
    tb.host.ip("addr add fd00:77:1::1/64 dev lxcbr9 nodad");
    lxc.ip("addr add fd00:77:1::2/64 dev eth0 nodad");
    lxc.ip("-6 route add default via fd00:77:1::1");
    let r = http(lxc, IMDS6_HTTP, "GET", "/", &[]);
    assert_eq!(r.0.expect("IPv6 without the daemon").status, 200);
    let _d = tb.daemon(&[]);
    let before = imds6.count();
    for addr in [IMDS6_HTTP.to_owned(), format!("[{IMDS6}]:8080")] {
        let r = http(lxc, &addr, "GET", "/", &[]);
        assert_eq!(refused(&r), ErrorKind::ConnectionRefused, "{addr}");
        assert!(r.1 < QUICK, "{addr}: refusal took {:?}", r.1);
    }
    assert_eq!(imds6.count(), before);
}

#[test]
fn direct_interfaces_open_exactly_the_named_interface_and_say_so() {
    require_root!();
    let tb = Testbed::new();
    let strangers = Strangers::new(&tb);
    let d = tb.daemon(&["--direct-interfaces", "lxcbr9"]);
    d.wait_for("direct_interfaces", QUICK);
    assert!(
        d.log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("lxcbr9")),
        "no warning naming the interface"
    );
    let (_, lxc, addr) = &strangers.paths[0];
    let r = http(lxc, IMDS, "GET", "/", &[]);
    assert_eq!(r.0.expect("direct on purpose").status, 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), *addr, "not proxied");
    // The others stay refused, and the configured bridge is still intercepted.
    let before = tb.imds.count();
    for (what, ns, _) in &strangers.paths[1..] {
        let r = http(ns, IMDS, "GET", "/", &[]);
        assert_eq!(refused(&r), ErrorKind::ConnectionRefused, "{what}");
    }
    assert_eq!(tb.imds.count(), before);
    assert_eq!(tb.status("/"), 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), "10.99.0.1", "proxied");
}

#[test]
fn frames_a_bridge_passes_port_to_port_are_dropped() {
    require_root!();
    let tb = Testbed::new();
    // A bridge that holds both a client and, on another port, a metadata service (as a
    // bridge with the uplink enslaved does): the host bridges, never routes, the frames.
    let client = Netns::new("l2c");
    let cloud = Netns::new("l2m");
    tb.host.ip("link add lan9 type bridge");
    tb.host.ip("link set lan9 up");
    attach_container(
        &tb.host,
        &client,
        "lan9",
        "vl2c",
        "10.66.0.2/24",
        "10.66.0.3",
    );
    tb.host.ip(&format!(
        "link add vl2m type veth peer name eth0 netns {}",
        cloud.name
    ));
    tb.host.ip("link set vl2m master lan9");
    tb.host.ip("link set vl2m up");
    cloud.ip("addr add 10.66.0.3/24 dev eth0");
    cloud.ip("addr add 169.254.169.254/32 dev lo");
    cloud.ip("link set eth0 up");
    let imds = FakeImds::start(&cloud, &["169.254.169.254:80"]);
    assert_eq!(
        http(&client, IMDS, "GET", "/", &[]).0.unwrap().status,
        200,
        "without the daemon the bridge passes the request"
    );
    let d = tb.daemon(&[]);
    let before = imds.count();
    let r = http(&client, IMDS, "GET", "/", &[]);
    assert!(r.0.is_err(), "bridged request answered: {:?}", r.0);
    d.kill9();
    let r = http(&client, IMDS, "GET", "/", &[]);
    assert!(
        r.0.is_err(),
        "bridged request answered after SIGKILL: {:?}",
        r.0
    );
    assert_eq!(
        imds.count(),
        before,
        "the service behind the bridge was reached"
    );
}
