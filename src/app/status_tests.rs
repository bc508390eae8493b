use std::collections::BTreeMap;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn identity_names_what_the_labels_pin_and_the_instance_elsewhere() {
    let id = identity(&labels(&[
        (
            "imds-proxy.aws.role-arn",
            "arn:aws:iam::123456789012:role/web",
        ),
        (
            "imds-proxy.gce.service-account",
            "web@p.iam.gserviceaccount.com",
        ),
    ]));
    assert_eq!(id["aws"], "assumes arn:aws:iam::123456789012:role/web");
    assert_eq!(id["gce"], "web@p.iam.gserviceaccount.com");
    assert_eq!(id["azure"], "instance");
    let bad = identity(&labels(&[
        ("imds-proxy.aws.role", "a"),
        ("imds-proxy.aws.role-arn", "b"),
    ]));
    assert!(bad["error"].starts_with("label imds-proxy.aws"), "{bad:?}");
}

#[test]
fn the_text_says_what_is_wrong_first_and_each_container_with_its_policy() {
    let report = Report {
        pid: 7,
        version: "1.2.3".into(),
        source: "upstream http://169.254.169.254/".into(),
        listen: vec!["169.254.93.254:80".into()],
        not_ready: vec!["Docker does not answer".into()],
        tables: Tables {
            problem: None,
            open: true,
            bridges: vec!["docker0".into()],
            events: [super::super::manage::TableEvent {
                at: 990,
                kind: "drift".into(),
                detail: "table deleted by netlink port 9".into(),
            }]
            .into(),
        },
        docker_connected: false,
        containers: vec![ContainerStatus {
            id: "0123456789ab".into(),
            name: "web".into(),
            image: "nginx".into(),
            network: "bridge".into(),
            ipv4: "172.17.0.2".into(),
            ipv6: None,
            port: Some(7),
            policy: "metadata-only".into(),
            policy_reason: "label imds-proxy.policy=metadata-only".into(),
            identity: BTreeMap::from([("aws".into(), "instance".into())]),
            last: Some(Last {
                client: "172.17.0.2".into(),
                origin: "Port(7)".into(),
                container_id: "0123456789ab".into(),
                method: "GET".into(),
                path: "/latest/meta-data/".into(),
                decision: "allow".into(),
                status: 200,
                at: 995,
            }),
        }],
        other_callers: vec![],
        cache: Some(BTreeMap::from([("tokens".into(), 2)])),
    };
    let text = super::super::status_text::render(&report, 1000);
    for want in [
        "NOT READY:\n  - Docker does not answer",
        "tables: in force, open",
        "bridges: docker0",
        "web (0123456789ab, image nginx, network bridge, 172.17.0.2, port 7)",
        "policy: metadata-only (label imds-proxy.policy=metadata-only)",
        "last: GET /latest/meta-data/ -> allow 200, 5 s ago",
        "cache: 2 tokens",
        "10 s ago: drift: table deleted by netlink port 9",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // The JSON form is the report itself, read back whole.
    let json = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back.containers[0].last.as_ref().unwrap().status, 200);
}
