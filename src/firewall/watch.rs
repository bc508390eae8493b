//! Notices when someone else changes the daemon's table (deletes it, flushes the
//! ruleset, edits a rule), so the owner can restore it at once.
//!
//! nf_tables multicasts every committed change on `NFNLGRP_NFTABLES`; each message carries
//! the port id of the socket that made the change and, as attribute 1, the table name.
//! Changes from the daemon's own writer socket are ignored; anything else that touches
//! the table is reported.

use std::io;
use std::thread;

use super::nfnl;
use super::plan::TABLE;

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_NETDEV: u8 = 5;
const NFPROTO_BRIDGE: u8 = 7;
const NFPROTO_IPV6: u8 = 10;
/// Attribute 1 is the table name in table, chain, rule, set and element messages.
const ATTR_TABLE: u16 = 1;
/// Message types from NFT_MSG_NEWTABLE (0) to NFT_MSG_DELSETELEM (14) name a table.
const LAST_TABLE_SCOPED: u16 = 14;

/// A change to the table that the daemon did not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignChange {
    /// What happened, for the log ("table deleted", "rule deleted", ...).
    pub what: &'static str,
    /// Netlink port id of whoever did it (0 for the kernel itself).
    pub by_portid: u32,
}

fn describe(msg: u16) -> &'static str {
    match msg {
        0 => "table added",
        2 => "table deleted",
        3 => "chain added",
        5 => "chain deleted",
        6 => "rule added",
        8 => "rule deleted",
        9 => "set added",
        11 => "set deleted",
        12 => "set elements added",
        14 => "set elements deleted",
        _ => "table changed",
    }
}

/// Classifies one notification: `Some` if it touches our table and is not our own.
pub fn foreign_change(msg: &nfnl::Msg<'_>, own_portid: u32) -> Option<ForeignChange> {
    if msg.ty >> 8 != NFNL_SUBSYS_NFTABLES {
        return None;
    }
    let op = msg.ty & 0xff;
    if op > LAST_TABLE_SCOPED
        || msg.pid == own_portid
        || !matches!(
            msg.family(),
            Some(NFPROTO_IPV4 | NFPROTO_IPV6 | NFPROTO_BRIDGE | NFPROTO_NETDEV)
        )
    {
        return None;
    }
    let table = msg.attrs().get(ATTR_TABLE)?;
    (table.str() == TABLE).then(|| ForeignChange {
        what: describe(op),
        by_portid: msg.pid,
    })
}

/// One line for a burst of changes (deleting a table reports each of its rules): each
/// kind once, with its count, then who made them. `None` for no changes.
pub fn summarise<'a>(changes: impl IntoIterator<Item = &'a ForeignChange>) -> Option<String> {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    let mut ports: Vec<u32> = Vec::new();
    for c in changes {
        match kinds.iter_mut().find(|(what, _)| *what == c.what) {
            Some((_, n)) => *n += 1,
            None => kinds.push((c.what, 1)),
        }
        if !ports.contains(&c.by_portid) {
            ports.push(c.by_portid);
        }
    }
    if kinds.is_empty() {
        return None;
    }
    let what: Vec<String> = kinds
        .iter()
        .map(|(what, n)| match n {
            1 => (*what).to_owned(),
            n => format!("{what} ({n})"),
        })
        .collect();
    let ports: Vec<String> = ports.iter().map(u32::to_string).collect();
    let by = if ports.len() == 1 { "port" } else { "ports" };
    Some(format!(
        "{} by netlink {by} {}",
        what.join(", "),
        ports.join(", ")
    ))
}

