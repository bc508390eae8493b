//! The decision on a request, case by case, without sockets: each row gives a caller,
//! its labels, a request head and the backend, and says what the proxy must do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use super::admit::{admit, BackendKind, Context, Gates, Head, Local, Plan};
use super::identify::Caller;
use super::{ClientAddr, RateKey};
use crate::assume::spec::AwsSettings;
use crate::docker::{ContainerId, Endpoint};
use crate::policy::ratelimit::Per;
use crate::policy::select::{Policies, POLICY_LABEL};
use crate::policy::Glob;
use crate::policy::{Policy, RateLimit};
use crate::ports::BridgePort;
use crate::providers::identity::{AWS_ROLE, AWS_ROLE_ARN, AZURE_CLIENT_ID, GCE_SERVICE_ACCOUNT};
use crate::request::canonical::CanonicalPath;

/// The calling container's id; the gates' record shows it as `C`.
const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const SA: &str = "reader@p.iam.gserviceaccount.com";
const READER: &str = "arn:aws:iam::123456789012:role/reader";
const WRITER: &str = "arn:aws:iam::123456789012:role/writer";

/// The rate budget and session tokens as scripted for one case; records what was asked.
struct Scripted {
    rate: Result<(), Duration>,
    asked: Vec<String>,
}

impl Gates for Scripted {
    fn rate(&mut self, key: &RateKey, _limit: RateLimit) -> Result<(), Duration> {
        self.asked.push(format!("rate {key:?}"));
        self.rate
    }

    fn aws_session(
        &mut self,
        owner: &str,
        head: &Head<'_>,
        required: bool,
    ) -> Option<Response<Full<Bytes>>> {
        self.asked
            .push(format!("session {owner} required={required}"));
        let status = if crate::providers::aws::is_token_path(head.path) {
            StatusCode::OK
        } else if required && !head.headers.contains_key("x-aws-ec2-metadata-token") {
            StatusCode::UNAUTHORIZED
        } else {
            return None;
        };
        Some(
            Response::builder()
                .status(status)
                .body(Full::default())
                .unwrap(),
        )
    }
}

fn container(labels: &[(&str, &str)]) -> Caller {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Caller::Container(Arc::new(Endpoint {
        container: ContainerId(ID.into()),
        name: "web".into(),
        labels,
        image: "busybox".into(),
        network: "bridge".into(),
        ipv4: "172.17.0.2".parse().unwrap(),
        ipv6: None,
        mac: None,
        port: Some(BridgePort(7)),
    }))
}

fn policies() -> Policies {
    let mut p = Policies::builtin("allow", "deny");
    let mut limited = Policy::builtin("allow").unwrap();
    limited.name = "limited".into();
    limited.rate_limit = Some(RateLimit::new(1, Per::Second, None).unwrap());
    p.named.insert("limited".into(), limited);
    let mut strict = Policy::builtin("allow").unwrap();
    strict.name = "strict-aws".into();
    strict.aws_tokens_required = true;
    p.named.insert("strict-aws".into(), strict);
    let mut roles = Policy::builtin("allow").unwrap();
    roles.name = "roles".into();
    roles.aws_roles = vec![Glob::parse("arn:aws:iam::123456789012:role/read*").unwrap()];
    p.named.insert("roles".into(), roles);
    p
}

/// What the decision came to, in a few words.
fn summary(r: &Result<Plan, Box<Local>>, asked: &CanonicalPath) -> String {
    match r {
        Ok(p) => {
            let q = p
                .query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let assume = p
                .assume
                .as_ref()
                .map(|a| format!(" assume {} as {}", a.role_name(), a.session_name))
                .unwrap_or_default();
            let path = p.rewritten.as_ref().unwrap_or(asked);
            format!("forward {path}{q} {:?}{assume}", p.fix)
        }
        Err(l) => match &l.answer {
            Ok(resp) => format!("{} {}", l.decision.name(), resp.status().as_u16()),
            Err(e) => format!("{} {}", l.decision.name(), e.status_and_code().0.as_u16()),
        },
    }
}

struct Case {
    caller: Caller,
    method: Method,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    backend: BackendKind,
    rate: Result<(), Duration>,
    want: &'static str,
    /// What the gates must have been asked, in order.
    asked: &'static [&'static str],
}

/// The decision on `case`, and what the gates were asked (the caller's id as `C`).
fn decide(case: &Case) -> (Result<Plan, Box<Local>>, Vec<String>) {
    let uri: http::Uri = case.target.parse().unwrap();
    let path = CanonicalPath::parse(uri.path()).unwrap();
    let mut headers = HeaderMap::new();
    for (k, v) in case.headers {
        headers.append(*k, HeaderValue::from_static(v));
    }
    let head = Head {
        method: &case.method,
        path: &path,
        query: uri.query(),
        headers: &headers,
    };
    let policies = policies();
    let cx = Context {
        caller: &case.caller,
        client: ClientAddr("172.17.0.2".parse().unwrap()),
        policies: &policies,
        backend: case.backend,
        aws: &AwsSettings::default(),
    };
    let mut gates = Scripted {
        rate: case.rate,
        asked: vec![],
    };
    let r = admit(&head, &cx, &mut gates);
    let asked = gates.asked.iter().map(|a| a.replace(ID, "C")).collect();
    (r, asked)
}

