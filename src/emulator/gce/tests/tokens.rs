//! Access tokens and ID tokens.

use super::*;

#[tokio::test]
async fn access_tokens_per_account_and_scope_set() {
    let s = Scene::example();
    let sa = "/computeMetadata/v1/instance/service-accounts";
    let token = |got: Got| {
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        let v = got.json();
        assert_eq!(v["token_type"], "Bearer");
        let expires_in = v["expires_in"].as_u64().expect("expires_in is an integer");
        assert!((3590..=3599).contains(&expires_in), "{expires_in}");
        v["access_token"].as_str().unwrap().to_owned()
    };
    let t1 = token(s.get(&format!("{sa}/default/token")).await);
    assert_eq!(
        t1,
        token(s.get(&format!("{sa}/default/token")).await),
        "cached"
    );
    assert_eq!(t1, token(s.get(&format!("{sa}/{DEFAULT_SA}/token")).await));
    let cp = "https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform";
    assert_eq!(
        t1,
        token(s.get(&format!("{sa}/default/token?scopes={cp}")).await),
        "the account's own scopes"
    );
    let ab = token(
        s.get(&format!("{sa}/default/token?scopes=https://a,https://b"))
            .await,
    );
    assert_ne!(ab, t1, "other scopes, another token");
    assert_eq!(
        ab,
        token(
            s.get(&format!(
                "{sa}/default/token?scopes=https://b,https://a,https://b"
            ))
            .await
        )
    );
    let batch = token(s.get(&format!("{sa}/{BATCH_SA}/token")).await);
    assert_ne!(batch, t1, "accounts never share a token");
    assert_eq!(
        batch,
        token(s.get_as(BATCH_SA, &format!("{sa}/default/token")).await)
    );
    let got = s.get(&format!("{sa}/default/token?scopes=,")).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);

    // A literal token, and GOOGLE_ACCESS_TOKEN when the file names none.
    let s = Scene::new(example_with(
        "token_lifetime_secs = 3599              # 60..=86400; 3599 when left out",
        "token = \"ya29.literal\"",
    ));
    let v = s.get(&format!("{sa}/default/token")).await.json();
    assert_eq!(
        (v["access_token"].as_str(), v["expires_in"].as_u64()),
        (Some("ya29.literal"), Some(3599)),
        "3599 by default"
    );
    let cfg = Arc::new(EmulatorConfig::parse(EXAMPLE, &token_env).unwrap());
    let mut s = Scene::new(cfg);
    s.env = token_env;
    assert_eq!(
        token(s.get(&format!("{sa}/default/token")).await),
        "ya29.from-env"
    );
}

#[tokio::test]
async fn a_failing_token_source_is_a_500_naming_the_cause() {
    let sa = "/computeMetadata/v1/instance/service-accounts/default/token";
    let cfg = Arc::new(EmulatorConfig::parse(EXAMPLE, &token_env).unwrap());
    let s = Scene::new(cfg); // GOOGLE_ACCESS_TOKEN was set at load time, not now
    let got = s.get(sa).await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(got.header("metadata-flavor"), "Google");
    assert!(
        got.body.contains(DEFAULT_SA) && got.body.contains(ACCESS_TOKEN_ENV),
        "{}",
        got.body
    );

    let s = Scene::new(example_with(
        "token_lifetime_secs = 3599              # 60..=86400; 3599 when left out",
        "token = { command = [\"false\"] }",
    ));
    let got = s.get(sa).await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        got.body.contains("\"false\"") && got.body.contains("failed"),
        "{}",
        got.body
    );
}

/// Verifies `jwt` with the published key set, as a relying party would; its claims.
fn verify(jwt: &str, keys: &Value) -> Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let pem = keys[header["kid"].as_str().unwrap()]
        .as_str()
        .expect("kid is published");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let public = rsa::RsaPublicKey::from_public_key_pem(pem).unwrap();
    let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public);
    let sig = rsa::pkcs1v15::Signature::try_from(b64.decode(parts[2]).unwrap().as_slice()).unwrap();
    verifier
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("the signature verifies with the published key");
    serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap()
}

