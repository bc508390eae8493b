//! The desired ruleset as a plain value, computed by a pure function.
//!
//! Nothing here touches the kernel: [`plan`] turns a [`Snapshot`] of the host into a
//! [`Ruleset`], and `Display` renders that value exactly as `nft list table` prints it
//! (nft 1.0.x), so `imds-proxy rules` shows what `run` installs and tests can pin it
//! without root. `firewall::nft` is the only code that turns a `Ruleset` into netlink.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::dns;

/// Name of the daemon's nftables tables: one in the `ip` and one in the `ip6` family
/// (interception, refusals) and one in the `bridge` family (which bridge port a
/// metadata packet came in by).
pub const TABLE: &str = "imds_proxy";
/// Name of the named set that holds the container bridges present right now.
pub const BRIDGE_SET: &str = "bridges";
pub use crate::addrs::{IMDS_PORT, IMDS_V4, IMDS_V6};
pub use crate::ifname::{BridgePattern, IFNAMSIZ};
/// The conntrack zone of redirected DNS queries for the metadata name (see
/// [`DnsRules`]); an arbitrary number no other tool is known to use.
pub const DNS_ZONE: u16 = 0x6d64;
/// Length of the UDP header: DNS messages start this far into the transport header.
const UDP_HEADER: usize = 8;
/// nft compares at most this many bytes of raw payload at once.
const RAW_MATCH_MAX: usize = 16;
/// Loopback interface: the host's own processes reach the proxy through it.
const LOOPBACK_IF: &str = "lo";
/// Whether containers are sent to the proxy or only refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fail-closed only: container traffic to the metadata address is refused. This is
    /// the state before the proxy listens and after the daemon stops.
    Closed,
    /// Container traffic to 169.254.169.254:80 is DNATed to the proxy.
    Open,
}

/// What the `ip6` table does, by what the host's IPv6 allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Service {
    /// The kernel has no IPv6 at all (nor the `ip6` nftables family): there is no
    /// IPv6 path to refuse, and no `ip6` table.
    Absent,
    /// IPv6 is switched off (`disable_ipv6`), so the proxy has no IPv6 address; the
    /// `ip6` table still refuses containers, should IPv6 be switched on later.
    RefuseOnly,
    /// The proxy also listens here, and the `ip6` table sends containers to it.
    Listen(SocketAddrV6),
}

/// Everything the ruleset depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Container bridges present on the host now (fills the named set).
    pub bridges: BTreeSet<String>,
    /// Bridge patterns from the config: which links belong in `bridges`. The refusals
    /// do not depend on them: they hold for every interface.
    pub patterns: Vec<BridgePattern>,
    /// Interfaces whose packets to the metadata addresses are let through on purpose
    /// (`direct_interfaces`); every other forwarded or bridged packet is refused.
    pub direct: Vec<String>,
    /// Parents of macvlan links (`macvlan_parents`) present now: their children send
    /// straight out of the parent, past every IP hook of the host.
    pub egress_guards: Vec<EgressGuard>,
    /// Where the proxy listens.
    pub listen: SocketAddrV4,
    /// Where the proxy listens for IPv6 callers, if anywhere.
    pub v6: Ipv6Service,
    /// Whether container DNS queries for `metadata.google.internal` (and `metadata`)
    /// are answered by the daemon's DNS responder.
    pub gce_dns: bool,
    /// Open or closed.
    pub mode: Mode,
}

