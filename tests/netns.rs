//! Root tests with real packets through real nftables, each in its own network
//! namespaces (see tests/common): the daemon runs in a "host" namespace whose bridge
//! stands in for docker0; a "container" namespace hangs off the bridge; a "cloud"
//! namespace serves a fake metadata service at 169.254.169.254.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const QUICK: Duration = Duration::from_millis(1000);

#[test]
fn container_reaches_the_metadata_service_only_through_the_proxy() {
    if !root_or_skip("container_reaches_the_metadata_service_only_through_the_proxy") {
        return;
    }
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
    d.wait_for("client.addr=10.88.0.2", QUICK);

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
    if !root_or_skip("other_ports_and_protocols_to_the_metadata_address_are_refused_fast") {
        return;
    }
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
fn after_sigkill_containers_are_refused_fast_never_passed_through() {
    if !root_or_skip("after_sigkill_containers_are_refused_fast_never_passed_through") {
        return;
    }
    let tb = Testbed::new();
    let d = tb.daemon(&[]);
    assert_eq!(tb.status("/"), 200);
    d.kill9();
    let before = tb.imds.count();
    for _ in 0..3 {
        let r = http(
            &tb.container,
            IMDS,
            "GET",
            "/latest/meta-data/iam/security-credentials/",
            &[],
        );
        assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
        assert!(r.1 < QUICK, "refusal took {:?}", r.1);
    }
    assert_eq!(
        tb.imds.count(),
        before,
        "a container reached the metadata service after the daemon died"
    );
    assert!(
        tb.host.nft_table().is_some(),
        "the table must outlive the process"
    );
    // The host itself is not affected.
    assert_eq!(http(&tb.host, IMDS, "GET", "/", &[]).0.unwrap().status, 200);
}

#[test]
fn sigterm_drains_in_flight_requests_then_leaves_containers_refused() {
    if !root_or_skip("sigterm_drains_in_flight_requests_then_leaves_containers_refused") {
        return;
    }
    let tb = Testbed::new();
    let d = tb.daemon(&[]);
    // A request in flight when SIGTERM arrives completes.
    let slow = tb.in_flight(1500);
    d.signal(Signal::SIGTERM);
    let status = d.wait(Duration::from_secs(10));
    assert!(status.success(), "daemon exit: {status:?}");
    let (r, took) = slow.join().unwrap();
    assert_eq!(r.expect("in-flight request was cut").status, 200);
    assert!(took >= Duration::from_millis(1500));

    // Closed: no DNAT, containers refused, fake service untouched.
    let table = tb.host.nft_table().expect("table left in place");
    assert!(!table.contains("dnat to"), "{table}");
    let before = tb.imds.count();
    let r = http(&tb.container, IMDS, "GET", "/", &[]);
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
    assert!(r.1 < QUICK);
    assert_eq!(tb.imds.count(), before);
}

#[test]
fn remove_on_exit_and_uninstall_reopen_direct_access() {
    if !root_or_skip("remove_on_exit_and_uninstall_reopen_direct_access") {
        return;
    }
    let tb = Testbed::new();
    let d = tb.daemon(&["--remove-on-exit"]);
    d.signal(Signal::SIGINT);
    assert!(d.wait(Duration::from_secs(10)).success());
    assert!(tb.host.nft_table().is_none());
    assert!(!tb.host.ip("-br link").contains("imdsproxy0"));
    assert_eq!(tb.status("/"), 200);

    let d = tb.daemon(&[]);
    d.kill9();
    tb.host.exec(&[BIN, "uninstall"]);
    assert!(tb.host.nft_table().is_none());
    assert!(!tb.host.ip("-br link").contains("imdsproxy0"));
    let seen = tb.imds.count();
    assert_eq!(tb.status("/"), 200);
    assert_eq!(tb.imds.count(), seen + 1);
    assert_eq!(
        tb.imds.last().peer.ip().to_string(),
        "10.88.0.2",
        "direct again"
    );
    // Uninstalling twice is harmless.
    tb.host.exec(&[BIN, "uninstall"]);
}

#[test]
fn with_plain_tables_a_deleted_table_and_a_flushed_ruleset_are_restored_within_two_seconds() {
    if !root_or_skip(
        "with_plain_tables_a_deleted_table_and_a_flushed_ruleset_are_restored_within_two_seconds",
    ) {
        return;
    }
    let tb = Testbed::new();
    // The fallback where the kernel cannot own tables, forced: anyone may change them.
    let d = tb.daemon(&["--table-owner", "off"]);
    d.wait_for("tables not owned", QUICK);
    d.wait_for("reason=\"table_owner = off\"", QUICK);
    let installed = tb.host.nft_table().unwrap();
    let actions: [&[&str]; 4] = [
        &["nft", "delete", "table", "ip", "imds_proxy"],
        &["nft", "delete", "table", "ip6", "imds_proxy"],
        &["nft", "delete", "table", "bridge", "imds_proxy"],
        &["nft", "flush", "ruleset"],
    ];
    for (n, args) in actions.iter().enumerate() {
        tb.host.exec(args);
        let took = until(Duration::from_secs(2), "the table to be restored", || {
            tb.host.nft_table().as_deref() == Some(installed.as_str())
        });
        measure(
            &format!("table restored after `{}` (ms)", args.join(" ")),
            took.as_millis(),
        );
        d.wait_for_nth("nftables table restored", n + 1, QUICK);
        assert_eq!(tb.status("/"), 200);
    }
    // A rule deleted from the table is put back as well.
    let listing = tb.host.exec(&[
        "nft",
        "-a",
        "list",
        "chain",
        "ip",
        "imds_proxy",
        "prerouting",
    ]);
    let handle = listing
        .lines()
        .find(|l| l.contains("dnat"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_owned();
    tb.host.exec(&[
        "nft",
        "delete",
        "rule",
        "ip",
        "imds_proxy",
        "prerouting",
        "handle",
        &handle,
    ]);
    until(Duration::from_secs(2), "the rule to be restored", || {
        tb.host.nft_table().as_deref() == Some(installed.as_str())
    });
}

#[test]
fn owned_tables_cannot_be_changed_by_others_outlive_a_crash_and_are_adopted() {
    if !root_or_skip("owned_tables_cannot_be_changed_by_others_outlive_a_crash_and_are_adopted") {
        return;
    }
    let tb = Testbed::new();
    let d = tb.daemon(&[]);
    d.wait_for("tables owned by the daemon and persistent", QUICK);
    let installed = tb.host.nft_table().unwrap();
    for family in ["ip", "ip6", "bridge"] {
        let (ok, _, err) = tb
            .host
            .try_exec(&["nft", "delete", "table", family, "imds_proxy"]);
        assert!(!ok, "another process deleted the {family} table");
        assert!(err.contains("Operation not permitted"), "{err}");
    }
    // Flushing the ruleset flushes everyone else's tables, not the daemon's.
    tb.host
        .nft("table ip other {\n\tchain c {\n\t\ttype filter hook input priority 0;\n\t}\n}\n");
    tb.host.exec(&["nft", "flush", "ruleset"]);
    assert!(!tb.host.exec(&["nft", "list", "tables"]).contains("other"));
    assert_eq!(tb.host.nft_table().unwrap(), installed);
    assert_eq!(tb.status("/"), 200);
    assert_eq!(
        d.log_count("nftables table restored"),
        0,
        "nothing to restore"
    );

    // Killed: the tables stay, closed to containers at once, with nobody owning them.
    d.kill9();
    let before = tb.imds.count();
    let r = http(&tb.container, IMDS, "GET", "/", &[]);
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);
    assert!(r.1 < QUICK, "refusal took {:?}", r.1);
    assert_eq!(tb.imds.count(), before);
    assert_eq!(tb.host.nft_table().unwrap(), installed);

    // The next start adopts them, says so, and serves again.
    let d2 = tb.daemon(&[]);
    d2.wait_for("adopted the tables a previous run left", QUICK);
    assert_eq!(tb.host.nft_table_count(), 1);
    assert_eq!(tb.host.nft_table().unwrap(), installed);
    assert_eq!(tb.status("/"), 200);
    let (ok, _, _) = tb
        .host
        .try_exec(&["nft", "delete", "table", "ip", "imds_proxy"]);
    assert!(!ok, "the adopted table is owned again");
}

#[test]
fn rules_prints_exactly_what_run_installs_and_a_restart_keeps_one_table() {
    if !root_or_skip("rules_prints_exactly_what_run_installs_and_a_restart_keeps_one_table") {
        return;
    }
    let tb = Testbed::new();
    let d = tb.daemon(&[]);
    let printed = tb.host.exec(&[BIN, "rules", "--bridges", "br0,br-*"]);
    assert_eq!(tb.host.nft_table().unwrap(), printed);
    assert!(printed.contains("elements = { \"br0\" }"), "{printed}");

    // A second instance in the same namespace is refused and changes nothing.
    let second = tb.daemon_unready(&[]);
    assert!(!second.wait(Duration::from_secs(10)).success());
    second.wait_for("already running", QUICK);
    assert_eq!(tb.host.nft_table().unwrap(), printed);
    assert_eq!(tb.status("/"), 200);

    // After a crash, a new start replaces the stale table: still exactly one.
    d.kill9();
    let d2 = tb.daemon(&[]);
    assert_eq!(tb.host.nft_table_count(), 1);
    assert_eq!(tb.host.nft_table().unwrap(), printed);
    assert_eq!(tb.status("/"), 200);
    let live = d2.wait_for("interception live", QUICK);
    measure(
        "process spawn to interception live, incl. exec (ms)",
        live.as_millis(),
    );
    let line = d2
        .log()
        .into_iter()
        .find(|l| l.contains("interception live"))
        .unwrap();
    let own = line.rsplit("elapsed_ms=").next().unwrap().trim();
    measure("daemon start-up to interception live, as it logs (ms)", own);
}

#[test]
fn a_connection_opened_before_start_up_is_cut() {
    if !root_or_skip("a_connection_opened_before_start_up_is_cut") {
        return;
    }
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
    if !root_or_skip("a_bridge_created_after_start_is_intercepted") {
        return;
    }
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
    d.wait_for("client.addr=10.89.0.2", QUICK);

    // A bridge that goes away leaves the set.
    drop(late);
    tb.host.ip("link del br-late01");
    until(Duration::from_secs(2), "br-late01 out of the set", || {
        !tb.host.nft_table().unwrap().contains("br-late01")
    });
}

#[test]
fn the_proxy_port_answers_only_containers_and_the_host() {
    if !root_or_skip("the_proxy_port_answers_only_containers_and_the_host") {
        return;
    }
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
fn clear_errors_for_a_taken_address_and_a_non_root_user() {
    if !root_or_skip("clear_errors_for_a_taken_address_and_a_non_root_user") {
        return;
    }
    let tb = Testbed::new();
    tb.host.ip(&format!("addr add {PROXY_ADDR}/32 dev br0"));
    let d = tb.daemon_unready(&[]);
    assert!(!d.wait(Duration::from_secs(10)).success());
    d.wait_for("already configured on interface br0", QUICK);
    tb.host.ip(&format!("addr del {PROXY_ADDR}/32 dev br0"));

    // An interface that merely has the daemon's link name is not adopted (or deleted).
    tb.host.ip("link add imdsproxy0 type bridge");
    let d = tb.daemon_unready(&[]);
    assert!(!d.wait(Duration::from_secs(10)).success());
    d.wait_for("is not the daemon's own link", QUICK);
    let (ok, _, err) = tb.host.try_exec(&[BIN, "uninstall"]);
    assert!(!ok && err.contains("is not the daemon's own link"), "{err}");
    assert!(
        tb.host.ip("-br link").contains("imdsproxy0"),
        "uninstall deleted a foreign interface"
    );

    // Another program on the proxy's address and port (on the daemon's own link).
    tb.host.ip("link set imdsproxy0 alias imds-proxy");
    tb.host
        .ip(&format!("addr add {PROXY_ADDR}/32 dev imdsproxy0"));
    tb.host.ip("link set imdsproxy0 up");
    let _squatter = tb
        .host
        .run(|| std::net::TcpListener::bind((PROXY_ADDR, 80)).unwrap());
    let d = tb.daemon_unready(&[]);
    assert!(!d.wait(Duration::from_secs(10)).success());
    d.wait_for("already in use by another program", QUICK);
    // It failed closed: containers are refused, not passed through.
    let r = http(&tb.container, IMDS, "GET", "/", &[]);
    assert_eq!(refused(&r), ErrorKind::ConnectionRefused);

    let (ok, _, err) = try_cmd(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "run",
        "--upstream",
        "http://169.254.169.254",
    ]);
    assert!(!ok);
    assert!(err.contains("must run as root"), "{err}");
}

#[test]
fn start_up_order_is_closed_table_then_listener_then_dnat() {
    if !root_or_skip("start_up_order_is_closed_table_then_listener_then_dnat") {
        return;
    }
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
    if !root_or_skip("a_deleted_proxy_link_is_recreated_and_never_leaks_meanwhile") {
        return;
    }
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
    let (ok, _, err) = tb.host.try_exec(&[BIN, "uninstall"]);
    assert!(!ok && err.contains("stop it first"), "{err}");
    assert!(tb.host.nft_table().is_some());
}

#[test]
fn callers_no_container_holds_are_denied_by_default_in_the_providers_shape() {
    if !root_or_skip("callers_no_container_holds_are_denied_by_default_in_the_providers_shape") {
        return;
    }
    let tb = Testbed::new();
    let d = tb.daemon(&["--unknown-policy", "deny"]);
    let aws = http(
        &tb.container,
        IMDS,
        "GET",
        "/latest/meta-data/iam/security-credentials/",
        &[],
    )
    .0
    .unwrap();
    assert_eq!(aws.status, 403);
    assert!(
        aws.body
            .starts_with("Forbidden: denied by imds-proxy policy deny"),
        "{aws:?}"
    );
    let gce = http(
        &tb.container,
        IMDS,
        "GET",
        "/computeMetadata/v1/project/project-id",
        &[("Metadata-Flavor", "Google")],
    )
    .0
    .unwrap();
    assert_eq!(gce.status, 403);
    assert_eq!(
        gce.headers.get("metadata-flavor").map(String::as_str),
        Some("Google")
    );
    let azure = http(
        &tb.container,
        IMDS,
        "GET",
        "/metadata/instance?api-version=2021-02-01",
        &[("Metadata", "true")],
    )
    .0
    .unwrap();
    assert_eq!(azure.status, 403);
    let v: serde_json::Value = serde_json::from_str(&azure.body).unwrap();
    assert_eq!(v["error"], "forbidden");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("unknown caller"),
        "{v}"
    );
    assert_eq!(
        tb.imds.count(),
        0,
        "a denied request reached the metadata service"
    );
    d.wait_for("denied by policy deny", QUICK);
}

#[test]
fn a_config_change_changes_the_answer_without_a_restart() {
    if !root_or_skip("a_config_change_changes_the_answer_without_a_restart") {
        return;
    }
    let tb = Testbed::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imds-proxy.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    write("unknown_policy = \"allow\"\n");
    let d = tb.daemon(&["--config", file.to_str().unwrap()]);
    let creds = "/latest/meta-data/iam/security-credentials/role";
    assert_eq!(tb.status(creds), 200);

    // An edit to the file is picked up on its own...
    write("unknown_policy = \"readonly\"\n[policies.readonly]\ndefault = \"allow\"\ndeny = [\"/*/meta-data/iam/**\"]\n");
    d.wait_for("configuration reloaded", Duration::from_secs(3));
    let a = http(&tb.container, IMDS, "GET", creds, &[]).0.unwrap();
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.body.contains("policy readonly"), "{a:?}");
    assert_eq!(tb.status("/latest/meta-data/instance-id"), 200);

    // ...a broken edit changes nothing and says why...
    write("unknown_policy = \"readonly\"\n[policies.readonly]\ndefault = \"perhaps\"\n");
    d.wait_for("configuration reload refused", Duration::from_secs(3));
    assert_eq!(tb.status(creds), 403);
    assert_eq!(tb.status("/latest/meta-data/instance-id"), 200);

    // ...and SIGHUP reloads at once.
    write("unknown_policy = \"deny\"\n");
    d.signal(Signal::SIGHUP);
    d.wait_for(
        "trigger=\"SIGHUP\" policies_changed=",
        Duration::from_secs(2),
    );
    until(Duration::from_secs(2), "the deny policy", || {
        http(
            &tb.container,
            IMDS,
            "GET",
            "/latest/meta-data/instance-id",
            &[],
        )
        .0
        .is_ok_and(|a| a.status == 403)
    });
    assert!(tb.host.nft_table().is_some(), "the daemon kept running");
}

