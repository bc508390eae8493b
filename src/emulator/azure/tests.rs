//! What azure-identity/MSAL (Python) and the Rust `azure_identity` crate rely on,
//! asserted through `Azure::answer` as the proxy calls it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value as Json;

use super::*;
use crate::emulator::{EmulatorConfig, EXAMPLE};
use crate::providers::identity::{AzureIdentity, Identity};
use crate::request::canonical::CanonicalPath;

const SYSTEM: &str = "5e2e9d7e-0000-4000-8000-000000000001";
const SYSTEM_OBJECT: &str = "9a0e4c2b-0000-4000-8000-000000000001";
const USER: &str = "11111111-2222-3333-4444-555555555555";
const USER_OBJECT: &str = "66666666-7777-8888-9999-000000000000";
const USER_RES: &str = "/subscriptions/8d10da13-0000-4000-8000-6e1c1e9f0001/resourceGroups/demo-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/reader";
const MGMT: &str = "https://management.azure.com/";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn env(name: &str) -> Option<String> {
    (name == "AZ_TOKEN").then(|| "from-env".to_owned())
}

fn config(text: &str) -> Arc<EmulatorConfig> {
    Arc::new(EmulatorConfig::parse(text, &|_| None).unwrap_or_else(|e| panic!("{e:?}")))
}

/// The example with the `[azure]` section's identities replaced.
fn with_identities(identities: &str) -> Arc<EmulatorConfig> {
    let base = EXAMPLE.split("[azure.identity.system]").next().unwrap();
    config(&format!("{base}\n{identities}"))
}

struct Got {
    status: StatusCode,
    content_type: String,
    body: String,
    headers: HeaderMap,
}

impl Got {
    fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn call_as(
    az: &Azure,
    cfg: &Arc<EmulatorConfig>,
    now: SystemTime,
    method: Method,
    target: &str,
    body: &[u8],
    identity: &Identity,
) -> Got {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = CanonicalPath::parse(path).unwrap();
    let headers = HeaderMap::new();
    let body = Bytes::copy_from_slice(body);
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
        query,
        headers: &headers,
        body: &body,
        identity,
        deadline: Instant::now() + Duration::from_secs(5),
    };
    let r = az.answer(&ctx, &req).await;
    let (parts, body) = r.into_parts();
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

async fn get(az: &Azure, cfg: &Arc<EmulatorConfig>, now: SystemTime, target: &str) -> Got {
    call_as(az, cfg, now, Method::GET, target, b"", &Identity::default()).await
}

fn azure() -> Azure {
    Azure::new(TokenCache::new())
}

fn token_url(extra: &str) -> String {
    format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={MGMT}{extra}")
}

#[tokio::test]
async fn versions_need_no_api_version_and_everything_else_does() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let g = get(&az, &cfg, t0(), "/metadata/versions").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.content_type, "application/json; charset=utf-8");
    let versions = g.json()["apiVersions"].as_array().unwrap().clone();
    assert_eq!(versions.first().unwrap(), "2017-03-01");
    assert_eq!(versions.last().unwrap(), "2025-04-07");
    assert!(
        versions.iter().any(|v| v == "2021-08-01"),
        "cloud-init asks for 2021-08-01 and falls back without it"
    );

    let want = serde_json::json!({
        "error": "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds",
        "newest-versions": ["2025-04-07", "2024-07-17", "2024-03-15"],
    });
    for target in [
        "/metadata/instance",
        "/metadata/instance?api-version=2017-07-01",
        "/metadata/instance?api-version=",
        "/metadata/instance/compute/vmId?format=text",
        "/metadata/identity/oauth2/token?resource=https://management.azure.com/",
        "/metadata/identity/oauth2/token?api-version=2099-01-01&resource=x",
        "/metadata/identity/info",
        "/metadata/scheduledevents?api-version=latest",
    ] {
        let g = get(&az, &cfg, t0(), target).await;
        assert_eq!(g.status, StatusCode::BAD_REQUEST, "{target}");
        assert_eq!(
            g.content_type, "application/json; charset=utf-8",
            "{target}"
        );
        assert_eq!(g.json(), want, "{target}");
    }
    // Rust azure_identity's version and Python's both work.
    for v in ["2018-02-01", "2019-08-01"] {
        let t = format!("/metadata/identity/oauth2/token?api-version={v}&resource={MGMT}");
        assert_eq!(get(&az, &cfg, t0(), &t).await.status, StatusCode::OK, "{v}");
    }
}