impl Snapshot {
    /// The bridges of `links` that match any pattern.
    pub fn bridges_among<'a>(
        patterns: &[BridgePattern],
        links: impl IntoIterator<Item = &'a str>,
    ) -> BTreeSet<String> {
        links
            .into_iter()
            .filter(|l| patterns.iter().any(|p| p.matches(l)))
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
impl Snapshot {
    /// Docker's default patterns and the default listen address: the tests' host.
    pub(crate) fn for_test(bridges: &[&str], mode: Mode) -> Self {
        Self {
            bridges: bridges.iter().map(|b| b.to_string()).collect(),
            patterns: vec![
                BridgePattern::Exact("docker0".into()),
                BridgePattern::Prefix("br-".into()),
            ],
            direct: vec![],
            egress_guards: vec![],
            listen: "169.254.93.254:80".parse().expect("valid address"),
            v6: Ipv6Service::Listen("[fdf3:6f62:ab7c::254]:80".parse().expect("valid address")),
            gce_dns: true,
            mode,
        }
    }
}

/// An interface whose macvlan children must not reach the metadata service: what
/// leaves it with a source MAC other than its own came from a child (the host's own
/// packets, and what it routes, leave with the parent's MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressGuard {
    /// The parent interface.
    pub device: String,
    /// Its own MAC address.
    pub mac: [u8; 6],
}

/// Netfilter hook a base chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
}

/// Base chain type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Nat,
    Filter,
    /// A filter chain of the `bridge` family table.
    BridgeFilter,
}

/// One condition of a rule, in the order the kernel evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `iifname @set`
    IifnameInSet(&'static str),
    /// `iifname "docker0"` or `iifname "br-*"`
    Iifname(BridgePattern),
    /// `iifname != "lo"`
    IifnameNot(&'static str),
    /// `ip daddr A` or `ip6 daddr A`
    Daddr(IpAddr),
    /// `ip saddr A` or `ip6 saddr A`
    Saddr(IpAddr),
    /// `tcp dport P` (implies the protocol is TCP)
    TcpDport(u16),
    /// `udp dport P` (implies the protocol is UDP)
    UdpDport(u16),
    /// `udp sport P` (implies the protocol is UDP)
    UdpSport(u16),
    /// `@th,<bits>,<bits> 0x...`: these bytes (at most [`RAW_MATCH_MAX`]), this many
    /// bytes into the transport header.
    ThBytes { offset: usize, bytes: &'static [u8] },
    /// `ct status dnat`: the connection was DNATed (by our prerouting rule).
    CtStatusDnat,
    /// `meta mark != 0`: the bridge table stamped the packet with its port.
    MarkSet,
    /// `ct mark != 0`: the connection has recorded the port of its first packet.
    CtMarkSet,
    /// `ct mark & 0x00000004 == 0x00000004` if `set`, `... == 0x00000000` if not: one
    /// bit of a mark (nft prints the top bit as `ct mark 0x80000000/1`).
    MarkBit { mark: Mark, bit: u8, set: bool },
    /// `ether saddr != M` (netdev family).
    EtherSaddrNot([u8; 6]),
}

/// Which mark a [`Match::MarkBit`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `meta mark`: the packet's, the bridge port it came in by.
    Packet,
    /// `ct mark`: the connection's, the bridge port its first packet came in by.
    Conn,
}

/// What a rule does when every condition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `accept` (only this table's verdict: other tables still see the packet)
    Accept,
    /// `reject with tcp reset`, for TCP packets only.
    RejectTcpReset,
    /// `reject` (ICMP or ICMPv6 port unreachable).
    Reject,
    /// `drop`: where the kernel cannot reject (the bridge family has no `reject` here).
    Drop,
    /// `meta mark set iif` (bridge family): stamps the packet with the index of the
    /// bridge port it entered by, the container's own veth.
    MarkPort,
    /// `ct mark set meta mark dnat to A:P`: on a connection's first packet, records its
    /// port stamp on the connection, where the proxy reads it and the takeover guard
    /// compares later packets with it, and sends the connection to the proxy.
    DnatKeepingMark(SocketAddr),
    /// `jump C`: runs the regular chain C, then carries on here unless it decided.
    Jump(&'static str),
    /// `dnat to A:P`
    Dnat(SocketAddr),
    /// `ct zone set N`: the packet is tracked in conntrack zone N.
    CtZoneSet(u16),
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
}

/// One chain of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    /// Where the kernel runs it; `None` for a regular chain, which runs only when a
    /// rule jumps to it.
    pub base: Option<Base>,
    pub rules: Vec<Rule>,
}