/// Starts the watcher thread. `report` is called for every foreign change, and with
/// `what = "notifications lost"` if the kernel dropped some (the owner should then
/// re-check everything).
pub fn spawn(own_portid: u32, report: impl Fn(ForeignChange) + Send + 'static) -> io::Result<()> {
    let mut sock = subscribe()?;
    thread::Builder::new().name("nft-watch".into()).spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => {
                    for m in nfnl::messages(&buf[..n]) {
                        if let Some(c) = foreign_change(&m, own_portid) {
                            report(c);
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    report(ForeignChange { what: "notifications lost", by_portid: 0 });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Never run blind: subscribe again, then have the owner re-apply,
                    // since changes made meanwhile were not seen.
                    tracing::error!(error = %e, "nftables change watcher failed; resubscribing");
                    sock = loop {
                        thread::sleep(std::time::Duration::from_secs(1));
                        match subscribe() {
                            Ok(s) => break s,
                            Err(e) => tracing::error!(error = %e, "nftables change watcher cannot resubscribe"),
                        }
                    };
                    report(ForeignChange { what: "change watcher resubscribed", by_portid: 0 });
                }
            }
        }
    })?;
    Ok(())
}

fn subscribe() -> io::Result<netlink_sys::Socket> {
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.add_membership(NFNLGRP_NFTABLES)?;
    let _ = sock.set_rx_buf_sz(1 << 20);
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(op: u16, pid: u32, family: u8, table: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let name = format!("{table}\0");
        attr.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
        attr.extend_from_slice(&ATTR_TABLE.to_ne_bytes());
        attr.extend_from_slice(name.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = nfnl::request((NFNL_SUBSYS_NFTABLES << 8) | op, 0, 0, family, &attr);
        m[12..16].copy_from_slice(&pid.to_ne_bytes());
        m
    }

    fn classify(buf: &[u8], own: u32) -> Option<ForeignChange> {
        nfnl::messages(buf).find_map(|m| foreign_change(&m, own))
    }

    #[test]
    fn someone_elses_delete_of_our_table_is_reported() {
        let m = notification(2, 999, NFPROTO_IPV4, TABLE);
        assert_eq!(
            classify(&m, 42),
            Some(ForeignChange {
                what: "table deleted",
                by_portid: 999
            })
        );
    }

    #[test]
    fn our_own_changes_other_tables_and_other_families_are_ignored() {
        assert_eq!(
            classify(&notification(2, 42, NFPROTO_IPV4, TABLE), 42),
            None
        );
        assert_eq!(
            classify(&notification(8, 999, NFPROTO_IPV4, "nat"), 42),
            None
        );
        // A table of the same name in the inet family is someone else's.
        assert_eq!(classify(&notification(8, 999, 1, TABLE), 42), None);
        // NFT_MSG_NEWGEN carries no table.
        assert_eq!(
            classify(&notification(15, 999, NFPROTO_IPV4, TABLE), 42),
            None
        );
    }

    #[test]
    fn a_rule_deleted_from_our_table_is_reported() {
        let c = classify(&notification(8, 7, NFPROTO_IPV4, TABLE), 42).unwrap();
        assert_eq!(c.what, "rule deleted");
        // The ip6 and bridge tables (the port stamp) are watched the same way.
        for family in [NFPROTO_IPV6, NFPROTO_BRIDGE] {
            let c = classify(&notification(8, 7, family, TABLE), 42).unwrap();
            assert_eq!(c.what, "rule deleted");
        }
    }

    #[test]
    fn a_burst_of_changes_is_one_line_with_counts_and_who() {
        let c = |what, by_portid| ForeignChange { what, by_portid };
        let burst = [
            c("rule deleted", 7),
            c("rule deleted", 7),
            c("chain deleted", 7),
            c("rule deleted", 7),
            c("table deleted", 7),
        ];
        assert_eq!(
            summarise(&burst).unwrap(),
            "rule deleted (3), chain deleted, table deleted by netlink port 7"
        );
        assert_eq!(
            summarise(&[c("table deleted", 7), c("table added", 0)]).unwrap(),
            "table deleted, table added by netlink ports 7, 0"
        );
        assert_eq!(summarise(&[]), None);
    }
}
