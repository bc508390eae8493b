//! The emulated EC2 Instance Metadata Service, as botocore and Rust aws-config expect
//! it (research/protocols.md §3, §4.3).
//!
//! The proxy has already answered `PUT /latest/api/token` and checked session tokens
//! (see [`AwsConfig::tokens_required`]). Paths are case-sensitive, as on EC2. Every
//! answer is `text/plain`, the JSON documents too, and without a trailing newline
//! (botocore takes the role listing's body as the role name). A missing item is 404
//! with EC2's small XHTML page. `GET /` lists EC2's dated versions; a dated path
//! (`/2016-09-02/...`) answers with what that version had ([`versions`]), an unknown
//! version is 404. Only GET and HEAD are served; PUT on a dated version is 403 (EC2
//! takes tokens only at `/latest/api/token`), other methods 405.

mod config;
mod creds;
#[cfg(test)]
mod tests;
pub mod versions;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::{Ctx, EmuRequest};
use crate::providers::identity::Identity;
pub use config::{
    AwsConfig, KeySource, Node, PublicKey, Role, StaticKeys, DEFAULT_CREDENTIALS_LIFETIME_SECS,
};

const TEXT: &str = "text/plain";
const HTML: &str = "text/html";

/// State of the emulated service: each role's current credentials.
#[derive(Default)]
pub struct Aws {
    credentials: creds::Credentials,
}

/// What a path names, before any credentials are issued. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target<'a> {
    Text(String),
    Info(&'a Role),
    Credentials(&'a Role),
    NotFound,
    /// `/latest/api/token` is for PUT (answered by the proxy).
    TokenPath,
    /// The identity document signed: its text and the form asked for.
    Signed(String, Signed),
}

/// The signed forms of the identity document under `dynamic/instance-identity/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signed {
    /// PKCS#7 signedData (detached), base64 in lines: `pkcs7` and `rsa2048`.
    Pkcs7,
    /// RSA-SHA256 over the document, base64: `signature`.
    Signature,
}

impl Aws {
    /// No credentials yet: each role's are issued on first request.
    pub fn new() -> Self {
        Self::default()
    }

    /// The answer to one request under `/latest`, a dated version, or `/`.
    pub async fn answer(&self, ctx: &Ctx, req: &EmuRequest<'_>) -> Response<Full<Bytes>> {
        let Some(cfg) = ctx.config.aws.as_ref() else {
            return super::not_found();
        };
        let segs = req.path.segments();
        let dated = segs.first().is_some_and(|s| is_dated(s));
        match *req.method {
            Method::GET | Method::HEAD => {}
            Method::PUT if dated => return page(StatusCode::FORBIDDEN, "403 - Forbidden"),
            _ => return method_not_allowed("GET, HEAD"),
        }
        match target(cfg, visible_role(cfg, req.identity), segs) {
            Target::Text(body) => text(StatusCode::OK, body),
            Target::NotFound => page(StatusCode::NOT_FOUND, "404 - Not Found"),
            Target::TokenPath => method_not_allowed("PUT"),
            Target::Signed(doc, form) => {
                let key = match ctx.keys.get(&ctx.config.signing).await {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::warn!(error = %crate::errors::error_chain(&e), "cannot sign the EC2 identity document");
                        return page(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "500 - Internal Server Error",
                        );
                    }
                };
                let body = match form {
                    Signed::Signature => {
                        Ok(super::signing::base64_lines(&key.sign_raw(doc.as_bytes())))
                    }
                    Signed::Pkcs7 => key
                        .pkcs7(doc.as_bytes(), false)
                        .map(|d| super::signing::base64_lines(&d)),
                };
                match body {
                    Ok(b) => text(StatusCode::OK, b),
                    Err(e) => {
                        tracing::warn!(error = %crate::errors::error_chain(&e), "cannot sign the EC2 identity document");
                        page(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "500 - Internal Server Error",
                        )
                    }
                }
            }
            Target::Info(role) => {
                let since = self
                    .credentials
                    .get(role, ctx.now, &ctx.env)
                    .map_or(ctx.now, |c| c.issued_at);
                text(StatusCode::OK, creds::info_json(role, since))
            }
            Target::Credentials(role) => match self.credentials.get(role, ctx.now, &ctx.env) {
                Ok(c) => text(StatusCode::OK, creds::credentials_json(&c)),
                Err(why) => {
                    tracing::warn!(role = %role.name, error = %why, "emulated AWS credentials unavailable");
                    text(StatusCode::OK, creds::failure_json(&why, ctx.now))
                }
            },
        }
    }
}

/// The role a caller sees: its label's role (none if the file has no such role), or
/// without a label the instance's default role (none if no role is the default).
fn visible_role<'a>(cfg: &'a AwsConfig, identity: &Identity) -> Option<&'a Role> {
    match &identity.aws_role {
        Some(name) => cfg.roles.iter().find(|r| r.name == *name),
        None => cfg.roles.iter().find(|r| r.default),
    }
}

