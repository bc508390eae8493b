//! Snapshot tests: the rendered plan must equal what `nft list table` prints for the
//! installed `ip`, `ip6` and `bridge` tables (the root tests check that equality on a
//! real kernel; these pin the text itself, without root).

use super::*;

fn snapshot(bridges: &[&str], mode: Mode) -> Snapshot {
    Snapshot::for_test(bridges, mode)
}

#[test]
fn open_table_matches_the_pinned_nft_listing() {
    let text = plan(&snapshot(&["docker0", "br-0a1b2c3d4e5f"], Mode::Open)).to_string();
    assert_eq!(text, include_str!("../../tests/snapshots/open.nft"));
}

#[test]
fn closed_table_has_no_dnat_but_keeps_every_refusal() {
    let open = plan(&snapshot(&["docker0", "br-0a1b2c3d4e5f"], Mode::Open)).to_string();
    let closed = plan(&snapshot(&["docker0", "br-0a1b2c3d4e5f"], Mode::Closed)).to_string();
    assert_eq!(closed, include_str!("../../tests/snapshots/closed.nft"));
    assert!(!closed.contains("dnat to"));
    let refusals = |t: &str| {
        t.lines()
            .filter(|l| l.contains("reject"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(refusals(&open), refusals(&closed));
    assert_eq!(
        refusals(&open).len(),
        2 * (2 * 2 + 3),
        "per family: tcp/other x input/forward, plus the proxy address in input (2) and forward (1)"
    );
}

/// The rules of a chain as text.
fn rules_of(c: &Chain) -> Vec<String> {
    c.rules.iter().map(ToString::to_string).collect()
}

#[test]
fn every_forwarded_packet_to_the_metadata_address_is_refused_whatever_its_interface() {
    let rs = plan(&snapshot(&[], Mode::Open));
    let chain = |name: &str| rs.chains.iter().find(|c| c.name == name).unwrap();
    // No interface, no pattern, no set: a bridge of any name, a routed veth, Swarm's
    // docker_gwbridge are all refused; the host's own output is not in this table.
    assert_eq!(
        rules_of(chain("forward")),
        [
            "ip daddr 169.254.169.254 reject with tcp reset",
            "ip daddr 169.254.169.254 reject",
            "ip daddr 169.254.93.254 reject",
        ]
    );
    // Where the host holds the address itself (emulator mode), from anywhere but
    // loopback, the host's own processes' path.
    assert_eq!(
        rules_of(chain("input"))[..2],
        [
            "iifname != \"lo\" ip daddr 169.254.169.254 reject with tcp reset",
            "iifname != \"lo\" ip daddr 169.254.169.254 reject",
        ]
    );
    assert!(rs
        .chains
        .iter()
        .all(|c| c.base.is_none_or(|b| b.hook != Hook::Output) || c.name == "dnsreply"));
    // Frames bridged port to port are dropped (the bridge family cannot reject there).
    assert_eq!(rs.bridge_forward.base.unwrap().hook, Hook::Forward);
    assert_eq!(
        rules_of(&rs.bridge_forward),
        [
            "ip daddr 169.254.169.254 drop",
            "ip6 daddr fd00:ec2::254 drop"
        ]
    );
    // Neither the bridge patterns nor the bridges present change a refusal.
    let mut other = snapshot(&["docker0", "br-1"], Mode::Open);
    other.patterns = vec![BridgePattern::Exact("cni0".into())];
    let other = plan(&other);
    let refusals = |rs: &Ruleset| {
        rs.to_string()
            .lines()
            .filter(|l| l.contains("reject") || l.contains("drop"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(refusals(&rs), refusals(&other));
    // An empty set prints no elements line, as nft does.
    assert!(!rs.to_string().contains("elements"));
}

#[test]
fn direct_interfaces_are_let_through_ahead_of_the_refusals_and_nothing_else_is() {
    let mut s = snapshot(&["docker0"], Mode::Open);
    s.direct = vec!["virbr0".into(), "eth1".into()];
    let rs = plan(&s);
    let text = rs.to_string();
    let chain =
        |chains: &[Chain], name: &str| rules_of(chains.iter().find(|c| c.name == name).unwrap());
    for name in ["input", "forward"] {
        let rules = chain(&rs.chains, name);
        assert_eq!(
            rules[..3],
            [
                "iifname \"virbr0\" ip daddr 169.254.169.254 accept",
                "iifname \"eth1\" ip daddr 169.254.169.254 accept",
                if name == "input" {
                    "iifname != \"lo\" ip daddr 169.254.169.254 reject with tcp reset"
                } else {
                    "ip daddr 169.254.169.254 reject with tcp reset"
                },
            ],
            "{text}"
        );
        let rules6 = chain(rs.chains6.as_deref().unwrap(), name);
        assert_eq!(rules6[1], "iifname \"eth1\" ip6 daddr fd00:ec2::254 accept");
    }
    assert_eq!(
        rules_of(&rs.bridge_forward),
        [
            "iifname \"virbr0\" ip daddr 169.254.169.254 accept",
            "iifname \"virbr0\" ip6 daddr fd00:ec2::254 accept",
            "iifname \"eth1\" ip daddr 169.254.169.254 accept",
            "iifname \"eth1\" ip6 daddr fd00:ec2::254 accept",
            "ip daddr 169.254.169.254 drop",
            "ip6 daddr fd00:ec2::254 drop",
        ]
    );
    // The accepts name only the metadata addresses: nothing else of those interfaces
    // is touched, and interception is unchanged.
    // Two interfaces x (ip input, ip forward, ip6 input, ip6 forward, bridge ip, bridge ip6).
    assert_eq!(
        text.matches(" accept\n").count(),
        2 * 6 + rs_accepts_without_direct()
    );
    assert_eq!(
        rs.chains[0],
        plan(&snapshot(&["docker0"], Mode::Open)).chains[0]
    );
}

/// How many accept rules the default snapshot has (the proxy's own address).
fn rs_accepts_without_direct() -> usize {
    plan(&snapshot(&["docker0"], Mode::Open))
        .to_string()
        .matches(" accept\n")
        .count()
}

#[test]
fn dnat_goes_to_the_configured_listen_address() {
    let mut s = snapshot(&["docker0"], Mode::Open);
    s.listen = "169.254.77.7:8080".parse().unwrap();
    let text = plan(&s).to_string();
    assert!(
        text.contains(
            "iifname @bridges ip daddr 169.254.169.254 tcp dport 80 meta mark != 0x00000000 ct mark set meta mark dnat to 169.254.77.7:8080"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "ip daddr 169.254.77.7 iifname @bridges tcp dport 8080 ct status dnat accept"
        ),
        "{text}"
    );
}

#[test]
fn set_elements_are_listed_in_nft_order_one_per_line() {
    let text = plan(&snapshot(
        &["zz", "br-1234567890ab", "docker0", "br-aaaa", "a"],
        Mode::Open,
    ))
    .to_string();
    assert!(
        text.contains("elements = { \"a\",\n\t\t\t     \"zz\",\n\t\t\t     \"docker0\",\n\t\t\t     \"br-aaaa\",\n\t\t\t     \"br-1234567890ab\" }"),
        "{text}"
    );
}

#[test]
fn the_plan_is_a_pure_function_of_the_snapshot() {
    // Two snapshots built apart, bridges learnt in another order: the same tables,
    // to the byte, however often they are planned.
    let a = snapshot(&["docker0", "br-b", "br-a"], Mode::Open);
    let b = snapshot(&["br-a", "br-b", "docker0"], Mode::Open);
    let first = plan(&a).to_string();
    for _ in 0..3 {
        assert_eq!(plan(&b).to_string(), first);
    }
    // And each thing it depends on changes it.
    let mut changed = Vec::new();
    let mut s = a.clone();
    s.mode = Mode::Closed;
    changed.push(("mode", s));
    let mut s = a.clone();
    s.bridges.remove("br-a");
    changed.push(("bridges", s));
    let mut s = a.clone();
    s.listen = "169.254.1.1:80".parse().unwrap();
    changed.push(("listen", s));
    let mut s = a.clone();
    s.v6 = Ipv6Service::RefuseOnly;
    changed.push(("v6", s));
    let mut s = a.clone();
    s.gce_dns = !s.gce_dns;
    changed.push(("gce_dns", s));
    for (what, s) in changed {
        assert_ne!(plan(&s).to_string(), first, "{what} changed nothing");
    }
}

#[test]
fn priorities_render_relative_to_the_standard_names() {
    let rs = plan(&snapshot(&[], Mode::Open));
    let text = rs.to_string();
    assert!(text.contains("type nat hook prerouting priority dstnat - 10; policy accept;"));
    assert!(text.contains("type filter hook input priority filter - 10; policy accept;"));
    assert!(text.contains("type filter hook forward priority filter - 10; policy accept;"));
}

#[test]
fn bridge_patterns_parse_and_match() {
    assert_eq!(
        BridgePattern::parse("docker0"),
        Ok(BridgePattern::Exact("docker0".into()))
    );
    assert_eq!(
        BridgePattern::parse("br-*"),
        Ok(BridgePattern::Prefix("br-".into()))
    );
    assert!(BridgePattern::parse("br-*")
        .unwrap()
        .matches("br-0a1b2c3d4e5f"));
    assert!(!BridgePattern::parse("br-*").unwrap().matches("bridge0"));
    assert!(!BridgePattern::parse("docker0").unwrap().matches("docker01"));
    for bad in ["", "*", "sixteen-chars-xx", "a b", "a\"b", "a/b", "a*b*"] {
        assert!(BridgePattern::parse(bad).is_err(), "{bad:?} accepted");
    }
    let snap = Snapshot::bridges_among(
        &[BridgePattern::Prefix("br-".into())],
        ["br-a", "eth0", "br-b", "lo"],
    );
    assert_eq!(snap.into_iter().collect::<Vec<_>>(), ["br-a", "br-b"]);
}

#[test]
fn only_port_stamped_packets_are_sent_to_the_proxy_and_the_stamp_is_kept() {
    let rs = plan(&snapshot(&["docker0"], Mode::Open));
    let pre = &rs.chains[0];
    // Every rule that sends TCP to the proxy needs the stamp (the others are DNS).
    let to_proxy: Vec<&Rule> = pre
        .rules
        .iter()
        .filter(|r| r.matches.contains(&Match::TcpDport(IMDS_PORT)))
        .collect();
    assert_eq!(to_proxy.len(), 1);
    assert!(to_proxy[0].matches.contains(&Match::MarkSet));
    assert!(matches!(to_proxy[0].action, Action::DnatKeepingMark(_)));
    // The bridge table stamps in both modes, first of all bridge hooks.
    for mode in [Mode::Open, Mode::Closed] {
        let rs = plan(&snapshot(&["docker0"], mode));
        assert_eq!(rs.port_chain.base.unwrap().priority, PRIO_BRIDGE_FIRST);
        let stamps: Vec<String> = rs.port_chain.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            stamps,
            [
                "ip daddr 169.254.169.254 tcp dport 80 meta mark set iif",
                "ip6 daddr fd00:ec2::254 tcp dport 80 meta mark set iif"
            ]
        );
    }
}

/// Whether a rule of `chain` drops a packet stamped with port `packet` on a connection
/// marked with port `conn`: its rules read as the kernel runs them.
fn drops(chain: &Chain, conn: u32, packet: u32) -> bool {
    chain.rules.iter().any(|r| {
        assert_eq!(r.action, Action::Drop, "{r}");
        r.matches.iter().all(|m| match m {
            Match::MarkBit { mark, bit, set } => {
                let value = match mark {
                    Mark::Conn => conn,
                    Mark::Packet => packet,
                };
                (value >> bit & 1 == 1) == *set
            }
            other => panic!("{other} in {}", chain.name),
        })
    })
}

#[test]
fn a_later_packet_from_another_port_than_its_connections_first_is_dropped() {
    for mode in [Mode::Open, Mode::Closed] {
        let rs = plan(&snapshot(&["docker0"], mode));
        for (chains, imds) in [
            (&rs.chains, IpAddr::V4(IMDS_V4)),
            (rs.chains6.as_ref().unwrap(), IpAddr::V6(IMDS_V6)),
        ] {
            let chain = |name: &str| chains.iter().find(|c| c.name == name).unwrap();
            // Ordinary traffic meets one rule, after conntrack and before NAT: only
            // metadata connections that have recorded a port go on to the comparison
            // (in closed mode too, for the connections still draining).
            let takeover = chain("takeover");
            assert_eq!(
                takeover.base,
                Some(Base {
                    kind: ChainKind::Filter,
                    hook: Hook::Prerouting,
                    priority: PRIO_MANGLE,
                })
            );
            // After conntrack (-200) has found the connection, before NAT.
            const { assert!(PRIO_MANGLE > -200 && PRIO_MANGLE < PRIO_DSTNAT_AHEAD) };
            assert_eq!(
                takeover.rules,
                [Rule {
                    matches: vec![
                        Match::IifnameInSet(BRIDGE_SET),
                        Match::Daddr(imds),
                        Match::TcpDport(IMDS_PORT),
                        Match::CtMarkSet,
                    ],
                    action: Action::Jump(PORT_DIFFERS),
                }]
            );
            let differs = chain(PORT_DIFFERS);
            assert_eq!(differs.base, None, "a regular chain, run only by the jump");
            assert_eq!(differs.rules.len(), 64);
            let ports = [1, 2, 7, 42, 1000, 0x8000_0000, 0x1234_5678, u32::MAX];
            for a in ports {
                assert!(!drops(differs, a, a), "port {a} on its own connection");
                assert!(
                    drops(differs, a, 0),
                    "an unstamped packet on {a}'s connection"
                );
                for bit in 0..32 {
                    let b = a ^ (1 << bit);
                    assert!(drops(differs, a, b), "port {b} on {a}'s connection");
                }
                for b in ports {
                    assert_eq!(drops(differs, a, b), a != b, "{a} {b}");
                }
            }
        }
        // Nothing else writes the connection's mark: the DNAT rule records the port of
        // its first packet, and only when open.
        let text = rs.to_string();
        let writes = if mode == Mode::Open { 2 } else { 0 };
        assert_eq!(text.matches("ct mark set").count(), writes, "{text}");
    }
    // Rendered as nft lists it, the top bit as a prefix.
    let rs = plan(&snapshot(&["docker0"], Mode::Open));
    let differs = rules_of(rs.chains.iter().find(|c| c.name == PORT_DIFFERS).unwrap());
    assert_eq!(
        [&differs[0], &differs[1], &differs[62], &differs[63]],
        [
            "ct mark & 0x00000001 == 0x00000001 meta mark & 0x00000001 == 0x00000000 drop",
            "ct mark & 0x00000001 == 0x00000000 meta mark & 0x00000001 == 0x00000001 drop",
            "ct mark 0x80000000/1 meta mark 0x00000000/1 drop",
            "ct mark 0x00000000/1 meta mark 0x80000000/1 drop",
        ]
    );
    // Without a listen address in a family there is nothing to guard.
    let mut s = snapshot(&["docker0"], Mode::Open);
    s.v6 = Ipv6Service::RefuseOnly;
    let rs = plan(&s);
    assert!(rs.chains6.unwrap().iter().all(|c| c
        .rules
        .iter()
        .all(|r| { !matches!(r.action, Action::Jump(_) | Action::Drop) })));
}

#[test]
fn the_ip6_table_intercepts_the_aws_ipv6_address_like_the_ip_table() {
    let text = plan(&snapshot(&["docker0"], Mode::Open)).to_string();
    let ip6 = &text[text.find("table ip6 imds_proxy {").expect("an ip6 table")..];
    for line in [
        "iifname @bridges ip6 daddr fd00:ec2::254 tcp dport 80 meta mark != 0x00000000 ct mark set meta mark dnat to [fdf3:6f62:ab7c::254]:80",
        "ip6 daddr fd00:ec2::254 reject with tcp reset",
        "iifname != \"lo\" ip6 daddr fd00:ec2::254 reject",
        "ip6 daddr fdf3:6f62:ab7c::254 iifname \"lo\" accept",
        "ip6 daddr fdf3:6f62:ab7c::254 iifname @bridges tcp dport 80 ct status dnat accept",
        "ip6 daddr fdf3:6f62:ab7c::254 reject",
        "iifname @bridges ip6 daddr fd00:ec2::254 tcp dport 80 ct mark != 0x00000000 jump port_differs",
    ] {
        assert!(ip6.contains(&format!("\t\t{line}\n")), "{line:?} missing from:\n{ip6}");
    }
    // The bridge table stamps IPv6 metadata packets with their port too.
    assert!(
        text.contains("\t\tip6 daddr fd00:ec2::254 tcp dport 80 meta mark set iif\n\t}\n"),
        "{text}"
    );
    // The ip6 table has the same chains, at the same priorities, as the ip table.
    let rs = plan(&snapshot(&["docker0"], Mode::Open));
    let shape = |chains: &[Chain]| {
        chains
            .iter()
            .map(|c| (c.name, c.base, c.rules.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&rs.chains), shape(rs.chains6.as_deref().unwrap()));
}

#[test]
fn with_ipv6_switched_off_the_ip6_table_only_refuses_and_without_ipv6_there_is_none() {
    let mut s = snapshot(&["docker0"], Mode::Open);
    s.v6 = Ipv6Service::RefuseOnly;
    let rs = plan(&s);
    let chains6 = rs.chains6.as_deref().unwrap();
    let rules6: Vec<String> = chains6
        .iter()
        .flat_map(|c| c.rules.iter().map(ToString::to_string))
        .collect();
    assert_eq!(rules6.len(), 2 * 2, "{rules6:#?}");
    assert!(rules6.iter().all(|r| r.contains("reject")), "{rules6:#?}");
    assert!(!rs.port_chain.to_string().contains("ip6"));
    // The ip table is untouched by the state of IPv6.
    assert_eq!(rs.chains, plan(&snapshot(&["docker0"], Mode::Open)).chains);

    s.v6 = Ipv6Service::Absent;
    let rs = plan(&s);
    assert!(rs.chains6.is_none());
    // Only the bridge table names IPv6: a bridge passes IPv6 frames whether or not the
    // host has IPv6, so bridged ones are still dropped.
    let text = rs.to_string();
    let ip6: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ip6"))
        .map(str::trim)
        .collect();
    assert_eq!(ip6, ["ip6 daddr fd00:ec2::254 drop"], "{rs}");
}

#[test]
fn priorities_are_named_as_nft_names_them() {
    use Hook::*;
    let name = |kind, hook, prio| priority_name(kind, hook, prio);
    assert_eq!(name(ChainKind::Nat, Prerouting, -110), "dstnat - 10");
    assert_eq!(name(ChainKind::Filter, Prerouting, -150), "mangle");
    assert_eq!(name(ChainKind::Filter, Prerouting, -300), "raw");
    assert_eq!(name(ChainKind::Filter, Output, -300), "raw");
    assert_eq!(name(ChainKind::Filter, Input, -10), "filter - 10");
    assert_eq!(name(ChainKind::Filter, Forward, 5), "filter + 5");
    // dstnat only names priorities of hooks where destination NAT happens.
    assert_eq!(name(ChainKind::Filter, Forward, -100), "-100");
    assert_eq!(name(ChainKind::Filter, Input, -200), "-200");
    assert_eq!(name(ChainKind::BridgeFilter, Prerouting, -300), "dstnat");
    assert_eq!(name(ChainKind::BridgeFilter, Prerouting, -200), "filter");
}

/// The DNS rules of a table's text: (chain, rule) for every rule about port 53.
fn dns_rules(text: &str) -> Vec<(String, String)> {
    let mut chain = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("chain ") {
            chain = name.trim_end_matches(" {").to_owned();
        } else if line.contains("port 53") {
            out.push((chain.clone(), line.to_owned()));
        }
    }
    out
}

#[test]
fn only_queries_whose_one_question_is_a_metadata_name_go_to_the_dns_responder() {
    let text = plan(&snapshot(&["docker0"], Mode::Open)).to_string();
    let ip = &text[..text.find("table ip6").unwrap()];
    let query = "iifname @bridges udp dport 53 @th,96,16 0x1";
    // "\x08metadata\x06google" and "\x08internal\x00", then "\x08metadata\x00".
    let long = "@th,160,128 0x86d6574616461746106676f6f676c65 @th,288,80 0x8696e7465726e616c00";
    let short = "@th,160,80 0x86d6574616461746100";
    let want: Vec<(String, String)> = [
        (
            "prerouting",
            format!("{query} {long} dnat to 169.254.93.254:53"),
        ),
        (
            "prerouting",
            format!("{query} {short} dnat to 169.254.93.254:53"),
        ),
        (
            "input",
            "ip daddr 169.254.93.254 iifname @bridges udp dport 53 ct status dnat accept".into(),
        ),
        ("dnszone", format!("{query} {long} ct zone set 28004")),
        ("dnszone", format!("{query} {short} ct zone set 28004")),
        (
            "dnsreply",
            "ip saddr 169.254.93.254 udp sport 53 ct zone set 28004".into(),
        ),
    ]
    .into_iter()
    .map(|(c, r)| (c.to_owned(), r))
    .collect();
    assert_eq!(dns_rules(ip), want);
    // The zone chains run before conntrack, on the way in and on the way out.
    assert!(ip.contains("chain dnszone {\n\t\ttype filter hook prerouting priority raw;"));
    assert!(ip.contains("chain dnsreply {\n\t\ttype filter hook output priority raw;"));
    // The ip6 table does the same for the IPv6 listen address.
    let ip6 = &text[text.find("table ip6").unwrap()..];
    assert_eq!(dns_rules(ip6).len(), want.len());
    assert!(ip6.contains(&format!("{query} {short} dnat to [fdf3:6f62:ab7c::254]:53")));
}

#[test]
fn the_dns_redirect_exists_only_when_open_and_switched_on() {
    let closed = plan(&snapshot(&["docker0"], Mode::Closed)).to_string();
    assert_eq!(dns_rules(&closed), vec![]);
    let mut s = snapshot(&["docker0"], Mode::Open);
    s.gce_dns = false;
    let off = plan(&s).to_string();
    assert_eq!(dns_rules(&off), vec![]);
    assert!(!off.contains("dnszone"));
    // Without an IPv6 listen address there is nothing to redirect IPv6 queries to.
    s.gce_dns = true;
    s.v6 = Ipv6Service::RefuseOnly;
    let text = plan(&s).to_string();
    assert_eq!(dns_rules(&text[text.find("table ip6").unwrap()..]), vec![]);
}

#[test]
fn raw_payload_matches_render_as_nft_prints_them() {
    let m = |offset, bytes| Match::ThBytes { offset, bytes }.to_string();
    assert_eq!(m(12, &[0, 1]), "@th,96,16 0x1");
    assert_eq!(m(20, &[0, 0]), "@th,160,16 0x0");
    assert_eq!(m(20, &[0x10, 0xab]), "@th,160,16 0x10ab");
    // Names longer than one register are matched in pieces of at most 16 bytes.
    for name in crate::dns::NAMES {
        let pieces: Vec<Match> = dns_query_matches(name)
            .into_iter()
            .filter(|m| matches!(m, Match::ThBytes { offset, .. } if *offset >= 20))
            .collect();
        let joined: Vec<u8> = pieces
            .iter()
            .flat_map(|m| match m {
                Match::ThBytes { bytes, .. } => bytes.to_vec(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(joined, name);
        assert!(pieces
            .iter()
            .all(|m| matches!(m, Match::ThBytes { bytes, .. } if bytes.len() <= 16)));
    }
}

#[test]
fn macvlan_parents_get_an_egress_chain_that_drops_what_their_children_send() {
    let mut s = snapshot(&["docker0"], Mode::Closed);
    assert!(plan(&s).egress.is_empty());
    assert!(
        !plan(&s).to_string().contains("netdev"),
        "no table without parents"
    );
    s.egress_guards = vec![EgressGuard {
        device: "eth0".into(),
        mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x0a],
    }];
    let text = plan(&s).to_string();
    assert!(
        text.ends_with(
            "table netdev imds_proxy {
\tchain egress_eth0 {
\t\ttype filter hook egress device \"eth0\" priority filter - 10; policy accept;
\t\tether saddr != 02:42:ac:11:00:0a ip daddr 169.254.169.254 drop
\t\tether saddr != 02:42:ac:11:00:0a ip6 daddr fd00:ec2::254 drop
\t}
}
"
        ),
        "{text}"
    );
    // The same in both modes: the children never reach the proxy anyway.
    s.mode = Mode::Open;
    assert_eq!(
        plan(&s).egress,
        plan(&{
            let mut c = s.clone();
            c.mode = Mode::Closed;
            c
        })
        .egress
    );
}
