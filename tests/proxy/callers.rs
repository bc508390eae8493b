//! Each caller as itself: containers' labelled policies in their provider's shape, a
//! forged source address refused, rate limits per container, AWS session tokens good only for their container, and
//! containers pinned to an Azure identity or a GCE account.

use harness::http::request;
use harness::rig::{container, from_raw, inventory_of, labelled};

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn each_container_gets_its_labelled_policy_in_the_providers_shape() {
    let up = FakeImds::loopback();
    let inventory = inventory_of(
        &[
            container('a', "127.0.0.2", "metadata-only"),
            container('b', "127.0.0.3", "deny"),
        ],
        false,
    );
    let p = start_with(up.addr(), 2000, Some(inventory), "deny").await;

    // metadata-only: metadata yes, credentials no (AWS-shaped refusal).
    assert_eq!(
        from("127.0.0.2", p.addr, "/latest/meta-data/instance-id")
            .await
            .status,
        200
    );
    let a = from(
        "127.0.0.2",
        p.addr,
        "/latest/meta-data/iam/security-credentials/role",
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("text/plain")
    );
    assert!(
        a.body
            .contains("policy metadata-only: deny /*/meta-data/iam/security-credentials/**"),
        "{a:?}"
    );
    // The Azure instance document arrives without the user data it embeds.
    let a = from(
        "127.0.0.2",
        p.addr,
        "/metadata/instance?api-version=2021-02-01",
    )
    .await;
    assert_eq!(a.status, 200);
    let doc: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(doc["compute"]["vmId"], "vm-1");
    assert!(
        doc["compute"].get("userData").is_none() && doc["compute"].get("customData").is_none(),
        "{doc}"
    );
    // deny: nothing.
    let a = from("127.0.0.3", p.addr, "/latest/meta-data/instance-id").await;
    assert_eq!(a.status, 403);
    // An address no container holds: the unknown-caller policy (deny here).
    let a = from("127.0.0.4", p.addr, "/").await;
    assert_eq!((a.status, json_error(&a).as_str()), (403, "forbidden"));
    assert_eq!(
        up.request_lines(),
        [
            // The proxy's own IMDSv2 session with the upstream, then the one AWS
            // request it allowed: containers never see the upstream's token.
            "PUT /latest/api/token HTTP/1.1",
            "GET /latest/meta-data/instance-id HTTP/1.1",
            "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_source_address_gets_no_identity_and_an_unreported_port_is_told_to_retry() {
    // 127.0.0.2 as a source address, but from b's bridge port: b forging a's address.
    let origins = FakeOrigins {
        forged: [("127.0.0.2".parse().unwrap(), 3)].into(),
    };
    let (p, up, a) = a_asks_for_credentials_beside_b(origins).await;
    assert_eq!(a.status, 403, "{a:?}");
    assert!(
        a.body
            .contains("source address 127.0.0.2 is not the calling container's"),
        "{a:?}"
    );
    // A port Docker has not reported: a bounded wait, then 503 with Retry-After, even
    // though the unknown-caller policy here is allow.
    let t = Instant::now();
    let a = from("127.0.0.7", p.addr, "/latest/meta-data/").await;
    let waited = t.elapsed();
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.headers.get("retry-after").map(String::as_str), Some("1"));
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "waited {waited:?}"
    );
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    // The host itself: the host policy (allow).
    assert_eq!(
        from("127.0.0.1", p.addr, "/latest/meta-data/").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_policy_answers_429_with_retry_after_per_container() {
    let up = FakeImds::loopback();
    let mut policies = Policies::builtin("allow", "deny");
    let mut limited = imds_proxy::policy::Policy::builtin("allow").unwrap();
    limited.name = "limited".into();
    limited.rate_limit = Some("1/min burst 2".parse().unwrap());
    policies.named.insert("limited".into(), limited);
    let list = [
        container('a', "127.0.0.2", "limited"),
        container('b', "127.0.0.3", "limited"),
    ];
    let inventory = inventory_of(&list, false);
    let p = start_full(
        up.addr(),
        2000,
        Some(inventory),
        policies,
        FakeOrigins::default(),
    )
    .await;
    let path = "/computeMetadata/v1/project/project-id";
    for _ in 0..2 {
        assert_eq!(from("127.0.0.2", p.addr, path).await.status, 200);
    }
    let a = from("127.0.0.2", p.addr, path).await;
    assert_eq!(a.status, 429, "{a:?}");
    // The provider's own shape (GCE here), with a wait the container can honour.
    assert_eq!(
        a.headers.get("metadata-flavor").map(String::as_str),
        Some("Google")
    );
    let wait: u64 = a.headers.get("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert!(
        a.body
            .contains("rate limit 1/min burst 2 of limited exceeded"),
        "{a:?}"
    );
    // Another container with the same policy has its own budget.
    assert_eq!(from("127.0.0.3", p.addr, path).await.status, 200);
    assert_eq!(
        up.count(),
        3,
        "the refused request never reached the upstream"
    );
}

/// Containers a (127.0.0.2, port 2, allow) and b (127.0.0.3, port 3, deny) behind a
/// proxy whose connection origins are `origins`, unknown callers allowed; a asks for
/// credentials.
async fn a_asks_for_credentials_beside_b(origins: FakeOrigins) -> (Running, FakeImds, Answer) {
    let up = FakeImds::loopback();
    let list = [
        container('a', "127.0.0.2", "allow"),
        container('b', "127.0.0.3", "deny"),
    ];
    let policies = Policies::builtin("allow", "allow");
    let p = start_full(
        up.addr(),
        2000,
        Some(inventory_of(&list, true)),
        policies,
        origins,
    )
    .await;
    let a = from(
        "127.0.0.2",
        p.addr,
        "/latest/meta-data/iam/security-credentials/role",
    )
    .await;
    (p, up, a)
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_session_tokens_are_issued_on_the_host_and_good_only_for_their_container() {
    let up = FakeImds::loopback();
    let list = [
        labelled('a', "127.0.0.2", &[]),
        labelled('b', "127.0.0.3", &[]),
        labelled('c', "127.0.0.4", &[("imds-proxy.policy", "v2only")]),
    ];
    let mut policies = Policies::builtin("allow", "deny");
    let mut v2only = imds_proxy::policy::Policy::builtin("allow").unwrap();
    v2only.name = "v2only".into();
    v2only.aws_tokens_required = true;
    policies.named.insert("v2only".into(), v2only);
    let p = start_full(
        up.addr(),
        2000,
        Some(inventory_of(&list, false)),
        policies,
        FakeOrigins::default(),
    )
    .await;
    let ttl = ("X-aws-ec2-metadata-token-ttl-seconds", "21600");
    let a = from_raw(
        "127.0.0.2",
        p.addr,
        request("PUT", "/latest/api/token", &[ttl]),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .map(String::as_str),
        Some("21600")
    );
    let token = a.body.clone();
    assert!(
        heads(&up).is_empty(),
        "the container's PUT never reaches the upstream"
    );
    for (ttl, status) in [("0", 400), ("21601", 400), ("soon", 400)] {
        let r = request(
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", ttl)],
        );
        assert_eq!(
            from_raw("127.0.0.2", p.addr, r).await.status,
            status,
            "ttl {ttl}"
        );
    }
    let relayed = request(
        "PUT",
        "/latest/api/token",
        &[ttl, ("X-Forwarded-For", "10.0.0.9")],
    );
    assert_eq!(from_raw("127.0.0.2", p.addr, relayed).await.status, 403);

    let md = "/latest/meta-data/instance-id";
    let with_token = request("GET", md, &[("X-aws-ec2-metadata-token", &token)]);
    assert_eq!(
        from_raw("127.0.0.2", p.addr, with_token.clone())
            .await
            .status,
        200
    );
    // The upstream saw the proxy's own session, never the container's token.
    let h = heads(&up);
    assert!(h[0].starts_with("PUT /latest/api/token HTTP/1.1"), "{h:?}");
    let get = h[1].to_ascii_lowercase();
    assert!(
        get.starts_with("get /latest/meta-data/instance-id"),
        "{get}"
    );
    // The upstream's session token is the one it issued the proxy.
    let session = up.issued()[0].to_ascii_lowercase();
    assert!(
        get.contains(&format!("x-aws-ec2-metadata-token: {session}\r\n")),
        "{get}"
    );
    assert!(!get.contains(&token.to_ascii_lowercase()), "{get}");
    // Another container cannot use it, nor can anyone use a made-up one.
    let b = from_raw("127.0.0.3", p.addr, with_token).await;
    assert_eq!((b.status, b.body.as_str()), (401, "Unauthorized\n"));
    let junk = request(
        "GET",
        md,
        &[("X-aws-ec2-metadata-token", "AQAEAFakeToken==")],
    );
    assert_eq!(from_raw("127.0.0.2", p.addr, junk).await.status, 401);
    // IMDSv1 works where the policy allows it, and not where it requires tokens.
    assert_eq!(
        from_raw("127.0.0.3", p.addr, request("GET", md, &[]))
            .await
            .status,
        200
    );
    assert_eq!(
        from_raw("127.0.0.4", p.addr, request("GET", md, &[]))
            .await
            .status,
        401
    );
    let c = from_raw(
        "127.0.0.4",
        p.addr,
        request("PUT", "/latest/api/token", &[ttl]),
    )
    .await;
    let r = request("GET", md, &[("X-aws-ec2-metadata-token", &c.body)]);
    assert_eq!(from_raw("127.0.0.4", p.addr, r).await.status, 200);
    assert_eq!(
        heads(&up).iter().filter(|h| h.starts_with("PUT")).count(),
        1,
        "one session, reused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_pinned_to_an_azure_identity_gets_it_and_no_other() {
    let up = FakeImds::loopback();
    let list = [
        labelled(
            'a',
            "127.0.0.2",
            &[("imds-proxy.azure.client-id", "aaaa-1111")],
        ),
        labelled('b', "127.0.0.3", &[]),
    ];
    let p = start_full(
        up.addr(),
        2000,
        Some(inventory_of(&list, false)),
        Policies::builtin("allow", "deny"),
        FakeOrigins::default(),
    )
    .await;
    let t = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com";
    let md = [("Metadata", "true")];
    assert_eq!(
        from_raw("127.0.0.2", p.addr, request("GET", t, &md))
            .await
            .status,
        200
    );
    let h = heads(&up);
    assert!(
        h[0].starts_with(&format!("GET {t}&client_id=aaaa-1111 HTTP/1.1")),
        "{h:?}"
    );
    let other = format!("{t}&client_id=bbbb-2222");
    let a = from_raw("127.0.0.2", p.addr, request("GET", &other, &md)).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            400,
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#
        )
    );
    // An unpinned container asks for what it wants, as on the instance itself.
    assert_eq!(
        from_raw("127.0.0.3", p.addr, request("GET", &other, &md))
            .await
            .status,
        200
    );
    // The SDK's probe (no Metadata header) gets IMDS's own answer, from the proxy.
    let probe = from_raw("127.0.0.3", p.addr, request("GET", t, &[])).await;
    assert_eq!(probe.status, 400);
    assert_eq!(
        probe.body,
        r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#
    );
    assert_eq!(
        heads(&up).len(),
        2,
        "refusals never reach the upstream: {:?}",
        heads(&up)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_pinned_to_a_gce_account_sees_it_as_default_and_no_other() {
    let up = FakeImds::loopback();
    let me = "me@p.iam.gserviceaccount.com";
    let list = [labelled(
        'a',
        "127.0.0.2",
        &[("imds-proxy.gce.service-account", me)],
    )];
    let p = start_full(
        up.addr(),
        2000,
        Some(inventory_of(&list, false)),
        Policies::builtin("allow", "deny"),
        FakeOrigins::default(),
    )
    .await;
    let sa = "/computeMetadata/v1/instance/service-accounts";
    let flavor = [("Metadata-Flavor", "Google")];
    let a = from_raw(
        "127.0.0.2",
        p.addr,
        request("GET", &format!("{sa}/default/token?scopes=s"), &flavor),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(
        heads(&up)[0].starts_with(&format!(
            "GET {sa}/me@p.iam.gserviceaccount.com/token?scopes=s HTTP/1.1"
        )),
        "{:?}",
        heads(&up)
    );
    let a = from_raw(
        "127.0.0.2",
        p.addr,
        request(
            "GET",
            &format!("{sa}/boss@p.iam.gserviceaccount.com/token"),
            &flavor,
        ),
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(
        a.headers.get("metadata-flavor").map(String::as_str),
        Some("Google")
    );
    let a = from_raw(
        "127.0.0.2",
        p.addr,
        request("GET", &format!("{sa}/default/token"), &[]),
    )
    .await;
    assert_eq!(a.status, 403, "no Metadata-Flavor header");
    assert_eq!(heads(&up).len(), 1);
}
