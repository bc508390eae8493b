//! What runs on a real VM judges the emulator's instances: cloud-init's EC2, GCE and
//! Azure datasources (Debian's package) and the Node.js SDKs from npm
//! (`@aws-sdk/credential-providers`, `@azure/identity`, `google-auth-library`,
//! `gcp-metadata`), asking for the built-in example's instance (examples/emulator.toml)
//! as they would on a VM, at the real addresses. The judges are tests/agents/*; what
//! they must find is read from the same file through the library.
//!
//! Two ways in:
//! - directly: `imds-proxy emulate` on loopback (no root), the judges on the host, each
//!   reaching 169.254.169.254 by its own documented redirection (cloud-init through
//!   HTTP_PROXY, so its URLs keep the real address; the Node SDKs by their endpoint
//!   variables); and the signed documents checked with `openssl smime -verify` against
//!   the published certificate, as AWS and Azure document it;
//! - through the proxy (root, Docker): `imds-proxy run --upstream` in front of
//!   `imds-proxy emulate` in a stand-in cloud namespace, the judges in unmodified
//!   `FROM scratch` containers with the host's Python, cloud-init, node and the SDKs
//!   mounted read-only, nothing pointing them anywhere.
//!
//! Needs $IMDS_PROXY_NODE_MODULES (scripts/test.sh installs the SDKs there), node 20
//! or newer first on PATH (the one whose version keyed that directory) and cloud-init
//! for /usr/bin/python3.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use imds_proxy::emulator::EmulatorConfig;
use serde_json::{json, Value};

use harness::docker::*;
use harness::sdk::start_emulated_cloud_serving;
use harness::*;

/// The instances judged: the built-in example.
const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/emulator.toml");
const JUDGES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents");
const JUDGES_MOUNT: &str = "/imds-proxy-agents";
/// Where scripts/test.sh installed tests/agents/package.json.
const NODE_MODULES_VAR: &str = "IMDS_PROXY_NODE_MODULES";
/// Debian's interpreter, which has cloud-init.
const PYTHON: &str = "/usr/bin/python3";
/// The oldest node the SDKs run on (@aws-sdk/credential-providers and @azure/identity
/// declare `"node": ">=20.0.0"`).
const NODE_MAJOR: u32 = 20;
const AUDIENCE: &str = "https://agents-judge.imds-proxy.test/audience";
/// A host key the cloud-init judge publishes to GCE's guest attributes and reads back.
const HOST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJudgesOwnHostKey judge";
/// Judges each run must report.
const CLOUD_INIT_JUDGES: usize = 3;
const NODE_JUDGES: usize = 5;
const JUDGE_TIMEOUT: Duration = Duration::from_secs(180);
/// Credentials the Node.js judge must record (cloud-init reads none: its EC2 crawl
/// skips security-credentials/, its GCE and Azure datasources ask for no token): the AWS provider's key, secret and session token; two Azure managed-identity JWTs;
/// a Google access token and ID token (a JWT).
const NODE_ISSUED: Kinds = Kinds {
    aws_keys: 1,
    secrets: 7,
    jwts: 3,
    google_access: 1,
};

/// How many credentials of each kind a judge must have recorded (at least).
struct Kinds {
    /// AWS access key ids (ASIA..., AKIA...).
    aws_keys: usize,
    /// All lines.
    secrets: usize,
    /// Signed tokens (header.claims.signature).
    jwts: usize,
    /// Google access tokens (ya29.).
    google_access: usize,
}

/// Where the judges write every credential they receive (one a line, never printed):
/// read after each run into $IMDS_PROXY_ISSUED_FILE, which scripts/test.sh greps every
/// daemon log line for.
struct Issued {
    dir: tempfile::TempDir,
}

impl Issued {
    /// Where a container sees the file (the directory is mounted read-write there).
    const CONTAINER_DIR: &str = "/imds-proxy-issued";
    const CONTAINER_FILE: &str = "/imds-proxy-issued/issued.txt";