/// The hook a base chain is attached to, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    pub kind: ChainKind,
    pub hook: Hook,
    /// Absolute priority (nft prints it relative to the standard name for the hook).
    pub priority: i32,
}

impl Chain {
    /// A base chain: `name`, attached to `hook` at `priority`.
    pub fn base(
        name: &'static str,
        kind: ChainKind,
        hook: Hook,
        priority: i32,
        rules: Vec<Rule>,
    ) -> Self {
        Self {
            name,
            base: Some(Base {
                kind,
                hook,
                priority,
            }),
            rules,
        }
    }

    /// A regular chain: run only by a rule's `jump`.
    pub fn regular(name: &'static str, rules: Vec<Rule>) -> Self {
        Self {
            name,
            base: None,
            rules,
        }
    }
}

/// The whole table the daemon owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub table: &'static str,
    /// Elements of the `bridges` set (each address family's table has its own copy).
    pub bridges: BTreeSet<String>,
    /// The chains of the `ip` table.
    pub chains: Vec<Chain>,
    /// The chains of the `ip6` table; `None` where the kernel has no IPv6.
    pub chains6: Option<Vec<Chain>>,
    /// The `bridge` family table's port stamp (prerouting).
    pub port_chain: Chain,
    /// The `bridge` family table's refusal of metadata frames bridged port to port.
    pub bridge_forward: Chain,
    /// The `netdev` family table's egress chains, one per guarded macvlan parent; no
    /// table when empty.
    pub egress: Vec<EgressChain>,
}

/// A `netdev` family chain on one device's egress hook: the only hook that sees what a
/// macvlan child sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressChain {
    /// `egress_<device>`: one chain per device.
    pub name: String,
    /// The macvlan parent it hooks.
    pub device: String,
    /// Absolute priority (printed relative to `filter`).
    pub priority: i32,
    pub rules: Vec<Rule>,
}

/// The regular chain of the `ip` and `ip6` tables that drops a metadata connection's
/// packet that came in by another bridge port than the connection's first.
pub const PORT_DIFFERS: &str = "port_differs";
/// `dstnat` is -100; ten ahead of it so our binding wins over Docker's own NAT.
pub const PRIO_DSTNAT_AHEAD: i32 = -110;
/// `mangle`: after conntrack has found the connection, before NAT translates it.
pub const PRIO_MANGLE: i32 = -150;
/// `raw`: before conntrack (-200), where a packet's conntrack zone can still be chosen.
pub const PRIO_RAW: i32 = -300;
/// `filter` is 0; ten ahead of Docker's filter chains.
pub const PRIO_FILTER_AHEAD: i32 = -10;
/// Bridge family `dstnat`, the earliest standard bridge priority; it must be below 0,
/// where the kernel's own br_netfilter hook hands frames to the IP stack.
pub const PRIO_BRIDGE_FIRST: i32 = -300;
/// Bridge family `filter` is -200; ten ahead of other bridge filter chains.
pub const PRIO_BRIDGE_FILTER_AHEAD: i32 = -210;

/// Computes the ruleset for a snapshot. Pure: same snapshot, same ruleset.
pub fn plan(s: &Snapshot) -> Ruleset {
    // Every metadata packet that enters a bridge is stamped with the bridge port it
    // came in by, before anything else sees it (in every mode: harmless when closed,
    // and ready the moment the DNAT rule appears). Kernels commonly lack the bridge
    // `meta ibrname` key, so this cannot be narrowed to the container bridges; the
    // `ip` and `ip6` tables only honour the stamp from those.
    let mut stamped = vec![IpAddr::V4(IMDS_V4)];
    let chains6 = match s.v6 {
        Ipv6Service::Absent => None,
        Ipv6Service::RefuseOnly => Some(family_chains(s, IMDS_V6.into(), None)),
        Ipv6Service::Listen(listen) => {
            stamped.push(IMDS_V6.into());
            Some(family_chains(s, IMDS_V6.into(), Some(listen.into())))
        }
    };
    let port_chain = Chain::base(
        "prerouting",
        ChainKind::BridgeFilter,
        Hook::Prerouting,
        PRIO_BRIDGE_FIRST,
        stamped
            .into_iter()
            .map(|imds| Rule {
                matches: vec![Match::Daddr(imds), Match::TcpDport(IMDS_PORT)],
                action: Action::MarkPort,
            })
            .collect(),
    );
    Ruleset {
        table: TABLE,
        bridges: s.bridges.clone(),
        chains: family_chains(s, IMDS_V4.into(), Some(s.listen.into())),
        chains6,
        port_chain,
        bridge_forward: bridge_forward(s),
        egress: s.egress_guards.iter().map(egress_chain).collect(),
    }
}

