//! The `[gce]` section: what it accepts, and that every mistake is named by its key.

use std::time::Duration;

use super::super::idtoken::derived_unique_id;
use super::super::*;
use crate::emulator::tokens::TokenSource;

/// A small valid section (its keys at the top level, as `from_value` receives them).
const BASE: &str = r#"
project_id = "p-1"
numeric_project_id = 42
[instance]
id = 7
name = "vm"
hostname = "vm.c.p-1.internal"
zone = "europe-west4-b"
machine_type = "n1-standard-1"
[[instance.network_interfaces]]
ip = "10.0.0.2"
mac = "42:01:0a:00:00:02"
network = "projects/42/networks/default"
[[instance.disks]]
device_name = "boot"
index = 0
mode = "READ_WRITE"
type = "PERSISTENT"
[[service_accounts]]
email = "a@p-1.iam.gserviceaccount.com"
default = true
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
[[service_accounts]]
email = "b@p-1.iam.gserviceaccount.com"
scopes = []
[identity]
issuer = "https://accounts.google.com"
lifetime_secs = 3600
"#;

fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<GceConfig, Vec<String>> {
    GceConfig::from_value(toml::from_str(text).unwrap(), env)
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn a_small_section_loads_with_its_defaults() {
    let c = load(BASE, &no_env).unwrap();
    assert_eq!((c.project_id.as_str(), c.numeric_project_id), ("p-1", 42));
    assert_eq!(c.universe_domain, None);
    assert_eq!(c.instance.zone, "europe-west4-b");
    assert_eq!(
        c.default_account().unwrap().email,
        "a@p-1.iam.gserviceaccount.com"
    );
    let a = &c.service_accounts[0];
    assert_eq!(a.token, TokenSource::Generated);
    assert_eq!(a.token_lifetime, Duration::from_secs(3599));
    assert_eq!(
        a.unique_id,
        derived_unique_id("A@p-1.iam.gserviceaccount.com")
    );
    assert_ne!(a.unique_id, c.service_accounts[1].unique_id);
    assert_eq!(a.unique_id.len(), 21);
}

#[test]
fn project_ids_and_the_access_token_fall_back_to_the_environment() {
    let text = BASE
        .replace("project_id = \"p-1\"\n", "")
        .replace("numeric_project_id = 42\n", "");
    let env = |k: &str| match k {
        PROJECT_ID_ENV => Some("from-env".to_owned()),
        NUMERIC_PROJECT_ID_ENV => Some("99".to_owned()),
        ACCESS_TOKEN_ENV => Some("ya29.x".to_owned()),
        _ => None,
    };
    let c = load(&text, &env).unwrap();
    assert_eq!(
        (c.project_id.as_str(), c.numeric_project_id),
        ("from-env", 99)
    );
    assert_eq!(
        c.service_accounts[0].token,
        TokenSource::Env {
            env: ACCESS_TOKEN_ENV.into()
        }
    );
    let e = load(&text, &no_env).unwrap_err();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("project_id: missing") && e[0].contains(PROJECT_ID_ENV),
        "{e:?}"
    );
    assert!(e[1].starts_with("numeric_project_id: missing"), "{e:?}");
    let bad =
        |k: &str| (k == NUMERIC_PROJECT_ID_ENV || k == PROJECT_ID_ENV).then(|| "x y".to_owned());
    let e = load(&text, &bad).unwrap_err();
    assert!(e.iter().all(|p| p.contains("(from GOOGLE_")), "{e:?}");
}

