//! The only code that speaks nf_tables: turns a [`Ruleset`] into one netlink batch.
//!
//! libnftnl objects are not `Send` and the mnl socket is blocking, so one dedicated
//! thread owns the socket for the daemon's lifetime; callers send it requests. Owning one
//! socket also gives every change the daemon makes the same netlink port id, which is how
//! the drift watcher recognises changes that are not its own.
//!
//! Each apply is `add table; delete table; add table, set, elements, chains, rules` in a
//! single batch: the kernel commits all of it or none of it, so there is never a moment
//! without the table, never a duplicate, and a failed batch leaves the previous state.
//!
//! Where the kernel has them (Linux 6.9+), the tables are created owned by the writer's
//! socket and persistent (`nft_table.rs`): only this socket may change them, and they
//! outlive it.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::thread;

use nftnl::expr::{self, Expression};
use nftnl::nftnl_sys::{self as sys, libc as nlibc};
use nftnl::set::{Set, SetKey};
use nftnl::{nft_expr, Batch, Chain, MsgType, ProtoFamily, Table};

use super::plan::{self, Action, ChainKind, Hook, Mark, Match, Ruleset, IFNAMSIZ};
use super::{Firewall, FirewallError, TableOwner};

#[path = "nft_table.rs"]
mod table;
use table::{TableMsg, Tables, F_OWNER, F_PERSIST};

/// Real nftables over netlink.
pub struct NetlinkFirewall {
    requests: mpsc::Sender<Request>,
    portid: u32,
    owned: bool,
    /// The kernel can hook a device's egress (see [`NetlinkFirewall::egress`]).
    egress: bool,
    /// The thread that owns the socket; joined on drop.
    worker: Option<thread::JoinHandle<()>>,
}

/// Dropping the writer closes its socket before returning: from then on its owned
/// tables are orphaned (kept, ownerless), so whoever opens the next writer can take
/// them over at once.
impl Drop for NetlinkFirewall {
    fn drop(&mut self) {
        // The worker ends when its request channel closes.
        drop(std::mem::replace(&mut self.requests, mpsc::channel().0));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

enum Request {
    Apply(Box<Ruleset>, mpsc::Sender<Result<(), FirewallError>>),
    Adopt(mpsc::Sender<Result<Vec<&'static str>, FirewallError>>),
    Remove(mpsc::Sender<Result<bool, FirewallError>>),
    Exists(mpsc::Sender<Result<bool, FirewallError>>),
}

impl NetlinkFirewall {
    /// Opens the netfilter netlink socket on its own thread. With [`TableOwner::Auto`],
    /// the tables it writes are owned by that socket and persist after it, where the
    /// kernel supports it (see [`NetlinkFirewall::owned`]).
    pub fn open(owner: TableOwner) -> Result<Self, FirewallError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let worker = thread::Builder::new()
            .name("nftables".into())
            .spawn(move || {
                let socket = match mnl::Socket::new(mnl::Bus::Netfilter) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(FirewallError::from_io(
                            "open a netfilter netlink socket",
                            e,
                        )));
                        return;
                    }
                };
                // libmnl opens the socket without close-on-exec: a process the daemon
                // starts (a token command of the emulator) would inherit it, could write
                // to the owned tables as their owner, and would keep them owned after
                // the daemon dies.
                if let Err(e) = nix::fcntl::fcntl(
                    socket_fd(&socket),
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                ) {
                    let _ = ready_tx.send(Err(FirewallError::from_io(
                        "mark the netfilter socket close-on-exec",
                        e.into(),
                    )));
                    return;
                }
                // A kernel that never answers must not hang the daemon: every receive
                // gives up after a few seconds with an error instead.
                let timeout = nix::sys::time::TimeVal::new(5, 0);
                if let Err(e) = nix::sys::socket::setsockopt(
                    &socket_fd(&socket),
                    nix::sys::socket::sockopt::ReceiveTimeout,
                    &timeout,
                ) {
                    let _ = ready_tx.send(Err(FirewallError::from_io(
                        "set a receive timeout",
                        e.into(),
                    )));
                    return;
                }
                let owned = match owner {
                    TableOwner::Off => false,
                    TableOwner::Auto => {
                        match table::owner_supported(|b| send_and_process(&socket, b)) {
                            Ok(owned) => owned,
                            Err(e) => {
                                let _ = ready_tx.send(Err(FirewallError::from_io(
                                    "ask the kernel whether it has owned tables",
                                    e,
                                )));
                                return;
                            }
                        }
                    }
                };
                let egress = match table::egress_supported(|b| send_and_process(&socket, b)) {
                    Ok(egress) => egress,
                    Err(e) => {
                        let _ = ready_tx.send(Err(FirewallError::from_io(
                            "ask the kernel whether it can hook a device's egress",
                            e,
                        )));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((socket.portid(), owned, egress)));
                // Which families the daemon's last ruleset has a table in: the ip6
                // table exists only where the kernel has IPv6, the netdev table only
                // with macvlan parents to guard.
                let mut families = vec![ProtoFamily::Ipv4, ProtoFamily::Bridge];
                for req in rx {
                    match req {
                        Request::Apply(rs, reply) => {
                            let result = apply(&socket, &rs, owned);
                            if result.is_ok() {
                                families = families_of(&rs);
                            }
                            let _ = reply.send(result);
                        }
                        Request::Adopt(reply) => {
                            let _ = reply.send(adopt(&socket));
                        }
                        Request::Remove(reply) => {
                            let _ = reply.send(remove(&socket));
                        }
                        Request::Exists(reply) => {
                            let _ = reply
                                .send(table_names(&socket).map(|t| all_present(&t, &families)));
                        }
                    }
                }
            })
            .map_err(|e| FirewallError::Netlink {
                action: "start the nftables thread",
                source: e,
            })?;
        let (portid, owned, egress) = ready_rx.recv().map_err(|_| FirewallError::WorkerGone)??;
        Ok(Self {
            requests: tx,
            portid,
            owned,
            egress,
            worker: Some(worker),
        })
    }