/// Drops packets to either metadata address that leave a macvlan parent with a source
/// MAC other than the parent's own: a child's, whose packets never cross the host's IP
/// hooks. The netdev family cannot reject, so they are dropped.
fn egress_chain(g: &EgressGuard) -> EgressChain {
    EgressChain {
        name: format!("egress_{}", g.device),
        device: g.device.clone(),
        priority: PRIO_FILTER_AHEAD,
        rules: [IpAddr::V4(IMDS_V4), IpAddr::V6(IMDS_V6)]
            .into_iter()
            .map(|a| Rule {
                matches: vec![Match::EtherSaddrNot(g.mac), Match::Daddr(a)],
                action: Action::Drop,
            })
            .collect(),
    }
}

/// Frames to either metadata address that a bridge passes from one of its ports to
/// another (a bridge with the uplink enslaved, say) never reach the IP hooks of the
/// host: the `bridge` family forward hook is where they are refused. The kernel has no
/// `reject` for that hook, so they are dropped.
fn bridge_forward(s: &Snapshot) -> Chain {
    let imds = [IpAddr::V4(IMDS_V4), IpAddr::V6(IMDS_V6)];
    let mut rules: Vec<Rule> = direct_accepts(s, &imds);
    rules.extend(imds.iter().map(|a| Rule {
        matches: vec![Match::Daddr(*a)],
        action: Action::Drop,
    }));
    Chain::base(
        "forward",
        ChainKind::BridgeFilter,
        Hook::Forward,
        PRIO_BRIDGE_FILTER_AHEAD,
        rules,
    )
}

/// `iifname "X" <daddr> accept` for each direct interface and each address: these
/// packets end this table's chain before the refusals (other tables still see them).
fn direct_accepts(s: &Snapshot, addrs: &[IpAddr]) -> Vec<Rule> {
    s.direct
        .iter()
        .flat_map(|name| {
            addrs.iter().map(move |a| Rule {
                matches: vec![
                    Match::Iifname(BridgePattern::Exact(name.clone())),
                    Match::Daddr(*a),
                ],
                action: Action::Accept,
            })
        })
        .collect()
}

