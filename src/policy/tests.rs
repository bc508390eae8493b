//! Table tests of the decision function.

use super::*;

fn check(policy: &str, raw: &str) -> Decision {
    let (path, query) = raw
        .split_once('?')
        .map_or((raw, None), |(p, q)| (p, Some(q)));
    let path = CanonicalPath::parse(path).unwrap_or_else(|e| panic!("{raw}: {e}"));
    decide(
        &Policy::builtin(policy).unwrap(),
        &Request { path: &path, query },
    )
}

use Verdict::{Allow, Deny};

#[test]
fn built_in_policies_side_by_side() {
    #[rustfmt::skip]
    let table: &[(&str, Verdict, Verdict, Verdict)] = &[
        // path                                                         allow  md-only deny
        ("/metadata/instance?api-version=2021-02-01",                    Allow, Allow, Deny),
        ("/metadata/instance/compute/vmId?api-version=2021-02-01&format=text", Allow, Allow, Deny),
        ("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x", Allow, Deny, Deny),
        ("/metadata/identity/info?api-version=2018-02-01",               Allow, Deny, Deny),
        ("/metadata/instance/compute/userData?api-version=2021-01-01&format=text", Allow, Deny, Deny),
        ("/metadata/instance/compute/customData?api-version=2021-01-01", Allow, Deny, Deny),
        ("/metadata/versions",                                           Allow, Allow, Deny),
        ("/metadata/scheduledevents?api-version=2020-07-01",             Allow, Allow, Deny),
        ("/computeMetadata/v1/project/project-id",                       Allow, Allow, Deny),
        ("/computeMetadata/v1/instance/service-accounts/default/token",  Allow, Deny, Deny),
        ("/computeMetadata/v1/instance/service-accounts/a@b.iam.gserviceaccount.com/token?scopes=x", Allow, Deny, Deny),
        ("/computeMetadata/v1/instance/service-accounts/default/identity?audience=x", Allow, Deny, Deny),
        ("/computeMetadata/v1/instance/service-accounts/default/email",  Allow, Allow, Deny),
        ("/computeMetadata/v1/instance/service-accounts/default/?recursive=true", Allow, Deny, Deny),
        ("/computeMetadata/v1/instance/attributes/user-data",            Allow, Deny, Deny),
        ("/computeMetadata/v1/instance/attributes/other",                Allow, Allow, Deny),
        ("/computeMetadata/v1/instance/?recursive=true",                 Allow, Deny, Deny),
        ("/computeMetadata/v1/instance/",                                Allow, Allow, Deny),
        ("/computeMetadata/v1/?recursive=True&alt=json",                 Allow, Deny, Deny),
        ("/computeMetadata/v1/project/?recursive=true",                  Allow, Allow, Deny),
        ("/latest/meta-data/instance-id",                                Allow, Allow, Deny),
        ("/latest/meta-data/",                                           Allow, Allow, Deny),
        ("/latest/meta-data/iam/info",                                   Allow, Allow, Deny),
        ("/latest/meta-data/iam/security-credentials/",                  Allow, Deny, Deny),
        ("/latest/meta-data/iam/security-credentials/MyRole",            Allow, Deny, Deny),
        ("/2021-07-15/meta-data/iam/security-credentials/MyRole",        Allow, Deny, Deny),
        ("/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", Allow, Deny, Deny),
        ("/latest/user-data",                                            Allow, Deny, Deny),
        ("/latest/dynamic/instance-identity/document",                   Allow, Allow, Deny),
        ("/latest/api/token",                                            Allow, Allow, Deny),
        ("/",                                                            Allow, Allow, Deny),
    ];
    for (raw, a, m, d) in table {
        for (policy, want) in [("allow", a), ("metadata-only", m), ("deny", d)] {
            let got = check(policy, raw);
            assert_eq!(got.verdict, *want, "{policy} {raw}: {}", got.because);
        }
    }
}