    /// Whether the tables are owned by this writer and persist after it: then no other
    /// process can change or delete them while the daemon runs, and they stay, refusing,
    /// after it dies. Otherwise they are plain tables, restored on drift.
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Whether the kernel can hook a device's egress in a `netdev` table (Linux 5.16 with
    /// netfilter egress): the macvlan guard needs it. Without it a ruleset with egress
    /// chains would be refused whole, so the daemon plans none (and says so).
    pub fn egress(&self) -> bool {
        self.egress
    }

    /// Makes this writer the owner of tables a previous run left behind (orphaned: it
    /// ended, they stayed), keeping their contents until the next apply replaces them.
    /// Returns the families adopted.
    pub fn adopt(&self) -> Result<Vec<&'static str>, FirewallError> {
        self.call(Request::Adopt)
    }

    fn call<T>(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<T, FirewallError>>) -> Request,
    ) -> Result<T, FirewallError> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .send(make(tx))
            .map_err(|_| FirewallError::WorkerGone)?;
        rx.recv().map_err(|_| FirewallError::WorkerGone)?
    }
}

impl Firewall for NetlinkFirewall {
    fn apply(&self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        self.call(|tx| Request::Apply(Box::new(ruleset.clone()), tx))
    }
    fn remove(&self) -> Result<bool, FirewallError> {
        self.call(Request::Remove)
    }
    fn exists(&self) -> Result<bool, FirewallError> {
        self.call(Request::Exists)
    }
    fn writer_portid(&self) -> Option<u32> {
        Some(self.portid)
    }
}

fn table_cname() -> CString {
    CString::new(plan::TABLE).expect("table name has no NUL")
}

/// An interface name as an nftables `ifname` set key: 16 bytes, NUL padded.
struct IfName([u8; IFNAMSIZ]);

