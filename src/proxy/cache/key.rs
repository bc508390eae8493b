//! Which requests the cache may answer, and the key each is held under. Pure.
//!
//! The key is read from the request the upstream receives: the canonical path and the
//! query *after* the caller's identity was applied (a pinned Azure container's query
//! names its identity, a pinned GCE container's path names its account, an AWS
//! container pinned to a role can only read that role). Two callers share an entry
//! only when the service would be asked exactly the same thing, so one identity's
//! token can never reach another.
//!
//! Only parameters the cache understands are accepted, each once; anything else (a
//! parameter it does not know, a repeated one, a bare name, an invalid escape, a `+`
//! that servers read two ways) passes through uncached.

use std::borrow::Cow;
use std::fmt::Write;

use http::Method;

use crate::request::canonical::CanonicalPath;

/// What a cacheable request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Azure managed identity token, `/metadata/identity/oauth2/token`.
    AzureToken,
    /// GCE access token, `/computeMetadata/v1/instance/service-accounts/<acct>/token`.
    GceToken,
    /// GCE ID token, `.../service-accounts/<acct>/identity`.
    GceIdToken,
    /// AWS role credentials, `/<version>/meta-data/iam/security-credentials/<role>`.
    AwsCredentials,
    /// A metadata document that does not change while the instance runs (Azure
    /// `/metadata/instance`, AWS's identity document, GCE `project/`); held only for
    /// the configured metadata TTL.
    Document,
}

impl Kind {
    /// Its name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::AzureToken => "azure-token",
            Kind::GceToken => "gce-token",
            Kind::GceIdToken => "gce-id-token",
            Kind::AwsCredentials => "aws-credentials",
            Kind::Document => "document",
        }
    }
}

/// A request the cache may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    pub kind: Kind,
    /// `GET <canonical path>?<parameters sorted by name, re-encoded>`; `bypass_cache`
    /// is left out, so a bypass replaces the entry ordinary requests read.
    pub key: String,
    /// Where the path ends in `key`.
    path_end: usize,
    /// Azure `bypass_cache=true`: the caller asks the service for a new token.
    pub bypass: bool,
}

impl Keyed {
    /// The canonical path (no query: its values are never logged).
    pub fn path(&self) -> &str {
        &self.key[4..self.path_end]
    }
}

const AZURE_TOKEN: &[&str] = &[
    "api-version",
    "resource",
    "client_id",
    "object_id",
    "msi_res_id",
    "mi_res_id",
    "authority",
    "bypass_cache",
];
const GCE_TOKEN: &[&str] = &["scopes"];
const GCE_ID_TOKEN: &[&str] = &["audience", "format", "licenses"];
const AZURE_DOCUMENT: &[&str] = &["api-version", "format"];
const GCE_DOCUMENT: &[&str] = &["alt", "recursive"];
const NONE: &[&str] = &[];

/// What `path` asks for, and the parameters that may come with it.
fn kind_of(path: &CanonicalPath) -> Option<(Kind, &'static [&'static str])> {
    let l = path.lower();
    let l: Vec<&str> = l.iter().map(String::as_str).collect();
    let dir = path.is_directory();
    Some(match l.as_slice() {
        ["metadata", "identity", "oauth2", "token"] if !dir => (Kind::AzureToken, AZURE_TOKEN),
        ["computemetadata", "v1", "instance", "service-accounts", _, "token"] if !dir => {
            (Kind::GceToken, GCE_TOKEN)
        }
        ["computemetadata", "v1", "instance", "service-accounts", _, "identity"] if !dir => {
            (Kind::GceIdToken, GCE_ID_TOKEN)
        }
        [_, "meta-data", "iam", "security-credentials", _] if !dir => (Kind::AwsCredentials, NONE),
        ["metadata", "instance", ..] => (Kind::Document, AZURE_DOCUMENT),
        [_, "dynamic", "instance-identity", "document"] if !dir => (Kind::Document, NONE),
        ["computemetadata", "v1", "project", ..] => (Kind::Document, GCE_DOCUMENT),
        _ => return None,
    })
}

