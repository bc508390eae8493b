//! What botocore and Rust aws-config rely on, asserted through `Aws::answer` as the
//! proxy calls it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value as Json;

use super::*;
use crate::emulator::{EmulatorConfig, EXAMPLE};
use crate::request::canonical::CanonicalPath;
use rsa::pkcs8::DecodePublicKey;
use x509_cert::der::{DecodePem, Encode};

const LIFE: u64 = 21_600;

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn env(name: &str) -> Option<String> {
    match name {
        "AK" => Some("AKIAENVEXAMPLE000000".into()),
        "SK" => Some("env-secret".into()),
        _ => None,
    }
}

fn config(text: &str) -> Arc<EmulatorConfig> {
    Arc::new(EmulatorConfig::parse(text, &|_| None).unwrap_or_else(|e| panic!("{e:?}")))
}

/// The example's `[aws]` section (and nothing else) with `roles` in place of its roles.
fn aws_with_roles(roles: &str) -> Arc<EmulatorConfig> {
    let aws = EXAMPLE.split("\n[aws]\n").nth(1).unwrap();
    let before_roles = aws.split("[[aws.roles]]").next().unwrap();
    config(&format!("[aws]\n{before_roles}\n{roles}"))
}

struct Got {
    status: StatusCode,
    content_type: String,
    body: String,
    headers: HeaderMap,
}

async fn call(
    aws: &Aws,
    cfg: &Arc<EmulatorConfig>,
    now: SystemTime,
    method: Method,
    path: &str,
    identity: &Identity,
) -> Got {
    let path = CanonicalPath::parse(path).unwrap();
    let headers = HeaderMap::new();
    let body = Bytes::new();
    let (_tx, changes) = tokio::sync::watch::channel(cfg.clone());
    let ctx = Ctx {
        config: cfg.clone(),
        changes,
        now,
        env,
        keys: crate::emulator::signing::test_keys(),
    };
    let req = EmuRequest {
        method: &method,
        path: &path,
        query: None,
        headers: &headers,
        body: &body,
        identity,
        deadline: Instant::now() + Duration::from_secs(5),
    };
    let (parts, body) = aws.answer(&ctx, &req).await.into_parts();
    Got {
        status: parts.status,
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body: String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap(),
        headers: parts.headers,
    }
}

async fn get(aws: &Aws, cfg: &Arc<EmulatorConfig>, now: SystemTime, path: &str) -> Got {
    call(aws, cfg, now, Method::GET, path, &Identity::default()).await
}