fn is_dated(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// What `segs` names for a caller who sees `role`.
fn target<'a>(cfg: &'a AwsConfig, role: Option<&'a Role>, segs: &[String]) -> Target<'a> {
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let Some((version, rest)) = segs.split_first() else {
        let mut all: Vec<&str> = versions::VERSIONS.to_vec();
        all.push("latest");
        return Target::Text(all.join("\n"));
    };
    if !versions::known(version) {
        return Target::NotFound;
    }
    let doc = cfg
        .identity_document
        .as_ref()
        .filter(|_| versions::has(version, &["dynamic"]));
    match rest {
        [] => {
            let mut names = Vec::new();
            if doc.is_some() {
                names.push("dynamic");
            }
            names.push("meta-data");
            if cfg.user_data.is_some() {
                names.push("user-data");
            }
            Target::Text(names.join("\n"))
        }
        ["meta-data", path @ ..] if !versions::has(version, path) => Target::NotFound,
        ["meta-data", "iam", iam @ ..] => match role {
            Some(role) => iam_target(role, iam),
            None => Target::NotFound,
        },
        ["meta-data", "public-keys", keys @ ..] if !cfg.public_keys.is_empty() => {
            public_keys(&cfg.public_keys, keys)
        }
        ["meta-data", path @ ..] => {
            let extra = [
                ("iam/", role.is_some()),
                ("public-keys/", !cfg.public_keys.is_empty()),
            ];
            meta_data(&cfg.meta_data, version, &extra, path)
        }
        ["user-data"] => cfg.user_data.clone().map_or(Target::NotFound, Target::Text),
        ["dynamic"] if doc.is_some() => Target::Text("instance-identity/".into()),
        ["dynamic", "instance-identity"] if doc.is_some() => {
            Target::Text("document\npkcs7\nrsa2048\nsignature".into())
        }
        ["dynamic", "instance-identity", leaf] => {
            let Some(d) = doc else {
                return Target::NotFound;
            };
            let d = crate::providers::aws_doc::pretty(d);
            match *leaf {
                "document" => Target::Text(d),
                "pkcs7" | "rsa2048" => Target::Signed(d, Signed::Pkcs7),
                "signature" => Target::Signed(d, Signed::Signature),
                _ => Target::NotFound,
            }
        }
        ["api", "token"] if *version == "latest" => Target::TokenPath,
        _ => Target::NotFound,
    }
}

fn iam_target<'a>(role: &'a Role, rest: &[&str]) -> Target<'a> {
    match rest {
        [] => Target::Text("info\nsecurity-credentials/".into()),
        ["info"] => Target::Info(role),
        ["security-credentials"] => Target::Text(role.name.clone()),
        ["security-credentials", name] if *name == role.name => Target::Credentials(role),
        _ => Target::NotFound,
    }
}

/// `public-keys/` as EC2 serves it: `0=name` a line; `0/` lists the formats held
/// (`openssh-key`), `0/openssh-key` is the key.
fn public_keys<'a>(keys: &[PublicKey], rest: &[&str]) -> Target<'a> {
    let at = |i: &str| {
        let ok = !i.is_empty()
            && i.bytes().all(|b| b.is_ascii_digit())
            && (i == "0" || !i.starts_with('0'));
        ok.then(|| i.parse::<usize>().ok().and_then(|n| keys.get(n)))
            .flatten()
    };
    match rest {
        [] => Target::Text(
            keys.iter()
                .enumerate()
                .map(|(i, k)| format!("{i}={}", k.name))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        [i] => at(i).map_or(Target::NotFound, |_| Target::Text("openssh-key".into())),
        [i, "openssh-key"] => {
            at(i).map_or(Target::NotFound, |k| Target::Text(k.openssh_key.clone()))
        }
        _ => Target::NotFound,
    }
}

/// A leaf's value, or a directory's listing (sub-directories suffixed `/`; at the top,
/// the generated directories in `extra` that the caller sees), showing only what
/// `version` had.
fn meta_data<'a>(
    root: &std::collections::BTreeMap<String, Node>,
    version: &str,
    extra: &[(&str, bool)],
    path: &[&str],
) -> Target<'a> {
    let mut dir = root;
    for (i, seg) in path.iter().enumerate() {
        match dir.get(*seg) {
            Some(Node::Dir(d)) => dir = d,
            Some(Node::Leaf(v)) if i + 1 == path.len() => return Target::Text(v.clone()),
            _ => return Target::NotFound,
        }
    }
    let mut names: Vec<String> = dir
        .iter()
        .filter(|(k, _)| {
            let mut child: Vec<&str> = path.to_vec();
            child.push(k);
            versions::has(version, &child)
        })
        .map(|(k, n)| match n {
            Node::Dir(_) => format!("{k}/"),
            Node::Leaf(_) => k.clone(),
        })
        .collect();
    if path.is_empty() {
        for (name, shown) in extra {
            if *shown && versions::has(version, &[name.trim_end_matches('/')]) {
                names.push((*name).to_owned());
            }
        }
        names.sort();
    }
    Target::Text(names.join("\n"))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    answer(status, TEXT, body)
}

/// EC2's error page: a small XHTML document titled and headed with the status.
fn page(status: StatusCode, title: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
         \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
         <head>\n  <title>{title}</title>\n </head>\n \
         <body>\n  <h1>{title}</h1>\n </body>\n</html>"
    );
    answer(status, HTML, body)
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = page(StatusCode::METHOD_NOT_ALLOWED, "405 - Method Not Allowed");
    r.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