impl IfName {
    fn new(name: &str) -> Self {
        let mut b = [0u8; IFNAMSIZ];
        let n = name.len().min(IFNAMSIZ - 1);
        b[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self(b)
    }
}

impl SetKey for IfName {
    /// nft's `TYPE_IFNAME`.
    const TYPE: u32 = 41;
    const LEN: u32 = IFNAMSIZ as u32;
    fn data(&self) -> Box<[u8]> {
        Box::new(self.0)
    }
}

/// nft stores the key byte order in the set's user data; without it `nft list` cannot
/// print string elements. TLV: type 0 (key byte order), length 4, value 1 (host order).
const IFNAME_SET_UDATA: [u8; 6] = [0, 4, 1, 0, 0, 0];

/// `reject` with an explicit ICMP code: nftnl's own verdict maps "port unreachable" to
/// the ICMPX code, which in the `ip` family means host unreachable.
struct Reject {
    tcp_reset: bool,
    /// The ICMP (or ICMPv6) code for "port unreachable" in the table's family.
    port_unreachable: u8,
}

/// `ct zone set` from register 1: libnftnl knows the key, the crate's `ct` expression
/// does not.
struct CtSetZone;

impl Expression for CtSetZone {
    fn to_expr(&self, _rule: &nftnl::Rule) -> std::ptr::NonNull<sys::nftnl_expr> {
        // SAFETY: nftnl_expr_alloc returns a fresh expression or NULL (checked); the setters
        // copy plain integers into it. Ownership passes to the rule, which frees it.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"ct".as_ptr());
            let e = std::ptr::NonNull::new(e).expect("libnftnl could not allocate an expression");
            sys::nftnl_expr_set_u32(
                e.as_ptr(),
                sys::NFTNL_EXPR_CT_KEY as u16,
                nlibc::NFT_CT_ZONE as u32,
            );
            sys::nftnl_expr_set_u32(
                e.as_ptr(),
                sys::NFTNL_EXPR_CT_SREG as u16,
                nlibc::NFT_REG_1 as u32,
            );
            e
        }
    }
}

/// ICMP code "port unreachable" (`ip` family).
const ICMP_PORT_UNREACH: u8 = 3;
/// ICMPv6 code "port unreachable" (`ip6` family).
const ICMPV6_PORT_UNREACH: u8 = 4;

/// The family of the table a rule is written into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Ip,
    Ip6,
    Bridge,
    Netdev,
}

impl Family {
    fn proto(self) -> ProtoFamily {
        match self {
            Family::Ip => ProtoFamily::Ipv4,
            Family::Ip6 => ProtoFamily::Ipv6,
            Family::Bridge => ProtoFamily::Bridge,
            Family::Netdev => ProtoFamily::NetDev,
        }
    }
}

/// Every family the daemon may have a table in, with its name in nft.
const FAMILIES: &[(ProtoFamily, &str)] = &[
    (ProtoFamily::Ipv4, "ip"),
    (ProtoFamily::Ipv6, "ip6"),
    (ProtoFamily::Bridge, "bridge"),
    (ProtoFamily::NetDev, "netdev"),
];

/// The families `rs` has a table in: `ip6` only where the kernel has IPv6, `netdev`
/// only with macvlan parents to guard.
fn families_of(rs: &Ruleset) -> Vec<ProtoFamily> {
    let mut f = vec![ProtoFamily::Ipv4, ProtoFamily::Bridge];
    if rs.chains6.is_some() {
        f.push(ProtoFamily::Ipv6);
    }
    if !rs.egress.is_empty() {
        f.push(ProtoFamily::NetDev);
    }
    f
}

/// nftnl names hook numbers after the `inet` hooks: number 1 (`In`) is
/// `NF_NETDEV_EGRESS` in the netdev family.
const NETDEV_EGRESS: nftnl::Hook = nftnl::Hook::In;
/// `ARPHRD_ETHER`: the `meta iiftype` nft checks before reading an Ethernet header.
const ARPHRD_ETHER: u16 = 1;

