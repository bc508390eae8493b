//! Each container its own AWS role, assumed through an independent STS: `moto`, run as
//! a server that checks every request's SigV4 signature and session token against the
//! keys it issued. The stand-in cloud (`imds-proxy emulate` in a namespace at
//! 169.254.169.254) serves, as the instance's role credentials, an IAM user's keys that
//! moto knows; the daemon runs in front of it (upstream mode) and finds STS through
//! `AWS_ENDPOINT_URL_STS`, as the AWS tools do.
//!
//! In unmodified containers boto3 (IMDSv2 only) gets credentials from the metadata
//! address, and moto's `GetCallerIdentity` says whose they are:
//! - a container labelled with role `reader` (by ARN) gets `assumed-role/reader/<name>`;
//! - one labelled `writer` by name alone (under the configured base ARN), with its own
//!   session name, gets `assumed-role/writer/<that name>`;
//! - an unlabelled one gets the instance's own identity;
//! - one labelled with a role its policy does not list gets no credentials at all;
//! - one labelled with a role whose trust policy does not name the instance gets none:
//!   STS says `AccessDenied`, the container EC2's `AssumeRoleUnauthorizedAccess`;
//! - twenty replicas of one service starting together share one session: one
//!   AssumeRole, the same key for all;
//! - with STS gone, a new replica still gets the held credentials of its session, and a
//!   session nothing holds answers `503` `CredentialsUnavailable`.
//!
//! A second test runs lyft's metadataproxy beside the daemon, against the same moto,
//! and shows what a user would notice through each (IMDSv2, session names).
//!
//! Root namespace, same safety order as tests/sdk.rs. Needs $IMDS_PROXY_SDK_VENV (with
//! moto; scripts/test.sh builds it) and, for the second test,
//! $IMDS_PROXY_METADATAPROXY_VENV (bench/peers/metadataproxy-venv.sh).

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::docker::*;
use harness::sdk::*;
use harness::*;
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const REPLICAS: usize = 20;

/// moto's server, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
    log: std::path::PathBuf,
}