#[tokio::test]
async fn duplicate_query_parameters_are_refused() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    for (target, oauth) in [
        ("/metadata/instance?api-version=2021-02-01&api-version=2021-02-01", false),
        ("/metadata/instance?api-version=2021-02-01&format=text&Format=json", false),
        ("/metadata/versions?a=1&a=2", false),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=a&resource=b",
            true,
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=a&client_id=x&client%5Fid=y",
            true,
        ),
    ] {
        let g = get(&az, &cfg, t0(), target).await;
        assert_eq!(g.status, StatusCode::BAD_REQUEST, "{target}");
        let j = g.json();
        if oauth {
            assert_eq!(j["error"], "invalid_request", "{target}");
            assert!(j["error_description"].as_str().unwrap().starts_with("Duplicate query parameter"));
        } else {
            assert!(j["error"].as_str().unwrap().starts_with("Bad request. Duplicate query parameter"), "{j}");
        }
    }
}

fn all_primitives_are_strings(v: &Json) -> bool {
    match v {
        Json::String(_) => true,
        Json::Array(a) => a.iter().all(all_primitives_are_strings),
        Json::Object(m) => m.values().all(all_primitives_are_strings),
        _ => false,
    }
}

#[tokio::test]
async fn the_document_has_the_fields_of_the_version_asked_and_extended_when_asked() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let doc = |q: &'static str| {
        let (az, cfg) = (&az, &cfg);
        async move { get(az, cfg, t0(), &format!("/metadata/instance?{q}")).await }
    };
    let old = doc("api-version=2019-06-01").await;
    assert_eq!(old.status, StatusCode::OK);
    let old = old.json();
    assert!(old["compute"].get("userData").is_none(), "{old}");
    assert!(old["compute"].get("tagsList").is_none(), "{old}");
    assert_eq!(
        old["compute"]["vmId"],
        "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    );
    let new = doc("api-version=2021-08-01&extended=true").await.json();
    assert_eq!(new["compute"]["userData"], "ZWNobyBoZWxsbw==");
    assert_eq!(new["compute"]["osProfile"]["adminUsername"], "azureuser");
    assert!(new["compute"]["publicKeys"][0]["keyData"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));
    assert_eq!(new["extended"]["compute"]["ppsType"], "None");
    let plain = doc("api-version=2021-08-01").await.json();
    assert!(plain.get("extended").is_none(), "only with extended=true");
    let early = doc("api-version=2021-02-01&extended=true").await.json();
    assert!(
        early.get("extended").is_none(),
        "extended came with 2021-03-01"
    );
    let bad = doc("api-version=2021-08-01&extended=maybe").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // A file that narrows the versions refuses the others.
    let narrow = config("[azure]\ntenant_id = \"t\"\napi_versions = [\"2019-06-01\"]\n");
    let g = get(
        &az,
        &narrow,
        t0(),
        "/metadata/instance?api-version=2021-08-01",
    )
    .await;
    assert_eq!(g.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        g.json()["newest-versions"],
        serde_json::json!(["2019-06-01"])
    );
}