impl Expression for Reject {
    fn to_expr(&self, _rule: &nftnl::Rule) -> std::ptr::NonNull<sys::nftnl_expr> {
        // SAFETY: nftnl_expr_alloc returns a fresh expression or NULL (checked); the setters
        // copy plain integers into it. Ownership passes to the rule, which frees it.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"reject".as_ptr());
            let e = std::ptr::NonNull::new(e).expect("libnftnl could not allocate an expression");
            let (ty, code) = if self.tcp_reset {
                (nlibc::NFT_REJECT_TCP_RST as u32, 0u8)
            } else {
                (nlibc::NFT_REJECT_ICMP_UNREACH as u32, self.port_unreachable)
            };
            sys::nftnl_expr_set_u32(e.as_ptr(), sys::NFTNL_EXPR_REJECT_TYPE as u16, ty);
            sys::nftnl_expr_set_u8(e.as_ptr(), sys::NFTNL_EXPR_REJECT_CODE as u16, code);
            e
        }
    }
}

/// Adds the expressions for one match, in the form nft itself generates (so that
/// `nft list` prints it back the same way).
fn add_match(rule: &mut nftnl::Rule<'_>, m: &Match, set: &Set<'_, IfName>, family: Family) {
    match m {
        Match::IifnameInSet(_) => {
            rule.add_expr(&nft_expr!(meta iifname));
            rule.add_expr(&expr::Lookup::new(set));
        }
        Match::Iifname(plan::BridgePattern::Exact(name)) => {
            rule.add_expr(&nft_expr!(meta iifname));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, &IfName::new(name).0[..]));
        }
        Match::IifnameNot(name) => {
            rule.add_expr(&nft_expr!(meta iifname));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Neq, &IfName::new(name).0[..]));
        }
        Match::Iifname(plan::BridgePattern::Prefix(prefix)) => {
            rule.add_expr(&nft_expr!(meta iifname));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, prefix.as_bytes()));
        }
        Match::EtherSaddrNot(mac) => {
            rule.add_expr(&nft_expr!(meta iiftype));
            rule.add_expr(&expr::Cmp::new(
                expr::CmpOp::Eq,
                &ARPHRD_ETHER.to_ne_bytes()[..],
            ));
            rule.add_expr(&nft_expr!(payload ethernet saddr));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Neq, &mac[..]));
        }
        Match::Daddr(addr) => {
            if matches!(family, Family::Bridge | Family::Netdev) {
                // In the bridge and netdev families the network header is IPv4 (or
                // IPv6) only if the ethertype says so: the dependency nft itself adds.
                let ethertype = match addr {
                    IpAddr::V4(_) => nlibc::ETH_P_IP,
                    IpAddr::V6(_) => nlibc::ETH_P_IPV6,
                };
                rule.add_expr(&nft_expr!(payload ethernet ethertype));
                rule.add_expr(&expr::Cmp::new(
                    expr::CmpOp::Eq,
                    &(ethertype as u16).to_be_bytes()[..],
                ));
            }
            match addr {
                IpAddr::V4(a) => {
                    rule.add_expr(&nft_expr!(payload ipv4 daddr));
                    rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, *a));
                }
                IpAddr::V6(a) => {
                    rule.add_expr(&nft_expr!(payload ipv6 daddr));
                    rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, *a));
                }
            }
        }
        Match::CtStatusDnat => {
            rule.add_expr(&nft_expr!(ct status));
            let mask = (expr::ct::ConntrackStatus::DST_NAT.bits()).to_ne_bytes();
            rule.add_expr(&expr::Bitwise::new(&mask[..], &[0u8; 4][..]));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Neq, &[0u8; 4][..]));
        }
        Match::Saddr(addr) => match addr {
            IpAddr::V4(a) => {
                rule.add_expr(&nft_expr!(payload ipv4 saddr));
                rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, *a));
            }
            IpAddr::V6(a) => {
                rule.add_expr(&nft_expr!(payload ipv6 saddr));
                rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, *a));
            }
        },
        Match::TcpDport(port) => {
            add_l4proto_tcp(rule);
            rule.add_expr(&nft_expr!(payload tcp dport));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, &port.to_be_bytes()[..]));
        }
        Match::UdpDport(port) => {
            add_l4proto(rule, nlibc::IPPROTO_UDP as u8);
            rule.add_expr(&nft_expr!(payload udp dport));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, &port.to_be_bytes()[..]));
        }
        Match::UdpSport(port) => {
            add_l4proto(rule, nlibc::IPPROTO_UDP as u8);
            rule.add_expr(&nft_expr!(payload udp sport));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, &port.to_be_bytes()[..]));
        }
        Match::ThBytes { offset, bytes } => {
            // nftnl calls these fields bits but hands them to the kernel as they are,
            // and the kernel counts bytes: a byte-aligned load, as nft writes `@th`.
            rule.add_expr(&expr::Payload::Transport(expr::TransportHeaderField::Raw {
                offset_bits: *offset as u32,
                length_bits: bytes.len() as u32,
            }));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, *bytes));
        }
        Match::MarkSet => {
            rule.add_expr(&nft_expr!(meta mark));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Neq, 0u32));
        }
        Match::CtMarkSet => {
            rule.add_expr(&nft_expr!(ct mark));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Neq, 0u32));
        }
        Match::MarkBit { mark, bit, set } => {
            match mark {
                Mark::Packet => rule.add_expr(&nft_expr!(meta mark)),
                Mark::Conn => rule.add_expr(&nft_expr!(ct mark)),
            }
            // Marks are 32-bit numbers in host byte order.
            let mask = 1u32 << bit;
            let value = if *set { mask } else { 0 };
            rule.add_expr(&expr::Bitwise::new(&mask.to_ne_bytes()[..], &[0u8; 4][..]));
            rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, value));
        }
    }
}