/// The emulator's project id as a caller in `ns` reads it at the metadata address.
fn project_id(ns: &Netns) -> Result<Answer, std::io::Error> {
    http(
        ns,
        IMDS,
        "GET",
        "/computeMetadata/v1/project/project-id",
        &[("Metadata-Flavor", "Google")],
    )
    .0
}

#[test]
fn without_a_cloud_run_serves_the_built_in_emulator_to_containers_and_the_host() {
    if !root_or_skip("without_a_cloud_run_serves_the_built_in_emulator_to_containers_and_the_host")
    {
        return;
    }
    let tb = Testbed::new();
    // No cloud: nothing answers at 169.254.169.254.
    tb.host.ip("route del 169.254.169.254/32");
    let d = Daemon::spawn(
        &tb.host,
        &[
            "run",
            "--bridges",
            "br0,br-*",
            "--docker-socket",
            "/nonexistent/docker.sock",
            "--unknown-policy",
            "allow",
        ],
    );
    d.wait_for("interception live", Duration::from_secs(10));
    assert_eq!(
        d.log_count("serving the built-in emulator"),
        1,
        "{:#?}",
        d.log()
    );
    let a = project_id(&tb.container).unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "demo-project"), "{a:?}");
    assert_eq!(
        a.headers.get("metadata-flavor").map(String::as_str),
        Some("Google")
    );
    // Host processes reach it at the usual address, as on a cloud VM.
    let a = project_id(&tb.host).unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "demo-project"), "{a:?}");
    assert_eq!(tb.imds.count(), 0);
}