#[test]
fn every_mistake_is_named_by_its_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "project_id = \"p-1\"",
            "project_id = \"P_1\"",
            "project_id: ",
        ),
        (
            "numeric_project_id = 42",
            "numeric_project_id = \"4x\"",
            "numeric_project_id: ",
        ),
        (
            "numeric_project_id = 42",
            "numeric_project_id = 42\ncolour = 1",
            "colour: unknown key",
        ),
        (
            "numeric_project_id = 42",
            "numeric_project_id = 42\nuniverse_domain = \"a b\"",
            "universe_domain: ",
        ),
        (
            "numeric_project_id = 42",
            "numeric_project_id = 42\nproject_attributes = { \"bad key\" = \"v\" }",
            "project_attributes.bad key: ",
        ),
        (
            "numeric_project_id = 42",
            "numeric_project_id = 42\nproject_attributes = { k = 1 }",
            "project_attributes.k: must be a string",
        ),
        ("id = 7", "id = \"seven\"", "instance.id: "),
        ("id = 7", "", "instance.id: missing"),
        ("name = \"vm\"", "name = \"VM_1\"", "instance.name: "),
        (
            "zone = \"europe-west4-b\"",
            "zone = \"europe-west4\"",
            "instance.zone: ",
        ),
        (
            "zone = \"europe-west4-b\"",
            "zone = \"projects/1/zones/europe-west4-b\"",
            "instance.zone: ",
        ),
        (
            "machine_type = \"n1-standard-1\"",
            "machine_type = \"projects/1/machineTypes/x\"",
            "instance.machine_type: ",
        ),
        (
            "machine_type = \"n1-standard-1\"",
            "machine_type = \"n1\"\ncolour = 1",
            "instance.colour: unknown key",
        ),
        (
            "machine_type = \"n1-standard-1\"",
            "machine_type = \"n1\"\ntags = [\"Web Server\"]",
            "instance.tags[0]: ",
        ),
        (
            "machine_type = \"n1-standard-1\"",
            "machine_type = \"n1\"\nlicenses = [\"abc\"]",
            "instance.licenses[0]: ",
        ),
        (
            "ip = \"10.0.0.2\"",
            "ip = \"10.0.0.256\"",
            "instance.network_interfaces[0].ip: ",
        ),
        (
            "mac = \"42:01:0a:00:00:02\"",
            "mac = \"42-01-0a-00-00-02\"",
            "instance.network_interfaces[0].mac: ",
        ),
        (
            "mac = \"42:01:0a:00:00:02\"",
            "mac = \"42:01:0a:00:00:02\"\nmtu = 70000",
            "instance.network_interfaces[0].mtu: ",
        ),
        (
            "mac = \"42:01:0a:00:00:02\"",
            "mac = \"42:01:0a:00:00:02\"\nexternal_ips = [\"x\"]",
            "instance.network_interfaces[0].external_ips[0]: ",
        ),
        (
            "network = \"projects/42/networks/default\"",
            "",
            "instance.network_interfaces[0].network: missing",
        ),
        (
            "mode = \"READ_WRITE\"",
            "mode = \"rw\"",
            "instance.disks[0].mode: ",
        ),
        (
            "type = \"PERSISTENT\"",
            "type = \"SSD\"",
            "instance.disks[0].type: ",
        ),
        ("index = 0", "index = 200", "instance.disks[0].index: "),
        (
            "email = \"a@p-1.iam.gserviceaccount.com\"",
            "email = \"default\"",
            "service_accounts[0].email: ",
        ),
        (
            "email = \"a@p-1.iam.gserviceaccount.com\"",
            "email = \"a/b@p-1.iam.gserviceaccount.com\"",
            "service_accounts[0].email: ",
        ),
        (
            "email = \"b@p-1.iam.gserviceaccount.com\"",
            "email = \"A@p-1.iam.gserviceaccount.com\"",
            "service_accounts[1].email: A@p-1.iam.gserviceaccount.com is listed twice",
        ),
        (
            "scopes = []",
            "scopes = []\ndefault = true",
            "service_accounts[1].default: service_accounts[0] is the default already",
        ),
        (
            "scopes = []",
            "scopes = [\"cloud-platform\"]",
            "service_accounts[1].scopes[0]: ",
        ),
        (
            "scopes = []",
            "scopes = []\ntoken = { bogus = 1 }",
            "service_accounts[1].token: ",
        ),
        (
            "scopes = []",
            "scopes = []\ntoken = \"\"",
            "service_accounts[1].token: token is empty",
        ),
        (
            "scopes = []",
            "scopes = []\ntoken_lifetime_secs = 5",
            "service_accounts[1].token_lifetime_secs: ",
        ),
        (
            "scopes = []",
            "scopes = []\nunique_id = \"abc\"",
            "service_accounts[1].unique_id: ",
        ),
        (
            "scopes = []",
            "scopes = []\nrole = \"x\"",
            "service_accounts[1].role: unknown key",
        ),
        (
            "issuer = \"https://accounts.google.com\"",
            "",
            "identity.issuer: missing",
        ),
        (
            "issuer = \"https://accounts.google.com\"",
            "issuer = \"accounts\"",
            "identity.issuer: ",
        ),
        (
            "lifetime_secs = 3600",
            "lifetime_secs = 0",
            "identity.lifetime_secs: ",
        ),
        (
            "lifetime_secs = 3600",
            "lifetime_secs = 3600\nkey_file = \"/nonexistent/key.pem\"",
            "identity.key_file: cannot read /nonexistent/key.pem",
        ),
    ];
    for (from, to, want) in cases {
        assert!(BASE.contains(from), "{from}");
        let text = BASE.replacen(from, to, 1);
        let e = load(&text, &no_env).expect_err(to);
        assert!(
            e.iter().any(|p| p.starts_with(want)),
            "{to:?}: want {want:?}, got {e:?}"
        );
    }
}