    fn new() -> Self {
        Issued {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn host_file(&self) -> String {
        self.dir.path().join("issued.txt").display().to_string()
    }

    /// Takes what the last judge recorded into $IMDS_PROXY_ISSUED_FILE; fails unless it
    /// holds at least `want` of each kind.
    fn record(&self, what: &str, want: Kinds) {
        let file = self.host_file();
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for l in &lines {
            append_to_env_file("IMDS_PROXY_ISSUED_FILE", l);
        }
        let count = |f: &dyn Fn(&str) -> bool| lines.iter().filter(|l| f(l)).count();
        let got = Kinds {
            aws_keys: count(&|l| l.starts_with("ASIA") || l.starts_with("AKIA")),
            secrets: lines.len(),
            jwts: count(&|l| l.split('.').count() == 3 && l.starts_with("eyJ")),
            google_access: count(&|l| l.starts_with("ya29.")),
        };
        assert!(
            got.aws_keys >= want.aws_keys
                && got.secrets >= want.secrets
                && got.jwts >= want.jwts
                && got.google_access >= want.google_access,
            "{what}: the judges recorded {} credentials ({} AWS key ids, {} JWTs, {} Google \
             access tokens), fewer than the {} ({}, {}, {}) they receive",
            got.secrets,
            got.aws_keys,
            got.jwts,
            got.google_access,
            want.secrets,
            want.aws_keys,
            want.jwts,
            want.google_access,
        );
    }
}

#[test]
fn cloud_init_and_the_node_sdks_run_against_the_emulator_directly() {
    let Some((node_modules, node_bin)) = prerequisites(test_name!()) else {
        return;
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let emu = Daemon::spawn_root(&["emulate", "--emulator", FILE, "--listen", &listen]);
    emu.wait_for("emulator serving", Duration::from_secs(10));
    let base = format!("http://{listen}");
    let expect = expectations();
    let issued = Issued::new();

    let ci = run_host(
        &[PYTHON, &format!("{JUDGES_DIR}/cloudinit_judge.py")],
        &json!({"mode": "direct", "expect": expect}),
        &[("HTTP_PROXY", base.as_str())],
    );
    assert_judged("cloud-init, directly", &ci, CLOUD_INIT_JUDGES);

    let node_path = node_modules.to_str().unwrap();
    let node = run_host(
        &[
            node_bin.to_str().unwrap(),
            &format!("{JUDGES_DIR}/node_judge.cjs"),
        ],
        &json!({"mode": "direct", "keys_base": base, "gce_base": base, "expect": expect,
                "issued_file": issued.host_file()}),
        &[
            ("NODE_PATH", node_path),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", base.as_str()),
            ("AWS_EC2_METADATA_V1_DISABLED", "true"),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", base.as_str()),
            ("GCE_METADATA_HOST", listen.as_str()),
        ],
    );
    assert_judged("Node.js SDKs, directly", &node, NODE_JUDGES);
    issued.record("Node.js SDKs, directly", NODE_ISSUED);

    signed_documents_verify_with_openssl(&listen);
}

#[test]
fn cloud_init_and_the_node_sdks_run_through_the_proxy_in_containers() {
    let Some(_root) = RootNamespace::claim(test_name!()) else {
        return;
    };
    let Some((node_modules, node_bin)) = prerequisites(test_name!()) else {
        return;
    };
    let mut scene = Scene::new();
    let cloud = start_emulated_cloud_serving(&mut scene, FILE);
    scene.installed = true; // from here on the scene runs `imds-proxy uninstall`
    scene.daemon = Some(Daemon::spawn_root(&[
        "run",
        "--upstream",
        &format!("http://{IMDS}"),
    ]));
    scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));
    let expect = expectations();
    let base = format!("http://{IMDS}");
    let issued = Issued::new();

    let ci = run_container(
        &mut scene,
        &node_modules,
        &issued,
        &[PYTHON, &format!("{JUDGES_MOUNT}/cloudinit_judge.py")],
        &json!({"mode": "proxy", "expect": expect}),
        &[],
    );
    assert_judged("cloud-init, through the proxy", &ci, CLOUD_INIT_JUDGES);
    let node = run_container(
        &mut scene,
        &node_modules,
        &issued,
        &[
            node_bin.to_str().unwrap(),
            &format!("{JUDGES_MOUNT}/node_judge.cjs"),
        ],
        &json!({"mode": "proxy", "keys_base": base, "gce_base": base, "expect": expect,
                "issued_file": Issued::CONTAINER_FILE}),
        &[
            ("NODE_PATH", node_modules.to_str().unwrap()),
            ("AWS_EC2_METADATA_V1_DISABLED", "true"),
        ],
    );
    assert_judged("Node.js SDKs, through the proxy", &node, NODE_JUDGES);
    issued.record("Node.js SDKs, through the proxy", NODE_ISSUED);

    // The answers came through the proxy: the stand-in cloud saw the judges' requests
    // only as the host, and the proxy logged each container's.
    let log = scene.daemon().log();
    for name in &scene.containers {
        let n = log
            .iter()
            .filter(|l| l.contains(AUDIT) && l.contains(&format!(" container={name} ")))
            .count();
        assert!(n >= 5, "the proxy logged {n} requests of {name}");
    }
    drop(cloud);
}

#[test]
fn a_file_captured_from_an_instance_makes_the_emulator_mimic_it() {
    // scripts/emulator-from-vm.py, run against the example's instance as a user runs it
    // on a VM: the file it writes validates and serves the same instance.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let emu = Daemon::spawn_root(&["emulate", "--emulator", FILE, "--listen", &listen]);
    emu.wait_for("emulator serving", Duration::from_secs(10));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/emulator-from-vm.py");
    let out = Command::new("python3")
        .arg(script)
        .env("IMDS_BASE", format!("http://{listen}"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("captured.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let got = EmulatorConfig::load(&file).unwrap_or_else(|e| {
        panic!(
            "{}\n{}",
            imds_proxy::errors::error_chain(&e),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let want = EmulatorConfig::load(Path::new(FILE)).unwrap();
    let (ga, wa) = (got.aws.unwrap(), want.aws.unwrap());
    assert_eq!(ga.meta_data, wa.meta_data, "the EC2 meta-data tree");
    assert_eq!(ga.public_keys, wa.public_keys);
    assert_eq!(ga.identity_document, wa.identity_document);
    assert_eq!(ga.roles.len(), 1, "the instance's one role");
    let (gz, wz) = (got.azure.unwrap(), want.azure.unwrap());
    assert_eq!(gz.tenant_id, wz.tenant_id);
    assert_eq!(gz.instance["network"], wz.instance["network"]);
    assert_eq!(
        gz.instance["compute"]["publicKeys"],
        wz.instance["compute"]["publicKeys"]
    );
    let (gg, wg) = (got.gce.unwrap(), want.gce.unwrap());
    assert_eq!(gg.project_id, wg.project_id);
    assert_eq!(gg.project_attributes, wg.project_attributes);
    assert_eq!(
        gg.instance.network_interfaces,
        wg.instance.network_interfaces
    );
    assert_eq!(gg.instance.disks, wg.instance.disks);
    assert_eq!(gg.instance.zone, wg.instance.zone);
    let emails = |c: &imds_proxy::emulator::gce::GceConfig| -> Vec<(String, bool)> {
        let mut v: Vec<_> = c
            .service_accounts
            .iter()
            .map(|a| (a.email.clone(), a.default))
            .collect();
        v.sort();
        v
    };
    assert_eq!(emails(&gg), emails(&wg));
}

#[test]
fn a_captured_file_holds_no_credential() {
    // The example's instance with the credentials and secret-bearing attributes a real
    // VM may serve: none of them, nor any credential the emulator issues, may reach the
    // captured file.
    const PLANTED: [&str; 8] = [
        "ASIAPLANTEDIDENTITYKEY",
        "PlantedIdentitySecretAccessKey",
        "PlantedIdentitySessionToken",
        "PlantedKubeEnvSecret",
        "PlantedStartupScriptUrlSecret",
        "PlantedWindowsKeysSecret",
        "PlantedUserDataSecret",
        "PlantedPrivateKeyInSshKeys",
    ];
    let example = std::fs::read_to_string(FILE).unwrap();
    let insert = |text: String, header: &str, lines: &str| -> String {
        assert!(text.contains(header), "the example has {header}");
        text.replacen(header, &format!("{header}{lines}"), 1)
    };
    let text = insert(
        example,
        "[aws.meta_data]\n",
        &format!(
            "identity-credentials.ec2.security-credentials.ec2-instance = '{}'\n\
             identity-credentials.ec2.info = '{{\"Code\": \"Success\"}}'\n",
            json!({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": PLANTED[0],
                   "SecretAccessKey": PLANTED[1], "Token": PLANTED[2]})
        ),
    );
    let text = insert(
        text,
        "[gce.project_attributes]\n",
        &format!(
            "kube-env = \"KUBELET_KEY: {}\"\n\
             startup-script-url = \"https://storage.googleapis.com/b/s?sig={}\"\n",
            PLANTED[3], PLANTED[4]
        ),
    );
    let text = insert(
        text,
        "[gce.instance.attributes]\n",
        &format!(
            "windows-keys = '{{\"userName\": \"{}\"}}'\n\
             user-data = \"{}\"\n\
             ssh-keys = \"demo:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN+dPRDCBtt5tse2Yxaq/tNUPXFNYck8LiToHXP/7DkM demo\\nmallory:-----BEGIN OPENSSH PRIVATE KEY----- {}\"\n",
            PLANTED[5], PLANTED[6], PLANTED[7]
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("planted.toml");
    std::fs::write(&planted, text).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let emu = Daemon::spawn_root(&[
        "emulate",
        "--emulator",
        planted.to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    emu.wait_for("emulator serving", Duration::from_secs(10));

    // What the emulator serves as secrets, read as a client on the VM reads them.
    let get = |path: &str, header: &str| -> String {
        let a = plain_get(&listen, path, header).expect("the emulator answers");
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        a.body
    };
    let mut secrets: Vec<String> = PLANTED.iter().map(|s| s.to_string()).collect();
    let served = get(
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        "Accept: */*",
    );
    assert!(served.contains(PLANTED[1]), "the emulator serves {served}");
    let role = get("/latest/meta-data/iam/security-credentials/", "Accept: */*");
    let creds: Value = serde_json::from_str(&get(
        &format!("/latest/meta-data/iam/security-credentials/{}", role.trim()),
        "Accept: */*",
    ))
    .unwrap();
    for k in ["AccessKeyId", "SecretAccessKey", "Token"] {
        secrets.push(creds[k].as_str().expect(k).to_string());
    }
    let gce_token: Value = serde_json::from_str(&get(
        "/computeMetadata/v1/instance/service-accounts/default/token",
        "Metadata-Flavor: Google",
    ))
    .unwrap();
    secrets.push(gce_token["access_token"].as_str().unwrap().to_string());
    secrets.push(get(
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=x",
        "Metadata-Flavor: Google",
    ));
    let azure: Value = serde_json::from_str(&get(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
        "Metadata: true",
    ))
    .unwrap();
    secrets.push(azure["access_token"].as_str().unwrap().to_string());
    for s in &secrets {
        append_to_env_file("IMDS_PROXY_ISSUED_FILE", s);
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/emulator-from-vm.py");
    let out = Command::new("python3")
        .arg(script)
        .env("IMDS_BASE", format!("http://{listen}"))
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let captured = String::from_utf8_lossy(&out.stdout);
    for s in &secrets {
        assert!(
            !captured.contains(s.as_str()),
            "the captured file holds the secret {s}:\n{captured}"
        );
    }
    for name in [
        "kube-env",
        "startup-script-url",
        "windows-keys",
        "user-data",
    ] {
        assert!(
            stderr.contains(name),
            "the script names what it left out: {stderr}"
        );
    }
    // What is not secret is still there.
    let file = dir.path().join("captured.toml");
    std::fs::write(&file, captured.as_bytes()).unwrap();
    let got = EmulatorConfig::load(&file).unwrap();
    let gce = got.gce.unwrap();
    assert_eq!(gce.instance.attributes.get("ssh-keys").map(String::as_str), Some(
        "demo:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN+dPRDCBtt5tse2Yxaq/tNUPXFNYck8LiToHXP/7DkM demo"
    ));
    assert!(gce.project_attributes.contains_key("enable-oslogin"));
}

/// cloud-init for Debian's Python, the SDKs' directory and node (the one on PATH, as
/// scripts/test.sh keys the SDKs' cache by its version); `None` (a skip) when missing,
/// unless the suite demands every test. A node older than the SDKs need fails.
fn prerequisites(test: &str) -> Option<(PathBuf, PathBuf)> {
    let fail_or_skip = |why: String| {
        harness::suite::unable(test, &why);
        None
    };
    let (ok, _, err) = try_cmd(&[PYTHON, "-c", "import cloudinit.sources.DataSourceAzure"]);
    if !ok {
        return fail_or_skip(format!("{PYTHON} cannot import cloud-init: {err}"));
    }
    let Ok(dir) = std::env::var(NODE_MODULES_VAR) else {
        return fail_or_skip(format!(
            "{NODE_MODULES_VAR} is not set (scripts/test.sh installs the Node.js SDKs and sets it)"
        ));
    };
    let dir = PathBuf::from(dir);
    for sdk in [
        "@aws-sdk/credential-providers",
        "@azure/identity",
        "google-auth-library",
        "gcp-metadata",
    ] {
        if !dir.join(sdk).join("package.json").exists() {
            return fail_or_skip(format!("{} lacks {sdk}", dir.display()));
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    match find_node(&path) {
        Ok((node, _)) => Some((dir, node)),
        Err(NodeProblem::Missing) => fail_or_skip(format!(
            "no node on PATH ({}): the Node.js SDKs need node {NODE_MAJOR} or newer",
            path.to_string_lossy()
        )),
        Err(NodeProblem::Unusable(why)) => panic!("{test}: {why}"),
    }
}

enum NodeProblem {
    Missing,
    Unusable(String),
}

/// The first `node` on `path` (as `command -v node` finds it), canonical, and its major
/// version, which must be NODE_MAJOR or newer.
fn find_node(path: &std::ffi::OsStr) -> Result<(PathBuf, u32), NodeProblem> {
    use std::os::unix::fs::PermissionsExt;
    let node = std::env::split_paths(path)
        .map(|d| d.join("node"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(NodeProblem::Missing)?;
    let node = node.canonicalize().unwrap_or(node);
    let out = Command::new(&node)
        .arg("--version")
        .output()
        .map_err(|e| NodeProblem::Unusable(format!("{} --version: {e}", node.display())))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = version
        .strip_prefix('v')
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .ok_or_else(|| {
            NodeProblem::Unusable(format!(
                "{} --version printed {version:?}, not a version",
                node.display()
            ))
        })?;
    if major < NODE_MAJOR {
        return Err(NodeProblem::Unusable(format!(
            "{} is node {version}; the Node.js SDKs (@aws-sdk/credential-providers, \
             @azure/identity) need node {NODE_MAJOR} or newer on PATH",
            node.display()
        )));
    }
    Ok((node, major))
}

#[test]
fn node_is_the_first_on_path_and_must_be_20_or_newer() {
    let dir = tempfile::tempdir().unwrap();
    let fake = |sub: &str, version: &str| -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("node");
        std::fs::write(&f, format!("#!/bin/sh\necho {version}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    };
    let new = fake("new", "v22.1.0");
    let old = fake("old", "v18.19.0");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let path = |dirs: &[&Path]| std::env::join_paths(dirs).unwrap();

    match find_node(&path(&[&empty, &new, &old])) {
        Ok((node, 22)) => assert_eq!(node, new.join("node").canonicalize().unwrap()),
        Ok((node, major)) => panic!("{} as {major}", node.display()),
        Err(_) => panic!("the node on PATH was not found"),
    }
    match find_node(&path(&[&old, &new])) {
        Err(NodeProblem::Unusable(why)) => {
            assert!(
                why.contains("v18.19.0") && why.contains("node 20 or newer"),
                "{why}"
            )
        }
        _ => panic!("node 18 was taken"),
    }
    assert!(matches!(
        find_node(&path(&[&empty])),
        Err(NodeProblem::Missing)
    ));
}

/// What the judges must find, read from the file the emulator serves.
fn expectations() -> Value {
    let cfg = EmulatorConfig::load(Path::new(FILE)).expect("the example validates");
    let aws = cfg.aws.as_ref().expect("aws");
    let gce = cfg.gce.as_ref().expect("gce");
    let azure = cfg.azure.as_ref().expect("azure");
    let leaf = |path: &[&str]| -> String {
        let mut node = aws.meta_data.get(path[0]).expect("meta-data key");
        for seg in &path[1..] {
            match node {
                imds_proxy::emulator::aws::Node::Dir(d) => node = d.get(*seg).expect("key"),
                _ => panic!("{path:?}"),
            }
        }
        match node {
            imds_proxy::emulator::aws::Node::Leaf(v) => v.clone(),
            _ => panic!("{path:?} is a directory"),
        }
    };
    let default_sa = gce
        .service_accounts
        .iter()
        .find(|a| a.default)
        .expect("a default account");
    json!({
        "ssh_key": aws.public_keys[0].openssh_key,
        "host_key": HOST_KEY,
        "ec2_instance_id": leaf(&["instance-id"]),
        "ec2_zone": leaf(&["placement", "availability-zone"]),
        "ec2_region": leaf(&["placement", "region"]),
        "gce_instance_id": gce.instance.id.to_string(),
        "gce_zone": gce.instance.zone,
        "gce_project": gce.project_id,
        "gce_email": default_sa.email,
        "gce_issuer": gce.identity.as_ref().expect("gce identity").issuer,
        "audience": AUDIENCE,
        "azure_vm_id": azure.instance["compute"]["vmId"],
        "azure_tenant": azure.tenant_id,
        "azure_system_client_id": azure.system.as_ref().expect("system identity").client_id,
        "azure_user_client_id": azure.user_assigned[0].client_id,
    })
}

/// A judge's output: its exit and one JSON object per verdict.
struct Judged {
    output: Output,
    lines: Vec<Value>,
}

fn judged(output: Output) -> Judged {
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("judge").is_some())
        .collect();
    Judged { output, lines }
}

fn assert_judged(what: &str, j: &Judged, want: usize) {
    for l in &j.lines {
        eprintln!("{what}: {l}");
    }
    let failed: Vec<&Value> = j.lines.iter().filter(|l| l["ok"] != true).collect();
    assert!(
        j.output.status.success() && failed.is_empty() && j.lines.len() == want,
        "{what}: exit {:?}, {} of {want} judges reported, failed: {}\nstdout:\n{}\nstderr:\n{}",
        j.output.status.code(),
        j.lines.len(),
        serde_json::to_string_pretty(&failed).unwrap(),
        String::from_utf8_lossy(&j.output.stdout),
        String::from_utf8_lossy(&j.output.stderr),
    );
}

#[test]
fn install_deps_refuses_a_node_older_than_20() {
    // Debian's nodejs (18 on bookworm) first on PATH: scripts/install-deps.sh must say
    // it is too old and which packages need more, not take it (it exits before any
    // package is looked at, so this changes nothing on the machine).
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node");
    std::fs::write(&node, "#!/bin/sh\necho v18.19.0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(std::iter::once(dir.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/install-deps.sh"
    ))
    .arg("test")
    .env("PATH", path)
    .stdin(Stdio::null())
    .output()
    .expect("run install-deps.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "node 18 was accepted: {err}");
    for want in [
        "node is too old",
        "v18.19.0",
        "node 20 or newer",
        "@aws-sdk/credential-providers",
        "@azure/identity",
        "18 on bookworm",
    ] {
        assert!(
            err.contains(want),
            "install-deps.sh does not say {want:?}: {err}"
        );
    }
}

/// Runs a judge on the host with only PATH (the test's own, where node was found),
/// HOME and `env` set: no other variable of the test's environment can point an SDK
/// elsewhere or offer it credentials.
fn run_host(argv: &[&str], plan: &Value, env: &[(&str, &str)]) -> Judged {
    let home = tempfile::tempdir().unwrap();
    let mut c = Command::new("timeout");
    c.arg(JUDGE_TIMEOUT.as_secs().to_string())
        .args(argv)
        .arg(plan.to_string())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    judged(c.output().expect("run a judge"))
}

/// Runs a judge in an unmodified busybox container on Docker's default bridge, with
/// the host's /usr, /lib, /lib64 (Python, cloud-init, node; or node's own prefix if
/// elsewhere), the SDKs and the judges
/// mounted read-only, and the directory of `issued` read-write.
fn run_container(
    scene: &mut Scene,
    node_modules: &Path,
    issued: &Issued,
    argv: &[&str],
    plan: &Value,
    env: &[(&str, &str)],
) -> Judged {
    scene.assert_intercepted();
    let name = scene.next_name();
    let nm = node_modules.to_str().unwrap();
    let mut args: Vec<String> = [
        "run",
        "--rm",
        "--label",
        LABEL,
        "--name",
        &name,
        "--network",
        DEFAULT_NET,
        "--tmpfs",
        "/tmp",
    ]
    .map(String::from)
    .to_vec();
    let system = ["/usr", "/lib", "/lib64"];
    for d in system {
        if Path::new(d).exists() {
            args.extend(["-v".into(), format!("{d}:{d}:ro")]);
        }
    }
    // A program installed elsewhere (node from nvm or a tarball: <prefix>/bin/node)
    // brings its prefix along.
    let program = Path::new(argv[0]);
    if !system.iter().any(|d| program.starts_with(d)) {
        if let Some(prefix) = program.parent().and_then(Path::parent) {
            let p = prefix.display();
            args.extend(["-v".into(), format!("{p}:{p}:ro")]);
        }
    }
    args.extend(["-v".into(), format!("{nm}:{nm}:ro")]);
    args.extend(["-v".into(), format!("{JUDGES_DIR}:{JUDGES_MOUNT}:ro")]);
    args.extend([
        "-v".into(),
        format!("{}:{}", issued.dir.path().display(), Issued::CONTAINER_DIR),
    ]);
    for (k, v) in env {
        args.extend(["--env".into(), format!("{k}={v}")]);
    }
    args.push(IMAGE.into());
    args.extend(argv.iter().map(|s| s.to_string()));
    args.push(plan.to_string());
    let mut c = Command::new("timeout");
    c.arg(JUDGE_TIMEOUT.as_secs().to_string())
        .arg("docker")
        .args(&args)
        .stdin(Stdio::null());
    let start = Instant::now();
    let out = c.output().expect("docker run");
    eprintln!("{name}: {:?}", start.elapsed());
    judged(out)
}

/// The checks AWS and Azure document for their signed documents, with `openssl`,
/// against the certificate the emulator publishes (as the trust anchor, not skipped).
fn signed_documents_verify_with_openssl(listen: &str) {
    let dir = tempfile::tempdir().unwrap();
    let get = |path: &str, header: &str| -> String {
        let a = plain_get(listen, path, header).expect("the emulator answers");
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        a.body
    };
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "cert.pem",
        &get("/imds-proxy/certificate.pem", "Accept: */*"),
    );
    let doc = get("/latest/dynamic/instance-identity/document", "Accept: */*");
    write("document", &doc);
    let pem = |b64: &str| {
        format!(
            "-----BEGIN PKCS7-----\n{}\n-----END PKCS7-----\n",
            b64.trim()
        )
    };
    for leaf in ["pkcs7", "rsa2048"] {
        write(
            leaf,
            &pem(&get(
                &format!("/latest/dynamic/instance-identity/{leaf}"),
                "Accept: */*",
            )),
        );
        let out = openssl(
            dir.path(),
            &[
                "smime",
                "-verify",
                "-in",
                leaf,
                "-inform",
                "PEM",
                "-content",
                "document",
                "-certfile",
                "cert.pem",
                "-CAfile",
                "cert.pem",
                "-purpose",
                "any",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            doc,
            "{leaf} signs the document"
        );
    }
    // A document the signature is not for does not verify.
    write("forged", &doc.replace("123456789012", "999999999999"));
    let (ok, _, _) = try_cmd_in(
        dir.path(),
        &[
            "openssl",
            "smime",
            "-verify",
            "-in",
            "pkcs7",
            "-inform",
            "PEM",
            "-content",
            "forged",
            "-certfile",
            "cert.pem",
            "-CAfile",
            "cert.pem",
            "-purpose",
            "any",
        ],
    );
    assert!(!ok, "a forged document verified");

    let attested = get(
        "/metadata/attested/document?api-version=2021-02-01&nonce=4242424242",
        "Metadata: true",
    );
    let attested: Value = serde_json::from_str(&attested).unwrap();
    assert_eq!(attested["encoding"], "pkcs7");
    write("attested", &pem(attested["signature"].as_str().unwrap()));
    let content = openssl(
        dir.path(),
        &[
            "smime", "-verify", "-in", "attested", "-inform", "PEM", "-CAfile", "cert.pem",
            "-purpose", "any",
        ],
    );
    let content: Value = serde_json::from_slice(&content).unwrap();
    assert_eq!(content["nonce"], "4242424242");
    assert_eq!(content["vmId"], expectations()["azure_vm_id"]);
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn try_cmd_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .expect(args[0]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One GET on loopback with one extra header line, `Connection: close`.
fn plain_get(listen: &str, path: &str, header: &str) -> std::io::Result<Answer> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(listen)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {IMDS}\r\n{header}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_answer(&buf)
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