/// The chains of one address family's table: `imds` is that family's metadata address,
/// `listen` the proxy's address in that family (`None`: the family only refuses).
fn family_chains(s: &Snapshot, imds: IpAddr, listen: Option<SocketAddr>) -> Vec<Chain> {
    let open = s.mode == Mode::Open;
    let dns = match (s.gce_dns, listen) {
        (true, Some(listen)) => Some(DnsRules::new(listen.ip(), open)),
        _ => None,
    };
    let mut prerouting = Vec::new();
    let mut takeover = Vec::new();
    if let (true, Some(listen)) = (open, listen) {
        // Only packets the bridge table stamped with their port: the proxy identifies
        // the caller by that port, which a container cannot forge, not by its source
        // address, which it can. Anything unstamped falls to the refusals below.
        prerouting.push(Rule {
            matches: vec![
                Match::IifnameInSet(BRIDGE_SET),
                Match::Daddr(imds),
                Match::TcpDport(IMDS_PORT),
                Match::MarkSet,
            ],
            action: Action::DnatKeepingMark(listen),
        });
    }
    if let Some(dns) = &dns {
        prerouting.extend(dns.dnat.iter().cloned());
    }
    let mut port_differs = Vec::new();
    if listen.is_some() {
        // The takeover guard. A connection records the bridge port of its first packet
        // (the DNAT rule above, in open mode); a later packet of it that comes in by
        // another port is dropped here, before NAT, so the proxy never sees it: a
        // container that poisons the bridge's forwarding table with another's MAC
        // cannot inject requests into that container's open connection. The first
        // packet passes (its connection has no mark yet), and so the proxy reads a
        // connection's port only once, when it accepts it. Ordinary traffic pays this
        // one rule; only metadata connections run the comparison. It stays in closed
        // mode, for the connections still draining. A later packet without a stamp
        // (one that skipped the bridge table, say in a VLAN tag) differs from the
        // recorded port too, and is dropped.
        takeover.push(Rule {
            matches: vec![
                Match::IifnameInSet(BRIDGE_SET),
                Match::Daddr(imds),
                Match::TcpDport(IMDS_PORT),
                Match::CtMarkSet,
            ],
            action: Action::Jump(PORT_DIFFERS),
        });
        port_differs = marks_differ();
    }

    // Fail closed, for the whole host: whatever was not DNATed above and still goes to
    // the metadata address is refused promptly, whatever interface it came in by: when
    // the host routes it on (forward) and, from anywhere but loopback (the host's own
    // processes), when the host itself holds the address (input, emulator mode). The
    // host's own packets leave by `output`, which the table leaves alone.
    let refuse = |extra: Vec<Match>| {
        [Action::RejectTcpReset, Action::Reject].map(|action| Rule {
            matches: extra.iter().cloned().chain([Match::Daddr(imds)]).collect(),
            action,
        })
    };
    let mut input = direct_accepts(s, &[imds]);
    input.extend(refuse(vec![Match::IifnameNot(LOOPBACK_IF)]));
    let mut forward = direct_accepts(s, &[imds]);
    forward.extend(refuse(vec![]));
    if let Some(listen) = listen {
        let listen_ip = listen.ip();
        // The proxy's address answers only the host itself and container bridges.
        input.extend([
            Rule {
                matches: vec![
                    Match::Daddr(listen_ip),
                    Match::Iifname(BridgePattern::Exact(LOOPBACK_IF.into())),
                ],
                action: Action::Accept,
            },
            Rule {
                // Only connections our DNAT rule sent here. This also keeps a conntrack
                // expression in the table in every mode: while a table uses conntrack the
                // kernel keeps tracking, so in-flight proxied connections are still
                // translated back after the DNAT rule is removed (closed mode, draining).
                matches: vec![
                    Match::Daddr(listen_ip),
                    Match::IifnameInSet(BRIDGE_SET),
                    Match::TcpDport(listen.port()),
                    Match::CtStatusDnat,
                ],
                action: Action::Accept,
            },
        ]);
        input.extend(dns.as_ref().and_then(|d| d.accept.clone()));
        input.extend([
            Rule {
                matches: vec![Match::Daddr(listen_ip)],
                action: Action::RejectTcpReset,
            },
            Rule {
                matches: vec![Match::Daddr(listen_ip)],
                action: Action::Reject,
            },
        ]);
        // The proxy's address is local; if it ever is not (its link was deleted),
        // traffic DNATed to it must not be routed anywhere else. ICMP, not a TCP reset:
        // the kernel cannot send a reset from an address that is neither local nor the
        // original one.
        forward.push(Rule {
            matches: vec![Match::Daddr(listen_ip)],
            action: Action::Reject,
        });
    }

    let mut chains = vec![
        Chain::base(
            "prerouting",
            ChainKind::Nat,
            Hook::Prerouting,
            PRIO_DSTNAT_AHEAD,
            prerouting,
        ),
        Chain::base(
            "input",
            ChainKind::Filter,
            Hook::Input,
            PRIO_FILTER_AHEAD,
            input,
        ),
        Chain::base(
            "forward",
            ChainKind::Filter,
            Hook::Forward,
            PRIO_FILTER_AHEAD,
            forward,
        ),
        // After conntrack has found the connection, before NAT translates it.
        Chain::base(
            "takeover",
            ChainKind::Filter,
            Hook::Prerouting,
            PRIO_MANGLE,
            takeover,
        ),
        Chain::regular(PORT_DIFFERS, port_differs),
    ];
    if let Some(dns) = dns {
        chains.extend([
            Chain::base(
                "dnszone",
                ChainKind::Filter,
                Hook::Prerouting,
                PRIO_RAW,
                dns.zone,
            ),
            Chain::base(
                "dnsreply",
                ChainKind::Filter,
                Hook::Output,
                PRIO_RAW,
                dns.reply,
            ),
        ]);
    }
    chains
}