#[test]
fn run_forwards_only_to_a_service_that_answers_like_a_cloud() {
    if !root_or_skip("run_forwards_only_to_a_service_that_answers_like_a_cloud") {
        return;
    }
    let tb = Testbed::new();
    let args = [
        "run",
        "--bridges",
        "br0,br-*",
        "--docker-socket",
        "/nonexistent/docker.sock",
        "--unknown-policy",
        "allow",
    ];
    // The fake service answers as EC2's does (`Server: EC2ws`): forwarded to.
    let d = Daemon::spawn(&tb.host, &args);
    d.wait_for("interception live", Duration::from_secs(10));
    assert_eq!(
        d.log_count("a metadata service answers"),
        1,
        "{:#?}",
        d.log()
    );
    assert!(
        d.log().iter().any(|l| l.contains("cloud=AWS")),
        "{:#?}",
        d.log()
    );
    let before = tb.imds.count();
    assert_eq!(tb.status("/latest/meta-data/instance-id"), 200);
    assert!(tb.imds.count() > before, "the container was not forwarded");
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());

    // A web filter that answers every address with 403 (as some networks do) is no
    // metadata service: the emulator serves, and says what it found.
    let web = Netns::new("web");
    tb.host.ip(&format!(
        "link add vweb type veth peer name eth0 netns {}",
        web.name
    ));
    tb.host.ip("addr add 10.98.0.1/30 dev vweb");
    tb.host.ip("link set vweb up");
    tb.host.ip("route replace 169.254.169.254/32 via 10.98.0.2");
    web.ip("addr add 10.98.0.2/30 dev eth0");
    web.ip("addr add 169.254.169.254/32 dev lo");
    web.ip("link set eth0 up");
    web.ip("route add default via 10.98.0.1");
    let listener = web.run(|| std::net::TcpListener::bind("169.254.169.254:80").unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 403 Forbidden\r\nServer: filter\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforbidden",
            );
        }
    });
    let a = http(&tb.host, IMDS, "GET", "/", &[]).0.unwrap();
    assert_eq!(a.status, 403, "the filter stands in the way: {a:?}");
    let d = Daemon::spawn(&tb.host, &args);
    d.wait_for("interception live", Duration::from_secs(10));
    assert_eq!(
        d.log_count("serving the built-in emulator"),
        1,
        "{:#?}",
        d.log()
    );
    assert!(
        d.log()
            .iter()
            .any(|l| l.contains("without any cloud's metadata marks")),
        "{:#?}",
        d.log()
    );
    let a = project_id(&tb.container).unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "demo-project"), "{a:?}");
}