impl Moto {
    /// Starts moto on `host:port` (authentication off until [`Moto::setup`]).
    fn start(sdk: &Sdk, host: &str, port: u16) -> Self {
        let log = std::env::temp_dir().join(format!("imds-proxy-moto-{}.log", std::process::id()));
        let child = Command::new(sdk.venv.join("bin/python"))
            .args(["-m", "moto.server", "-H", host, "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start moto");
        let addr = format!("{host}:{port}");
        let moto = Self {
            child,
            endpoint: format!("http://{addr}"),
            log,
        };
        until(Duration::from_secs(30), "moto answers", || {
            TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok()
        });
        moto
    }

    /// Creates the instance's user and the roles, switches authentication on.
    fn setup(&self, sdk: &Sdk) -> Value {
        let out = Command::new(sdk.venv.join("bin/python"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/sts/moto_setup.py"
            ))
            .arg(&self.endpoint)
            .output()
            .expect("run moto_setup.py");
        assert!(
            out.status.success(),
            "moto_setup.py failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("moto_setup.py prints JSON")
    }

    /// moto's request log: one line per request it answered.
    fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }
}

impl Moto {
    /// Stops the server (an STS outage).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The stand-in cloud's file: one instance role whose keys are the moto user's.
fn cloud_file(keys: &Value) -> tempfile::NamedTempFile {
    let text = format!(
        r#"[aws]
http_tokens = "required"

[aws.meta_data]
instance-id = "i-0a1b2c3d4e5f60718"
placement = {{ availability-zone = "{REGION}a", region = "{REGION}" }}

[[aws.roles]]
name = "instance-role"
default = true
instance_profile_arn = "arn:aws:iam::123456789012:instance-profile/instance-role"
instance_profile_id = "AIPASTSTESTINSTANCE0"
credentials_lifetime_secs = 21600
access_key_id = "{}"
secret_access_key = "{}"
"#,
        keys["access_key_id"].as_str().unwrap(),
        keys["secret_access_key"].as_str().unwrap()
    );
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

/// The daemon's configuration: which roles which policy allows, and the base ARN.
fn daemon_config(account: &str) -> tempfile::NamedTempFile {
    let text = format!(
        r#"aws_base_role_arn = "arn:aws:iam::{account}:role/"

[policies.apps]
default = "allow"
aws_roles = ["arn:aws:iam::{account}:role/reader", "arn:aws:iam::{account}:role/writer", "arn:aws:iam::{account}:role/batch", "arn:aws:iam::{account}:role/untrusted"]
"#
    );
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

fn container(what: &str, labels: &[String], mode: &str, expect: Value) -> Container {
    Container {
        what: what.into(),
        labels: labels.to_vec(),
        plan: json!([{"judge": "sts", "mode": mode, "expect": expect}]),
        has_aws_role: mode == "assumed",
    }
}

/// What both tests stand on: moto set up with the instance's user and the roles, the
/// stand-in cloud serving that user's keys as the instance's role credentials, and the
/// daemon in front of it finding STS through `AWS_ENDPOINT_URL_STS`.
struct Rig {
    // Dropped in this order: the stand-ins, then the scene (containers, the daemon and
    // `imds-proxy uninstall`), and last the claim on the root namespace.
    cloud: Daemon,
    moto: Moto,
    _config: tempfile::NamedTempFile,
    keys: Value,
    account: String,
    net: String,
    gateway: String,
    scene: Scene,
    sdk: Sdk,
    _root: RootNamespace,
}

impl Rig {
    /// `None`: skipped (not root, no Docker, no SDK virtualenv).
    fn start(test: &str, net: &str, port: u16) -> Option<Self> {
        let root = RootNamespace::claim(test)?;
        let sdk = Sdk::from_env_or_skip(test)?;
        let mut scene = Scene::new();
        let (net, gateway) = scene.bridge_network(net);
        let moto = Moto::start(&sdk, &gateway, port);
        let keys = moto.setup(&sdk);
        append_to_env_file(
            "IMDS_PROXY_ISSUED_FILE",
            keys["secret_access_key"].as_str().unwrap(),
        );
        let account = keys["account"].as_str().unwrap().to_owned();
        let file = cloud_file(&keys);
        // An AWS-only cloud: GCE's `/` is not there.
        let cloud = start_emulated_cloud_until(&mut scene, file.path().to_str().unwrap(), |head| {
            head.starts_with("HTTP/1.1 404")
        });
        let config = daemon_config(&account);
        scene.installed = true;
        scene.daemon = Some(Daemon::spawn_root_env(
            &[
                "run",
                "--upstream",
                &format!("http://{IMDS}"),
                "--config",
                config.path().to_str().unwrap(),
            ],
            &[("AWS_ENDPOINT_URL_STS", &moto.endpoint)],
        ));
        scene
            .daemon()
            .wait_for("interception live", Duration::from_secs(15));
        Some(Self {
            sdk,
            scene,
            net,
            gateway,
            moto,
            keys,
            account,
            cloud,
            _config: config,
            _root: root,
        })
    }

    /// No log holds the instance's secret key.
    fn assert_no_secret_logged(&self) {
        for (who, log) in [
            ("daemon", self.scene.daemon().log()),
            ("stand-in cloud", self.cloud.log()),
        ] {
            assert!(
                !log.join("\n")
                    .contains(self.keys["secret_access_key"].as_str().unwrap()),
                "the instance's secret key appears in the {who}'s log"
            );
        }
    }
}

#[test]
fn each_labelled_container_gets_its_own_role_from_sts_and_no_other() {
    let Some(mut rig) = Rig::start(
        test_name!(),
        "sts",
        5055 + (std::process::id() % 1000) as u16,
    ) else {
        return;
    };
    let (net, keys, account) = (rig.net.clone(), rig.keys.clone(), rig.account.clone());
    let sdk = &rig.sdk;
    let scene = &mut rig.scene;
    let arn =
        |role: &str, session: &str| format!("arn:aws:sts::{account}:assumed-role/{role}/{session}");
    let sts = &rig.moto.endpoint.clone();
    let policy = "imds-proxy.policy=apps".to_owned();
    let reader_name = format!("ipx{}-reader", std::process::id());
    let mut cases = vec![
        container(
            "role reader by ARN",
            &[
                policy.clone(),
                format!("imds-proxy.aws.role-arn=arn:aws:iam::{account}:role/reader"),
            ],
            "assumed",
            json!({"sts": sts, "region": REGION, "role": "reader", "arn": arn("reader", &reader_name)}),
        ),
        container(
            "role writer by name, own session name",
            &[
                policy.clone(),
                "imds-proxy.aws.role-arn=writer".into(),
                "imds-proxy.aws.session-name=nightly/report".into(),
            ],
            "assumed",
            json!({"sts": sts, "region": REGION, "role": "writer", "arn": arn("writer", "nightly-report")}),
        ),
        container(
            "unlabelled: the instance's own",
            &[],
            "assumed",
            json!({"sts": sts, "region": REGION, "role": "instance-role", "arn": keys["user_arn"]}),
        ),
        container(
            "a role whose trust policy does not name the instance",
            &[policy.clone(), "imds-proxy.aws.role-arn=untrusted".into()],
            "none",
            json!({"sts": sts, "region": REGION, "role": "untrusted", "status": 200, "code": "AssumeRoleUnauthorizedAccess"}),
        ),
        container(
            "a role its policy does not list",
            &[
                policy.clone(),
                format!("imds-proxy.aws.role-arn=arn:aws:iam::{account}:role/admin"),
            ],
            "none",
            json!({"sts": sts, "region": REGION}),
        ),
    ];
    let start = Instant::now();
    let mut runs: Vec<JudgeRun> = Vec::new();
    for (i, c) in cases.drain(..).enumerate() {
        let mut run = judge_container(scene, sdk, &c, &net);
        if i == 0 {
            run.rename(&reader_name);
        }
        runs.push(run);
    }
    let verdicts = run_all(runs);
    for v in &verdicts {
        eprintln!("{} ({}, {:?}): {:?}", v.what, v.name, v.took, v.lines);
    }
    for v in &verdicts {
        v.assert_passed(Mode::Proxy);
    }
    let four = start.elapsed();

    // Twenty replicas of one service, started together: one session, one AssumeRole.
    let batch: Vec<String> = vec![
        policy.clone(),
        "imds-proxy.aws.role-arn=batch".into(),
        "com.docker.compose.service=batch".into(),
    ];
    let replica = container(
        "batch replica",
        &batch,
        "assumed",
        json!({"sts": sts, "region": REGION, "role": "batch", "arn": arn("batch", "batch")}),
    );
    // One replica stays up throughout: the session stays wanted (and held) after the
    // twenty have gone.
    let keeper: Vec<&str> = batch.iter().map(String::as_str).collect();
    scene.start(&net, &keeper, &[]);
    let start = Instant::now();
    let runs = (0..REPLICAS)
        .map(|_| judge_container(scene, sdk, &replica, &net))
        .collect();
    let replicas = run_all(runs);
    let twenty = start.elapsed();
    for v in &replicas {
        v.assert_passed(Mode::Proxy);
    }
    let keys_seen: std::collections::BTreeSet<&str> = replicas
        .iter()
        .map(|v| v.line("sts", "assumed")["access_key_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys_seen.len(),
        1,
        "{REPLICAS} replicas got {} different keys",
        keys_seen.len()
    );
    let daemon = scene.daemon();
    let assumed = |role: &str| {
        daemon
            .log()
            .iter()
            .filter(|l| l.contains("credentials fetched") && l.contains(&format!(":role/{role} ")))
            .count()
    };
    assert_eq!(
        assumed("batch"),
        1,
        "AssumeRole calls for {REPLICAS} replicas of one service"
    );
    assert_eq!(assumed("reader"), 1);
    assert_eq!(assumed("writer"), 1);
    assert_eq!(
        assumed("admin"),
        0,
        "a role no policy lists is never asked for"
    );
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("refused: the held credentials are dropped")
                && l.contains(":role/untrusted ")
                && l.contains("AccessDenied")),
        "the refusal of role untrusted is logged"
    );
    let refused = daemon
        .log()
        .iter()
        .filter(|l| {
            l.contains("decision=deny") && l.contains("is not in the aws_roles of policy apps")
        })
        .count();
    assert!(refused >= 1, "the refusal of role admin is in the audit");

    // STS gone: a new replica gets the held session; a session nothing holds, none.
    let held_key = keys_seen.into_iter().next().unwrap().to_owned();
    rig.moto.stop();
    let late = container(
        "batch replica while STS is down",
        &batch,
        "held",
        json!({"role": "batch", "access_key_id": held_key}),
    );
    let fresh = container(
        "a new session while STS is down",
        &[
            policy.clone(),
            "imds-proxy.aws.role-arn=reader".into(),
            "imds-proxy.aws.session-name=fresh".into(),
        ],
        "none",
        json!({"sts": sts, "region": REGION, "role": "reader", "status": 503, "code": "CredentialsUnavailable"}),
    );
    let runs = vec![
        judge_container(scene, sdk, &late, &net),
        judge_container(scene, sdk, &fresh, &net),
    ];
    for v in run_all(runs) {
        eprintln!("{} ({}, {:?}): {:?}", v.what, v.name, v.took, v.lines);
        v.assert_passed(Mode::Proxy);
    }
    let daemon = scene.daemon();
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("fetch failed and no credentials are held")),
        "the outage is logged"
    );