fn as_role(name: &str) -> Identity {
    Identity {
        aws_role: Some(name.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn listings_and_leaves_are_plain_text_without_a_trailing_newline() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    for (path, body) in [
        ("/latest/", "dynamic\nmeta-data\nuser-data"),
        ("/latest", "dynamic\nmeta-data\nuser-data"),
        ("/2021-07-15/", "dynamic\nmeta-data\nuser-data"),
        (
            "/latest/meta-data/placement/",
            "availability-zone\navailability-zone-id\nregion",
        ),
        (
            "/latest/meta-data/placement",
            "availability-zone\navailability-zone-id\nregion",
        ),
        (
            "/latest/meta-data/placement/availability-zone",
            "us-east-1a",
        ),
        ("/latest/meta-data/placement/region", "us-east-1"),
        ("/2021-07-15/meta-data/instance-id", "i-0123456789abcdef0"),
        ("/latest/meta-data/iam/", "info\nsecurity-credentials/"),
        ("/latest/meta-data/iam/security-credentials/", "demo-role"),
        ("/latest/meta-data/iam/security-credentials", "demo-role"),
        ("/latest/user-data", "#!/bin/bash\necho hello\n"),
        ("/latest/dynamic/", "instance-identity/"),
        (
            "/latest/dynamic/instance-identity/",
            "document\npkcs7\nrsa2048\nsignature",
        ),
    ] {
        let g = get(&aws, &cfg, t0(), path).await;
        assert_eq!(g.status, StatusCode::OK, "{path}");
        assert_eq!(g.content_type, "text/plain", "{path}");
        assert_eq!(g.body, body, "{path}");
    }
}

#[tokio::test]
async fn the_example_is_a_whole_instance() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    let top = get(&aws, &cfg, t0(), "/latest/meta-data/").await.body;
    let top: Vec<&str> = top.lines().collect();
    for want in [
        "ami-id",
        "ami-launch-index",
        "block-device-mapping/",
        "events/",
        "hostname",
        "iam/",
        "instance-id",
        "instance-type",
        "local-ipv4",
        "mac",
        "network/",
        "placement/",
        "public-keys/",
        "reservation-id",
        "security-groups",
        "services/",
        "tags/",
    ] {
        assert!(top.contains(&want), "meta-data/ lacks {want}: {top:?}");
    }
    let mac = get(&aws, &cfg, t0(), "/latest/meta-data/mac").await.body;
    let nic = format!("/latest/meta-data/network/interfaces/macs/{mac}/");
    let listing = get(&aws, &cfg, t0(), &nic).await.body;
    for want in [
        "device-number",
        "local-ipv4s",
        "subnet-id",
        "vpc-id",
        "ipv6s",
    ] {
        assert!(listing.lines().any(|l| l == want), "{nic} lacks {want}");
    }
    assert_eq!(
        get(&aws, &cfg, t0(), "/latest/meta-data/services/partition")
            .await
            .body,
        "aws"
    );
    assert_eq!(
        get(&aws, &cfg, t0(), "/latest/meta-data/tags/instance/Name")
            .await
            .body,
        "demo-vm"
    );
}

#[tokio::test]
async fn an_interruption_is_triggered_by_editing_the_file() {
    let aws = Aws::new();
    let spot = "/latest/meta-data/spot/instance-action";
    let rebalance = "/latest/meta-data/events/recommendations/rebalance";
    let calm = config(EXAMPLE);
    assert_eq!(
        get(&aws, &calm, t0(), spot).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&aws, &calm, t0(), rebalance).await.status,
        StatusCode::NOT_FOUND
    );
    let notice = r#"{"action": "terminate", "time": "2026-01-01T00:02:00Z"}"#;
    let edited = config(&EXAMPLE.replace(
        "[aws.meta_data]\n",
        &format!(
            "[aws.meta_data]\nspot = {{ instance-action = '{notice}' }}\nevents.recommendations = {{ rebalance = '{{\"noticeTime\": \"2026-01-01T00:00:00Z\"}}' }}\n"
        ),
    ));
    let g = get(&aws, &edited, t0(), spot).await;
    assert_eq!(g.status, StatusCode::OK);
    let action: Json = serde_json::from_str(&g.body).unwrap();
    assert_eq!(action["action"], "terminate");
    assert!(get(&aws, &edited, t0(), rebalance)
        .await
        .body
        .contains("noticeTime"));
    let events = get(&aws, &edited, t0(), "/latest/meta-data/events/")
        .await
        .body;
    assert_eq!(events, "maintenance/\nrecommendations/");
}

#[tokio::test]
async fn public_keys_are_listed_as_ec2_lists_them() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    let key = cfg.aws.as_ref().unwrap().public_keys[0].openssh_key.clone();
    assert!(key.starts_with("ssh-ed25519 "));
    for (path, status, body) in [
        ("/latest/meta-data/public-keys/", 200, "0=demo-key"),
        ("/latest/meta-data/public-keys", 200, "0=demo-key"),
        ("/latest/meta-data/public-keys/0/", 200, "openssh-key"),
        ("/latest/meta-data/public-keys/0", 200, "openssh-key"),
        (
            "/latest/meta-data/public-keys/0/openssh-key",
            200,
            key.as_str(),
        ),
        (
            "/2009-04-04/meta-data/public-keys/0/openssh-key",
            200,
            key.as_str(),
        ),
        ("/latest/meta-data/public-keys/1/", 404, ""),
        ("/latest/meta-data/public-keys/00/openssh-key", 404, ""),
        ("/latest/meta-data/public-keys/demo-key/", 404, ""),
        ("/latest/meta-data/public-keys/0/ssh-rsa", 404, ""),
    ] {
        let g = get(&aws, &cfg, t0(), path).await;
        assert_eq!(g.status.as_u16(), status, "{path}");
        if status == 200 {
            assert_eq!(g.body, body, "{path}");
        }
    }
    let none = config("[aws]\n");
    let g = get(&aws, &none, t0(), "/latest/meta-data/public-keys/").await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    let e = EmulatorConfig::parse(
        "[aws]\npublic_keys = [{ name = \"\", openssh_key = \"nope\" }]\nmeta_data = { public-keys = \"x\" }\n",
        &|_| None,
    )
    .unwrap_err();
    for key in [
        "aws.public_keys[0].name",
        "aws.public_keys[0].openssh_key",
        "aws.meta_data.public-keys",
    ] {
        assert!(e.iter().any(|p| p.starts_with(key)), "{key}: {e:?}");
    }
}