fn add_l4proto_tcp(rule: &mut nftnl::Rule<'_>) {
    add_l4proto(rule, nlibc::IPPROTO_TCP as u8);
}

fn add_l4proto(rule: &mut nftnl::Rule<'_>, proto: u8) {
    rule.add_expr(&nft_expr!(meta l4proto));
    rule.add_expr(&expr::Cmp::new(expr::CmpOp::Eq, proto));
}

fn add_action(rule: &mut nftnl::Rule<'_>, a: &Action, family: Family) {
    match a {
        Action::Jump(chain) => rule.add_expr(&expr::Verdict::Jump {
            chain: CString::new(*chain).expect("chain name has no NUL"),
        }),
        Action::DnatKeepingMark(to) => {
            rule.add_expr(&nft_expr!(meta mark));
            rule.add_expr(&nft_expr!(ct mark set));
            add_dnat(rule, *to);
        }
        Action::Accept => rule.add_expr(&expr::Verdict::Accept),
        Action::Drop => rule.add_expr(&expr::Verdict::Drop),
        Action::RejectTcpReset => {
            add_l4proto_tcp(rule);
            rule.add_expr(&Reject {
                tcp_reset: true,
                port_unreachable: 0,
            });
        }
        Action::Reject => rule.add_expr(&Reject {
            tcp_reset: false,
            port_unreachable: if family == Family::Ip6 {
                ICMPV6_PORT_UNREACH
            } else {
                ICMP_PORT_UNREACH
            },
        }),
        Action::Dnat(to) => add_dnat(rule, *to),
        Action::CtZoneSet(zone) => {
            // Zones are 16-bit numbers in host byte order, as nft loads them. An array,
            // not a slice: `Immediate` copies the value's own bytes.
            rule.add_expr(&expr::Immediate::new(
                zone.to_ne_bytes(),
                expr::Register::Reg1,
            ));
            rule.add_expr(&CtSetZone);
        }
        Action::MarkPort => {
            // Both are 32 bits: the port's interface index becomes the packet mark.
            rule.add_expr(&nft_expr!(meta iif));
            rule.add_expr(&nft_expr!(meta mark set));
        }
    }
}

/// `dnat to A:P`, the address in register 1 and the port in register 2, as nft writes it.
fn add_dnat(rule: &mut nftnl::Rule<'_>, to: SocketAddr) {
    let family = match to {
        SocketAddr::V4(a) => {
            rule.add_expr(&expr::Immediate::new(a.ip().octets(), expr::Register::Reg1));
            ProtoFamily::Ipv4
        }
        SocketAddr::V6(a) => {
            rule.add_expr(&expr::Immediate::new(a.ip().octets(), expr::Register::Reg1));
            ProtoFamily::Ipv6
        }
    };
    rule.add_expr(&expr::Immediate::new(
        to.port().to_be_bytes(),
        expr::Register::Reg2,
    ));
    rule.add_expr(&expr::Nat {
        nat_type: expr::NatType::DNat,
        family,
        ip_register: expr::Register::Reg1,
        port_register: Some(expr::Register::Reg2),
    });
}

