use super::*;
use crate::firewall::plan::Match;
use crate::firewall::MemoryFirewall;

fn setup(bridges: &[&str], mode: Mode) -> (MemoryFirewall, Reconciler) {
    let fw = MemoryFirewall::default();
    let snap = Snapshot::for_test(bridges, mode);
    (fw.clone(), Reconciler::new(Arc::new(fw), snap))
}

fn has_dnat(fw: &MemoryFirewall) -> bool {
    fw.state().table.unwrap().chains.iter().any(|c| {
        c.rules
            .iter()
            .any(|r| matches!(r.action, crate::firewall::plan::Action::DnatKeepingMark(_)))
    })
}

fn up(n: &str) -> Event {
    Event::Link(LinkEvent::Up(n.into()))
}

#[tokio::test]
async fn opening_after_closed_adds_the_dnat_rule_and_closing_removes_it() {
    let (fw, mut rec) = setup(&["docker0"], Mode::Closed);
    rec.apply().await.unwrap();
    assert!(!has_dnat(&fw));
    assert_eq!(
        rec.handle(vec![Event::SetMode(Mode::Open)]).await.unwrap(),
        Outcome::Applied
    );
    assert!(has_dnat(&fw));
    assert_eq!(
        rec.handle(vec![Event::SetMode(Mode::Closed)])
            .await
            .unwrap(),
        Outcome::Applied
    );
    assert!(!has_dnat(&fw));
}

#[tokio::test]
async fn a_new_docker_bridge_joins_the_set_and_other_links_do_not() {
    let (fw, mut rec) = setup(&["docker0"], Mode::Open);
    rec.apply().await.unwrap();
    assert_eq!(
        rec.handle(vec![up("veth1234"), up("eth1")]).await.unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(
        rec.handle(vec![up("br-0a1b2c3d4e5f")]).await.unwrap(),
        Outcome::Applied
    );
    let set = fw.state().table.unwrap().bridges;
    assert!(set.contains("br-0a1b2c3d4e5f") && set.contains("docker0") && set.len() == 2);
    // Link state changes of a known bridge are no-ops.
    assert_eq!(
        rec.handle(vec![up("br-0a1b2c3d4e5f")]).await.unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(
        rec.handle(vec![Event::Link(LinkEvent::Gone("br-0a1b2c3d4e5f".into()))])
            .await
            .unwrap(),
        Outcome::Applied
    );
    assert_eq!(fw.state().table.unwrap().bridges.len(), 1);
}

#[tokio::test]
async fn a_burst_of_events_is_one_apply() {
    let (fw, mut rec) = setup(&[], Mode::Open);
    rec.apply().await.unwrap();
    let burst = (0..20).map(|i| up(&format!("br-{i:012}"))).collect();
    rec.handle(burst).await.unwrap();
    assert_eq!(fw.state().history.len(), 2);
    assert_eq!(fw.state().table.unwrap().bridges.len(), 20);
}

#[tokio::test]
async fn a_resync_replaces_the_bridge_list() {
    let (fw, mut rec) = setup(&["docker0", "br-old"], Mode::Open);
    rec.apply().await.unwrap();
    rec.handle(vec![Event::Links(vec![
        "lo".into(),
        "eth0".into(),
        "docker0".into(),
        "br-new".into(),
    ])])
    .await
    .unwrap();
    let set: Vec<String> = fw.state().table.unwrap().bridges.into_iter().collect();
    assert_eq!(set, ["br-new", "docker0"]);
}

#[tokio::test]
async fn a_table_deleted_behind_the_daemons_back_is_restored_on_verify() {
    let (fw, mut rec) = setup(&["docker0"], Mode::Open);
    rec.apply().await.unwrap();
    assert_eq!(
        rec.handle(vec![Event::Verify]).await.unwrap(),
        Outcome::Unchanged
    );
    fw.delete_behind_back();
    assert_eq!(
        rec.handle(vec![Event::Verify]).await.unwrap(),
        Outcome::Restored
    );
    assert!(has_dnat(&fw));
}

#[tokio::test]
async fn a_foreign_change_is_restored_even_when_nothing_else_changed() {
    let (fw, mut rec) = setup(&["docker0"], Mode::Open);
    rec.apply().await.unwrap();
    let change = ForeignChange {
        what: "rule deleted",
        by_portid: 4242,
    };
    let out = rec
        .handle(vec![Event::Drift(change.clone()), Event::Drift(change)])
        .await
        .unwrap();
    assert_eq!(out, Outcome::Restored);
    assert_eq!(fw.state().history.len(), 2, "two reports, one restore");
    let input = fw
        .state()
        .table
        .unwrap()
        .chains
        .into_iter()
        .find(|c| c.name == "input")
        .unwrap();
    assert!(input
        .rules
        .iter()
        .any(|r| r.matches.contains(&Match::CtStatusDnat)));
}

#[tokio::test]
async fn a_failed_apply_is_retried_on_the_next_event() {
    let (fw, mut rec) = setup(&["docker0"], Mode::Open);
    rec.apply().await.unwrap();
    fw.fail_next_applies(1);
    assert!(rec.handle(vec![up("br-0a1b2c3d4e5f")]).await.is_err());
    assert!(
        !fw.state()
            .table
            .unwrap()
            .bridges
            .contains("br-0a1b2c3d4e5f"),
        "a failed apply changed the table"
    );
    // Nothing new happened, but the periodic verification brings the table up to date.
    assert_eq!(
        rec.handle(vec![Event::Verify]).await.unwrap(),
        Outcome::Applied
    );
    assert!(fw
        .state()
        .table
        .unwrap()
        .bridges
        .contains("br-0a1b2c3d4e5f"));
    assert_eq!(
        rec.handle(vec![Event::Verify]).await.unwrap(),
        Outcome::Unchanged
    );
}

#[tokio::test]
async fn a_change_of_macvlan_parents_rebuilds_the_egress_guards_and_nothing_else_does() {
    let (fw, mut rec) = setup(&["docker0"], Mode::Open);
    rec.apply().await.unwrap();
    let guard = EgressGuard {
        device: "eth0".into(),
        mac: [2, 0, 0, 0, 0, 1],
    };
    assert_eq!(
        rec.handle(vec![Event::EgressGuards(vec![guard.clone()])])
            .await
            .unwrap(),
        Outcome::Applied
    );
    assert_eq!(fw.state().table.unwrap().egress[0].device, "eth0");
    // The same parents again (a re-listing) change nothing.
    assert_eq!(
        rec.handle(vec![Event::EgressGuards(vec![guard])])
            .await
            .unwrap(),
        Outcome::Unchanged
    );
    // A new MAC, then the parent gone.
    let moved = EgressGuard {
        device: "eth0".into(),
        mac: [2, 0, 0, 0, 0, 2],
    };
    assert_eq!(
        rec.handle(vec![Event::EgressGuards(vec![moved])])
            .await
            .unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        rec.handle(vec![Event::EgressGuards(vec![])]).await.unwrap(),
        Outcome::Applied
    );
    assert!(fw.state().table.unwrap().egress.is_empty());
}
