//! macvlan children, which leave by their parent without passing any IP hook of the
//! host: refused by the egress guard on the uplink by default (the host keeps its own
//! path), the guard following the route to the metadata address, and parents that
//! appear after start guarded at once; an empty `macvlan_parents` opts out, and says
//! so.

use std::time::Duration;

use harness::*;
use nix::sys::signal::Signal;

use super::QUICK;

/// A "container" namespace on a macvlan child of the host's uplink to the cloud
/// (`vcloud`), in a subnet of its own that the cloud also holds.
fn macvlan_container(tb: &Testbed) -> Netns {
    let m = Netns::new("mvl");
    tb.host
        .ip("link add mvl9 link vcloud type macvlan mode bridge");
    tb.host.ip(&format!("link set mvl9 netns {}", m.name));
    m.ip("link set mvl9 name eth0");
    m.ip("addr add 10.98.0.2/24 dev eth0");
    m.ip("link set eth0 up");
    m.ip("route add 169.254.169.254/32 via 10.98.0.1");
    tb.cloud.ip("addr add 10.98.0.1/24 dev eth0");
    m
}

/// Whether a TCP connection from `ns` to `addr` opens within a second.
fn connects(ns: &Netns, addr: &str) -> bool {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    ns.run(move || std::net::TcpStream::connect_timeout(&addr, QUICK).is_ok())
}

/// The daemon's first log line that contains `needle` (waiting a second for it).
fn log_line(d: &Daemon, needle: &str) -> String {
    d.wait_for(needle, QUICK);
    d.log().into_iter().find(|l| l.contains(needle)).unwrap()
}

/// Whether the namespace's netdev table has an egress chain on `device`.
fn guards(ns: &Netns, device: &str) -> bool {
    let (ok, out, _) = ns.try_exec(&["nft", "list", "table", "netdev", "imds_proxy"]);
    ok && out.contains(&format!("device \"{device}\""))
}

#[test]
fn macvlan_children_of_the_uplink_are_refused_by_default_and_the_host_keeps_its_path() {
    require_root!();
    let tb = Testbed::new();
    let imds6 = tb.enable_ipv6();
    let m = macvlan_container(&tb);
    m.ip("addr add fd99:0:0:1::5/64 dev eth0 nodad");
    m.ip(&format!("-6 route add {IMDS6}/128 via fd99:0:0:1::2"));
    // A macvlan child sends straight out of its parent: no IP hook of the host sees
    // it, so the forward refusal cannot. Without the daemon it reaches the cloud.
    let r = http(&m, IMDS, "GET", "/", &[]);
    assert_eq!(r.0.expect("macvlan, no daemon").status, 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), "10.98.0.2");
    let r = http(&m, IMDS6_HTTP, "GET", "/", &[]);
    assert_eq!(r.0.expect("macvlan over IPv6, no daemon").status, 200);

    // No macvlan_parents: the host's routes to both metadata addresses leave by
    // vcloud, so vcloud is guarded, and the log says why.
    let d = tb.daemon(&[]);
    let line = log_line(&d, "macvlan children of these interfaces are refused");
    assert!(
        line.contains("vcloud") && line.contains("routes to the metadata addresses"),
        "{line}"
    );
    let (before, before6) = (tb.imds.count(), imds6.count());
    for addr in [
        "169.254.169.254:80",
        "169.254.169.254:8080",
        IMDS6_HTTP,
        "[fd00:ec2::254]:8080",
    ] {
        assert!(!connects(&m, addr), "macvlan child reached {addr}");
    }
    assert_eq!(tb.imds.count(), before, "the child reached the cloud");
    assert_eq!(
        imds6.count(),
        before6,
        "the child reached the cloud over IPv6"
    );
    // The parent's own packets (the host's, and the proxy's upstream requests) pass.
    assert_eq!(http(&tb.host, IMDS, "GET", "/", &[]).0.unwrap().status, 200);
    let r = http(&tb.host, IMDS6_HTTP, "GET", "/", &[]);
    assert_eq!(r.0.expect("the host over IPv6").status, 200);
    assert_eq!(tb.status("/"), 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), "10.99.0.1", "proxied");
    d.kill9();
    assert!(!connects(&m, "169.254.169.254:80"), "after SIGKILL");
    assert!(!connects(&m, IMDS6_HTTP), "IPv6 after SIGKILL");
    assert_eq!(http(&tb.host, IMDS, "GET", "/", &[]).0.unwrap().status, 200);
    assert_eq!(
        (tb.imds.count(), imds6.count()),
        (before + 3, before6 + 1),
        "only the host's and the proxy's requests"
    );
}

