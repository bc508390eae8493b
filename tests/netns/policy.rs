//! Policy as a container meets it through the daemon: callers no container holds are
//! denied in each provider's shape, and a configuration edit or SIGHUP changes the
//! answer without a restart.

use std::time::Duration;

use harness::*;
use nix::sys::signal::Signal;

use super::QUICK;

#[test]
fn callers_no_container_holds_are_denied_by_default_in_the_providers_shape() {
    require_root!();
    let tb = Testbed::new();
    let d = tb.daemon(&["--unknown-policy", "deny"]);
    let aws = http(
        &tb.container,
        IMDS,
        "GET",
        "/latest/meta-data/iam/security-credentials/",
        &[],
    )
    .0
    .unwrap();
    assert_eq!(aws.status, 403);
    assert!(
        aws.body
            .starts_with("Forbidden: denied by imds-proxy policy deny"),
        "{aws:?}"
    );
    let gce = http(
        &tb.container,
        IMDS,
        "GET",
        "/computeMetadata/v1/project/project-id",
        &[("Metadata-Flavor", "Google")],
    )
    .0
    .unwrap();
    assert_eq!(gce.status, 403);
    assert_eq!(
        gce.headers.get("metadata-flavor").map(String::as_str),
        Some("Google")
    );
    let azure = http(
        &tb.container,
        IMDS,
        "GET",
        "/metadata/instance?api-version=2021-02-01",
        &[("Metadata", "true")],
    )
    .0
    .unwrap();
    assert_eq!(azure.status, 403);
    let v: serde_json::Value = serde_json::from_str(&azure.body).unwrap();
    assert_eq!(v["error"], "forbidden");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("unknown caller"),
        "{v}"
    );
    assert_eq!(
        tb.imds.count(),
        0,
        "a denied request reached the metadata service"
    );
    d.wait_for("denied by policy deny", QUICK);
}

#[test]
fn a_config_change_changes_the_answer_without_a_restart() {
    require_root!();
    let tb = Testbed::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imds-proxy.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    write("unknown_policy = \"allow\"\n");
    let d = tb.daemon(&["--config", file.to_str().unwrap()]);
    let creds = "/latest/meta-data/iam/security-credentials/role";
    assert_eq!(tb.status(creds), 200);

    // An edit to the file is picked up on its own...
    write("unknown_policy = \"readonly\"\n[policies.readonly]\ndefault = \"allow\"\ndeny = [\"/*/meta-data/iam/**\"]\n");
    d.wait_for("configuration reloaded", Duration::from_secs(3));
    let a = http(&tb.container, IMDS, "GET", creds, &[]).0.unwrap();
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.body.contains("policy readonly"), "{a:?}");
    assert_eq!(tb.status("/latest/meta-data/instance-id"), 200);

    // ...a broken edit changes nothing and says why...
    write("unknown_policy = \"readonly\"\n[policies.readonly]\ndefault = \"perhaps\"\n");
    d.wait_for("configuration reload refused", Duration::from_secs(3));
    assert_eq!(tb.status(creds), 403);
    assert_eq!(tb.status("/latest/meta-data/instance-id"), 200);

    // ...and SIGHUP reloads at once.
    write("unknown_policy = \"deny\"\n");
    d.signal(Signal::SIGHUP);
    d.wait_for(
        "trigger=\"SIGHUP\" policies_changed=",
        Duration::from_secs(2),
    );
    until(Duration::from_secs(2), "the deny policy", || {
        http(
            &tb.container,
            IMDS,
            "GET",
            "/latest/meta-data/instance-id",
            &[],
        )
        .0
        .is_ok_and(|a| a.status == 403)
    });
    assert!(tb.host.nft_table().is_some(), "the daemon kept running");
}