/// add + delete + add: the delete cannot fail for a missing table, and the whole
/// replacement is one transaction. The first add carries no flags, so it neither
/// changes an existing table nor trips over one a previous run left owned or
/// persistent; the last creates the table afresh, owned by this socket if `owned`.
fn replace_table(batch: &mut Batch, rs: &Ruleset, family: ProtoFamily, owned: bool) -> Table {
    let name = CString::new(rs.table).expect("table name has no NUL");
    batch.add(&TableMsg::new(&name, family, None), MsgType::Add);
    batch.add(&TableMsg::new(&name, family, None), MsgType::Del);
    let flags = if owned { F_OWNER | F_PERSIST } else { 0 };
    batch.add(&TableMsg::new(&name, family, Some(flags)), MsgType::Add);
    // Chains and sets name their table by this handle's name and family only.
    Table::new(name, family)
}

fn build_batch(rs: &Ruleset, owned: bool, stale_netdev: bool) -> nftnl::FinalizedBatch {
    let mut batch = Batch::new();
    add_family_table(&mut batch, rs, Family::Ip, &rs.chains, owned);
    if let Some(chains6) = &rs.chains6 {
        add_family_table(&mut batch, rs, Family::Ip6, chains6, owned);
    }

    // The bridge family table, replaced in the same transaction.
    let btable = replace_table(&mut batch, rs, ProtoFamily::Bridge, owned);
    // The bridge chain uses no set (it is never added); it only satisfies the rule builder.
    let set_name = CString::new(plan::BRIDGE_SET).expect("set name has no NUL");
    let set: Set<'_, IfName> = Set::new_named(&set_name, 3, &btable, ProtoFamily::Bridge);
    add_chains(
        &mut batch,
        &btable,
        &[rs.port_chain.clone(), rs.bridge_forward.clone()],
        &set,
        Family::Bridge,
    );
    if !rs.egress.is_empty() {
        add_egress_table(&mut batch, rs, owned);
    } else if stale_netdev {
        let name = table_cname();
        batch.add(
            &TableMsg::new(&name, ProtoFamily::NetDev, None),
            MsgType::Add,
        );
        batch.add(
            &TableMsg::new(&name, ProtoFamily::NetDev, None),
            MsgType::Del,
        );
    }
    batch.finalize()
}

/// Replaces the `netdev` table: one egress chain per guarded macvlan parent.
fn add_egress_table(batch: &mut Batch, rs: &Ruleset, owned: bool) {
    let table = replace_table(batch, rs, ProtoFamily::NetDev, owned);
    // These chains use no set either; it only satisfies the rule builder.
    let set_name = CString::new(plan::BRIDGE_SET).expect("set name has no NUL");
    let set: Set<'_, IfName> = Set::new_named(&set_name, 4, &table, ProtoFamily::NetDev);
    for c in &rs.egress {
        let name = CString::new(c.name.as_str()).expect("chain name has no NUL");
        let mut chain = Chain::new(&name, &table);
        chain.set_hook(NETDEV_EGRESS, c.priority);
        chain.set_device(CString::new(c.device.as_str()).expect("device name has no NUL"));
        chain.set_type(nftnl::ChainType::Filter);
        chain.set_policy(nftnl::Policy::Accept);
        batch.add(&chain, MsgType::Add);
        add_rules(batch, &chain, &c.rules, &set, Family::Netdev);
    }
}

