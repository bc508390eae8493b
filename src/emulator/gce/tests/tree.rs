//! The tree, its renderings, its errors and who sees which account.

use super::*;

#[tokio::test]
async fn every_answer_carries_google_headers_and_an_etag_of_its_body() {
    let s = Scene::example();
    for (method, target, status) in [
        (Method::GET, "/", StatusCode::OK),
        (Method::GET, "/computeMetadata/", StatusCode::OK),
        (
            Method::GET,
            "/computeMetadata/v1/project/project-id",
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/computeMetadata/v1/instance/?recursive=true",
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/computeMetadata/v1/instance/service-accounts/default/token",
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/computeMetadata/v1/instance/nope",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/computeMetadata/v1/instance?x=1",
            StatusCode::MOVED_PERMANENTLY,
        ),
        (
            Method::GET,
            "/computeMetadata/v1/instance/id?alt=xml",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/computeMetadata/v1/instance/id",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::HEAD,
            "/computeMetadata/v1/instance/id",
            StatusCode::OK,
        ),
    ] {
        let got = s
            .call(
                method.clone(),
                target,
                &Identity::default(),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(got.status, status, "{method} {target}: {}", got.body);
        assert_eq!(got.header("metadata-flavor"), "Google", "{target}");
        assert_eq!(got.header("server"), "Metadata Server for VM", "{target}");
        assert_eq!(got.header("x-xss-protection"), "0", "{target}");
        assert_eq!(got.header("x-frame-options"), "SAMEORIGIN", "{target}");
        assert_eq!(got.header("etag"), sha_etag(&got.body), "{target}");
    }
    let a = s.get("/computeMetadata/v1/project/project-id").await;
    let b = s.get("/computeMetadata/v1/project/project-id").await;
    assert_eq!(a.header("etag"), b.header("etag"), "the ETag is stable");
    let c = s
        .get("/computeMetadata/v1/project/numeric-project-id")
        .await;
    assert_ne!(a.header("etag"), c.header("etag"));
}

#[tokio::test]
async fn the_tree_serves_text_leaves_and_listings() {
    let s = Scene::example();
    let nic = "/computeMetadata/v1/instance/network-interfaces/0";
    let sa = "/computeMetadata/v1/instance/service-accounts";
    let cases: &[(&str, &str)] = &[
        ("/", "computeMetadata/\n"),
        ("/computeMetadata/", "v1/\n"),
        ("/computeMetadata/v1/", "instance/\nproject/\nuniverse/\n"),
        ("/computeMetadata/v1/project/", "attributes/\nnumeric-project-id\nproject-id\n"),
        ("/computeMetadata/v1/project/project-id", "demo-project"),
        ("/computeMetadata/v1/project/numeric-project-id", "123456789012"),
        (
            "/computeMetadata/v1/project/attributes/",
            "enable-guest-attributes\nenable-oslogin\nssh-keys\n",
        ),
        ("/computeMetadata/v1/project/attributes/enable-oslogin", "FALSE"),
        (
            "/computeMetadata/v1/instance/",
            "attributes/\ncpu-platform\ndescription\ndisks/\nguest-attributes/\nhostname\nid\nimage\nlicenses/\nmachine-type\nmaintenance-event\nname\nnetwork-interfaces/\npreempted\nscheduling/\nservice-accounts/\ntags\nvirtual-clock/\nzone\n",
        ),
        ("/computeMetadata/v1/instance/id", "4520031799277581759"),
        ("/computeMetadata/v1/instance/maintenance-event", "NONE"),
        ("/computeMetadata/v1/instance/preempted", "FALSE"),
        (
            "/computeMetadata/v1/instance/scheduling/",
            "automatic-restart\non-host-maintenance\npreemptible\n",
        ),
        ("/computeMetadata/v1/instance/scheduling/on-host-maintenance", "MIGRATE"),
        ("/computeMetadata/v1/instance/name", "demo-vm"),
        ("/computeMetadata/v1/instance/hostname", "demo-vm.us-central1-a.c.demo-project.internal"),
        ("/computeMetadata/v1/instance/zone", "projects/123456789012/zones/us-central1-a"),
        ("/computeMetadata/v1/instance/machine-type", "projects/123456789012/machineTypes/e2-medium"),
        ("/computeMetadata/v1/instance/cpu-platform", "Intel Broadwell"),
        ("/computeMetadata/v1/instance/image", "projects/debian-cloud/global/images/debian-12-bookworm-v20240815"),
        ("/computeMetadata/v1/instance/tags", "[\"http-server\"]"),
        ("/computeMetadata/v1/instance/attributes/", "startup-script\n"),
        ("/computeMetadata/v1/instance/attributes/startup-script", "#!/bin/sh\necho hello"),
        ("/computeMetadata/v1/instance/licenses/0/id", "2147286739765738111"),
        ("/computeMetadata/v1/instance/network-interfaces/", "0/\n"),
        (
            "/computeMetadata/v1/instance/network-interfaces/0/",
            "access-configs/\ndns-servers\nforwarded-ips/\ngateway\nip\nip-aliases/\nmac\nmtu\nnetwork\nsubnetmask\ntarget-instance-ips/\n",
        ),
        (&format!("{nic}/ip"), "10.128.0.2"),
        (&format!("{nic}/mac"), "42:01:0a:80:00:02"),
        (&format!("{nic}/network"), "projects/123456789012/networks/default"),
        (&format!("{nic}/gateway"), "10.128.0.1"),
        (&format!("{nic}/subnetmask"), "255.255.240.0"),
        (&format!("{nic}/mtu"), "1460"),
        (&format!("{nic}/access-configs/"), "0/\n"),
        (&format!("{nic}/access-configs/0/external-ip"), "203.0.113.10"),
        (&format!("{nic}/access-configs/0/type"), "ONE_TO_ONE_NAT"),
        ("/computeMetadata/v1/instance/disks/0/", "device-name\nindex\ninterface\nmode\ntype\n"),
        ("/computeMetadata/v1/instance/disks/0/device-name", "persistent-disk-0"),
        ("/computeMetadata/v1/instance/disks/0/index", "0"),
        ("/computeMetadata/v1/instance/disks/0/mode", "READ_WRITE"),
        ("/computeMetadata/v1/instance/disks/0/type", "PERSISTENT"),
        (&format!("{sa}/"), &format!("{BATCH_SA}/\ndefault/\n{DEFAULT_SA}/\n")),
        (&format!("{sa}/default/"), "aliases\nemail\nidentity\nscopes\ntoken\n"),
        (&format!("{sa}/default/email"), DEFAULT_SA),
        (&format!("{sa}/default/aliases"), "default\n"),
        (&format!("{sa}/default/scopes"), "https://www.googleapis.com/auth/cloud-platform\n"),
        (&format!("{sa}/{DEFAULT_SA}/email"), DEFAULT_SA),
        (&format!("{sa}/{DEFAULT_SA}/aliases"), "default\n"),
        (&format!("{sa}/{BATCH_SA}/email"), BATCH_SA),
        (&format!("{sa}/{BATCH_SA}/aliases"), ""),
        ("/computeMetadata/v1/universe/universe-domain", "googleapis.com"),
    ];
    for (target, body) in cases {
        let got = s.get(target).await;
        assert_eq!(got.status, StatusCode::OK, "{target}: {}", got.body);
        assert_eq!(got.header("content-type"), "application/text", "{target}");
        assert_eq!(&got.body, body, "{target}");
    }
}

#[tokio::test]
async fn unknown_and_retired_paths_are_google_404s() {
    let s = Scene::example();
    for target in [
        "/computeMetadata/v1/instance/nope",
        "/computeMetadata/v1/instance/id/",
        "/computeMetadata/v1beta1/instance/id",
        "/computeMetadata/v1beta1/",
        "/0.1/meta-data/",
        "/computeMetadata/v2/",
        "/COMPUTEMETADATA/v1/instance/id",
        "/computeMetadata/v1/instance/attributes/<script>",
        "/computeMetadata/v1/instance/service-accounts/nobody@x.iam.gserviceaccount.com/email",
        "/computeMetadata/v1/imds-proxy/",
    ] {
        let got = s.get(target).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{target}: {}", got.body);
        assert_eq!(got.header("content-type"), "text/html; charset=UTF-8");
        assert!(got.body.contains("Error 404 (Not Found)"), "{}", got.body);
        assert!(
            got.body.contains("was not found on this server"),
            "{}",
            got.body
        );
        assert!(
            !got.body.contains("<script>"),
            "the path is escaped: {}",
            got.body
        );
    }
    // No universe domain in the file: google-auth then assumes googleapis.com.
    let s = Scene::new(example_with("universe_domain = \"googleapis.com\"", ""));
    let got = s.get("/computeMetadata/v1/universe/universe-domain").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_directory_without_its_slash_redirects_keeping_the_query() {
    let s = Scene::example();
    for (target, location) in [
        ("/computeMetadata", "http://metadata.google.internal/computeMetadata/"),
        ("/computeMetadata/v1/instance", "http://metadata.google.internal/computeMetadata/v1/instance/"),
        (
            "/computeMetadata/v1/instance/service-accounts/default?recursive=true",
            "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
        ),
    ] {
        let got = s.get(target).await;
        assert_eq!(got.status, StatusCode::MOVED_PERMANENTLY, "{target}");
        assert_eq!(got.header("location"), location);
    }
}

#[tokio::test]
async fn recursive_answers_are_json_with_camel_case_keys() {
    let s = Scene::example();
    let inst = s
        .get("/computeMetadata/v1/instance/?recursive=true")
        .await
        .json();
    assert_eq!(inst["id"], json!(4520031799277581759u64));
    assert_eq!(
        inst["machineType"],
        "projects/123456789012/machineTypes/e2-medium"
    );
    assert_eq!(inst["cpuPlatform"], "Intel Broadwell");
    assert_eq!(inst["zone"], "projects/123456789012/zones/us-central1-a");
    assert_eq!(inst["tags"], json!(["http-server"]));
    assert_eq!(
        inst["attributes"],
        json!({"startup-script": "#!/bin/sh\necho hello"})
    );
    assert_eq!(inst["licenses"], json!([{"id": "2147286739765738111"}]));
    assert_eq!(
        inst["networkInterfaces"],
        json!([{
            "accessConfigs": [{"externalIp": "203.0.113.10", "type": "ONE_TO_ONE_NAT"}],
            "dnsServers": ["169.254.169.254"],
            "forwardedIps": [],
            "gateway": "10.128.0.1",
            "ip": "10.128.0.2",
            "ipAliases": [],
            "mac": "42:01:0a:80:00:02",
            "mtu": 1460,
            "network": "projects/123456789012/networks/default",
            "subnetmask": "255.255.240.0",
            "targetInstanceIps": [],
        }])
    );
    assert_eq!(
        inst["disks"],
        json!([{"deviceName": "persistent-disk-0", "index": 0, "interface": "SCSI", "mode": "READ_WRITE", "type": "PERSISTENT"}])
    );
    let default = json!({
        "aliases": ["default"],
        "email": DEFAULT_SA,
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
    });
    assert_eq!(
        inst["serviceAccounts"]["default"], default,
        "no token, no identity"
    );
    assert_eq!(inst["serviceAccounts"][DEFAULT_SA], default);
    assert_eq!(inst["serviceAccounts"][BATCH_SA]["aliases"], json!([]));

    // What google-auth asks before every token.
    let sa = s
        .get("/computeMetadata/v1/instance/service-accounts/default/?recursive=true")
        .await
        .json();
    assert_eq!(sa, default);

    let project = s
        .get("/computeMetadata/v1/project/?recursive=true")
        .await
        .json();
    let attrs = &parse(EXAMPLE).gce.clone().unwrap().project_attributes;
    assert_eq!(
        project,
        json!({
            "attributes": attrs,
            "numericProjectId": 123456789012u64,
            "projectId": "demo-project",
        })
    );
    let all = s.get("/computeMetadata/v1/?recursive=true").await.json();
    assert_eq!(all["universe"], json!({"universeDomain": "googleapis.com"}));
    assert_eq!(all["project"], project);
    assert_eq!(all["instance"], inst);
}

#[tokio::test]
async fn alt_selects_text_or_json() {
    let s = Scene::example();
    let sa = "/computeMetadata/v1/instance/service-accounts/default";
    let attrs = parse(EXAMPLE).gce.clone().unwrap().project_attributes;
    let project_text: String = attrs
        .iter()
        .map(|(k, v)| format!("attributes/{k} {v}\n"))
        .chain(["numeric-project-id 123456789012\nproject-id demo-project\n".to_owned()])
        .collect();
    let cases: &[(&str, &str, &str)] = &[
        (
            "/computeMetadata/v1/instance/disks/?recursive=true&alt=text",
            "application/text",
            "0/device-name persistent-disk-0\n0/index 0\n0/interface SCSI\n0/mode READ_WRITE\n0/type PERSISTENT\n",
        ),
        (
            &format!("{sa}/?recursive=true&alt=text"),
            "application/text",
            &format!("aliases default\nemail {DEFAULT_SA}\nscopes https://www.googleapis.com/auth/cloud-platform\n"),
        ),
        (
            "/computeMetadata/v1/project/?recursive=true&alt=text",
            "application/text",
            &project_text,
        ),
        ("/computeMetadata/v1/instance/name?alt=json", "application/json", "\"demo-vm\""),
        ("/computeMetadata/v1/instance/id?alt=json", "application/json", "4520031799277581759"),
        ("/computeMetadata/v1/instance/tags?alt=json", "application/json", "[\"http-server\"]"),
        ("/computeMetadata/v1/instance/id?recursive=true&alt=text", "application/text", "4520031799277581759"),
        ("/computeMetadata/v1/instance/name?alt=text", "application/text", "demo-vm"),
        ("/computeMetadata/v1/project/attributes/?alt=json", "application/json", "[\"enable-guest-attributes\",\"enable-oslogin\",\"ssh-keys\"]"),
        ("/computeMetadata/v1/instance/scheduling/?recursive=TRUE&alt=JSON", "application/json", "{\"automaticRestart\":\"TRUE\",\"onHostMaintenance\":\"MIGRATE\",\"preemptible\":\"FALSE\"}"),
    ];
    for (target, ctype, body) in cases {
        let got = s.get(target).await;
        assert_eq!(got.status, StatusCode::OK, "{target}");
        assert_eq!(got.header("content-type"), *ctype, "{target}");
        assert_eq!(&got.body, body, "{target}");
    }
    for target in [
        "/computeMetadata/v1/instance/id?alt=xml",
        "/computeMetadata/v1/instance/?recursive=yes",
        "/computeMetadata/v1/instance/id?alt=",
        "/computeMetadata/v1/instance/id?alt=%zz",
    ] {
        let got = s.get(target).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{target}");
        assert_eq!(got.header("metadata-flavor"), "Google");
    }
}

#[tokio::test]
async fn a_pinned_caller_sees_only_its_own_account() {
    let s = Scene::example();
    let sa = "/computeMetadata/v1/instance/service-accounts";
    for pin in [BATCH_SA, "Batch@Demo-Project.iam.gserviceaccount.com"] {
        let got = s.get_as(pin, &format!("{sa}/")).await;
        assert_eq!(got.body, format!("{BATCH_SA}/\ndefault/\n"));
        for name in ["default", BATCH_SA] {
            let got = s.get_as(pin, &format!("{sa}/{name}/email")).await;
            assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, BATCH_SA));
            let got = s.get_as(pin, &format!("{sa}/{name}/aliases")).await;
            assert_eq!(got.body, "default\n");
        }
        for target in [
            format!("{sa}/{DEFAULT_SA}/email"),
            format!("{sa}/{DEFAULT_SA}/token"),
            format!("{sa}/{DEFAULT_SA}/identity?audience=x"),
        ] {
            assert_eq!(
                s.get_as(pin, &target).await.status,
                StatusCode::NOT_FOUND,
                "{target}"
            );
        }
        let inst = s
            .get_as(pin, "/computeMetadata/v1/instance/?recursive=true")
            .await
            .json();
        let names: Vec<&String> = inst["serviceAccounts"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(names, [BATCH_SA, "default"]);
        assert_eq!(inst["serviceAccounts"]["default"]["email"], BATCH_SA);
        let text = s
            .get_as(pin, "/computeMetadata/v1/instance/?recursive=true&alt=text")
            .await
            .body;
        assert!(!text.contains(DEFAULT_SA), "{text}");
    }
    // A label naming an account the VM does not have: no account at all.
    let stranger = "stranger@elsewhere.iam.gserviceaccount.com";
    let got = s.get_as(stranger, &format!("{sa}/")).await;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, ""));
    for target in [
        format!("{sa}/default/email"),
        format!("{sa}/default/token"),
        format!("{sa}/{stranger}/email"),
    ] {
        assert_eq!(
            s.get_as(stranger, &target).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let inst = s
        .get_as(stranger, "/computeMetadata/v1/instance/?recursive=true")
        .await
        .json();
    assert_eq!(inst["serviceAccounts"], json!({}));
}

#[tokio::test]
async fn only_get_and_head_are_served() {
    let s = Scene::example();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let got = s
            .call(
                method.clone(),
                "/computeMetadata/v1/instance/service-accounts/default/token",
                &Identity::default(),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(got.header("allow"), "GET, HEAD");
    }
    let head = s
        .call(
            Method::HEAD,
            "/computeMetadata/v1/project/project-id",
            &Identity::default(),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("etag"), sha_etag("demo-project"));
}

#[tokio::test]
async fn without_a_gce_section_nothing_pretends_to_be_gce() {
    let s = Scene::new(Arc::new(EmulatorConfig {
        gce: None,
        ..(*parse(EXAMPLE)).clone()
    }));
    let got = s.get("/computeMetadata/v1/").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert!(got.headers.get("metadata-flavor").is_none());
}

#[tokio::test]
async fn google_auth_detection_reaches_the_gce_tree_through_the_emulator() {
    let (_tx, rx) = watch::channel(parse(EXAMPLE));
    let emu = crate::emulator::Emulator::new(rx);
    let mut headers = HeaderMap::new();
    headers.insert("metadata-flavor", HeaderValue::from_static("Google"));
    for (raw, status, body) in [
        ("/", StatusCode::OK, Some("computeMetadata/\n")),
        ("/0.1/meta-data/", StatusCode::NOT_FOUND, None),
    ] {
        let path = CanonicalPath::parse(raw).unwrap();
        let req = EmuRequest {
            method: &Method::GET,
            path: &path,
            query: None,
            headers: &headers,
            body: &bytes::Bytes::new(),
            identity: &Identity::default(),
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let resp = emu.answer(&req).await;
        assert_eq!(resp.status(), status, "{raw}");
        assert_eq!(resp.headers()["metadata-flavor"], "Google", "{raw}");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        if let Some(body) = body {
            assert_eq!(got, body.as_bytes());
        }
    }
}