#[tokio::test]
async fn dated_versions_are_listed_and_answer_with_what_they_had() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    let root = get(&aws, &cfg, t0(), "/").await;
    let versions: Vec<&str> = root.body.lines().collect();
    assert_eq!(versions.first(), Some(&"1.0"));
    assert_eq!(versions.last(), Some(&"latest"));
    for v in ["2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23"] {
        assert!(versions.contains(&v), "{v} (cloud-init asks for it)");
        let g = get(&aws, &cfg, t0(), &format!("/{v}/meta-data/instance-id")).await;
        assert_eq!(g.body, "i-0123456789abcdef0", "{v}");
    }
    let old = get(&aws, &cfg, t0(), "/2009-04-04/meta-data/").await.body;
    assert!(
        !old.lines()
            .any(|l| l == "iam/" || l == "tags/" || l == "services/"),
        "{old}"
    );
    assert!(old.lines().any(|l| l == "public-keys/"), "{old}");
    for (path, status) in [
        (
            "/2009-04-04/meta-data/iam/security-credentials/demo-role",
            404,
        ),
        (
            "/2012-01-12/meta-data/iam/security-credentials/demo-role",
            200,
        ),
        ("/2016-09-02/meta-data/placement/region", 404),
        ("/2021-03-23/meta-data/placement/region", 200),
        ("/2018-09-24/meta-data/tags/instance/Name", 404),
        ("/2021-03-23/meta-data/tags/instance/Name", 200),
        ("/2008-09-01/dynamic/instance-identity/document", 404),
        ("/2009-04-04/dynamic/instance-identity/document", 200),
        ("/2010-01-01/meta-data/instance-id", 404),
    ] {
        assert_eq!(
            get(&aws, &cfg, t0(), path).await.status.as_u16(),
            status,
            "{path}"
        );
    }
    let placement = get(&aws, &cfg, t0(), "/2016-09-02/meta-data/placement/").await;
    assert_eq!(placement.body, "availability-zone");
}

#[tokio::test]
async fn the_identity_document_is_signed_as_ec2_signs_it() {
    use base64::Engine;
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    let doc = get(
        &aws,
        &cfg,
        t0(),
        "/latest/dynamic/instance-identity/document",
    )
    .await
    .body;
    let key = crate::emulator::signing::test_keys()
        .get(&Default::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("document"), &doc).unwrap();
    std::fs::write(dir.path().join("cert.pem"), key.certificate_pem()).unwrap();
    for leaf in ["pkcs7", "rsa2048"] {
        let g = get(
            &aws,
            &cfg,
            t0(),
            &format!("/latest/dynamic/instance-identity/{leaf}"),
        )
        .await;
        assert_eq!(g.status, StatusCode::OK);
        assert!(
            g.body.lines().all(|l| l.len() <= 64),
            "{leaf}: base64 in lines"
        );
        // The check AWS documents: wrap in PEM, verify against the certificate.
        let pem = format!("-----BEGIN PKCS7-----\n{}\n-----END PKCS7-----\n", g.body);
        std::fs::write(dir.path().join(leaf), pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "smime", "-verify", "-in", leaf, "-inform", "PEM", "-content", "document",
            ])
            .args(["-certfile", "cert.pem", "-noverify"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{leaf}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), doc, "{leaf}");
    }
    let sig = get(
        &aws,
        &cfg,
        t0(),
        "/latest/dynamic/instance-identity/signature",
    )
    .await
    .body;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.replace('\n', ""))
        .unwrap();
    use rsa::signature::Verifier;
    let cert = x509_cert::Certificate::from_pem(key.certificate_pem().as_bytes()).unwrap();
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap();
    let public = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public)
        .verify(
            doc.as_bytes(),
            &rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap(),
        )
        .unwrap();
}