    rig.assert_no_secret_logged();
    measure(
        "sts: four containers, four identities, wall (ms)",
        four.as_millis(),
    );
    measure(
        &format!("sts: {REPLICAS} replicas of one role, wall (ms)"),
        twenty.as_millis(),
    );
}

/// lyft's metadataproxy (gunicorn, sync workers), stopped when dropped.
struct MetadataProxy {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl MetadataProxy {
    /// Starts metadataproxy from the virtualenv of $IMDS_PROXY_METADATAPROXY_VENV on
    /// `host:port` (bench/peers/metadataproxy-venv.sh builds it; scripts/test.sh sets
    /// the variable), signing its STS calls with `keys` and sending them to `sts`; it
    /// finds a caller's role in the container's `IAM_ROLE` through the Docker socket,
    /// as it is usually run. Paths other than credentials go to `metadata_url`.
    fn start(
        test: &str,
        host: &str,
        port: u16,
        keys: &Value,
        sts: &str,
        metadata_url: &str,
    ) -> Option<Self> {
        const VAR: &str = "IMDS_PROXY_METADATAPROXY_VENV";
        let Ok(venv) = std::env::var(VAR) else {
            harness::suite::unable(
                test,
                &format!("{VAR} is not set (bench/peers/metadataproxy-venv.sh builds it)"),
            );
            return None;
        };
        let gunicorn = std::path::Path::new(&venv).join("bin/gunicorn");
        if !gunicorn.is_file() {
            harness::suite::unable(test, &format!("{} is missing", gunicorn.display()));
            return None;
        }
        let log = std::env::temp_dir().join(format!(
            "imds-proxy-metadataproxy-{}.log",
            std::process::id()
        ));
        let child = Command::new(gunicorn)
            .args([
                "metadataproxy:app",
                "-b",
                &format!("{host}:{port}"),
                "-w",
                "2",
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", std::env::temp_dir())
            .env("METADATA_URL", metadata_url)
            .env("DEFAULT_ACCOUNT_ID", keys["account"].as_str().unwrap())
            .env("AWS_ACCESS_KEY_ID", keys["access_key_id"].as_str().unwrap())
            .env(
                "AWS_SECRET_ACCESS_KEY",
                keys["secret_access_key"].as_str().unwrap(),
            )
            // Its own AWS_REGION would hard-code the real STS endpoint; botocore's
            // default region and STS endpoint variables point it at moto instead.
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_ENDPOINT_URL_STS", sts)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start metadataproxy");
        let addr = format!("{host}:{port}");
        let mp = Self {
            child,
            url: format!("http://{addr}"),
            log,
        };
        until(Duration::from_secs(30), "metadataproxy answers", || {
            TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok()
        });
        Some(mp)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MetadataProxy {
    fn drop(&mut self) {
        // SIGTERM: gunicorn's master stops its workers, then itself.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// What a user of each proxy notices, from containers asking for role `reader`, both
/// proxies running side by side on this host against the same moto:
/// - imds-proxy answers the IMDSv2 token PUT, and boto3 with IMDSv1 disabled (the
///   hardened default of current AWS images) gets `assumed-role/reader/<container>`:
///   STS, and so CloudTrail, names the container that acted;
/// - metadataproxy answers the PUT with 405 (it has GET routes only), so the same boto3
///   finds no credentials at all;
/// - with IMDSv1 allowed, boto3 gets `assumed-role/reader/devproxyauth` through
///   metadataproxy, the same key in two containers: a session name that says nothing
///   about which container acted (its session is cached per role, not per container).
#[test]
fn side_by_side_with_metadataproxy_imdsv2_and_session_names() {
    let base_port = 6055 + (std::process::id() % 1000) as u16;
    let Some(mut rig) = Rig::start(test_name!(), "mp", base_port) else {
        return;
    };
    let (net, gateway, keys, account) = (
        rig.net.clone(),
        rig.gateway.clone(),
        rig.keys.clone(),
        rig.account.clone(),
    );
    let moto_endpoint = rig.moto.endpoint.clone();
    let sdk = &rig.sdk;
    let scene = &mut rig.scene;
    let arn =
        |role: &str, session: &str| format!("arn:aws:sts::{account}:assumed-role/{role}/{session}");
    // metadataproxy on the network's gateway, where the containers reach it. Its
    // pass-through goes to the stand-in cloud: from here on 169.254.169.254 is routed to
    // it, and metadataproxy is stopped (dropped) before the scene removes that route.
    let Some(mp) = MetadataProxy::start(
        test_name!(),
        &gateway,
        base_port + 1,
        &keys,
        &moto_endpoint,
        &format!("http://{IMDS}"),
    ) else {
        return;
    };

    let sts = &moto_endpoint.clone();
    let reader = json!({"sts": sts, "region": REGION, "role": "reader"});
    let with = |extra: Value| {
        let mut v = reader.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let ours_name = format!("ipx{}-ours", std::process::id());
    let ours = container(
        "imds-proxy, IMDSv1 disabled",
        &[
            "imds-proxy.policy=apps".into(),
            format!("imds-proxy.aws.role-arn=arn:aws:iam::{account}:role/reader"),
        ],
        "assumed",
        with(json!({"arn": arn("reader", &ours_name)})),
    );
    let mut runs = vec![judge_container(scene, sdk, &ours, &net)];
    runs[0].rename(&ours_name);
    // The one change a container needs for metadataproxy: boto3 pointed at its address.
    // metadataproxy does not intercept 169.254.169.254 itself; deployments add a DNAT
    // rule of their own, which this test may not add to the host's firewall.
    let endpoint = format!("AWS_EC2_METADATA_SERVICE_ENDPOINT={}", mp.url);
    let peer_env = |v1_disabled: bool| {
        let mut env = vec![
            "IMDS_PROXY_JUDGE_PEER=metadataproxy".to_owned(),
            endpoint.clone(),
            "IAM_ROLE=reader".to_owned(),
        ];
        if v1_disabled {
            env.push(CONTAINER_ENV.to_owned());
        }
        env
    };
    let theirs_v2 = Container {
        what: "metadataproxy, IMDSv1 disabled".into(),
        labels: vec![],
        plan: json!([{"judge": "sts", "mode": "no_v2", "expect": {"status": 405}}]),
        has_aws_role: false,
    };
    let theirs_v1 = Container {
        what: "metadataproxy, IMDSv1 allowed".into(),
        labels: vec![],
        plan: json!([{"judge": "sts", "mode": "assumed_v1",
                      "expect": with(json!({"arn": arn("reader", "devproxyauth")}))}]),
        has_aws_role: true,
    };
    for (c, v1_disabled) in [(&theirs_v2, true), (&theirs_v1, false), (&theirs_v1, false)] {
        let env = peer_env(v1_disabled);
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        runs.push(judge_container_env(scene, sdk, c, &net, &env));
    }
    let verdicts = run_all(runs);
    for v in &verdicts {
        eprintln!("{} ({}, {:?}): {:?}", v.what, v.name, v.took, v.lines);
    }
    for v in &verdicts {
        if v.lines.iter().any(|l| l["ok"] != true) {
            eprintln!("metadataproxy's log:\n{}", mp.log());
        }
        v.assert_passed(Mode::Proxy);
    }
    let key = |v: &Verdict, mode: &str| v.line("sts", mode)["access_key_id"].clone();
    // Both of metadataproxy's containers act as one session, named for no container
    // (each of its workers holds credentials of its own, so the keys may differ).
    let whose = |v: &Verdict| v.line("sts", "assumed_v1")["arn"].clone();
    assert_eq!(whose(&verdicts[2]), whose(&verdicts[3]));
    assert_ne!(
        key(&verdicts[0], "assumed"),
        key(&verdicts[2], "assumed_v1")
    );
    assert_eq!(verdicts[2].line("sts", "assumed_v1")["token_status"], 405);
    drop(mp);
    rig.assert_no_secret_logged();
}