#[test]
fn an_emulator_file_edit_is_served_without_a_restart_and_a_real_upstream_gets_the_address_back() {
    if !root_or_skip("an_emulator_file_edit_is_served_without_a_restart_and_a_real_upstream_gets_the_address_back") {
        return;
    }
    let tb = Testbed::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("emulator.toml");
    let example = include_str!("../examples/emulator.toml");
    let write = |project: &str| {
        std::fs::write(
            &file,
            example.replace(
                "project_id = \"demo-project\"",
                &format!("project_id = \"{project}\""),
            ),
        )
        .unwrap()
    };
    write("first-project");
    let emu = [
        "run",
        "--emulator",
        file.to_str().unwrap(),
        "--bridges",
        "br0,br-*",
        "--docker-socket",
        "/nonexistent/docker.sock",
        "--unknown-policy",
        "allow",
    ];
    let d = Daemon::spawn(&tb.host, &emu);
    d.wait_for("interception live", Duration::from_secs(10));
    assert_eq!(project_id(&tb.container).unwrap().body, "first-project");
    // The emulator's own address wins over the route to the cloud: the host is served
    // by the emulator too.
    assert_eq!(project_id(&tb.host).unwrap().body, "first-project");

    write("second-project");
    d.wait_for("emulator file reloaded", Duration::from_secs(3));
    assert_eq!(project_id(&tb.container).unwrap().body, "second-project");
    std::fs::write(&file, "[gce]\nproject_id = 7\n").unwrap();
    d.wait_for("emulator file reload refused", Duration::from_secs(3));
    assert!(
        d.log()
            .iter()
            .any(|l| l.contains("gce.") && l.contains("emulator file reload refused")),
        "the reason names the key: {:#?}",
        d.log()
    );
    assert_eq!(project_id(&tb.container).unwrap().body, "second-project");

    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    // With a real service upstream the daemon gives the address back to it.
    let _d = tb.daemon(&[]);
    let before = tb.imds.count();
    let a = http(&tb.host, IMDS, "GET", "/latest/meta-data/instance-id", &[])
        .0
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        tb.imds.count() > before,
        "the host reached the real service directly"
    );
}