#[tokio::test]
async fn the_instance_document_and_its_sub_paths() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let g = get(&az, &cfg, t0(), "/metadata/instance?api-version=2021-02-01").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.content_type, "application/json; charset=utf-8");
    let doc = g.json();
    assert!(all_primitives_are_strings(&doc), "{doc}");
    assert_eq!(
        doc["compute"]["vmId"],
        "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    );
    let bare = config("[azure]\ntenant_id = \"t\"\n");
    let d = get(
        &az,
        &bare,
        t0(),
        "/metadata/instance?api-version=2021-02-01",
    )
    .await
    .json();
    assert_eq!(
        d["compute"]["platformFaultDomain"], "",
        "missing values are \"\""
    );
    assert_eq!(doc["network"]["interface"][0]["macAddress"], "000D3AF806EC");

    let v = "api-version=2021-02-01";
    for (target, status, content_type, body) in [
        ("/metadata/instance/compute/vmId?{v}&format=text", 200, "text/plain; charset=utf-8", "02aab8a4-74ef-476e-8182-f6d2ba4166a6"),
        ("/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress?{v}&format=text", 200, "text/plain; charset=utf-8", "203.0.113.20"),
        ("/Metadata/Instance/Compute/VMID?{v}&format=text", 200, "text/plain; charset=utf-8", "02aab8a4-74ef-476e-8182-f6d2ba4166a6"),
        ("/metadata/instance/compute/osProfile/disablePasswordAuthentication?{v}&format=text", 200, "text/plain; charset=utf-8", "true"),
        ("/metadata/instance/compute/tagsList?{v}&format=text", 200, "text/plain; charset=utf-8", "0/"),
        ("/metadata/instance/compute/tagsList?{v}", 200, "application/json; charset=utf-8", r#"[{"name":"env","value":"demo"}]"#),
        ("/metadata/instance/network/interface/0/ipv4/subnet/0?{v}", 200, "application/json; charset=utf-8", r#"{"address":"10.0.0.0","prefix":"24"}"#),
        ("/metadata/instance/compute/vmId?{v}", 400, "application/json; charset=utf-8", r#"{"error":"Bad request. Leaf nodes can only be requested with format=text"}"#),
        ("/metadata/instance/compute/vmId?{v}&format=json", 400, "application/json; charset=utf-8", r#"{"error":"Bad request. Leaf nodes can only be requested with format=text"}"#),
        ("/metadata/instance/compute/vmId?{v}&format=xml", 400, "application/json; charset=utf-8", r#"{"error":"Bad request. format must be json or text"}"#),
        ("/metadata/instance/compute/noSuchKey?{v}", 404, "application/json; charset=utf-8", r#"{"error":"Not found"}"#),
        ("/metadata/instance/network/interface/7?{v}", 404, "application/json; charset=utf-8", r#"{"error":"Not found"}"#),
    ] {
        let target = target.replace("{v}", v);
        let g = get(&az, &cfg, t0(), &target).await;
        assert_eq!(g.status.as_u16(), status, "{target}: {}", g.body);
        assert_eq!(g.content_type, content_type, "{target}");
        assert_eq!(g.body, body, "{target}");
    }
}

#[tokio::test]
async fn token_answers_carry_every_number_as_a_string() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let now = t0() + Duration::from_millis(700);
    let g = get(&az, &cfg, now, &token_url("")).await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.body);
    assert_eq!(g.content_type, "application/json; charset=utf-8");
    let j = g.json();
    for k in [
        "access_token",
        "refresh_token",
        "expires_in",
        "expires_on",
        "not_before",
        "ext_expires_in",
        "resource",
        "token_type",
        "client_id",
    ] {
        assert!(j[k].is_string(), "{k} must be a JSON string: {j}");
    }
    assert!(!j["access_token"].as_str().unwrap().is_empty());
    assert_eq!(j["refresh_token"], "");
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["resource"], MGMT);
    assert_eq!(j["client_id"], SYSTEM);
    let n = |k: &str| j[k].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(n("expires_in"), 86_399);
    // What azure_identity (Rust) reads as the expiry, and MSAL as now + expires_in.
    assert_eq!(n("expires_on"), 1_700_000_000 + n("expires_in"));
    assert_eq!(n("not_before"), 1_700_000_000);

    // Half a lifetime later the same token, with the time left counted down.
    let later = t0() + Duration::from_secs(40_000);
    let j2 = get(&az, &cfg, later, &token_url("")).await.json();
    assert_eq!(j2["access_token"], j["access_token"]);
    assert_eq!(j2["expires_in"], (86_399 - 40_000).to_string());
    assert_eq!(j2["expires_on"], j["expires_on"]);
    // Past half its life, a new one with a whole lifetime.
    let renewed = t0() + Duration::from_secs(43_300);
    let j3 = get(&az, &cfg, renewed, &token_url("")).await.json();
    assert_ne!(j3["access_token"], j["access_token"]);
    assert_eq!(j3["expires_in"], "86399");
}

#[tokio::test]
async fn identity_parameters_select_an_identity_or_none() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let not_found =
        serde_json::json!({"error": "invalid_request", "error_description": "Identity not found"});
    for (extra, want) in [
        (String::new(), Ok(SYSTEM)),
        (format!("&client_id={USER}"), Ok(USER)),
        (format!("&client_id={}", USER.to_uppercase()), Ok(USER)),
        (format!("&object_id={USER_OBJECT}"), Ok(USER)),
        (format!("&msi_res_id={USER_RES}"), Ok(USER)),
        (
            format!("&msi_res_id={}", USER_RES.replace('/', "%2F")),
            Ok(USER),
        ),
        (format!("&mi_res_id={}", USER_RES.to_lowercase()), Ok(USER)),
        (format!("&client_id={SYSTEM}"), Ok(SYSTEM)),
        (format!("&object_id={SYSTEM_OBJECT}"), Ok(SYSTEM)),
        (
            "&client_id=00000000-0000-0000-0000-000000000000".into(),
            Err(not_found.clone()),
        ),
        ("&client_id=".into(), Err(not_found.clone())),
        (format!("&object_id={USER}"), Err(not_found.clone())),
        (
            format!("&client_id={USER}&object_id={USER_OBJECT}"),
            Err(
                serde_json::json!({"error": "invalid_request", "error_description": "Only one of client_id, object_id and msi_res_id may be specified"}),
            ),
        ),
        (
            format!("&msi_res_id={USER_RES}&mi_res_id={USER_RES}"),
            Err(
                serde_json::json!({"error": "invalid_request", "error_description": "Only one of client_id, object_id and msi_res_id may be specified"}),
            ),
        ),
    ] {
        let g = get(&az, &cfg, t0(), &token_url(&extra)).await;
        match want {
            Ok(client) => {
                assert_eq!(g.status, StatusCode::OK, "{extra}: {}", g.body);
                assert_eq!(g.json()["client_id"], client, "{extra}");
            }
            Err(body) => {
                assert_eq!(g.status, StatusCode::BAD_REQUEST, "{extra}");
                assert_eq!(g.content_type, "application/json; charset=utf-8");
                assert_eq!(g.json(), body, "{extra}");
            }
        }
    }
    // The id the request named is echoed, as the swagger shows.
    let j = get(
        &az,
        &cfg,
        t0(),
        &token_url(&format!("&object_id={USER_OBJECT}")),
    )
    .await
    .json();
    assert_eq!(j["object_id"], USER_OBJECT);
    let j = get(
        &az,
        &cfg,
        t0(),
        &token_url(&format!("&mi_res_id={USER_RES}")),
    )
    .await
    .json();
    assert_eq!(j["msi_res_id"], USER_RES);
}

#[tokio::test]
async fn a_pinned_caller_gets_its_identity_and_no_other() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let pinned = Identity {
        azure: Some(AzureIdentity {
            msi_res_id: Some(USER_RES.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let as_pinned = |extra: String| {
        let (az, cfg, pinned) = (&az, &cfg, &pinned);
        async move { call_as(az, cfg, t0(), Method::GET, &token_url(&extra), b"", pinned).await }
    };
    let g = as_pinned(String::new()).await;
    assert_eq!(g.json()["client_id"], USER);
    let g = as_pinned(format!("&client_id={USER}")).await;
    assert_eq!(g.json()["client_id"], USER);
    let g = as_pinned(format!("&client_id={SYSTEM}")).await;
    assert_eq!(g.status, StatusCode::BAD_REQUEST);
    assert_eq!(g.json()["error_description"], "Identity not found");
}

#[tokio::test]
async fn two_identities_or_two_resources_never_share_a_token() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let token = |extra: String| {
        let (az, cfg) = (&az, &cfg);
        async move {
            let j = get(az, cfg, t0(), &extra).await.json();
            j["access_token"].as_str().unwrap().to_owned()
        }
    };
    let base = "/metadata/identity/oauth2/token?api-version=2018-02-01";
    let system_mgmt = token(format!("{base}&resource=https://management.azure.com/")).await;
    let system_mgmt_encoded = token(format!(
        "{base}&resource=https%3A%2F%2Fmanagement.azure.com%2F"
    ))
    .await;
    let system_vault = token(format!("{base}&resource=https://vault.azure.net")).await;
    let user_mgmt = token(format!(
        "{base}&resource=https://management.azure.com/&client_id={USER}"
    ))
    .await;
    let user_mgmt_by_object = token(format!(
        "{base}&resource=https://management.azure.com/&object_id={USER_OBJECT}"
    ))
    .await;
    assert_eq!(
        system_mgmt, system_mgmt_encoded,
        "encoded and unencoded resources are one resource"
    );
    assert_ne!(system_mgmt, system_vault);
    assert_ne!(system_mgmt, user_mgmt);
    assert_eq!(
        user_mgmt, user_mgmt_by_object,
        "one identity, however it is named"
    );
}

#[tokio::test]
async fn resource_is_required() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    for target in [
        "/metadata/identity/oauth2/token?api-version=2018-02-01",
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=",
    ] {
        let g = get(&az, &cfg, t0(), target).await;
        assert_eq!(g.status, StatusCode::BAD_REQUEST, "{target}");
        assert_eq!(g.json()["error"], "invalid_request", "{target}");
    }
    let g = get(&az, &cfg, t0(), &token_url("&bypass_cache=yes")).await;
    assert_eq!(g.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bypass_cache_answers_a_fresh_token_that_later_requests_get() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let at = |secs: u64, extra: &'static str| {
        let (az, cfg) = (&az, &cfg);
        async move {
            let j = get(az, cfg, t0() + Duration::from_secs(secs), &token_url(extra))
                .await
                .json();
            (
                j["access_token"].as_str().unwrap().to_owned(),
                j["expires_in"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (cached, _) = at(0, "").await;
    let (fresh, life) = at(100, "&bypass_cache=true").await;
    assert_ne!(fresh, cached);
    assert_eq!(life, "86399", "a fresh token has a whole lifetime");
    assert_eq!(
        at(200, "").await.0,
        fresh,
        "later requests get the fresh token"
    );
    assert_ne!(at(300, "&bypass_cache=true").await.0, fresh);
}

#[tokio::test]
async fn token_sources_and_lifetimes_come_from_the_file() {
    let az = azure();
    let cfg = with_identities(
        r#"
[azure.identity.system]
client_id = "sys"
token = "literal-token"

[[azure.identity.user_assigned]]
client_id = "env-id"
token = { env = "AZ_TOKEN" }
token_lifetime_secs = 3600

[[azure.identity.user_assigned]]
client_id = "cmd-id"
token = { command = ["echo", "tok-for-{resource}"] }

[[azure.identity.user_assigned]]
client_id = "unset-id"
token = { env = "NOT_SET" }
"#,
    );
    let j = get(&az, &cfg, t0(), &token_url("")).await.json();
    assert_eq!(j["access_token"], "literal-token");
    assert_eq!(j["expires_in"], DEFAULT_TOKEN_LIFETIME_SECS.to_string());
    let j = get(&az, &cfg, t0(), &token_url("&client_id=env-id"))
        .await
        .json();
    assert_eq!(j["access_token"], "from-env");
    assert_eq!(j["expires_in"], "3600");
    let j = get(&az, &cfg, t0(), &token_url("&client_id=cmd-id"))
        .await
        .json();
    assert_eq!(j["access_token"], format!("tok-for-{MGMT}"));
    let g = get(
        &az,
        &cfg,
        t0(),
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=-x&client_id=cmd-id",
    )
    .await;
    assert_eq!(
        g.status,
        StatusCode::BAD_REQUEST,
        "a resource never reads as an option"
    );
    let g = get(&az, &cfg, t0(), &token_url("&client_id=unset-id")).await;
    assert_eq!(g.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(g.json()["error"], "unknown");
    assert!(
        !g.body.contains("NOT_SET"),
        "the cause is logged, not answered"
    );
}

#[tokio::test]
async fn without_a_system_identity_one_user_assigned_identity_is_the_default() {
    let az = azure();
    let one = with_identities("[[azure.identity.user_assigned]]\nclient_id = \"only\"\n");
    let j = get(&az, &one, t0(), &token_url("")).await.json();
    assert_eq!(j["client_id"], "only");
    let two = with_identities(
        "[[azure.identity.user_assigned]]\nclient_id = \"a\"\n[[azure.identity.user_assigned]]\nclient_id = \"b\"\n",
    );
    let g = get(&az, &two, t0(), &token_url("")).await;
    assert_eq!(g.status, StatusCode::BAD_REQUEST);
    assert_eq!(g.json()["error_description"], identity::MULTIPLE_IDENTITIES);
    let none = with_identities("");
    let g = get(&az, &none, t0(), &token_url("")).await;
    assert_eq!(g.json()["error_description"], "Identity not found");
}

#[tokio::test]
async fn identity_info_names_the_tenant() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let g = get(
        &az,
        &cfg,
        t0(),
        "/metadata/identity/info?api-version=2018-02-01",
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(
        g.json(),
        serde_json::json!({"tenantId": "72f988bf-0000-4000-8000-2d7cd011db47"})
    );
}

#[tokio::test]
async fn scheduled_events_are_served_and_approved() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let url = "/metadata/scheduledevents?api-version=2020-07-01";
    let doc = get(&az, &cfg, t0(), url).await.json();
    assert_eq!(
        doc["DocumentIncarnation"], 1,
        "a number, as the real service sends"
    );
    let event = &doc["Events"][0];
    assert_eq!(event["EventId"], "602d9444-d2cd-49c7-8624-8643e7171297");
    assert_eq!(event["DurationInSeconds"], 9);
    assert_eq!(event["Resources"][0], "demo-vm");

    let post = |body: &'static [u8]| {
        let (az, cfg) = (&az, &cfg);
        async move { call_as(az, cfg, t0(), Method::POST, url, body, &Identity::default()).await }
    };
    for bad in [&b"{"[..], b"{\"StartRequests\":[{}]}", b"[]"] {
        let g = post(bad).await;
        assert_eq!(g.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(g.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("Bad request."));
    }
    let g =
        post(br#"{"StartRequests":[{"EventId":"602d9444-d2cd-49c7-8624-8643e7171297"}]}"#).await;
    assert_eq!(g.status, StatusCode::OK);
    // As on Azure: the event is started, still listed, and the document is newer.
    let doc = get(&az, &cfg, t0(), url).await.json();
    assert_eq!(doc["DocumentIncarnation"], 2);
    assert_eq!(doc["Events"].as_array().unwrap().len(), 1);
    assert_eq!(doc["Events"][0]["EventStatus"], "Started");
    assert_eq!(doc["Events"][0]["EventId"], event["EventId"]);
    // A POST without api-version is refused like any request.
    let g = call_as(
        &az,
        &cfg,
        t0(),
        Method::POST,
        "/metadata/scheduledevents",
        b"{}",
        &Identity::default(),
    )
    .await;
    assert_eq!(g.status, StatusCode::BAD_REQUEST);
}

/// The signed content of a PKCS#7 signedData with the content attached, after checking
/// its signature against the emulator's published certificate (RSA key of the one
/// signer), as a relying party would.
fn verified_attached(der: &[u8]) -> Vec<u8> {
    use cms::content_info::ContentInfo;
    use cms::signed_data::SignedData;
    use rsa::signature::Verifier;
    use x509_cert::der::{Decode, Encode};
    let ci = ContentInfo::from_der(der).unwrap();
    let sd: SignedData = ci.content.decode_as().unwrap();
    let content = sd
        .encap_content_info
        .econtent
        .as_ref()
        .unwrap()
        .value()
        .to_vec();
    let si = sd.signer_infos.0.get(0).unwrap();
    let attrs = si.signed_attrs.as_ref().unwrap();
    let digest = attrs
        .iter()
        .find(|a| a.oid == const_oid::db::rfc5911::ID_MESSAGE_DIGEST)
        .unwrap()
        .values
        .get(0)
        .unwrap()
        .value()
        .to_vec();
    use sha2::Digest;
    assert_eq!(digest, sha2::Sha256::digest(&content).to_vec());
    let published = crate::emulator::signing::test_keys();
    let cert_pem = futures::executor::block_on(published.get(&Default::default()))
        .unwrap()
        .certificate_pem()
        .to_owned();
    use x509_cert::der::DecodePem;
    let cert = x509_cert::Certificate::from_pem(cert_pem.as_bytes()).unwrap();
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap();
    use rsa::pkcs8::DecodePublicKey;
    let public = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
    let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public);
    let sig = rsa::pkcs1v15::Signature::try_from(si.signature.as_bytes()).unwrap();
    verifier.verify(&attrs.to_der().unwrap(), &sig).unwrap();
    content
}

#[tokio::test]
async fn the_attested_document_is_signed_with_the_nonce_and_the_vms_identity() {
    use base64::Engine;
    let (az, cfg) = (azure(), config(EXAMPLE));
    let g = get(
        &az,
        &cfg,
        t0(),
        "/metadata/attested/document?api-version=2021-02-01&nonce=1234567890",
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    let body = g.json();
    assert_eq!(body["encoding"], "pkcs7");
    let der = base64::engine::general_purpose::STANDARD
        .decode(body["signature"].as_str().unwrap())
        .unwrap();
    let content: Json = serde_json::from_slice(&verified_attached(&der)).unwrap();
    assert_eq!(content["nonce"], "1234567890");
    assert_eq!(content["vmId"], "02aab8a4-74ef-476e-8182-f6d2ba4166a6");
    assert_eq!(
        content["subscriptionId"],
        "8d10da13-0000-4000-8000-6e1c1e9f0001"
    );
    assert_eq!(content["sku"], "12");
    assert!(content["timeStamp"]["expiresOn"]
        .as_str()
        .unwrap()
        .ends_with(" -0000"));
    let bad = get(
        &az,
        &cfg,
        t0(),
        "/metadata/attested/document?api-version=2021-02-01&nonce=a%20b",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn generated_tokens_are_jwts_with_the_claims_of_a_managed_identity() {
    use base64::Engine;
    let (az, cfg) = (azure(), config(EXAMPLE));
    let claims = |token: &str| -> Json {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let g = get(&az, &cfg, t0(), &token_url("")).await;
    let body = g.json();
    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    let now = t0()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(c["aud"], MGMT);
    assert_eq!(
        c["iss"],
        "https://sts.windows.net/72f988bf-0000-4000-8000-2d7cd011db47/"
    );
    assert_eq!(c["tid"], "72f988bf-0000-4000-8000-2d7cd011db47");
    assert_eq!(c["appid"], "5e2e9d7e-0000-4000-8000-000000000001");
    assert_eq!(c["oid"], "9a0e4c2b-0000-4000-8000-000000000001");
    assert!(c["xms_mirid"]
        .as_str()
        .unwrap()
        .ends_with("/virtualMachines/demo-vm"));
    assert_eq!(c["nbf"], now);
    assert_eq!(c["exp"].to_string(), body["expires_on"].as_str().unwrap());
    let u = get(
        &az,
        &cfg,
        t0(),
        &token_url("&client_id=11111111-2222-3333-4444-555555555555"),
    )
    .await;
    let c = claims(u.json()["access_token"].as_str().unwrap());
    assert_eq!(c["appid"], "11111111-2222-3333-4444-555555555555");
    assert!(c["xms_mirid"]
        .as_str()
        .unwrap()
        .ends_with("/userAssignedIdentities/reader"));
    // The signature verifies against the published key set.
    let keys = crate::emulator::signing::test_keys();
    let key = futures::executor::block_on(keys.get(&Default::default())).unwrap();
    let set = key.key_set();
    let header: Json = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], set["keys"][0]["kid"]);
    let jwk = &set["keys"][0];
    let b = |k: &str| {
        rsa::BigUint::from_bytes_be(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk[k].as_str().unwrap())
                .unwrap(),
        )
    };
    use rsa::signature::Verifier;
    let public = rsa::RsaPublicKey::new(b("n"), b("e")).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public)
        .verify(
            input.as_bytes(),
            &rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap(),
        )
        .unwrap();
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    for (method, target, status, allow) in [
        (
            Method::POST,
            "/metadata/attested/document?api-version=2021-02-01",
            405,
            Some("GET"),
        ),
        (
            Method::GET,
            "/metadata/loadbalancer?api-version=2021-02-01",
            404,
            None,
        ),
        (
            Method::GET,
            "/metadata/identity/oauth2/authorize?api-version=2021-02-01",
            404,
            None,
        ),
        (
            Method::POST,
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
            405,
            Some("GET"),
        ),
        (
            Method::PUT,
            "/metadata/instance?api-version=2021-02-01",
            405,
            Some("GET"),
        ),
        (Method::HEAD, "/metadata/versions", 405, Some("GET")),
        (
            Method::DELETE,
            "/metadata/scheduledevents?api-version=2020-07-01",
            405,
            Some("GET, POST"),
        ),
    ] {
        let g = call_as(
            &az,
            &cfg,
            t0(),
            method.clone(),
            target,
            b"",
            &Identity::default(),
        )
        .await;
        assert_eq!(g.status.as_u16(), status, "{method} {target}");
        assert_eq!(
            g.content_type, "application/json; charset=utf-8",
            "{target}"
        );
        assert!(g.json()["error"].is_string(), "{target}");
        assert_eq!(
            g.headers
                .get(http::header::ALLOW)
                .map(|v| v.to_str().unwrap()),
            allow,
            "{target}"
        );
    }
    let g = call_as(
        &az,
        &cfg,
        t0(),
        Method::POST,
        "/metadata/identity/oauth2/token",
        b"",
        &Identity::default(),
    )
    .await;
    assert_eq!(g.json()["error"], "method_not_allowed");
}

#[test]
fn config_problems_name_their_keys() {
    for (section, key) in [
        ("tenant_id = \"t\"\nextended = 1", "azure.extended: must be a table"),
        ("api_versions = []\ntenant_id = \"t\"", "azure.api_versions: must name at least one"),
        ("api_versions = [\"a\", \"a\"]\ntenant_id = \"t\"", "azure.api_versions[1]: "),
        ("api_versions = [\"a\", 1]\ntenant_id = \"t\"", "azure.api_versions[1]: "),
        ("api_versions = [\"a\"]", "azure.tenant_id: is required"),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\ncolour = 1", "azure.colour: unknown key"),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\ninstance = 1", "azure.instance: must be a table"),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[identity.system]\nobject_id = \"o\"", "azure.identity.system.client_id: is required"),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[identity.system]\nclient_id = \"c\"\nmsi_res_id = \"/x\"", "azure.identity.system.msi_res_id: "),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[identity.system]\nclient_id = \"c\"\ntoken_lifetime_secs = 10", "azure.identity.system.token_lifetime_secs: "),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[identity.system]\nclient_id = \"c\"\ntoken = \"\"", "azure.identity.system.token: "),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[identity.system]\nclient_id = \"c\"\ntoken = { nope = 1 }", "azure.identity.system.token: "),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[identity.system]\nclient_id = \"c\"\nclientid = \"c\"", "azure.identity.system.clientid: unknown key"),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[identity.system]\nclient_id = \"C\"\n[[identity.user_assigned]]\nclient_id = \"c\"", "azure.identity.user_assigned[0].client_id: is used by another identity"),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[[identity.user_assigned]]\nclient_id = \"a b\"", "azure.identity.user_assigned[0].client_id: "),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[[scheduled_events.events]]\nEventType = \"Reboot\"", "azure.scheduled_events.events[0].EventId: is required"),
        ("api_versions = [\"a\"]\ntenant_id = \"t\"\n[scheduled_events]\ndocument_incarnation = -1", "azure.scheduled_events.document_incarnation: "),
    ] {
        let text: String = format!("[azure]\n{section}")
            .lines()
            .map(|l| match l.strip_prefix("[[") {
                Some(rest) => format!("[[azure.{rest}\n"),
                None if l.starts_with("[i") || l.starts_with("[s") => format!("[azure.{}\n", &l[1..]),
                None => format!("{l}\n"),
            })
            .collect();
        let problems = EmulatorConfig::parse(&text, &|_| None).unwrap_err();
        assert!(
            problems.iter().any(|p| p.starts_with(key)),
            "{key} not in {problems:?}"
        );
    }
    // Every problem at once.
    let problems = EmulatorConfig::parse("[azure]\ncolour = 1\n", &|_| None).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
}

