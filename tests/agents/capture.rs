//! scripts/emulator-from-vm.py: a file captured from an instance makes the emulator
//! mimic it, and holds no credential.

use super::*;

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
