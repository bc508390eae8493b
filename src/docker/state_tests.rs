use super::*;
use crate::ports::BridgePort;
use std::net::IpAddr;

fn id(c: char) -> ContainerId {
    ContainerId(c.to_string().repeat(64))
}

fn addr(ip: &str) -> Addresses {
    Addresses {
        ipv4: ip.parse().unwrap(),
        ipv6: None,
        mac: Some(format!("02:42:{ip}")),
    }
}

fn container(c: char, name: &str, nets: &[(&str, &str)]) -> Container {
    Container {
        id: id(c),
        name: name.into(),
        labels: [("imds-proxy.policy".to_owned(), name.to_owned())].into(),
        image: "busybox".into(),
        networks: nets
            .iter()
            .map(|(n, ip)| (n.to_string(), addr(ip)))
            .collect(),
        pid: Some(100),
    }
}

fn facts(bridge: &str, nsid: i32) -> PortFacts {
    PortFacts {
        bridge: bridge.into(),
        nsid,
        peer: None,
    }
}

/// A host with the default bridge, a user network with a custom bridge name, and
/// Swarm's `docker_gwbridge`.
fn host() -> State {
    let mut st = State::default();
    st.set_networks(
        [
            ("bridge", "docker0"),
            ("custom", "my-bridge"),
            ("docker_gwbridge", "docker_gwbridge"),
        ]
        .map(|(n, b)| (n.to_owned(), b.to_owned()))
        .into(),
    );
    st
}

#[test]
fn a_port_names_the_container_of_its_peer_namespace_on_that_bridges_network() {
    let mut st = host();
    st.set_container(container(
        'a',
        "web",
        &[("bridge", "172.17.0.2"), ("custom", "10.5.0.2")],
    ));
    st.set_container(container('b', "db", &[("bridge", "172.17.0.3")]));
    st.set_nsid(1, id('a'));
    st.set_nsid(2, id('b'));
    st.set_port(BridgePort(10), facts("docker0", 1));
    st.set_port(BridgePort(11), facts("my-bridge", 1));
    st.set_port(BridgePort(12), facts("docker0", 2));
    let inv = st.inventory(true);
    let ep = |p| {
        let e = inv.by_port(p).expect("endpoint");
        (
            e.name.clone(),
            e.network.clone(),
            e.ipv4.to_string(),
            e.port,
        )
    };
    assert_eq!(
        ep(BridgePort(10)),
        (
            "web".into(),
            "bridge".into(),
            "172.17.0.2".into(),
            Some(BridgePort(10))
        )
    );
    assert_eq!(
        ep(BridgePort(11)),
        (
            "web".into(),
            "custom".into(),
            "10.5.0.2".into(),
            Some(BridgePort(11))
        )
    );
    assert_eq!(
        ep(BridgePort(12)),
        (
            "db".into(),
            "bridge".into(),
            "172.17.0.3".into(),
            Some(BridgePort(12))
        )
    );
    assert_eq!((inv.len(), inv.containers()), (3, 2));
    assert_eq!(
        st.docker_bridges(),
        ["docker0", "docker_gwbridge", "my-bridge"]
            .map(String::from)
            .into()
    );
}

#[test]
fn a_swarm_containers_gateway_endpoint_comes_from_the_networks_own_list() {
    let mut st = host();
    // A Swarm task lists only its overlay network; its docker_gwbridge endpoint is
    // listed by docker_gwbridge alone.
    st.set_container(container('s', "svc.1.x", &[("ov", "10.0.1.3")]));
    st.set_nsid(3, id('s'));
    st.set_port(BridgePort(20), facts("docker_gwbridge", 3));
    assert!(st.inventory(true).by_port(BridgePort(20)).is_none());
    assert_eq!(
        st.networks_missing_endpoints(),
        [("docker_gwbridge".to_owned(), id('s'))].into()
    );
    st.set_hidden("docker_gwbridge", vec![(id('s'), addr("172.18.0.3"))]);
    let inv = st.inventory(true);
    let e = inv.by_port(BridgePort(20)).expect("gateway endpoint");
    assert_eq!(
        (e.name.as_str(), e.network.as_str(), e.ipv4.to_string()),
        ("svc.1.x", "docker_gwbridge", "172.18.0.3".into())
    );
    assert!(st.networks_missing_endpoints().is_empty());
}