/// The answers of the newer paths, each pinned whole (status, type, body). Azure
/// documents the missing/invalid api-version body (with `newest-versions`) and that a
/// missing nonce is replaced by a timestamp; the nonce's bound (32 letters and digits)
/// and the wording of the other 400s are the emulator's: Azure documents neither.
#[tokio::test]
async fn the_newer_paths_answer_errors_in_imds_shape() {
    let (az, cfg) = (azure(), config(EXAMPLE));
    let bad_version = json!({
        "error": crate::emulator::azure::BAD_API_VERSION,
        "newest-versions": ["2025-04-07", "2024-07-17", "2024-03-15"],
    });
    let bad_nonce = json!({"error": "Bad request. nonce must be at most 32 letters and digits"});
    let doc = "/metadata/attested/document";
    for (target, status, body) in [
        (doc.to_owned(), 400, bad_version.clone()),
        (
            format!("{doc}?api-version=2099-01-01"),
            400,
            bad_version.clone(),
        ),
        (
            format!("{doc}?api-version=latest&nonce=1234567890"),
            400,
            bad_version.clone(),
        ),
        (
            format!("{doc}?api-version=2021-02-01&nonce="),
            400,
            bad_nonce.clone(),
        ),
        (
            format!("{doc}?api-version=2021-02-01&nonce=a%20b"),
            400,
            bad_nonce.clone(),
        ),
        (
            format!("{doc}?api-version=2021-02-01&nonce={}", "1".repeat(33)),
            400,
            bad_nonce.clone(),
        ),
    ] {
        let g = get(&az, &cfg, t0(), &target).await;
        assert_eq!(g.status.as_u16(), status, "{target}: {}", g.body);
        assert!(
            g.content_type.starts_with("application/json"),
            "{target}: {}",
            g.content_type
        );
        assert_eq!(g.json(), body, "{target}");
    }
    // Without a nonce the document is signed with a timestamp in its place.
    let g = get(&az, &cfg, t0(), &format!("{doc}?api-version=2021-02-01")).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.json()["encoding"], "pkcs7");

    let events = "/metadata/scheduledevents?api-version=2020-07-01";
    for body in [
        &b""[..],
        b"{",
        b"[]",
        b"{}",
        b"{\"StartRequests\":{}}",
        b"{\"StartRequests\":[{}]}",
        b"{\"StartRequests\":[{\"EventId\":1}]}",
    ] {
        let g = call_as(
            &az,
            &cfg,
            t0(),
            Method::POST,
            events,
            body,
            &Identity::default(),
        )
        .await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(g.status, StatusCode::BAD_REQUEST, "{shown}: {}", g.body);
        assert!(g.content_type.starts_with("application/json"), "{shown}");
        let error = g.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.starts_with("Bad request. "), "{shown}: {error}");
    }
}