#[test]
fn a_container_reaches_the_ipv6_metadata_address_only_through_the_proxy() {
    if !root_or_skip("a_container_reaches_the_ipv6_metadata_address_only_through_the_proxy") {
        return;
    }
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
    d.wait_for("client.addr=fd00:dead:beef::2", QUICK);

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
    let printed = tb.host.exec(&[BIN, "rules", "--bridges", "br0,br-*"]);
    assert!(printed.contains("table ip6 imds_proxy {"), "{printed}");
    assert_eq!(tb.host.nft_table().unwrap(), printed);
}

#[test]
fn after_sigkill_ipv6_callers_are_refused_fast_never_passed_through() {
    if !root_or_skip("after_sigkill_ipv6_callers_are_refused_fast_never_passed_through") {
        return;
    }
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
    if !root_or_skip("with_ipv6_switched_off_the_daemon_serves_ipv4_and_still_refuses_ipv6") {
        return;
    }
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
    if !root_or_skip("an_ipv6_connection_opened_before_start_up_is_cut") {
        return;
    }
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
    if !root_or_skip(
        "dns_queries_for_the_gce_metadata_name_and_only_those_are_answered_by_the_daemon",
    ) {
        return;
    }
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
    if !root_or_skip("gce_dns_off_leaves_every_query_alone_and_ipv6_queries_are_answered_too") {
        return;
    }
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
