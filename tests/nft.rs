//! The netlink writer against the real kernel, in a private network namespace: what it
//! installs, that a rejected batch changes nothing, and table removal.

mod common;

use common::*;
use imds_proxy::firewall::nft::NetlinkFirewall;
use imds_proxy::firewall::plan::{self, BridgePattern, ChainKind, Hook, Mode, Snapshot, V6};
use imds_proxy::firewall::{Firewall, FirewallError};

fn snapshot(bridges: &[&str]) -> Snapshot {
    Snapshot {
        bridges: bridges.iter().map(|b| b.to_string()).collect(),
        patterns: vec![
            BridgePattern::Exact("docker0".into()),
            BridgePattern::Prefix("br-".into()),
        ],
        listen: "169.254.93.254:80".parse().unwrap(),
        v6: V6::Listen("[fdf3:6f62:ab7c::254]:80".parse().unwrap()),
        gce_dns: true,
        mode: Mode::Open,
    }
}

#[test]
fn a_batch_the_kernel_rejects_leaves_the_previous_table_untouched() {
    if !root_or_skip("a_batch_the_kernel_rejects_leaves_the_previous_table_untouched") {
        return;
    }
    let ns = Netns::new("nft");
    let good = plan::plan(&snapshot(&["docker0"]));
    let mut bad = plan::plan(&snapshot(&["docker0", "br-new"]));
    // NAT chains cannot hook forward: the kernel refuses the batch half-way through.
    bad.chains.push(plan::Chain {
        name: "broken",
        kind: ChainKind::Nat,
        hook: Hook::Forward,
        priority: 0,
        rules: vec![],
    });
    let (first, second, exists) = ns.run(move || {
        let fw = NetlinkFirewall::open().unwrap();
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
    if !root_or_skip("applying_twice_yields_one_table_and_remove_reports_what_it_did") {
        return;
    }
    let ns = Netns::new("nft2");
    let rs = plan::plan(&snapshot(&["docker0", "br-0a1b2c3d4e5f"]));
    let expected = rs.to_string();
    let (removed, removed_again, exists) = ns.run(move || {
        let fw = NetlinkFirewall::open().unwrap();
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