/// Replaces the `ip` or `ip6` table: set, elements, chains and rules.
fn add_family_table(
    batch: &mut Batch,
    rs: &Ruleset,
    family: Family,
    chains: &[plan::Chain],
    owned: bool,
) {
    let table = replace_table(batch, rs, family.proto(), owned);

    let set_name = CString::new(plan::BRIDGE_SET).expect("set name has no NUL");
    // Rules find the set by its id within the batch: one id per table.
    let set_id = match family {
        Family::Ip6 => 2,
        _ => 1,
    };
    let mut set: Set<'_, IfName> = Set::new_named(&set_name, set_id, &table, family.proto());
    // SAFETY: the set pointer is valid for the life of `set`; libnftnl copies the buffer.
    unsafe {
        sys::nftnl_set_set_data(
            set.as_ptr().as_ptr(),
            sys::NFTNL_SET_USERDATA as u16,
            IFNAME_SET_UDATA.as_ptr().cast(),
            IFNAME_SET_UDATA.len() as u32,
        );
    }
    for b in &rs.bridges {
        set.add(&IfName::new(b));
    }
    batch.add(&set, MsgType::Add);
    if !rs.bridges.is_empty() {
        batch.add_iter(set.elems_iter(), MsgType::Add);
    }

    add_chains(batch, &table, chains, &set, family);
}

/// Adds the chains (base chains with an accept policy), then their rules: a rule may
/// jump to a chain listed after its own.
fn add_chains(
    batch: &mut Batch,
    table: &Table,
    chains: &[plan::Chain],
    set: &Set<'_, IfName>,
    family: Family,
) {
    let mut added = Vec::with_capacity(chains.len());
    for c in chains {
        let name = CString::new(c.name).expect("chain name has no NUL");
        let mut chain = Chain::new(&name, table);
        if let Some(base) = c.base {
            let hook = match base.hook {
                Hook::Prerouting => nftnl::Hook::PreRouting,
                Hook::Input => nftnl::Hook::In,
                Hook::Forward => nftnl::Hook::Forward,
                Hook::Output => nftnl::Hook::Out,
            };
            chain.set_hook(hook, base.priority);
            chain.set_type(match base.kind {
                ChainKind::Nat => nftnl::ChainType::Nat,
                ChainKind::Filter | ChainKind::BridgeFilter => nftnl::ChainType::Filter,
            });
            chain.set_policy(nftnl::Policy::Accept);
        }
        batch.add(&chain, MsgType::Add);
        added.push(chain);
    }
    for (c, chain) in chains.iter().zip(&added) {
        add_rules(batch, chain, &c.rules, set, family);
    }
}

fn add_rules(
    batch: &mut Batch,
    chain: &Chain<'_>,
    rules: &[plan::Rule],
    set: &Set<'_, IfName>,
    family: Family,
) {
    for r in rules {
        let mut rule = nftnl::Rule::new(chain);
        for m in &r.matches {
            add_match(&mut rule, m, set, family);
        }
        add_action(&mut rule, &r.action, family);
        batch.add(&rule, MsgType::Add);
    }
}

fn apply(socket: &mnl::Socket, rs: &Ruleset, owned: bool) -> Result<(), FirewallError> {
    // A netdev table that an earlier ruleset (or run) had and this one has not (its
    // macvlan parent went) is deleted in the same batch.
    let stale_netdev = rs.egress.is_empty()
        && table_names(socket)?.contains_key(&(nlibc::NFPROTO_NETDEV as u32, table_cname()));
    let batch = build_batch(rs, owned, stale_netdev);
    send_and_process(socket, &batch)
        .map_err(|e| FirewallError::from_io("replace the nftables table", e))
}

fn remove(socket: &mnl::Socket) -> Result<bool, FirewallError> {
    let tables = table_names(socket)?;
    let existed = tables.keys().any(|(_, name)| *name == table_cname());
    // The ip6 table is deleted only if it is there: a kernel without IPv6 has no ip6
    // family, and adding a table to delete it would fail the whole batch.
    let mut batch = Batch::new();
    for (family, _) in FAMILIES {
        // ip6 and netdev tables are deleted only if they are there: a kernel without
        // IPv6 has no ip6 family, and adding a table to delete it would fail the batch.
        let optional = matches!(family, ProtoFamily::Ipv6 | ProtoFamily::NetDev);
        if optional && !tables.contains_key(&(*family as u32, table_cname())) {
            continue;
        }
        // No flags: an orphaned table (a previous run's, owner gone) is anyone's to
        // delete, and one this writer owns is its own.
        batch.add(&TableMsg::new(&table_cname(), *family, None), MsgType::Add);
        batch.add(&TableMsg::new(&table_cname(), *family, None), MsgType::Del);
    }
    let batch = batch.finalize();
    send_and_process(socket, &batch)
        .map_err(|e| FirewallError::from_io("delete the nftables table", e))?;
    Ok(existed)
}

