//! The daemon's life and its tables': after SIGKILL and SIGTERM containers stay
//! refused, `--remove-on-exit` and `uninstall` give the path back, drift is repaired,
//! owned tables survive a crash and are adopted, `rules` prints what `run` installs, and
//! start-up failures say why.

use std::io::ErrorKind;
use std::time::Duration;

use harness::*;
use nix::sys::signal::Signal;

use super::QUICK;

#[test]
fn after_sigkill_containers_are_refused_fast_never_passed_through() {
    require_root!();
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
    require_root!();
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
    require_root!();
    let tb = Testbed::new();
    let d = tb.daemon(&["--remove-on-exit"]);
    d.signal(Signal::SIGINT);
    assert!(d.wait(Duration::from_secs(10)).success());
    assert!(tb.host.nft_table().is_none());
    assert!(!tb.host.ip("-br link").contains("imdsproxy0"));
    assert_eq!(tb.status("/"), 200);

    let d = tb.daemon(&[]);
    d.kill9();
    tb.host.exec(&[bin(), "uninstall"]);
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
    tb.host.exec(&[bin(), "uninstall"]);
}

#[test]
fn with_plain_tables_a_deleted_table_and_a_flushed_ruleset_are_restored_within_two_seconds() {
    require_root!();
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
    require_root!();
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
    require_root!();
    let tb = Testbed::new();
    let d = tb.daemon(&[]);
    let printed = tb.host.exec(&[bin(), "rules", "--bridges", "br0,br-*"]);
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
fn clear_errors_for_a_taken_address_and_a_non_root_user() {
    require_root!();
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
    let (ok, _, err) = tb.host.try_exec(&[bin(), "uninstall"]);
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
        bin(),
        "run",
        "--upstream",
        "http://169.254.169.254",
    ]);
    assert!(!ok);
    assert!(err.contains("must run as root"), "{err}");
}