/// The cache's view of a request to the upstream (`path` and `query` as it will
/// receive them), or `None` when it must pass through: not a `GET`, not an answer the
/// cache holds, a kind switched off (`tokens`, `documents`), or a query it does not
/// fully understand.
pub fn classify(
    method: &Method,
    path: &CanonicalPath,
    query: Option<&str>,
    tokens: bool,
    documents: bool,
) -> Option<Keyed> {
    if method != Method::GET {
        return None;
    }
    let (kind, allowed) = kind_of(path)?;
    if !(if kind == Kind::Document {
        documents
    } else {
        tokens
    }) {
        return None;
    }
    let mut params: Vec<(Cow<str>, Cow<str>)> = Vec::new();
    let mut bypass = None;
    for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        if part.contains('+') {
            return None;
        }
        let (k, v) = part.split_once('=')?;
        let (k, v) = (decode(k)?, decode(v)?);
        if !allowed.contains(&k.as_ref()) || params.iter().any(|(n, _)| *n == k) {
            return None;
        }
        if k == "bypass_cache" {
            if bypass.is_some() {
                return None;
            }
            bypass = Some(v.eq_ignore_ascii_case("true"));
        } else {
            params.push((k, v));
        }
    }
    params.sort();
    let mut key = String::with_capacity(80 + query.map_or(0, str::len));
    key.push_str("GET ");
    write!(key, "{path}").expect("writing to a String cannot fail");
    let path_end = key.len();
    for (i, (k, v)) in params.iter().enumerate() {
        key.push(if i == 0 { '?' } else { '&' });
        push_encoded(&mut key, k);
        key.push('=');
        push_encoded(&mut key, v);
    }
    Some(Keyed {
        kind,
        key,
        path_end,
        bypass: bypass.unwrap_or(false),
    })
}

