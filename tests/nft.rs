//! The netlink writer against the real kernel, in a private network namespace: what it
//! installs, that a rejected batch changes nothing, and table removal.

use harness::*;
use imds_proxy::firewall::nft::NetlinkFirewall;
use imds_proxy::firewall::plan::{
    self, BridgePattern, ChainKind, Hook, Ipv6Service, Mode, Snapshot,
};
use imds_proxy::firewall::{Firewall, FirewallError, TableOwner};

fn snapshot(bridges: &[&str]) -> Snapshot {
    Snapshot {
        bridges: bridges.iter().map(|b| b.to_string()).collect(),
        patterns: vec![
            BridgePattern::Exact("docker0".into()),
            BridgePattern::Prefix("br-".into()),
        ],
        direct: vec![],
        egress_guards: vec![],
        listen: "169.254.93.254:80".parse().unwrap(),
        v6: Ipv6Service::Listen("[fdf3:6f62:ab7c::254]:80".parse().unwrap()),
        gce_dns: true,
        mode: Mode::Open,
    }
}

#[test]
fn a_batch_the_kernel_rejects_leaves_the_previous_table_untouched() {
    require_root!();
    let ns = Netns::new("nft");
    let good = plan::plan(&snapshot(&["docker0"]));
    let mut bad = plan::plan(&snapshot(&["docker0", "br-new"]));
    // NAT chains cannot hook forward: the kernel refuses the batch half-way through.
    bad.chains.push(plan::Chain::base(
        "broken",
        ChainKind::Nat,
        Hook::Forward,
        0,
        vec![],
    ));
    let (first, second, exists) = ns.run(move || {
        let fw = NetlinkFirewall::open(TableOwner::Off).unwrap();
        let first = fw.apply(&good);
        let second = fw.apply(&bad);
        // The writer's socket is still usable after a failed batch.
        (first, second, fw.exists())
    });
    first.unwrap();
    let err = second.unwrap_err();
    assert!(matches!(err, FirewallError::Unsupported { .. }), "{err:?}");
    assert!(exists.unwrap());
    assert_eq!(
        ns.nft_table().unwrap(),
        plan::plan(&snapshot(&["docker0"])).to_string(),
        "previous table must survive"
    );
}