#[test]
fn an_empty_macvlan_parents_list_guards_nothing_and_says_so() {
    require_root!();
    let tb = Testbed::new();
    let m = macvlan_container(&tb);
    // The documented way to opt out: the child reaches the cloud directly again.
    let d = tb.daemon(&["--macvlan-parents", ""]);
    let line = log_line(&d, "macvlan_parents is an empty list");
    assert!(line.contains("WARN"), "{line}");
    let r = http(&m, IMDS, "GET", "/", &[]);
    assert_eq!(r.0.expect("macvlan, guard off").status, 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), "10.98.0.2");
    assert!(
        !tb.host
            .try_exec(&["nft", "list", "table", "netdev", "imds_proxy"])
            .0,
        "a netdev table with the guard off"
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());

    // The same in the file; and naming a parent replaces the default.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "macvlan_parents = []\n").unwrap();
    let d = tb.daemon(&[
        "--config",
        file.to_str().unwrap(),
        "--unknown-policy",
        "allow",
    ]);
    d.wait_for("macvlan_parents is an empty list", QUICK);
    assert!(!guards(&tb.host, "vcloud"));
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    let d = tb.daemon(&["--macvlan-parents", "vcloud"]);
    let line = log_line(&d, "macvlan children of these interfaces are refused");
    assert!(line.contains("configured"), "{line}");
    assert!(!connects(&m, "169.254.169.254:80"), "named parent");
}

#[test]
fn the_guard_follows_the_route_to_the_metadata_address_when_its_interface_changes() {
    require_root!();
    let tb = Testbed::new();
    // A second uplink to the cloud, not yet the way to the metadata address.
    tb.host.ip(&format!(
        "link add vcl3 type veth peer name eth1 netns {}",
        tb.cloud.name
    ));
    tb.host.ip("addr add 10.96.0.1/24 dev vcl3");
    tb.host.ip("link set vcl3 up");
    tb.cloud.ip("addr add 10.96.0.254/24 dev eth1");
    tb.cloud.ip("link set eth1 up");
    let m = Netns::new("mvl3");
    tb.host
        .ip("link add mvl7 link vcl3 type macvlan mode bridge");
    tb.host.ip(&format!("link set mvl7 netns {}", m.name));
    m.ip("link set mvl7 name eth0");
    m.ip("addr add 10.96.0.2/24 dev eth0");
    m.ip("link set eth0 up");
    m.ip("route add 169.254.169.254/32 via 10.96.0.254");

    let d = tb.daemon(&[]);
    d.wait_for("macvlan children of these interfaces are refused", QUICK);
    assert!(guards(&tb.host, "vcloud") && !guards(&tb.host, "vcl3"));
    let r = http(&m, IMDS, "GET", "/", &[]);
    assert_eq!(
        r.0.expect("a parent no route to the metadata address uses")
            .status,
        200
    );

    // The host's route moves to vcl3: the guard moves with it, with no link event and
    // long before the periodic re-listing. (Late notifications of the links just set
    // up, which would make the daemon look again anyway, are over by then.)
    std::thread::sleep(Duration::from_millis(1500));
    tb.host
        .ip("route replace 169.254.169.254/32 via 10.96.0.254 dev vcl3");
    until(Duration::from_secs(2), "the guard to move to vcl3", || {
        guards(&tb.host, "vcl3") && !guards(&tb.host, "vcloud")
    });
    d.wait_for("macvlan parents guarded", QUICK);
    let before = tb.imds.count();
    assert!(
        !connects(&m, "169.254.169.254:80"),
        "child of the new uplink"
    );
    assert_eq!(tb.imds.count(), before);
    assert_eq!(http(&tb.host, IMDS, "GET", "/", &[]).0.unwrap().status, 200);
    assert_eq!(tb.status("/"), 200);
}

#[test]
fn a_macvlan_parent_that_appears_after_start_is_guarded_at_once() {
    require_root!();
    let tb = Testbed::new();
    let d = tb.daemon(&["--macvlan-parents", "vcl2"]);
    d.wait_for("guarded once it appears", QUICK);
    // A second uplink to the cloud, and a macvlan child of it in a namespace.
    tb.host.ip(&format!(
        "link add vcl2 type veth peer name eth1 netns {}",
        tb.cloud.name
    ));
    tb.host.ip("link set vcl2 up");
    tb.cloud.ip("addr add 10.97.0.1/24 dev eth1");
    tb.cloud.ip("link set eth1 up");
    let m = Netns::new("mvl2");
    tb.host
        .ip("link add mvl8 link vcl2 type macvlan mode bridge");
    tb.host.ip(&format!("link set mvl8 netns {}", m.name));
    m.ip("link set mvl8 name eth0");
    m.ip("addr add 10.97.0.2/24 dev eth0");
    m.ip("link set eth0 up");
    m.ip("route add 169.254.169.254/32 via 10.97.0.1");
    d.wait_for("macvlan parents guarded", Duration::from_secs(2));
    let before = tb.imds.count();
    assert!(
        !connects(&m, "169.254.169.254:80"),
        "macvlan child of a late parent"
    );
    assert_eq!(tb.imds.count(), before);
    // The parent gone, its guard goes with it: the table carries nothing stale.
    tb.host.ip("link del vcl2");
    until(Duration::from_secs(2), "the netdev table to go", || {
        !tb.host
            .try_exec(&["nft", "list", "table", "netdev", "imds_proxy"])
            .0
    });
    assert_eq!(tb.status("/"), 200);
}
