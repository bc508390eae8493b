//! A GCE service account of its own per container, by impersonation: the daemon in
//! front of a stand-in cloud (`imds-proxy emulate` with tests/sdk/emulator.toml in a
//! namespace at 169.254.169.254) asks a stand-in IAM Credentials service
//! (tests/impersonation/iam_credentials.py: it accepts only the instance's own token,
//! impersonates only the accounts it is told to, and signs ID tokens with a key of its
//! own) for the tokens of accounts the instance does not have.
//!
//! In unmodified containers google-auth finds GCE and:
//! - labelled with an account its policy lists, gets that account's access token (the
//!   stand-in confirms whose) and an ID token that verifies against the stand-in's
//!   certificates, and never sees the instance's account;
//! - labelled with an account its policy does not list, gets a 403 and no token;
//! - labelled with one of the instance's own accounts, is served as before, with no
//!   call to IAM Credentials.
//!
//! Root namespace, same safety order as tests/sdk.rs. Needs $IMDS_PROXY_SDK_VENV.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::docker::*;
use harness::sdk::*;
use harness::*;
use serde_json::{json, Value};

const APP: &str = "app@sdk-judge-project.iam.gserviceaccount.com";
const OTHER: &str = "other@sdk-judge-project.iam.gserviceaccount.com";
const AUDIENCE: &str = "https://impersonation.imds-proxy.test/audience";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The IAM Credentials stand-in, stopped when dropped.
struct Iam {
    child: Child,
    base: String,
}

impl Iam {
    fn start(sdk: &Sdk, host: &str, port: u16, instance_token: &str, allowed: &[&str]) -> Self {
        let mut child = Command::new(sdk.venv.join("bin/python"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/impersonation/iam_credentials.py"
            ))
            .args([host, &port.to_string(), instance_token, &allowed.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the IAM Credentials stand-in");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the IAM Credentials stand-in did not start"
        );
        Self {
            child,
            base: format!("http://{host}:{port}"),
        }
    }

    /// How many tokens of each kind it issued.
    fn calls(&self) -> Value {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the IAM stand-in");
        write!(
            s,
            "GET /calls HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).expect("/calls is JSON")
    }
}

impl Drop for Iam {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn container(what: &str, labels: &[String], mode: &str, expect: Value) -> Container {
    Container {
        what: what.into(),
        labels: labels.to_vec(),
        plan: json!([{"judge": "iam", "mode": mode, "expect": expect}]),
        has_aws_role: false,
    }
}

#[test]
fn a_labelled_container_gets_an_impersonated_account_and_only_if_allowed() {
    let Some(root) = RootNamespace::claim(test_name!()) else {
        return;
    };
    let Some(sdk) = Sdk::from_env_or_skip(test_name!()) else {
        return;
    };
    let _root = root;
    let instance = Instance::load();
    let mut scene = Scene::new();
    let (net, gateway) = scene.bridge_network("imp");
    let iam = Iam::start(
        &sdk,
        &gateway,
        6055 + (std::process::id() % 1000) as u16,
        &instance.own.gce_token,
        &[APP],
    );
    let cloud = start_emulated_cloud(&mut scene);
    let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "[policies.apps]\ndefault = \"allow\"\ngce_service_accounts = [\"app@*\", \"{}\"]\n",
            instance.named("reader").gce_email
        ),
    )
    .unwrap();
    scene.installed = true;
    scene.daemon = Some(Daemon::spawn_root_env(
        &[
            "run",
            "--upstream",
            &format!("http://{IMDS}"),
            "--config",
            config.path().to_str().unwrap(),
        ],
        &[("IMDS_PROXY_GCE_IAM_CREDENTIALS_URL", &iam.base)],
    ));
    scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));

    let policy = "imds-proxy.policy=apps".to_owned();
    let reader = instance.named("reader");
    let cases = [
        container(
            "an account of its own, allowed",
            &[
                policy.clone(),
                format!("imds-proxy.gce.service-account={APP}"),
            ],
            "impersonated",
            json!({"project_id": instance.project_id, "email": APP, "scope": SCOPE, "audience": AUDIENCE, "iam": iam.base, "instance_email": instance.own.gce_email}),
        ),
        container(
            "an account its policy does not list",
            &[
                policy.clone(),
                format!("imds-proxy.gce.service-account={OTHER}"),
            ],
            "denied",
            json!({"email": OTHER}),
        ),
    ];
    // One of the instance's own accounts: as before (the SDK tier's judge).
    let own = Container {
        what: "one of the instance's own accounts".into(),
        labels: vec![
            policy.clone(),
            format!("imds-proxy.gce.service-account={}", reader.gce_email),
        ],
        plan: json!([{"judge": "gce", "mode": "serve", "expect": {
            "project_id": instance.project_id, "email": reader.gce_email, "token": reader.gce_token,
            "scope": reader.gce_scope, "audience": AUDIENCE, "issuer": instance.issuer}}]),
        has_aws_role: false,
    };
    let start = Instant::now();
    let mut runs: Vec<JudgeRun> = cases
        .iter()
        .map(|c| judge_container(&mut scene, &sdk, c, &net))
        .collect();
    runs.push(judge_container(&mut scene, &sdk, &own, &net));
    let verdicts = run_all(runs);
    let took = start.elapsed();
    for v in &verdicts {
        eprintln!("{} ({}, {:?}): {:?}", v.what, v.name, v.took, v.lines);
    }
    for v in &verdicts {
        v.assert_passed(Mode::Proxy);
    }
    // The impersonated account's default-scope token was fetched once (when its
    // container started), its ID token once; the instance's own account cost nothing.
    let calls = iam.calls();
    assert_eq!(calls["generateAccessToken"], 1, "{calls}");
    assert_eq!(calls["generateIdToken"], 1, "{calls}");
    let daemon = scene.daemon();
    assert!(
        daemon.log().iter().any(|l| l.contains("decision=deny")
            && l.contains(OTHER)
            && l.contains("gce_service_accounts")),
        "the refusal of {OTHER} is in the audit"
    );
    for (who, log) in [("daemon", daemon.log()), ("stand-in cloud", cloud.log())] {
        let log = log.join("\n");
        for v in &verdicts {
            for l in &v.lines {
                for k in ["id_token_tail", "token_tail"] {
                    if let Some(t) = l[k].as_str() {
                        assert!(
                            !log.contains(t),
                            "a token ending {t:?} is in the {who}'s log"
                        );
                    }
                }
            }
        }
    }
    measure(
        "impersonation: three containers, wall (ms)",
        took.as_millis(),
    );
}