#[tokio::test]
async fn id_tokens_verify_with_the_published_key_and_carry_the_claims() {
    let s = Scene::example();
    let keys = s
        .get("/computeMetadata/v1/imds-proxy/identity-keys")
        .await
        .json();
    let sa = "/computeMetadata/v1/instance/service-accounts";
    let got = s
        .get(&format!(
            "{sa}/default/identity?audience=https://svc.example&format=full&licenses=TRUE"
        ))
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.header("content-type"), "application/text");
    let c = verify(&got.body, &keys);
    let sub = c["sub"].as_str().unwrap();
    assert_eq!(sub.len(), 21);
    assert!(sub.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(c["azp"], sub);
    assert_eq!(c["iss"], "https://accounts.google.com");
    assert_eq!(c["aud"], "https://svc.example");
    assert_eq!(c["email"], DEFAULT_SA);
    assert_eq!(c["email_verified"], true);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = c["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now) <= 5);
    assert_eq!(c["exp"].as_u64().unwrap() - iat, 3600);
    assert_eq!(
        c["google"],
        json!({"compute_engine": {
            "instance_creation_timestamp": 1767225600,
            "instance_id": "4520031799277581759",
            "instance_name": "demo-vm",
            "license_id": ["2147286739765738111"],
            "project_id": "demo-project",
            "project_number": 123456789012u64,
            "zone": "us-central1-a",
        }})
    );

    let full = verify(
        &s.get(&format!("{sa}/default/identity?audience=a&format=full"))
            .await
            .body,
        &keys,
    );
    assert!(full["google"]["compute_engine"].get("license_id").is_none());
    let standard = verify(
        &s.get(&format!("{sa}/default/identity?audience=a"))
            .await
            .body,
        &keys,
    );
    assert!(standard.get("google").is_none());
    assert_eq!(standard["sub"], sub, "the id is stable");

    let batch = verify(
        &s.get_as(BATCH_SA, &format!("{sa}/default/identity?audience=a"))
            .await
            .body,
        &keys,
    );
    assert_eq!(batch["email"], BATCH_SA);
    assert_ne!(batch["sub"], sub);

    for query in [
        "",
        "?audience=",
        "?audience=a&format=compact",
        "?audience=a&licenses=maybe",
    ] {
        let got = s.get(&format!("{sa}/default/identity{query}")).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(got.header("metadata-flavor"), "Google");
    }
}

#[tokio::test]
async fn a_key_file_signs_instead_of_a_generated_key() {
    use rsa::pkcs8::EncodePrivateKey;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    let pem = rsa_key().to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    std::fs::write(&path, pem.as_bytes()).unwrap();
    let cfg = example_with(
        "# key_file = \"/etc/imds-proxy/identity-key.pem\"",
        &format!("key_file = {:?}", path.display().to_string()),
    );
    let s = Scene::with_gce(cfg, Gce::new(TokenCache::new()));
    let keys = s
        .get("/computeMetadata/v1/imds-proxy/identity-keys")
        .await
        .json();
    let expected = IdKey::from_key(rsa_key().clone()).unwrap();
    assert_eq!(keys, expected.key_set());
    let jwt = s
        .get("/computeMetadata/v1/instance/service-accounts/default/identity?audience=a")
        .await
        .body;
    verify(&jwt, &keys);
    assert!(s.gce.generated.get().is_none(), "no key was generated");
}

#[tokio::test]
async fn without_an_identity_section_there_is_no_identity_endpoint() {
    let start = EXAMPLE.find("[gce.identity]").unwrap();
    let end = start + EXAMPLE[start..].find("# key_file").unwrap();
    let s = Scene::new(parse(&format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..])));
    let sa = "/computeMetadata/v1/instance/service-accounts/default";
    assert_eq!(
        s.get(&format!("{sa}/")).await.body,
        "aliases\nemail\nscopes\ntoken\n"
    );
    for target in [
        format!("{sa}/identity?audience=a"),
        "/computeMetadata/v1/imds-proxy/identity-keys".to_owned(),
    ] {
        assert_eq!(
            s.get(&target).await.status,
            StatusCode::NOT_FOUND,
            "{target}"
        );
    }
}