#[test]
fn all_problems_come_at_once() {
    let text = BASE
        .replace("zone = \"europe-west4-b\"", "zone = \"x\"")
        .replace("ip = \"10.0.0.2\"", "ip = \"x\"")
        .replace("scopes = []", "scopes = [\"x\"]");
    let e = load(&text, &no_env).unwrap_err();
    assert_eq!(e.len(), 3, "{e:?}");
    let e =
        crate::emulator::EmulatorConfig::parse("[gce]\nproject_id = 1\n", &|_| None).unwrap_err();
    assert!(
        e.iter()
            .any(|p| p.starts_with("gce.project_id: must be a string")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|p| p.starts_with("gce.instance: missing")),
        "{e:?}"
    );
}

#[test]
fn a_key_file_must_hold_a_big_enough_rsa_key() {
    use rsa::pkcs8::EncodePrivateKey;
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let small = dir.path().join("small.pem");
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
    std::fs::write(
        &small,
        key.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
    )
    .unwrap();
    for (path, want) in [
        (&garbage, "holds no RSA private key"),
        (&small, "1024 bits"),
    ] {
        let text = BASE.replace(
            "lifetime_secs = 3600",
            &format!(
                "lifetime_secs = 3600\nkey_file = {:?}",
                path.display().to_string()
            ),
        );
        let e = load(&text, &no_env).unwrap_err();
        assert!(
            e[0].starts_with("identity.key_file: ") && e[0].contains(want),
            "{e:?}"
        );
    }
    let good = dir.path().join("good.pem");
    let pem = super::rsa_key().to_pkcs8_pem(Default::default()).unwrap();
    std::fs::write(&good, pem.as_bytes()).unwrap();
    let text = BASE.replace(
        "lifetime_secs = 3600",
        &format!(
            "lifetime_secs = 3600\nkey_file = {:?}",
            good.display().to_string()
        ),
    );
    let c = load(&text, &no_env).unwrap();
    assert!(c.identity.unwrap().key.is_some());
}

#[test]
fn derived_ids_are_stable_digits() {
    let a = derived_unique_id("x@p.iam.gserviceaccount.com");
    assert_eq!(a, derived_unique_id("X@P.iam.gserviceaccount.com"));
    assert_ne!(a, derived_unique_id("y@p.iam.gserviceaccount.com"));
    assert!(a.len() == 21 && a.starts_with('1') && a.bytes().all(|b| b.is_ascii_digit()));
}