#[test]
fn bypass_regressions_are_denied_under_metadata_only() {
    for raw in [
        // CVE-2022-23551: backslashes normalised by the service after the filter passed.
        "/metadata/identity\\oauth2\\token?api-version=2018-02-01&resource=x",
        "/metadata/identity%5Coauth2%5Ctoken?resource=x",
        // metadataproxy 1.1.1: extra path after the role name returned host credentials.
        "/latest/meta-data/iam/security-credentials/MyRole/extra",
        "/latest/meta-data/iam/security-credentials/MyRole/",
        // Case, encoding, dot segments and repeated slashes.
        "/Metadata/Identity/OAuth2/Token?resource=x",
        "/METADATA/identity/oauth2/token",
        "/metadata/%69dentity/oauth2/token",
        "//latest//meta-data//iam//security-credentials//MyRole",
        "/latest/meta-data/./iam/x/../security-credentials/MyRole",
        "/latest/meta-data/iam%2Fsecurity-credentials%2FMyRole",
        "/computeMetadata/v1/instance/service-accounts/default/../default/token",
        "/computeMetadata/v1/instance/service-accounts/default//token",
        "/computemetadata/V1/instance/service-accounts/default/TOKEN",
    ] {
        assert_eq!(check("metadata-only", raw).verdict, Deny, "{raw}");
    }
}

#[test]
fn an_azure_document_embedding_user_data_is_allowed_without_it() {
    let d = check("metadata-only", "/metadata/instance?api-version=2021-02-01");
    assert_eq!(d.verdict, Allow);
    assert_eq!(
        d.redact,
        vec![
            vec!["compute".to_string(), "userData".into()],
            vec!["compute".into(), "customData".into()]
        ]
    );
    let d = check(
        "metadata-only",
        "/metadata/instance/compute?api-version=2021-02-01",
    );
    assert_eq!(
        d.redact,
        vec![vec!["userData".to_string()], vec!["customData".into()]]
    );
    assert!(check(
        "metadata-only",
        "/metadata/instance/network?api-version=2021-02-01"
    )
    .redact
    .is_empty());
    assert!(check("allow", "/metadata/instance?api-version=2021-02-01")
        .redact
        .is_empty());
}

#[test]
fn decisions_name_the_rule_that_made_them() {
    let d = check(
        "metadata-only",
        "/latest/meta-data/iam/security-credentials/MyRole",
    );
    assert_eq!(
        d.because,
        "policy metadata-only: deny /*/meta-data/iam/security-credentials/**"
    );
    assert_eq!(
        check("deny", "/latest/meta-data/").because,
        "policy deny: default deny"
    );
}

#[test]
fn patterns_parse_strictly() {
    for bad in ["metadata/**", "/a/**/b", "/a/b*", "/a/../b", "/a\\b"] {
        assert!(Pattern::parse(bad).is_err(), "{bad}");
    }
    let p = Pattern::parse("/a/*/c/**").unwrap();
    let segs = |s: &str| {
        s.split('/')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(p.matches(&segs("/a/x/c")));
    assert!(p.matches(&segs("/a/x/c/d/e")));
    assert!(!p.matches(&segs("/a/c")));
    assert!(p.matches_below(&segs("/a")));
    assert!(p.matches_below(&segs("/a/x")));
    assert!(
        !p.matches_below(&segs("/a/x/c/d")),
        "inside, not below: matches() decides"
    );
    assert!(!p.matches_below(&segs("/b")));
}

#[test]
fn built_in_policies_have_no_rate_limit() {
    for name in ["allow", "metadata-only", "deny"] {
        assert_eq!(Policy::builtin(name).unwrap().rate_limit, None, "{name}");
    }
}

#[test]
fn identity_allow_lists_match_whole_identifiers() {
    let g = |p: &str| Glob::parse(p).unwrap();
    let role = "arn:aws:iam::123456789012:role/team/app-reader";
    assert!(g("arn:aws:iam::123456789012:role/team/*").matches(role));
    assert!(g("arn:aws:iam::123456789012:role/*-reader").matches(role));
    assert!(g("arn:aws:iam::12345678901?:role/team/app-reader").matches(role));
    assert!(g("*").matches(role));
    assert!(
        !g("arn:aws:iam::123456789012:role/team/app").matches(role),
        "whole, not a prefix"
    );
    assert!(!g("arn:aws:iam::999999999999:role/*").matches(role));
    assert!(
        !g("ARN:aws:iam::123456789012:role/team/*").matches(role),
        "with case"
    );
    assert!(g("*@proj.iam.gserviceaccount.com").matches("a@proj.iam.gserviceaccount.com"));
    assert!(!g("*@proj.iam.gserviceaccount.com").matches("a@proj.iam.gserviceaccount.com.evil"));
    assert!(Glob::parse("").is_err() && Glob::parse("a b").is_err());
    let mut p = Policy::builtin("allow").unwrap();
    assert!(!p.allows_aws_role(role), "nothing is allowed unless listed");
    p.aws_roles = vec![g("arn:aws:iam::123456789012:role/team/*")];
    assert!(p.allows_aws_role(role));
    assert!(!p.allows_gce_account("a@proj.iam.gserviceaccount.com"));
}