/// Drops a packet whose port stamp (`meta mark`) differs from its connection's
/// (`ct mark`) in any of their 32 bits. On the kernels the daemon supports (Linux 6.1
/// and on) nftables compares a register only with a constant (operations on two
/// registers are much newer), so each bit takes two rules: set in the connection's mark
/// and clear in the packet's, or the other way round.
fn marks_differ() -> Vec<Rule> {
    (0..32)
        .flat_map(|bit| {
            [true, false].map(|conn| Rule {
                matches: vec![
                    Match::MarkBit {
                        mark: Mark::Conn,
                        bit,
                        set: conn,
                    },
                    Match::MarkBit {
                        mark: Mark::Packet,
                        bit,
                        set: !conn,
                    },
                ],
                action: Action::Drop,
            })
        })
        .collect()
}

/// The rules that send container DNS queries for the metadata name, and only those, to
/// the daemon's DNS responder (all empty unless open).
///
/// A query is recognised by its bytes: UDP to port 53 from a container bridge, one
/// question (QDCOUNT 1), whose name is exactly one of [`dns::NAMES`] in lowercase wire
/// form, at the start of the question section. Every other query matches nothing here
/// and keeps its own path. NAT is bound to a flow on its first packet, and a client may
/// send queries for other names from the same socket to the same server; so metadata
/// queries are tracked in a conntrack zone of their own ([`DNS_ZONE`], set before
/// conntrack sees them, and on the responder's answers before conntrack sees those):
/// a metadata query and any other query never share a flow, whatever their order.
struct DnsRules {
    /// Prerouting NAT: to the responder.
    dnat: Vec<Rule>,
    /// Input: the redirected queries, ahead of the refusals of the proxy's address.
    accept: Option<Rule>,
    /// Chain `dnszone` (prerouting, raw): the queries' own conntrack zone.
    zone: Vec<Rule>,
    /// Chain `dnsreply` (output, raw): the answers' conntrack zone.
    reply: Vec<Rule>,
}

impl DnsRules {
    fn new(listen_ip: IpAddr, open: bool) -> Self {
        if !open {
            return Self {
                dnat: vec![],
                accept: None,
                zone: vec![],
                reply: vec![],
            };
        }
        let queries = || dns::NAMES.iter().map(|name| dns_query_matches(name));
        Self {
            dnat: queries()
                .map(|matches| Rule {
                    matches,
                    action: Action::Dnat(SocketAddr::new(listen_ip, dns::PORT)),
                })
                .collect(),
            accept: Some(Rule {
                matches: vec![
                    Match::Daddr(listen_ip),
                    Match::IifnameInSet(BRIDGE_SET),
                    Match::UdpDport(dns::PORT),
                    Match::CtStatusDnat,
                ],
                action: Action::Accept,
            }),
            zone: queries()
                .map(|matches| Rule {
                    matches,
                    action: Action::CtZoneSet(DNS_ZONE),
                })
                .collect(),
            reply: vec![Rule {
                matches: vec![Match::Saddr(listen_ip), Match::UdpSport(dns::PORT)],
                action: Action::CtZoneSet(DNS_ZONE),
            }],
        }
    }
}

