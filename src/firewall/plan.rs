//! The desired ruleset as a plain value, computed by a pure function.
//!
//! Nothing here touches the kernel: [`plan`] turns a [`Snapshot`] of the host into a
//! [`Ruleset`], and `Display` renders that value exactly as `nft list table` prints it
//! (nft 1.0.x), so `imds-proxy rules` shows what `run` installs and tests can pin it
//! without root. `firewall::nft` is the only code that turns a `Ruleset` into netlink.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Name of the daemon's nftables tables: one in the `ip` family (interception, refusals)
/// and one in the `bridge` family (which bridge port a metadata packet came in by).
pub const TABLE: &str = "imds_proxy";
/// Name of the named set that holds the container bridges present right now.
pub const BRIDGE_SET: &str = "bridges";
/// The metadata service address every cloud uses.
pub const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The metadata service port that is intercepted.
pub const IMDS_PORT: u16 = 80;
/// Loopback interface: the host's own processes reach the proxy through it.
const LOOPBACK_IF: &str = "lo";
/// Kernel limit for interface names, including the trailing NUL.
pub const IFNAMSIZ: usize = 16;

/// Which interfaces count as container bridges: an exact name (`docker0`) or a name
/// prefix written with a trailing `*` (`br-*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BridgePattern {
    /// Matches one interface name.
    Exact(String),
    /// Matches every interface whose name starts with this prefix.
    Prefix(String),
}

impl BridgePattern {
    /// Parses `docker0` or `br-*`; rejects names the kernel could never have.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, prefix) = match text.strip_suffix('*') {
            Some(p) => (p, true),
            None => (text, false),
        };
        if name.is_empty() {
            return Err(format!("{text:?}: empty interface name"));
        }
        if name.len() >= IFNAMSIZ {
            return Err(format!(
                "{text:?}: interface names have at most {} bytes",
                IFNAMSIZ - 1
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_graphic()) || matches!(c, '/' | '*' | '"' | '\\'))
        {
            return Err(format!(
                "{text:?}: character {c:?} is not allowed in an interface name"
            ));
        }
        Ok(if prefix {
            Self::Prefix(name.into())
        } else {
            Self::Exact(name.into())
        })
    }

    /// Whether an interface with this name is a container bridge.
    pub fn matches(&self, ifname: &str) -> bool {
        match self {
            Self::Exact(n) => n == ifname,
            Self::Prefix(p) => ifname.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for BridgePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(n) => write!(f, "{n}"),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Whether containers are sent to the proxy or only refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fail-closed only: container traffic to the metadata address is refused. This is
    /// the state before the proxy listens and after the daemon stops.
    Closed,
    /// Container traffic to 169.254.169.254:80 is DNATed to the proxy.
    Open,
}

/// Everything the ruleset depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Container bridges present on the host now (fills the named set).
    pub bridges: BTreeSet<String>,
    /// Bridge patterns from the config; the fail-closed rules match these directly, so a
    /// bridge the daemon has not seen yet is refused rather than let through.
    pub patterns: Vec<BridgePattern>,
    /// Where the proxy listens.
    pub listen: SocketAddrV4,
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
            listen: "169.254.93.254:80".parse().expect("valid address"),
            mode,
        }
    }
}

/// Netfilter hook a base chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
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
    /// `ip daddr A`
    IpDaddr(Ipv4Addr),
    /// `tcp dport P` (implies the protocol is TCP)
    TcpDport(u16),
    /// `ct status dnat`: the connection was DNATed (by our prerouting rule).
    CtStatusDnat,
    /// `meta mark != 0`: the bridge table stamped the packet with its port.
    MarkSet,
}

/// What a rule does when every condition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `accept` (only this table's verdict: other tables still see the packet)
    Accept,
    /// `reject with tcp reset`, for TCP packets only.
    RejectTcpReset,
    /// `reject` (ICMP port unreachable).
    Reject,
    /// `meta mark set iif` (bridge family): stamps the packet with the index of the
    /// bridge port it entered by, the container's own veth.
    MarkPort,
    /// `ct mark set meta mark dnat to A:P`: keeps the port stamp on the connection, where
    /// the proxy reads it, and sends the connection to the proxy.
    DnatKeepingMark(SocketAddrV4),
    /// `ct mark set meta mark`: the connection records the port of its latest packet.
    CtMarkFromMark,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
}