#[test]
fn ports_without_a_known_container_or_endpoint_name_no_one() {
    let mut st = host();
    st.set_container(container('a', "web", &[("bridge", "172.17.0.2")]));
    st.set_nsid(1, id('a'));
    // A namespace nobody owns (Swarm's ingress-sbox), a bridge Docker does not know
    // (libvirt), a container with no endpoint on that bridge.
    st.set_port(BridgePort(30), facts("docker_gwbridge", 9));
    st.set_port(BridgePort(31), facts("virbr0", 1));
    st.set_port(BridgePort(32), facts("my-bridge", 1));
    let inv = st.inventory(true);
    for p in [30, 31, 32, 33] {
        assert!(inv.by_port(BridgePort(p)).is_none(), "port {p}");
    }
}

#[test]
fn a_stopped_container_takes_its_namespace_id_with_it() {
    let mut st = host();
    st.set_container(container('a', "old", &[("bridge", "172.17.0.2")]));
    st.set_nsid(1, id('a'));
    st.set_port(BridgePort(10), facts("docker0", 1));
    assert!(st.remove_container(&id('a')));
    // The kernel hands the freed id to the next namespace: a new container's new port
    // with the old id must not name the old container.
    st.set_port(BridgePort(11), facts("docker0", 1));
    let inv = st.inventory(true);
    assert!(inv.by_port(BridgePort(10)).is_none() && inv.by_port(BridgePort(11)).is_none());
    assert_eq!(st.container_of_nsid(1), None);
}

#[test]
fn a_resync_forgets_the_gone_keeps_the_newer_and_keeps_pids() {
    let mut st = host();
    st.set_container(container('a', "a", &[("bridge", "172.17.0.2")]));
    st.set_container(container('b', "b", &[("bridge", "172.17.0.3")]));
    st.set_container(container('n', "n", &[("bridge", "172.17.0.4")]));
    st.set_nsid(1, id('b'));
    let listed_b = Container {
        pid: None,
        ..container('b', "b-renamed", &[("bridge", "172.17.0.3")])
    };
    st.set_containers(vec![listed_b], &[id('n')].into());
    assert!(st.container(&id('a')).is_none());
    let b = st.container(&id('b')).unwrap();
    assert_eq!((b.name.as_str(), b.pid), ("b-renamed", Some(100)));
    assert!(
        st.container(&id('n')).is_some(),
        "inspected after the list was asked"
    );
}

#[test]
fn an_unowned_port_answers_requests_that_arrived_before_it_was_looked_into() {
    let mut st = host();
    let before = Instant::now();
    st.set_unowned(BridgePort(40), Instant::now());
    let after = Instant::now() + std::time::Duration::from_millis(5);
    let inv = st.inventory(true);
    assert!(inv.unowned_since(BridgePort(40), before));
    assert!(!inv.unowned_since(BridgePort(40), after));
    assert!(!inv.unowned_since(BridgePort(41), before));
    // Once the port leads somewhere it is no longer unowned.
    st.set_port(BridgePort(40), facts("docker0", 1));
    assert!(!st.inventory(true).unowned_since(BridgePort(40), before));
}

#[test]
fn a_container_known_only_from_its_create_event_is_named_with_its_namespaces_addresses() {
    let mut st = host();
    let labels: BTreeMap<String, String> = [("imds-proxy.policy".into(), "deny".into())].into();
    st.set_created(id('c'), "fresh".into(), labels.clone());
    let link_local: IpAddr = "fe80::42:acff:fe11:5".parse().unwrap();
    let addrs = [
        link_local,
        "172.17.0.5".parse().unwrap(),
        "fd00::5".parse().unwrap(),
    ];
    // Without its create event a container is not made up from kernel facts.
    assert!(!st.set_provisional(&id('x'), "docker0", &addrs));
    // Without an IPv4 address on the port's peer there is nothing to hold it to.
    assert!(!st.set_provisional(&id('c'), "docker0", &[link_local]));
    assert!(st.set_provisional(&id('c'), "docker0", &addrs));
    st.set_nsid(5, id('c'));
    st.set_port(BridgePort(50), facts("docker0", 5));
    let inv = st.inventory(true);
    let e = inv.by_port(BridgePort(50)).expect("endpoint");
    assert_eq!(
        (
            e.name.as_str(),
            e.network.as_str(),
            e.ipv4.to_string(),
            e.ipv6.map(|a| a.to_string())
        ),
        (
            "fresh",
            "bridge",
            "172.17.0.5".into(),
            Some("fd00::5".into())
        )
    );
    assert_eq!(e.labels, labels);
    // Docker's inspect replaces it with what Docker assigned.
    st.set_container(container('c', "fresh", &[("bridge", "172.17.0.5")]));
    assert!(st
        .inventory(true)
        .by_port(BridgePort(50))
        .unwrap()
        .mac
        .is_some());
}