/// `query` without its `bypass_cache` parameter, for the requests the cache makes on
/// its own (a refresh, a fill the bypass limit turned into an ordinary one); `None`
/// when there is none to remove.
pub fn without_bypass(query: &str) -> Option<String> {
    let is_bypass =
        |p: &&str| decode(p.split('=').next().unwrap_or("")).as_deref() == Some("bypass_cache");
    if !query.split('&').any(|p| is_bypass(&p)) {
        return None;
    }
    Some(
        query
            .split('&')
            .filter(|p| !p.is_empty() && !is_bypass(p))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// Percent-decodes once; `None` for an invalid escape or a result that is not UTF-8
/// (what the service makes of those is not for the cache to guess).
fn decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Appends `s` with everything but unreserved characters percent-encoded, so that no
/// value can pass for a separator in the key.
fn push_encoded(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            write!(out, "%{b:02X}").expect("writing to a String cannot fail");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(target: &str) -> Option<Keyed> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        classify(
            &Method::GET,
            &CanonicalPath::parse(path).unwrap(),
            query,
            true,
            true,
        )
    }

    fn key(target: &str) -> Option<String> {
        keyed(target).map(|k| k.key)
    }

    const AZ: &str = "/metadata/identity/oauth2/token";
    const SA: &str = "/computeMetadata/v1/instance/service-accounts";

    #[test]
    fn each_cacheable_answer_has_its_kind() {
        let cases = [
            (
                format!("{AZ}?api-version=2018-02-01&resource=r"),
                Some(Kind::AzureToken),
            ),
            (format!("{SA}/default/token"), Some(Kind::GceToken)),
            (
                format!("{SA}/a@p.iam.gserviceaccount.com/token?scopes=x"),
                Some(Kind::GceToken),
            ),
            (
                format!("{SA}/default/identity?audience=a&format=full"),
                Some(Kind::GceIdToken),
            ),
            (
                "/latest/meta-data/iam/security-credentials/role".into(),
                Some(Kind::AwsCredentials),
            ),
            (
                "/2021-01-03/meta-data/iam/security-credentials/r".into(),
                Some(Kind::AwsCredentials),
            ),
            (
                "/metadata/instance?api-version=2021-02-01".into(),
                Some(Kind::Document),
            ),
            (
                "/metadata/instance/compute?api-version=1&format=json".into(),
                Some(Kind::Document),
            ),
            (
                "/latest/dynamic/instance-identity/document".into(),
                Some(Kind::Document),
            ),
            (
                "/computeMetadata/v1/project/project-id".into(),
                Some(Kind::Document),
            ),
            (
                "/computeMetadata/v1/project/?recursive=true&alt=json".into(),
                Some(Kind::Document),
            ),
            // Never: the role listing, other leaves, per-request answers.
            ("/latest/meta-data/iam/security-credentials/".into(), None),
            (
                "/latest/meta-data/iam/security-credentials/role/".into(),
                None,
            ),
            ("/latest/meta-data/instance-id".into(), None),
            (format!("{SA}/default/email"), None),
            (format!("{SA}/default/token/"), None),
            (
                "/computeMetadata/v1/project/attributes/x?wait_for_change=true".into(),
                None,
            ),
            ("/computeMetadata/v1/instance/hostname".into(), None),
            (
                "/metadata/attested/document?api-version=1&nonce=1".into(),
                None,
            ),
            (
                "/metadata/scheduledevents?api-version=2020-07-01".into(),
                None,
            ),
            ("/latest/dynamic/instance-identity/signature".into(), None),
        ];
        for (target, kind) in cases {
            assert_eq!(keyed(&target).map(|k| k.kind), kind, "{target}");
        }
    }

    #[test]
    fn the_key_ignores_parameter_order_and_encoding_but_nothing_else() {
        let a = key(&format!(
            "{AZ}?resource=https://vault.azure.net&api-version=2018-02-01"
        ));
        let b = key(&format!(
            "{AZ}?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
        ));
        assert_eq!(a, b);
        assert_eq!(
            a.as_deref(),
            Some("GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net")
        );
        // The identity is part of the key: no identity, and each identity, apart.
        let base = format!("{AZ}?api-version=2018-02-01&resource=r");
        let keys: Vec<_> = [
            "",
            "&client_id=a",
            "&client_id=b",
            "&object_id=a",
            "&msi_res_id=a",
        ]
        .iter()
        .map(|id| key(&format!("{base}{id}")).unwrap())
        .collect();
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j]);
            }
        }
        // So are the account, the resource, the scopes and the audience.
        assert_ne!(
            key(&format!("{SA}/default/token")),
            key(&format!("{SA}/me@p/token"))
        );
        assert_ne!(key(&format!("{base}x")), key(&base));
        assert_ne!(
            key(&format!("{SA}/d/token?scopes=a")),
            key(&format!("{SA}/d/token"))
        );
        assert_ne!(
            key(&format!("{SA}/d/identity?audience=a")),
            key(&format!("{SA}/d/identity?audience=b"))
        );
        // A value cannot pass for a separator.
        assert_ne!(
            key(&format!("{AZ}?resource=a%26client_id%3Db")),
            key(&format!("{AZ}?resource=a&client_id=b"))
        );
    }

    #[test]
    fn queries_it_does_not_fully_understand_pass_through() {
        for q in [
            "resource=r&resource=r",
            "resource=r&Resource=r",
            "resource=r&unknown=1",
            "resource",
            "resource=%zz",
            "resource=%ff",
            "resource=a+b",
            "resource=r&bypass_cache=true&bypass_cache=true",
        ] {
            assert_eq!(key(&format!("{AZ}?{q}")), None, "{q}");
        }
        assert_eq!(
            key("/latest/meta-data/iam/security-credentials/r?x=1"),
            None
        );
        assert_eq!(key(&format!("{SA}/d/token?alt=json")), None);
        // Empty parts change nothing.
        assert_eq!(
            key(&format!("{AZ}?&resource=r&")),
            key(&format!("{AZ}?resource=r"))
        );
    }

    #[test]
    fn bypass_cache_is_noted_and_left_out_of_the_key() {
        let plain = keyed(&format!("{AZ}?resource=r")).unwrap();
        let bypass = keyed(&format!("{AZ}?bypass_cache=true&resource=r")).unwrap();
        assert!(!plain.bypass);
        assert!(bypass.bypass);
        assert_eq!(plain.key, bypass.key);
        assert!(
            !keyed(&format!("{AZ}?resource=r&bypass_cache=false"))
                .unwrap()
                .bypass
        );
        assert_eq!(
            without_bypass("api-version=1&bypass_cache=true&resource=r").as_deref(),
            Some("api-version=1&resource=r")
        );
        assert_eq!(without_bypass("api-version=1&resource=r"), None);
    }

    #[test]
    fn kinds_switched_off_pass_through_and_only_get_is_cached() {
        let p = CanonicalPath::parse(AZ).unwrap();
        assert!(classify(&Method::GET, &p, Some("resource=r"), false, true).is_none());
        assert!(classify(&Method::HEAD, &p, Some("resource=r"), true, true).is_none());
        let doc = CanonicalPath::parse("/computeMetadata/v1/project/project-id").unwrap();
        assert!(classify(&Method::GET, &doc, None, true, false).is_none());
        let k = classify(&Method::GET, &doc, None, false, true).unwrap();
        assert_eq!(k.path(), "/computeMetadata/v1/project/project-id");
    }
}