/// Sends a batch and checks one acknowledgement per sequence number.
fn send_and_process(socket: &mnl::Socket, batch: &nftnl::FinalizedBatch) -> io::Result<()> {
    socket.send_all(batch)?;
    let portid = socket.portid();
    let mut buffer = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    let mut expected = batch.sequence_numbers();
    let mut remaining = expected.len();
    while remaining > 0 {
        let n = socket.recv_raw(&mut buffer)?;
        for msg in mnl::NlMessages::new(&buffer[..n]) {
            let msg = msg?;
            let seq = expected.next().unwrap_or(0);
            remaining = remaining.saturating_sub(1);
            if let Err(e) = mnl::cb_run(msg, seq, portid) {
                // The kernel rolled the whole batch back; it may not answer every
                // remaining message, and what it does send must not be read as the
                // reply to the next request on this socket.
                drain_pending(socket, &mut buffer);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Reads whatever replies are still queued without blocking.
fn drain_pending(socket: &mnl::Socket, buffer: &mut [u8]) {
    let fd = socket_fd(socket);
    loop {
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16)) {
            Ok(n) if n > 0 => {
                if socket.recv_raw(buffer).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// The descriptor of an mnl socket, borrowed for as long as the socket lives.
fn socket_fd(socket: &mnl::Socket) -> std::os::fd::BorrowedFd<'_> {
    // SAFETY: mnl_socket_get_fd returns the descriptor owned by `socket`, which outlives
    // the borrow we return.
    unsafe {
        std::os::fd::BorrowedFd::borrow_raw(mnl::mnl_sys::mnl_socket_get_fd(socket.as_raw_socket()))
    }
}

/// Every one of the daemon's tables in `families` exists.
fn all_present(tables: &Tables, families: &[ProtoFamily]) -> bool {
    let name = table_cname();
    families
        .iter()
        .all(|f| tables.contains_key(&(*f as u32, name.clone())))
}

/// Sets `owner` on each of the daemon's tables that is orphaned; one batch.
fn adopt(socket: &mnl::Socket) -> Result<Vec<&'static str>, FirewallError> {
    let tables = table_names(socket)?;
    let mut adopted = Vec::new();
    let mut batch = Batch::new();
    for &(family, label) in FAMILIES {
        match tables.get(&(family as u32, table_cname())) {
            Some(flags) if table::is_orphan(*flags) => {
                let msg = TableMsg::new(&table_cname(), family, Some(F_OWNER | F_PERSIST));
                batch.add(&msg, MsgType::Add);
                adopted.push(label);
            }
            _ => {}
        }
    }
    if !adopted.is_empty() {
        send_and_process(socket, &batch.finalize())
            .map_err(|e| FirewallError::from_io("adopt the tables a previous run left", e))?;
    }
    Ok(adopted)
}

fn table_names(socket: &mnl::Socket) -> Result<Tables, FirewallError> {
    let seq = 0;
    let get = nftnl::table::get_tables_nlmsg(seq);
    let err = |e| FirewallError::from_io("list nftables tables", e);
    socket.send(&get).map_err(err)?;
    let portid = socket.portid();
    let mut buffer = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    let mut tables = Tables::new();
    loop {
        let n = socket.recv_raw(&mut buffer).map_err(err)?;
        match mnl::cb_run2(&buffer[..n], seq, portid, table::table_cb, &mut tables).map_err(err)? {
            mnl::CbResult::Stop => return Ok(tables),
            mnl::CbResult::Ok => continue,
        }
    }
}