/// One base chain of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    pub kind: ChainKind,
    pub hook: Hook,
    /// Absolute priority (nft prints it relative to the standard name for the hook).
    pub priority: i32,
    pub rules: Vec<Rule>,
}

/// The whole table the daemon owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub table: &'static str,
    /// Elements of the `bridges` set.
    pub bridges: BTreeSet<String>,
    pub chains: Vec<Chain>,
    /// The one chain of the `bridge` family table.
    pub port_chain: Chain,
}

/// `dstnat` is -100; ten ahead of it so our binding wins over Docker's own NAT.
pub const PRIO_DSTNAT_AHEAD: i32 = -110;
/// `mangle`: after conntrack has found the connection, before NAT translates it.
pub const PRIO_MANGLE: i32 = -150;
/// `filter` is 0; ten ahead of Docker's filter chains.
pub const PRIO_FILTER_AHEAD: i32 = -10;
/// Bridge family `dstnat`, the earliest standard bridge priority; it must be below 0,
/// where the kernel's own br_netfilter hook hands frames to the IP stack.
pub const PRIO_BRIDGE_FIRST: i32 = -300;

/// Computes the ruleset for a snapshot. Pure: same snapshot, same ruleset.
pub fn plan(s: &Snapshot) -> Ruleset {
    let listen_ip = *s.listen.ip();
    let mut prerouting = Vec::new();
    if s.mode == Mode::Open {
        // Only packets the bridge table stamped with their port: the proxy identifies
        // the caller by that port, which a container cannot forge, not by its source
        // address, which it can. Anything unstamped falls to the refusals below.
        prerouting.push(Rule {
            matches: vec![
                Match::IifnameInSet(BRIDGE_SET),
                Match::IpDaddr(IMDS_V4),
                Match::TcpDport(IMDS_PORT),
                Match::MarkSet,
            ],
            action: Action::DnatKeepingMark(s.listen),
        });
    }

    // Every metadata packet that enters a bridge is stamped with the bridge port it
    // came in by, before anything else sees it (in every mode: harmless when closed,
    // and ready the moment the DNAT rule appears). Kernels commonly lack the bridge
    // `meta ibrname` key, so this cannot be narrowed to the container bridges; the
    // `ip` table only honours the stamp from those.
    let port_chain = Chain {
        name: "prerouting",
        kind: ChainKind::BridgeFilter,
        hook: Hook::Prerouting,
        priority: PRIO_BRIDGE_FIRST,
        rules: vec![Rule {
            matches: vec![Match::IpDaddr(IMDS_V4), Match::TcpDport(IMDS_PORT)],
            action: Action::MarkPort,
        }],
    };

    // Fail closed: whatever was not DNATed above and still goes to the metadata address
    // from a container bridge is refused, promptly, both when the host routes it on
    // (forward) and when the host itself holds the address (input).
    let refuse_imds: Vec<Rule> = s
        .patterns
        .iter()
        .flat_map(|p| {
            [Action::RejectTcpReset, Action::Reject].map(|action| Rule {
                matches: vec![Match::Iifname(p.clone()), Match::IpDaddr(IMDS_V4)],
                action,
            })
        })
        .collect();

    // The proxy's address answers only the host itself and container bridges.
    let mut input = refuse_imds.clone();
    input.extend([
        Rule {
            matches: vec![
                Match::IpDaddr(listen_ip),
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
                Match::IpDaddr(listen_ip),
                Match::IifnameInSet(BRIDGE_SET),
                Match::TcpDport(s.listen.port()),
                Match::CtStatusDnat,
            ],
            action: Action::Accept,
        },
        Rule {
            matches: vec![Match::IpDaddr(listen_ip)],
            action: Action::RejectTcpReset,
        },
        Rule {
            matches: vec![Match::IpDaddr(listen_ip)],
            action: Action::Reject,
        },
    ]);

    // The proxy's address is local; if it ever is not (its link was deleted), traffic
    // DNATed to it must not be routed anywhere else. ICMP, not a TCP reset: the kernel
    // cannot send a reset from an address that is neither local nor the original one.
    let mut forward = refuse_imds;
    forward.push(Rule {
        matches: vec![Match::IpDaddr(listen_ip)],
        action: Action::Reject,
    });

    Ruleset {
        table: TABLE,
        bridges: s.bridges.clone(),
        chains: vec![
            Chain {
                name: "prerouting",
                kind: ChainKind::Nat,
                hook: Hook::Prerouting,
                priority: PRIO_DSTNAT_AHEAD,
                rules: prerouting,
            },
            Chain {
                name: "input",
                kind: ChainKind::Filter,
                hook: Hook::Input,
                priority: PRIO_FILTER_AHEAD,
                rules: input,
            },
            Chain {
                name: "forward",
                kind: ChainKind::Filter,
                hook: Hook::Forward,
                priority: PRIO_FILTER_AHEAD,
                rules: forward,
            },
            // Every packet of a metadata connection, not only its first, records the
            // bridge port it came in by; the proxy checks before each request that the
            // connection still comes from the port it was accepted from, so a container
            // that hijacks another's open connection (after poisoning the bridge's
            // forwarding table) is refused.
            Chain {
                name: "portmark",
                kind: ChainKind::Filter,
                hook: Hook::Prerouting,
                priority: PRIO_MANGLE,
                rules: vec![Rule {
                    matches: vec![
                        Match::IifnameInSet(BRIDGE_SET),
                        Match::IpDaddr(IMDS_V4),
                        Match::TcpDport(IMDS_PORT),
                        Match::MarkSet,
                    ],
                    action: Action::CtMarkFromMark,
                }],
            },
        ],
        port_chain,
    }
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
            Match::IpDaddr(a) => write!(f, "ip daddr {a}"),
            Match::TcpDport(p) => write!(f, "tcp dport {p}"),
            Match::CtStatusDnat => f.write_str("ct status dnat"),
            Match::MarkSet => f.write_str("meta mark != 0x00000000"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Accept => f.write_str("accept"),
            Action::RejectTcpReset => f.write_str("reject with tcp reset"),
            Action::Reject => f.write_str("reject"),
            Action::MarkPort => f.write_str("meta mark set iif"),
            Action::DnatKeepingMark(to) => write!(f, "ct mark set meta mark dnat to {to}"),
            Action::CtMarkFromMark => f.write_str("ct mark set meta mark"),
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

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, hook, base, base_value) = match (self.kind, self.hook) {
            (ChainKind::Nat, Hook::Prerouting) => ("nat", "prerouting", "dstnat", -100),
            (ChainKind::Nat, Hook::Input) => ("nat", "input", "srcnat", 100),
            (ChainKind::Nat, Hook::Forward) => ("nat", "forward", "filter", 0),
            (ChainKind::Filter, Hook::Prerouting) => ("filter", "prerouting", "mangle", -150),
            (ChainKind::Filter, Hook::Input) => ("filter", "input", "filter", 0),
            (ChainKind::Filter, Hook::Forward) => ("filter", "forward", "filter", 0),
            (ChainKind::BridgeFilter, Hook::Prerouting) => ("filter", "prerouting", "dstnat", -300),
            (ChainKind::BridgeFilter, Hook::Input) => ("filter", "input", "filter", -200),
            (ChainKind::BridgeFilter, Hook::Forward) => ("filter", "forward", "filter", -200),
        };
        let offset = self.priority - base_value;
        let prio = match offset {
            0 => base.to_string(),
            o if o < 0 => format!("{base} - {}", -o),
            o => format!("{base} + {o}"),
        };
        writeln!(f, "\tchain {} {{", self.name)?;
        writeln!(
            f,
            "\t\ttype {kind} hook {hook} priority {prio}; policy accept;"
        )?;
        for r in &self.rules {
            writeln!(f, "\t\t{r}")?;
        }
        writeln!(f, "\t}}")
    }
}

impl fmt::Display for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table ip {} {{", self.table)?;
        writeln!(f, "\tset {BRIDGE_SET} {{")?;
        writeln!(f, "\t\ttype ifname")?;
        let mut elems: Vec<&String> = self.bridges.iter().collect();
        elems.sort_by_key(|n| nft_ifname_order(n));
        if !elems.is_empty() {
            let quoted: Vec<String> = elems.iter().map(|e| format!("\"{e}\"")).collect();
            writeln!(f, "\t\telements = {{ {} }}", quoted.join(",\n\t\t\t     "))?;
        }
        writeln!(f, "\t}}")?;
        for c in &self.chains {
            writeln!(f)?;
            write!(f, "{c}")?;
        }
        writeln!(f, "}}")?;
        writeln!(f, "table bridge {} {{", self.table)?;
        write!(f, "{}", self.port_chain)?;
        writeln!(f, "}}")
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
