//! cloud-init's datasources and the Node.js SDKs judge the built-in example's
//! instances: against `imds-proxy emulate` directly, and in unmodified containers
//! through `run --upstream` in front of it; and the signed documents checked with
//! `openssl smime -verify` against the published certificate.

use super::*;

/// The judges (tests/agents), and where a container sees them.
const JUDGES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents");
const JUDGES_MOUNT: &str = "/imds-proxy-agents";
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
        "azure_network": azure.instance["network"],
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