#[tokio::test]
async fn missing_items_are_404_with_ec2s_page() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    for path in [
        "/latest/meta-data/nope",
        "/latest/meta-data/ami-id/more",
        "/latest/meta-data/placement/nope",
        "/LATEST/meta-data/",
        "/latest/Meta-Data/",
        "/v1/meta-data/",
        "/2021-7-15/meta-data/",
        "/latest/meta-data/iam/security-credentials/demo-role-x",
        "/latest/meta-data/iam/security-credentials/DEMO-ROLE",
        "/latest/meta-data/iam/nope",
        "/latest/dynamic/instance-identity/nope",
        "/2021-07-15/api/token",
        "/favicon.ico",
    ] {
        let g = get(&aws, &cfg, t0(), path).await;
        assert_eq!(g.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(g.content_type, "text/html", "{path}");
        assert!(g.body.contains("<title>404 - Not Found</title>"), "{path}");
    }
    // Without user data or an identity document, neither is listed nor served.
    let bare = config("[aws]\n");
    assert_eq!(get(&aws, &bare, t0(), "/latest/").await.body, "meta-data");
    assert_eq!(get(&aws, &bare, t0(), "/latest/meta-data/").await.body, "");
    for path in [
        "/latest/user-data",
        "/latest/dynamic/",
        "/latest/dynamic/instance-identity/document",
        "/latest/meta-data/iam/",
    ] {
        assert_eq!(
            get(&aws, &bare, t0(), path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[tokio::test]
async fn only_get_and_head_are_served() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    for (method, path, status, allow) in [
        (Method::HEAD, "/latest/meta-data/ami-id", 200, None),
        (Method::PUT, "/2021-03-23/api/token", 403, None),
        (Method::PUT, "/2021-03-23/meta-data/", 403, None),
        (Method::PUT, "/latest/meta-data/", 405, Some("GET, HEAD")),
        (Method::POST, "/latest/meta-data/", 405, Some("GET, HEAD")),
        (
            Method::DELETE,
            "/2021-03-23/meta-data/",
            405,
            Some("GET, HEAD"),
        ),
        (Method::GET, "/latest/api/token", 405, Some("PUT")),
    ] {
        let g = call(&aws, &cfg, t0(), method.clone(), path, &Identity::default()).await;
        assert_eq!(g.status.as_u16(), status, "{method} {path}");
        assert_eq!(
            g.headers
                .get(http::header::ALLOW)
                .map(|v| v.to_str().unwrap()),
            allow,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn the_identity_document_has_the_real_fields() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    let g = get(
        &aws,
        &cfg,
        t0(),
        "/latest/dynamic/instance-identity/document",
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.content_type, "text/plain");
    assert!(
        g.body
            .starts_with("{\n  \"accountId\" : \"123456789012\",\n"),
        "{}",
        g.body
    );
    let doc: Json = serde_json::from_str(&g.body).unwrap();
    assert_eq!(doc["region"], "us-east-1");
    assert_eq!(doc["version"], "2017-09-30");
    for k in [
        "devpayProductCodes",
        "marketplaceProductCodes",
        "billingProducts",
        "kernelId",
        "ramdiskId",
    ] {
        assert_eq!(doc.get(k), Some(&Json::Null), "{k}");
    }
}

/// What botocore's `InstanceMetadataFetcher` and aws-config's IMDS provider read.
fn assert_credentials_shape(body: &str) -> Json {
    assert!(
        body.starts_with("{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \""),
        "{body}"
    );
    let j: Json = serde_json::from_str(body).unwrap();
    let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "AccessKeyId",
        "Code",
        "Expiration",
        "LastUpdated",
        "SecretAccessKey",
        "Token",
        "Type",
    ];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(j["Type"], "AWS-HMAC");
    for k in ["Expiration", "LastUpdated"] {
        let s = j[k].as_str().unwrap();
        let b = s.as_bytes();
        assert!(
            b.len() == 20
                && b[4] == b'-'
                && b[7] == b'-'
                && b[10] == b'T'
                && b[13] == b':'
                && b[16] == b':'
                && b[19] == b'Z',
            "{k} = {s} is not %Y-%m-%dT%H:%M:%SZ"
        );
    }
    j
}

#[tokio::test]
async fn credentials_have_the_shape_sdks_parse() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    let role = get(
        &aws,
        &cfg,
        t0(),
        "/latest/meta-data/iam/security-credentials/",
    )
    .await
    .body;
    let g = get(
        &aws,
        &cfg,
        t0(),
        &format!("/latest/meta-data/iam/security-credentials/{role}"),
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.content_type, "text/plain");
    let j = assert_credentials_shape(&g.body);
    let id = j["AccessKeyId"].as_str().unwrap();
    assert!(id.starts_with("ASIA") && id.len() == 20, "{id}");
    assert_eq!(j["SecretAccessKey"].as_str().unwrap().len(), 40);
    assert!(j["Token"].as_str().unwrap().len() >= 400);
    assert_eq!(j["LastUpdated"], "2023-11-14T22:13:20Z");
    assert_eq!(
        j["Expiration"], "2023-11-15T04:13:20Z",
        "issue time + 21600 s"
    );

    let info = get(&aws, &cfg, t0(), "/latest/meta-data/iam/info").await;
    assert_eq!(info.content_type, "text/plain");
    assert_eq!(
        info.body,
        "{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"2023-11-14T22:13:20Z\",\n  \"InstanceProfileArn\" : \"arn:aws:iam::123456789012:instance-profile/demo-role\",\n  \"InstanceProfileId\" : \"AIPAEXAMPLEDEMOROLE0\"\n}"
    );
}

#[tokio::test]
async fn credentials_rotate_at_half_life_and_always_outlive_sdk_refresh_windows() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    let url = "/latest/meta-data/iam/security-credentials/demo-role";
    let at = |secs: u64| {
        let (aws, cfg) = (&aws, &cfg);
        async move {
            let j = assert_credentials_shape(
                &get(aws, cfg, t0() + Duration::from_secs(secs), url)
                    .await
                    .body,
            );
            (
                j["AccessKeyId"].as_str().unwrap().to_owned(),
                j["Expiration"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (first, exp) = at(0).await;
    assert_eq!(
        at(LIFE / 2 - 1).await,
        (first.clone(), exp.clone()),
        "kept until half its life"
    );
    let (second, exp2) = at(LIFE / 2).await;
    assert_ne!(second, first, "replaced at half its life");
    assert_eq!(
        exp2,
        crate::providers::aws_doc::timestamp(t0() + Duration::from_secs(LIFE / 2 + LIFE))
    );
    // Sampled over two lifetimes, Expiration is never less than half a lifetime
    // ahead: beyond botocore's 15-minute advisory refresh and the Java SDK's window.
    for secs in (0..2 * LIFE).step_by(997) {
        let now = t0() + Duration::from_secs(secs);
        let (_, exp) = at(secs).await;
        // Timestamps of one form sort as the times they name.
        let half_ahead = crate::providers::aws_doc::timestamp(now + Duration::from_secs(LIFE / 2));
        assert!(
            exp >= half_ahead,
            "{exp} at +{secs}: less than half a lifetime left"
        );
    }
}

#[tokio::test]
async fn new_role_settings_mean_new_credentials_and_other_edits_do_not() {
    let aws = Aws::new();
    let url = "/latest/meta-data/iam/security-credentials/demo-role";
    let key = |g: Got| {
        assert_credentials_shape(&g.body)["AccessKeyId"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let a = key(get(&aws, &config(EXAMPLE), t0(), url).await);
    let edited = config(&EXAMPLE.replace(
        "ami-id = \"ami-0abcdef1234567890\"",
        "ami-id = \"ami-0ffffffffffffffff\"",
    ));
    assert_ne!(edited, config(EXAMPLE));
    assert_eq!(key(get(&aws, &edited, t0(), url).await), a);
    let relived = config(&EXAMPLE.replacen(
        "credentials_lifetime_secs = 21600",
        "credentials_lifetime_secs = 7200",
        1,
    ));
    assert_ne!(key(get(&aws, &relived, t0(), url).await), a);
}

#[tokio::test]
async fn static_keys_from_the_file_or_the_environment() {
    let aws = Aws::new();
    let cfg = aws_with_roles(
        r#"
[[aws.roles]]
name = "literal"
default = true
instance_profile_arn = "arn:aws:iam::1:instance-profile/literal"
instance_profile_id = "AIPALITERAL"
access_key_id = "AKIAFILEEXAMPLE00000"
secret_access_key = "file-secret"
session_token = "file-token"
credentials_lifetime_secs = 3600

[[aws.roles]]
name = "from-env"
instance_profile_arn = "arn:aws:iam::1:instance-profile/from-env"
instance_profile_id = "AIPAFROMENV"
access_key_id = { env = "AK" }
secret_access_key = { env = "SK" }

[[aws.roles]]
name = "unset"
instance_profile_arn = "arn:aws:iam::1:instance-profile/unset"
instance_profile_id = "AIPAUNSET"
access_key_id = { env = "AK" }
secret_access_key = { env = "NOT_SET" }
"#,
    );
    let j = assert_credentials_shape(
        &get(
            &aws,
            &cfg,
            t0(),
            "/latest/meta-data/iam/security-credentials/literal",
        )
        .await
        .body,
    );
    assert_eq!(j["AccessKeyId"], "AKIAFILEEXAMPLE00000");
    assert_eq!(j["SecretAccessKey"], "file-secret");
    assert_eq!(j["Token"], "file-token");
    assert_eq!(j["Expiration"], "2023-11-14T23:13:20Z");
    // Static keys keep their values; their Expiration moves on at half-life.
    let later = assert_credentials_shape(
        &get(
            &aws,
            &cfg,
            t0() + Duration::from_secs(1800),
            "/latest/meta-data/iam/security-credentials/literal",
        )
        .await
        .body,
    );
    assert_eq!(later["AccessKeyId"], "AKIAFILEEXAMPLE00000");
    assert_eq!(later["Expiration"], "2023-11-14T23:43:20Z");

    let who = as_role("from-env");
    let g = call(
        &aws,
        &cfg,
        t0(),
        Method::GET,
        "/latest/meta-data/iam/security-credentials/from-env",
        &who,
    )
    .await;
    let j = assert_credentials_shape(&g.body);
    assert_eq!(j["AccessKeyId"], "AKIAENVEXAMPLE000000");
    assert_eq!(j["Token"], "", "long-term keys have no session token");

    let who = as_role("unset");
    let g = call(
        &aws,
        &cfg,
        t0(),
        Method::GET,
        "/latest/meta-data/iam/security-credentials/unset",
        &who,
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    let j: Json = serde_json::from_str(&g.body).unwrap();
    assert_ne!(j["Code"], "Success");
    assert!(
        j.get("AccessKeyId").is_none(),
        "botocore reads this as no credentials"
    );
    assert!(j["Message"].as_str().unwrap().contains("NOT_SET"));
}

#[tokio::test]
async fn each_caller_sees_only_its_role() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    let creds = "/latest/meta-data/iam/security-credentials/";
    for (who, listing, arn) in [
        (
            Identity::default(),
            Some("demo-role"),
            "instance-profile/demo-role",
        ),
        (as_role("reader"), Some("reader"), "instance-profile/reader"),
        (
            as_role("demo-role"),
            Some("demo-role"),
            "instance-profile/demo-role",
        ),
        (as_role("Reader"), None, ""),
        (as_role("unconfigured"), None, ""),
    ] {
        let g = call(&aws, &cfg, t0(), Method::GET, creds, &who).await;
        let md = call(&aws, &cfg, t0(), Method::GET, "/latest/meta-data/", &who)
            .await
            .body;
        let info = call(
            &aws,
            &cfg,
            t0(),
            Method::GET,
            "/latest/meta-data/iam/info",
            &who,
        )
        .await;
        match listing {
            Some(role) => {
                assert_eq!(g.body, role, "{who:?}");
                assert!(md.lines().any(|l| l == "iam/"), "{who:?}");
                assert!(info.body.contains(arn), "{who:?}: {}", info.body);
                let mine = call(
                    &aws,
                    &cfg,
                    t0(),
                    Method::GET,
                    &format!("{creds}{role}"),
                    &who,
                )
                .await;
                assert_credentials_shape(&mine.body);
                for other in ["demo-role", "reader"].iter().filter(|o| **o != role) {
                    let g = call(
                        &aws,
                        &cfg,
                        t0(),
                        Method::GET,
                        &format!("{creds}{other}"),
                        &who,
                    )
                    .await;
                    assert_eq!(
                        g.status,
                        StatusCode::NOT_FOUND,
                        "{who:?} must not see {other}"
                    );
                }
            }
            None => {
                // aws-config maps this 404 to "no credentials here".
                assert_eq!(g.status, StatusCode::NOT_FOUND, "{who:?}");
                assert!(!md.lines().any(|l| l == "iam/"), "{who:?}");
                assert_eq!(info.status, StatusCode::NOT_FOUND, "{who:?}");
            }
        }
    }
    // Two roles never share credentials.
    let a = call(
        &aws,
        &cfg,
        t0(),
        Method::GET,
        &format!("{creds}demo-role"),
        &Identity::default(),
    )
    .await;
    let b = call(
        &aws,
        &cfg,
        t0(),
        Method::GET,
        &format!("{creds}reader"),
        &as_role("reader"),
    )
    .await;
    assert_ne!(
        assert_credentials_shape(&a.body)["AccessKeyId"],
        assert_credentials_shape(&b.body)["AccessKeyId"]
    );
    // Without a default role, an unlabelled caller has none.
    let no_default = aws_with_roles(
        "[[aws.roles]]\nname = \"r\"\ninstance_profile_arn = \"a\"\ninstance_profile_id = \"i\"\n",
    );
    let g = get(&aws, &no_default, t0(), creds).await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
}

#[test]
fn http_tokens_says_whether_the_proxy_requires_session_tokens() {
    let parse = |v: &str| EmulatorConfig::parse(&format!("[aws]\nhttp_tokens = {v}\n"), &|_| None);
    assert!(!parse("\"optional\"")
        .unwrap()
        .aws
        .unwrap()
        .tokens_required());
    assert!(parse("\"required\"")
        .unwrap()
        .aws
        .unwrap()
        .tokens_required());
    assert!(!config("[aws]\n").aws.as_ref().unwrap().tokens_required());
    for bad in ["\"Required\"", "true", "\"v2\""] {
        let e = parse(bad).unwrap_err();
        assert!(e[0].starts_with("aws.http_tokens: "), "{e:?}");
    }
}

#[test]
fn config_problems_name_their_keys() {
    let role = "name = \"r\"\ninstance_profile_arn = \"a\"\ninstance_profile_id = \"i\"";
    for (section, key) in [
        ("colour = 1", "aws.colour: unknown key"),
        ("user_data = 1", "aws.user_data: must be a string"),
        ("meta_data = 1", "aws.meta_data: must be a table"),
        ("[meta_data]\niam = \"x\"", "aws.meta_data.iam: is generated"),
        ("[meta_data]\n\"a/b\" = \"x\"", "aws.meta_data.a/b: "),
        ("[meta_data]\nlist = [{ a = 1 }]", "aws.meta_data.list: "),
        ("[meta_data.placement]\n\"\" = \"x\"", "aws.meta_data.placement.: "),
        ("identity_document = \"x\"", "aws.identity_document: must be a table"),
        ("roles = 1", "aws.roles: must be a list"),
        ("[[roles]]\ninstance_profile_arn = \"a\"\ninstance_profile_id = \"i\"", "aws.roles[0].name: is required"),
        ("[[roles]]\nname = \"r\"\ninstance_profile_id = \"i\"", "aws.roles[0].instance_profile_arn: is required"),
        ("[[roles]]\nname = \"r\"\ninstance_profile_arn = \"a\"", "aws.roles[0].instance_profile_id: is required"),
        ("[[roles]]\nname = \"a/b\"\ninstance_profile_arn = \"a\"\ninstance_profile_id = \"i\"", "aws.roles[0].name: an IAM role name"),
        ("[[roles]]\n{role}\ndefault = \"yes\"", "aws.roles[0].default: "),
        ("[[roles]]\n{role}\ncredentials_lifetime_secs = 600", "aws.roles[0].credentials_lifetime_secs: "),
        ("[[roles]]\n{role}\ncredentials_lifetime_secs = 99999", "aws.roles[0].credentials_lifetime_secs: "),
        ("[[roles]]\n{role}\naccess_key_id = \"AKIA\"", "aws.roles[0].access_key_id: "),
        ("[[roles]]\n{role}\naccess_key_id = { command = [\"x\"] }\nsecret_access_key = \"s\"", "aws.roles[0].access_key_id: "),
        ("[[roles]]\n{role}\nsecret_access_key = \"\"", "aws.roles[0].secret_access_key: "),
        ("[[roles]]\n{role}\nrole_arn = \"x\"", "aws.roles[0].role_arn: unknown key"),
        ("[[roles]]\n{role}\n[[roles]]\n{role}", "aws.roles[1].name: is used by another role"),
        ("[[roles]]\n{role}\ndefault = true\n[[roles]]\nname = \"s\"\ninstance_profile_arn = \"a\"\ninstance_profile_id = \"i\"\ndefault = true", "aws.roles[1].default: "),
    ] {
        let section = section.replace("{role}", role);
        let text: String = format!("[aws]\n{section}")
            .lines()
            .map(|l| match l.strip_prefix("[[") {
                Some(rest) => format!("[[aws.{rest}\n"),
                None if l.starts_with("[m") => format!("[aws.{}\n", &l[1..]),
                None => format!("{l}\n"),
            })
            .collect();
        let problems = EmulatorConfig::parse(&text, &|_| None).unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with(key)), "{key} not in {problems:?}");
    }
}

#[test]
fn static_keys_never_show_in_debug_output() {
    let cfg = aws_with_roles(
        "[[aws.roles]]\nname = \"r\"\ninstance_profile_arn = \"a\"\ninstance_profile_id = \"i\"\naccess_key_id = \"AKIAVISIBLE\"\nsecret_access_key = \"very-secret\"\n",
    );
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("very-secret") && !shown.contains("AKIAVISIBLE"),
        "{shown}"
    );
}

/// Every newer path EC2 does not have for this instance answers EC2's one 404: the
/// small XHTML page, `text/html`. AWS documents the 404 for an absent
/// `spot/instance-action` and rebalance recommendation; the page itself is EC2's
/// answer to any missing item.
#[tokio::test]
async fn the_newer_paths_answer_ec2s_404_page_when_absent() {
    let (aws, cfg) = (Aws::new(), config(EXAMPLE));
    let page = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
        <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
        \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
        <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
        <head>\n  <title>404 - Not Found</title>\n </head>\n \
        <body>\n  <h1>404 - Not Found</h1>\n </body>\n</html>";
    for path in [
        "/latest/dynamic/instance-identity/rsa4096",
        "/latest/dynamic/instance-identity/document/x",
        "/2008-09-01/dynamic/instance-identity/pkcs7",
        "/1999-01-01/meta-data/",
        "/2016-09-02/meta-data/placement/region",
        "/latest/meta-data/public-keys/1/openssh-key",
        "/latest/meta-data/public-keys/-1/openssh-key",
        "/latest/meta-data/public-keys/0/openssh-key/x",
        "/latest/meta-data/public-keys/0=demo-key/",
        "/latest/meta-data/spot/instance-action",
        "/latest/meta-data/spot/termination-time",
        "/latest/meta-data/events/recommendations/rebalance",
    ] {
        let g = get(&aws, &cfg, t0(), path).await;
        assert_eq!(g.status, StatusCode::NOT_FOUND, "{path}: {}", g.body);
        assert_eq!(g.content_type, "text/html", "{path}");
        assert_eq!(g.body, page, "{path}");
    }
}