#[test]
fn applying_twice_yields_one_table_and_remove_reports_what_it_did() {
    require_root!();
    let ns = Netns::new("nft2");
    let rs = plan::plan(&snapshot(&["docker0", "br-0a1b2c3d4e5f"]));
    let expected = rs.to_string();
    let (removed, removed_again, exists) = ns.run(move || {
        let fw = NetlinkFirewall::open(TableOwner::Off).unwrap();
        fw.apply(&rs).unwrap();
        fw.apply(&rs).unwrap();
        let list = |family: &str| {
            String::from_utf8(
                std::process::Command::new("nft")
                    .args(["list", "table", family, "imds_proxy"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap()
        };
        assert_eq!(list("ip") + &list("ip6") + &list("bridge"), expected);
        (
            fw.remove().unwrap(),
            fw.remove().unwrap(),
            fw.exists().unwrap(),
        )
    });
    assert_eq!(ns.nft_table_count(), 0);
    assert_eq!(
        ns.exec(&["nft", "list", "tables"]).trim(),
        "",
        "every table removed"
    );
    assert!(removed && !removed_again && !exists);
}

#[test]
fn owned_tables_resist_other_processes_outlive_the_writer_and_are_adopted() {
    require_root!();
    let ns = Netns::new("nftown");
    let first = plan::plan(&snapshot(&["docker0"]));
    let first_text = first.to_string();
    let n = ns.alias();
    let (owned, nothing_adopted, delete, flush, kept, owner_flags) = ns.run(move || {
        let fw = NetlinkFirewall::open(TableOwner::Auto).unwrap();
        let nothing = fw.adopt().unwrap();
        fw.apply(&first).unwrap();
        let delete = n.try_exec(&["nft", "delete", "table", "ip", "imds_proxy"]);
        let flush = n.try_exec(&["nft", "flush", "ruleset"]);
        let owner_flags: Vec<Option<String>> = ["ip", "ip6", "bridge"]
            .map(|family| {
                n.exec(&["nft", "list", "table", family, "imds_proxy"])
                    .lines()
                    .find(|l| l.trim_start().starts_with("flags"))
                    .map(|l| l.trim().to_owned())
            })
            .into();
        (
            fw.owned(),
            nothing,
            delete,
            flush,
            n.nft_table(),
            owner_flags,
        )
        // The writer, and with it its netlink socket, ends here.
    });
    assert!(owned, "this kernel (6.9+) has owned persistent tables");
    assert!(nothing_adopted.is_empty(), "{nothing_adopted:?}");
    assert!(!delete.0, "another process deleted the owned table");
    assert!(delete.2.contains("Operation not permitted"), "{}", delete.2);
    assert!(flush.0, "flush ruleset itself succeeds: {}", flush.2);
    assert_eq!(
        kept.as_deref(),
        Some(first_text.as_str()),
        "flush left our tables"
    );
    assert_eq!(owner_flags, vec![Some("flags owner".to_owned()); 3]);

    // The writer is gone: the tables stay, with their rules, and nobody owns them.
    assert_eq!(ns.nft_table().as_deref(), Some(first_text.as_str()));
    let n = ns.alias();
    let (_, _, err) = ns.try_exec(&["nft", "list", "table", "ip", "imds_proxy"]);
    assert!(err.is_empty(), "{err}");
    let second = plan::plan(&snapshot(&["docker0", "br-new"]));
    let second_text = second.to_string();
    let (adopted, delete) = ns.run(move || {
        let fw = NetlinkFirewall::open(TableOwner::Auto).unwrap();
        let adopted = fw.adopt().unwrap();
        // Owned again: others cannot delete it, and the new writer replaces it.
        let delete = n.try_exec(&["nft", "delete", "table", "bridge", "imds_proxy"]);
        fw.apply(&second).unwrap();
        (adopted, delete)
    });
    assert_eq!(adopted, ["ip", "ip6", "bridge"]);
    assert!(!delete.0, "an adopted table is owned again");
    assert_eq!(ns.nft_table().as_deref(), Some(second_text.as_str()));

    // An orphan is anyone's to delete: uninstall's plain writer removes it.
    let removed = ns.run(|| NetlinkFirewall::open(TableOwner::Off).unwrap().remove());
    assert!(removed.unwrap());
    assert_eq!(ns.exec(&["nft", "list", "tables"]).trim(), "");
}

#[test]
fn the_macvlan_egress_guard_is_listed_as_planned_and_removed_with_the_rest() {
    require_root!();
    let ns = Netns::new("nftegr");
    ns.ip("link add up9 type veth peer name up9p");
    let mut s = snapshot(&["docker0"]);
    s.egress_guards = vec![plan::EgressGuard {
        device: "up9".into(),
        mac: [0x02, 0, 0, 0, 0, 0x09],
    }];
    let rs = plan::plan(&s);
    let expected = rs.to_string();
    let n = ns.alias();
    let (listing, exists_after_delete) = ns.run(move || {
        let fw = NetlinkFirewall::open(TableOwner::Off).unwrap();
        fw.apply(&rs).unwrap();
        let listing = ["ip", "ip6", "bridge", "netdev"]
            .map(|f| n.exec(&["nft", "list", "table", f, "imds_proxy"]))
            .concat();
        // The netdev table counts for drift like the others.
        n.exec(&["nft", "delete", "table", "netdev", "imds_proxy"]);
        let exists = fw.exists().unwrap();
        fw.apply(&rs).unwrap();
        fw.remove().unwrap();
        (listing, exists)
    });
    assert_eq!(listing, expected);
    assert!(
        !exists_after_delete,
        "a missing netdev table went unnoticed"
    );
    assert_eq!(ns.exec(&["nft", "list", "tables"]).trim(), "");
}

#[test]
fn switching_table_owner_either_way_replaces_the_tables() {
    require_root!();
    let ns = Netns::new("nftswitch");
    let rs = plan::plan(&snapshot(&["docker0"]));
    let expected = rs.to_string();
    let flags = |ns: &Netns| {
        ns.exec(&["nft", "list", "table", "bridge", "imds_proxy"])
            .lines()
            .find(|l| l.starts_with("\tflags"))
            .map(|l| l.trim().to_owned())
    };
    // Plain tables (an older version's, or table_owner = off), then owned ones.
    let r = rs.clone();
    ns.run(move || NetlinkFirewall::open(TableOwner::Off).unwrap().apply(&r))
        .unwrap();
    assert_eq!(flags(&ns), None);
    let r = rs.clone();
    let n = ns.alias();
    let owned = ns.run(move || {
        let fw = NetlinkFirewall::open(TableOwner::Auto).unwrap();
        fw.apply(&r).unwrap();
        flags(&n)
    });
    assert_eq!(owned.as_deref(), Some("flags owner"));
    // Orphaned now; a plain writer replaces them with plain tables.
    let r = rs.clone();
    ns.run(move || NetlinkFirewall::open(TableOwner::Off).unwrap().apply(&r))
        .unwrap();
    assert_eq!(flags(&ns), None);
    assert_eq!(ns.nft_table().unwrap(), expected);
}

#[test]
fn with_table_owner_off_the_tables_are_plain() {
    require_root!();
    let ns = Netns::new("nftoff");
    let rs = plan::plan(&snapshot(&["docker0"]));
    ns.run(move || {
        let fw = NetlinkFirewall::open(TableOwner::Off).unwrap();
        assert!(!fw.owned());
        fw.apply(&rs).unwrap();
    });
    // Plain tables stay after the writer too, carry no flags, and anyone may delete them.
    let listing = ns.exec(&["nft", "list", "table", "ip", "imds_proxy"]);
    assert!(!listing.contains("flags"), "{listing}");
    ns.exec(&["nft", "delete", "table", "ip", "imds_proxy"]);
}

/// The running kernel's version, as (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname().unwrap();
    let release = release.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

#[test]
fn the_egress_probe_matches_the_kernel_version_and_leaves_nothing() {
    require_root!();
    let ns = Netns::new("nftegr");
    let egress = ns.run(|| NetlinkFirewall::open(TableOwner::Off).unwrap().egress());
    let version = kernel_version();
    assert_eq!(egress, version >= (5, 16), "kernel {version:?}");
    assert_eq!(
        ns.exec(&["nft", "list", "tables"]).trim(),
        "",
        "the probe's table stayed"
    );
}