fn run(case: &Case) -> (String, Vec<String>) {
    let (r, asked) = decide(case);
    let uri: http::Uri = case.target.parse().unwrap();
    let path = CanonicalPath::parse(uri.path()).unwrap();
    (summary(&r, &path), asked)
}

#[test]
fn each_request_is_decided_as_the_table_says() {
    use BackendKind::*;
    let get = Method::GET;
    let up = Upstream;
    let emu = Emulator {
        aws_tokens_required: false,
    };
    let azure_md: &[(&str, &str)] = &[("metadata", "true")];
    let google: &[(&str, &str)] = &[("metadata-flavor", "Google")];
    let sa_token = "/computeMetadata/v1/instance/service-accounts/default/token";
    let other_sa =
        "/computeMetadata/v1/instance/service-accounts/other@p.iam.gserviceaccount.com/token";
    let azure_token =
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
    let creds = "/latest/meta-data/iam/security-credentials/";
    let ok = Ok(());
    let row = |caller: Caller,
               method: &Method,
               target: &'static str,
               headers: &'static [(&'static str, &'static str)],
               backend: BackendKind,
               rate: Result<(), Duration>,
               want: &'static str,
               asked: &'static [&'static str]| Case {
        caller,
        method: method.clone(),
        target,
        headers,
        backend,
        rate,
        want,
        asked,
    };
    let host = || Caller::Host;
    let forged = || Caller::Forged {
        port_owner: match container(&[]) {
            Caller::Container(e) => e,
            _ => unreachable!(),
        },
        claimed: "172.17.0.9".parse().unwrap(),
    };
    let cases = [
        // The provider's own protocol comes before anything about the caller.
        row(host(), &get, "/metadata/instance?api-version=2021-02-01", &[], up, ok, "refuse 400", &[]),
        row(forged(), &get, "/metadata/instance?api-version=2021-02-01", &[], up, ok, "refuse 400", &[]),
        row(host(), &get, "/computeMetadata/v1/project/", &[("x-forwarded-for", "1.2.3.4")], up, ok, "refuse 403", &[]),
        // Callers that cannot be served.
        row(forged(), &get, "/latest/meta-data/", &[], up, ok, "deny 403", &[]),
        row(Caller::NotYetReported, &get, "/latest/meta-data/", &[], up, ok, "retry 503", &[]),
        row(Caller::Unknown, &get, "/latest/meta-data/", &[], up, ok, "deny 403", &[]),
        // Policy, then the rate budget (only of a policy that has one, only if allowed).
        row(host(), &get, "/latest/meta-data/", &[], up, ok, "forward /latest/meta-data/ None", &["session host required=false"]),
        row(container(&[(POLICY_LABEL, "metadata-only")]), &get, azure_token, azure_md, up, ok, "deny 403", &[]),
        row(container(&[(POLICY_LABEL, "deny")]), &get, "/latest/meta-data/", &[], up, Err(Duration::from_secs(1)), "deny 403", &[]),
        row(container(&[(POLICY_LABEL, "limited")]), &get, "/computeMetadata/v1/project/", google, up, Err(Duration::from_secs(1)), "rate-limited 429", &["rate Container(ContainerId(\"C\"))"]),
        row(container(&[(POLICY_LABEL, "limited")]), &get, "/computeMetadata/v1/project/", google, up, ok, "forward /computeMetadata/v1/project/ None", &["rate Container(ContainerId(\"C\"))"]),
        // A label that cannot be read refuses rather than hand out the instance's identity.
        row(container(&[(GCE_SERVICE_ACCOUNT, " ")]), &get, sa_token, google, up, ok, "deny 403", &[]),
        // AWS session tokens: issued, required by the policy or by the emulator's file.
        row(container(&[]), &Method::PUT, "/latest/api/token", &[], up, ok, "allow 200", &["session container:C required=false"]),
        row(container(&[(POLICY_LABEL, "strict-aws")]), &get, creds, &[], up, ok, "refuse 401", &["session container:C required=true"]),
        row(Caller::Host, &get, creds, &[], Emulator { aws_tokens_required: true }, ok, "refuse 401", &["session host required=true"]),
        // A pinned AWS role: its own credentials only.
        row(container(&[(AWS_ROLE, "reader")]), &get, "/latest/meta-data/iam/security-credentials/admin", &[], up, ok, "refuse 404", &["session container:C required=false"]),
        row(container(&[(AWS_ROLE, "reader")]), &get, "/latest/meta-data/iam/security-credentials/reader", &[], up, ok, "forward /latest/meta-data/iam/security-credentials/reader None", &["session container:C required=false"]),
        // A role to assume: only where the policy lists it, and only in front of a real
        // service (the emulator serves the role of that name from its file).
        row(container(&[(POLICY_LABEL, "roles"), (AWS_ROLE_ARN, READER)]), &get, "/latest/meta-data/iam/security-credentials/reader", &[], up, ok, "forward /latest/meta-data/iam/security-credentials/reader None assume reader as web", &["session container:C required=false"]),
        row(container(&[(POLICY_LABEL, "roles"), (AWS_ROLE_ARN, READER)]), &get, "/latest/meta-data/instance-id", &[], up, ok, "forward /latest/meta-data/instance-id None assume reader as web", &["session container:C required=false"]),
        row(container(&[(POLICY_LABEL, "roles"), (AWS_ROLE_ARN, WRITER)]), &get, "/latest/meta-data/iam/security-credentials/writer", &[], up, ok, "deny 403", &[]),
        row(container(&[(POLICY_LABEL, "roles"), (AWS_ROLE_ARN, WRITER)]), &get, "/latest/meta-data/iam/info", &[], up, ok, "deny 403", &[]),
        row(container(&[(POLICY_LABEL, "roles"), (AWS_ROLE_ARN, WRITER)]), &get, "/latest/meta-data/instance-id", &[], up, ok, "forward /latest/meta-data/instance-id None", &["session container:C required=false"]),
        row(container(&[(AWS_ROLE_ARN, READER)]), &get, "/latest/meta-data/iam/security-credentials/reader", &[], up, ok, "deny 403", &[]),
        row(container(&[(POLICY_LABEL, "roles"), (AWS_ROLE_ARN, "reader")]), &get, "/latest/meta-data/instance-id", &[], up, ok, "deny 403", &[]),
        row(container(&[(POLICY_LABEL, "roles"), (AWS_ROLE_ARN, READER)]), &get, "/latest/meta-data/iam/security-credentials/admin", &[], emu, ok, "refuse 404", &["session container:C required=false"]),
        row(container(&[(POLICY_LABEL, "roles"), (AWS_ROLE_ARN, READER)]), &get, "/latest/meta-data/iam/security-credentials/reader", &[], emu, ok, "forward /latest/meta-data/iam/security-credentials/reader None", &["session container:C required=false"]),
        // A pinned Azure identity: asked for by default, no other one.
        row(container(&[(AZURE_CLIENT_ID, "1111")]), &get, azure_token, azure_md, up, ok, "forward /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net&client_id=1111 None", &[]),
        row(container(&[(AZURE_CLIENT_ID, "1111")]), &get, "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r&client_id=2222", azure_md, up, ok, "refuse 400", &[]),
        // A pinned GCE account: seen as `default` in front of a real server; the
        // emulator serves it itself.
        row(container(&[(GCE_SERVICE_ACCOUNT, SA)]), &get, sa_token, google, up, ok, "forward /computeMetadata/v1/instance/service-accounts/reader@p.iam.gserviceaccount.com/token None", &[]),
        row(container(&[(GCE_SERVICE_ACCOUNT, SA)]), &get, other_sa, google, up, ok, "refuse 404", &[]),
        row(container(&[(GCE_SERVICE_ACCOUNT, SA)]), &get, sa_token, google, emu, ok, "forward /computeMetadata/v1/instance/service-accounts/default/token None", &[]),
    ];
    let mut wrong = vec![];
    for (i, case) in cases.iter().enumerate() {
        let (got, asked) = run(case);
        if got != case.want || asked != case.asked {
            wrong.push(format!(
                "row {i} {} {}: got {got:?} asking {asked:?}, want {:?} asking {:?}",
                case.method, case.target, case.want, case.asked
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_denial_carries_the_rule_that_decided_and_why_that_policy_applied() {
    let case = Case {
        caller: container(&[(POLICY_LABEL, "metadata-only")]),
        method: Method::GET,
        target: "/computeMetadata/v1/instance/service-accounts/default/token",
        headers: &[("metadata-flavor", "Google")],
        backend: BackendKind::Upstream,
        rate: Ok(()),
        want: "",
        asked: &[],
    };
    let (Err(local), _) = decide(&case) else {
        panic!("metadata-only must deny a token")
    };
    assert!(local.rule.contains("service-accounts"), "{}", local.rule);
    assert!(local.rule.contains("metadata-only"), "{}", local.rule);
    let Err(super::ProxyError::Denied { reason, .. }) = &local.answer else {
        panic!("a denial answers as one: {:?}", local.answer)
    };
    assert_eq!(reason, &local.rule);
}