/// A UDP query from a container bridge to port 53 with one question for `name`.
fn dns_query_matches(name: &'static [u8]) -> Vec<Match> {
    let mut m = vec![
        Match::IifnameInSet(BRIDGE_SET),
        Match::UdpDport(dns::PORT),
        Match::ThBytes {
            offset: UDP_HEADER + dns::QDCOUNT_OFFSET,
            bytes: &[0, 1],
        },
    ];
    for (i, chunk) in name.chunks(RAW_MATCH_MAX).enumerate() {
        m.push(Match::ThBytes {
            offset: UDP_HEADER + dns::QUESTION_OFFSET + i * RAW_MATCH_MAX,
            bytes: chunk,
        });
    }
    m
}

/// The order nft 1.0 lists `ifname` set elements in: as host-endian 16-byte integers,
/// i.e. by the reversed, NUL-padded bytes.
fn nft_ifname_order(name: &str) -> [u8; IFNAMSIZ] {
    let mut key = [0u8; IFNAMSIZ];
    for (i, b) in name.bytes().take(IFNAMSIZ).enumerate() {
        key[IFNAMSIZ - 1 - i] = b;
    }
    key
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::IifnameInSet(set) => write!(f, "iifname @{set}"),
            Match::Iifname(p) => write!(f, "iifname \"{p}\""),
            Match::IifnameNot(n) => write!(f, "iifname != \"{n}\""),
            Match::Daddr(IpAddr::V4(a)) => write!(f, "ip daddr {a}"),
            Match::Daddr(IpAddr::V6(a)) => write!(f, "ip6 daddr {a}"),
            Match::Saddr(IpAddr::V4(a)) => write!(f, "ip saddr {a}"),
            Match::Saddr(IpAddr::V6(a)) => write!(f, "ip6 saddr {a}"),
            Match::UdpDport(p) => write!(f, "udp dport {p}"),
            Match::UdpSport(p) => write!(f, "udp sport {p}"),
            Match::ThBytes { offset, bytes } => {
                // nft prints the bytes as one number, in hex without leading zeros.
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let digits = hex.trim_start_matches('0');
                let digits = if digits.is_empty() { "0" } else { digits };
                write!(f, "@th,{},{} 0x{digits}", offset * 8, bytes.len() * 8)
            }
            Match::TcpDport(p) => write!(f, "tcp dport {p}"),
            Match::CtStatusDnat => f.write_str("ct status dnat"),
            Match::MarkSet => f.write_str("meta mark != 0x00000000"),
            Match::CtMarkSet => f.write_str("ct mark != 0x00000000"),
            Match::MarkBit { mark, bit, set } => {
                let key = match mark {
                    Mark::Packet => "meta mark",
                    Mark::Conn => "ct mark",
                };
                let mask = 1u32 << bit;
                let value = if *set { mask } else { 0 };
                // nft prints a mask of leading ones as a prefix length: the top bit's.
                if mask.leading_ones() + mask.trailing_zeros() == 32 {
                    write!(f, "{key} 0x{value:08x}/{}", mask.leading_ones())
                } else {
                    write!(f, "{key} & 0x{mask:08x} == 0x{value:08x}")
                }
            }
            Match::EtherSaddrNot(m) => write!(
                f,
                "ether saddr != {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Accept => f.write_str("accept"),
            Action::RejectTcpReset => f.write_str("reject with tcp reset"),
            Action::Reject => f.write_str("reject"),
            Action::Drop => f.write_str("drop"),
            Action::MarkPort => f.write_str("meta mark set iif"),
            Action::DnatKeepingMark(to) => write!(f, "ct mark set meta mark dnat to {to}"),
            Action::Jump(chain) => write!(f, "jump {chain}"),
            Action::Dnat(to) => write!(f, "dnat to {to}"),
            Action::CtZoneSet(zone) => write!(f, "ct zone set {zone}"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        write!(f, "{}", self.action)
    }
}

/// How nft names a chain priority: the standard name within ten of it that suits the
/// family and hook, with the offset (`dstnat - 10`); otherwise the plain number.
fn priority_name(kind: ChainKind, hook: Hook, priority: i32) -> String {
    const INET: &[(&str, i32)] = &[
        ("raw", -300),
        ("mangle", -150),
        ("dstnat", -100),
        ("filter", 0),
        ("security", 50),
        ("srcnat", 100),
    ];
    const BRIDGE: &[(&str, i32)] = &[
        ("dstnat", -300),
        ("filter", -200),
        ("out", 100),
        ("srcnat", 300),
    ];
    let names = if kind == ChainKind::BridgeFilter {
        BRIDGE
    } else {
        INET
    };
    let Some(&(name, base)) = names.iter().find(|(_, v)| (priority - v).abs() <= 10) else {
        return priority.to_string();
    };
    // nft keeps `dstnat` for hooks where destination NAT happens (and `srcnat` for
    // source NAT) in the IP families.
    let fits = kind == ChainKind::BridgeFilter
        || match name {
            "dstnat" => matches!(hook, Hook::Prerouting | Hook::Output),
            "srcnat" => matches!(hook, Hook::Input),
            _ => true,
        };
    if !fits {
        return priority.to_string();
    }
    match priority - base {
        0 => name.to_string(),
        o if o < 0 => format!("{name} - {}", -o),
        o => format!("{name} + {o}"),
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\tchain {} {{", self.name)?;
        if let Some(base) = self.base {
            let kind = match base.kind {
                ChainKind::Nat => "nat",
                ChainKind::Filter | ChainKind::BridgeFilter => "filter",
            };
            let hook = match base.hook {
                Hook::Prerouting => "prerouting",
                Hook::Input => "input",
                Hook::Forward => "forward",
                Hook::Output => "output",
            };
            let prio = priority_name(base.kind, base.hook, base.priority);
            writeln!(
                f,
                "\t\ttype {kind} hook {hook} priority {prio}; policy accept;"
            )?;
        }
        for r in &self.rules {
            writeln!(f, "\t\t{r}")?;
        }
        writeln!(f, "\t}}")
    }
}

impl Ruleset {
    fn fmt_table(&self, f: &mut fmt::Formatter<'_>, family: &str, chains: &[Chain]) -> fmt::Result {
        writeln!(f, "table {family} {} {{", self.table)?;
        writeln!(f, "\tset {BRIDGE_SET} {{")?;
        writeln!(f, "\t\ttype ifname")?;
        let mut elems: Vec<&String> = self.bridges.iter().collect();
        elems.sort_by_key(|n| nft_ifname_order(n));
        if !elems.is_empty() {
            let quoted: Vec<String> = elems.iter().map(|e| format!("\"{e}\"")).collect();
            writeln!(f, "\t\telements = {{ {} }}", quoted.join(",\n\t\t\t     "))?;
        }
        writeln!(f, "\t}}")?;
        for c in chains {
            writeln!(f)?;
            write!(f, "{c}")?;
        }
        writeln!(f, "}}")
    }
}

/// The tables as `nft list table` prints them, in the order `ip`, `ip6`, `bridge`.
impl fmt::Display for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_table(f, "ip", &self.chains)?;
        if let Some(chains6) = &self.chains6 {
            self.fmt_table(f, "ip6", chains6)?;
        }
        writeln!(f, "table bridge {} {{", self.table)?;
        write!(f, "{}", self.port_chain)?;
        writeln!(f)?;
        write!(f, "{}", self.bridge_forward)?;
        writeln!(f, "}}")?;
        if !self.egress.is_empty() {
            writeln!(f, "table netdev {} {{", self.table)?;
            for (i, c) in self.egress.iter().enumerate() {
                if i > 0 {
                    writeln!(f)?;
                }
                write!(f, "{c}")?;
            }
            writeln!(f, "}}")?;
        }
        Ok(())
    }
}

impl fmt::Display for EgressChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Named as in any filter chain (`filter - 10`); the hook plays no part in it.
        let prio = priority_name(ChainKind::Filter, Hook::Forward, self.priority);
        writeln!(f, "\tchain {} {{", self.name)?;
        writeln!(
            f,
            "\t\ttype filter hook egress device \"{}\" priority {prio}; policy accept;",
            self.device
        )?;
        for r in &self.rules {
            writeln!(f, "\t\t{r}")?;
        }
        writeln!(f, "\t}}")
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
