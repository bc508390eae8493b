use super::*;

fn jwt(claims: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2ln",
        e.encode(r#"{"alg":"RS256"}"#),
        e.encode(claims)
    )
}

#[test]
fn azure_reads_strings_and_numbers_and_takes_the_earlier_expiry() {
    let body = br#"{"access_token":"t","expires_in":"3599","expires_on":"1700003599","ext_expires_in":"7199","resource":"r","token_type":"Bearer"}"#;
    let p = parse(Kind::AzureToken, body).unwrap();
    assert_eq!(
        p.expiry,
        Expiry {
            relative: Some(3599),
            absolute: Some(1_700_003_599)
        }
    );
    assert_eq!(p.expiry.seconds_left(1_700_000_000), Some(3599));
    // A host clock ahead of the service's: the absolute time is the stricter.
    assert_eq!(p.expiry.seconds_left(1_700_000_100), Some(3499));
    assert_eq!(p.relative.len(), 2);
    assert_eq!(&body[p.relative[0].span.clone()], br#""3599""#);
    assert_eq!(p.relative[1].field, Field::ExtExpiresIn(7199));
    // Numbers as numbers, and only one of the two.
    let only_on = br#"{"access_token":"t","expires_on":1700000100}"#;
    assert_eq!(
        parse(Kind::AzureToken, only_on).unwrap().expiry,
        Expiry {
            relative: None,
            absolute: Some(1_700_000_100)
        }
    );
    let only_in = br#"{ "access_token" : "t" , "expires_in" : 60 }"#;
    let p = parse(Kind::AzureToken, only_in).unwrap();
    assert_eq!(p.expiry.relative, Some(60));
    assert!(!p.relative[0].quoted);
}

#[test]
fn answers_without_a_readable_expiry_are_not_tokens() {
    for body in [
        &br#"{"access_token":"t"}"#[..],
        br#"{"access_token":"","expires_in":"60"}"#,
        br#"{"expires_in":"60"}"#,
        br#"{"access_token":"t","expires_in":"soon"}"#,
        br#"{"access_token":"t","expires_in":-5}"#,
        br#"{"access_token":"t","expires_in":"60","expires_on":"x"}"#,
        // A key written with an escape: found by serde, not where the cache could
        // rewrite it.
        br#"{"access_token":"t","expires\u005fin":"60"}"#,
        br#"[1]"#,
        b"not json",
        b"",
    ] {
        assert_eq!(
            parse(Kind::AzureToken, body),
            None,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(
        parse(
            Kind::GceToken,
            br#"{"access_token":"t","token_type":"Bearer"}"#
        ),
        None
    );
}

#[test]
fn gce_access_and_id_tokens() {
    let body = br#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#;
    let p = parse(Kind::GceToken, body).unwrap();
    assert_eq!(p.expiry.relative, Some(3599));
    assert_eq!(p.expiry.absolute, None);
    let id = jwt(r#"{"aud":"a","exp":1700003600,"iat":1700000000}"#);
    let p = parse(Kind::GceIdToken, id.as_bytes()).unwrap();
    assert_eq!(p.expiry.absolute, Some(1_700_003_600));
    assert!(p.relative.is_empty());
    // Padded base64 and a trailing newline are read too.
    let padded = {
        let e = base64::engine::general_purpose::URL_SAFE;
        format!("{}.{}.sig\n", e.encode("{}"), e.encode(r#"{"exp":17}"#))
    };
    assert_eq!(
        parse(Kind::GceIdToken, padded.as_bytes())
            .unwrap()
            .expiry
            .absolute,
        Some(17)
    );
    for bad in [
        "a.b".to_string(),
        "a.b.c.d".into(),
        jwt(r#"{"aud":"a"}"#),
        jwt(r#"{"exp":"soon"}"#),
        "x.!!!.y".into(),
    ] {
        assert_eq!(parse(Kind::GceIdToken, bad.as_bytes()), None, "{bad}");
    }
}

#[test]
fn aws_credentials_expire_at_their_expiration() {
    let body = br#"{
  "Code" : "Success",
  "LastUpdated" : "2023-11-14T22:13:20Z",
  "Type" : "AWS-HMAC",
  "AccessKeyId" : "ASIA",
  "SecretAccessKey" : "s",
  "Token" : "t",
  "Expiration" : "2023-11-15T04:13:20Z"
}"#;
    let p = parse(Kind::AwsCredentials, body).unwrap();
    assert_eq!(p.expiry.absolute, Some(1_700_000_000 + 6 * 3600));
    let failed = br#"{"Code":"AssumeRoleUnauthorizedAccess","AccessKeyId":"A","Expiration":"2023-11-15T04:13:20Z"}"#;
    assert_eq!(parse(Kind::AwsCredentials, failed), None);
    let no_key = br#"{"Code":"Success","Expiration":"2023-11-15T04:13:20Z"}"#;
    assert_eq!(parse(Kind::AwsCredentials, no_key), None);
}

#[test]
fn utc_timestamps() {
    let table = [
        ("1970-01-01T00:00:00Z", Some(0)),
        ("2023-11-14T22:13:20Z", Some(1_700_000_000)),
        ("2000-02-29T00:00:00Z", Some(951_782_400)),
        ("2024-12-31T23:59:59.123Z", Some(1_735_689_599)),
        ("2100-03-01T00:00:00Z", Some(4_107_542_400)),
        ("2023-02-29T00:00:00Z", None),
        ("2023-13-01T00:00:00Z", None),
        ("2023-11-14T24:00:00Z", None),
        ("2023-11-14T22:13:20+00:00", None),
        ("2023-11-14 22:13:20Z", None),
        ("2023-11-14T22:13:20.Z", None),
        ("+023-11-14T22:13:20Z", None),
        ("1969-12-31T23:59:59Z", None),
        ("", None),
    ];
    for (s, want) in table {
        assert_eq!(parse_utc(s), want, "{s}");
    }
}

#[test]
fn served_answers_count_their_relative_fields_from_now() {
    let body = Bytes::from_static(
        br#"{"access_token":"t","expires_in":"3599","expires_on":"1700003599","ext_expires_in":"7199","x":{"expires_in":"1"}}"#,
    );
    let p = parse(Kind::AzureToken, &body).unwrap();
    let out = rewrite(&body, &p.relative, 3000, 600);
    assert_eq!(
        &out[..],
        &br#"{"access_token":"t","expires_in":"3000","expires_on":"1700003599","ext_expires_in":"6599","x":{"expires_in":"1"}}"#[..]
    );
    let gce =
        Bytes::from_static(br#"{"access_token":"t","expires_in":3599,"token_type":"Bearer"}"#);
    let p = parse(Kind::GceToken, &gce).unwrap();
    assert_eq!(
        &rewrite(&gce, &p.relative, 42, 3557)[..],
        &br#"{"access_token":"t","expires_in":42,"token_type":"Bearer"}"#[..]
    );
    // Nothing relative: the same bytes, shared.
    let aws = Bytes::from_static(b"{}");
    assert_eq!(rewrite(&aws, &[], 1, 1).as_ptr(), aws.as_ptr());
}

#[test]
fn the_scanner_finds_top_level_members_only() {
    let body = br#" { "a" : [1, {"b": "}"}], "c\"d": "x\\", "e":null,"f":-1.5e3 } "#;
    let m = members(body).unwrap();
    let keys: Vec<&[u8]> = m.iter().map(|(k, _)| &body[k.clone()]).collect();
    assert_eq!(keys, [&b"\"a\""[..], br#""c\"d""#, b"\"e\"", b"\"f\""]);
    let values: Vec<&[u8]> = m.iter().map(|(_, v)| &body[v.clone()]).collect();
    assert_eq!(
        values,
        [&br#"[1, {"b": "}"}]"#[..], br#""x\\""#, b"null", b"-1.5e3"]
    );
    assert_eq!(find(body, &m, "e"), Some(m[2].1.clone()));
    assert_eq!(find(body, &m, "b"), None);
    for bad in [
        &b"{"[..],
        b"{\"a\"}",
        b"{\"a\":}",
        b"{\"a\":1,}",
        b"{\"a\":1 \"b\":2}",
        b"\"a\"",
    ] {
        assert_eq!(members(bad), None, "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(members(b"{}"), Some(vec![]));
}
