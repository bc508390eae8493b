//! GCE metadata server: answers in its shape, and the service account a container may
//! see. In front of a real server the proxy rewrites `default` to the container's own
//! account and hides every other one (the emulator does the same from its file).

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use crate::providers::query;
use crate::request::canonical::CanonicalPath;

/// Headers every answer of the metadata server carries.
fn builder(status: StatusCode, content_type: &str) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header("Metadata-Flavor", "Google")
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::SERVER, "Metadata Server for VM")
        .header("X-XSS-Protection", "0")
        .header("X-Frame-Options", "SAMEORIGIN")
}

/// 403, as the server refuses a request failing its security checks.
pub fn forbidden(message: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en>\n<title>Error 403 (Forbidden)!!1</title>\n<p><b>403.</b> <ins>That\u{2019}s an error.</ins>\n<p>{message} <ins>That\u{2019}s all we know.</ins>\n"
    );
    builder(StatusCode::FORBIDDEN, "text/html; charset=UTF-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Longest a `wait_for_change` may hang (its `timeout_sec`, or this when it gives none).
const MAX_LONG_POLL: Duration = Duration::from_secs(3600);
const DEFAULT_LONG_POLL: Duration = Duration::from_secs(300);

/// How much longer than usual a request may take: a `wait_for_change` hangs until the
/// value changes or its `timeout_sec` passes.
pub fn long_poll(uri: &http::Uri) -> Duration {
    let pairs = query::pairs(uri.query());
    if !uri
        .path()
        .to_ascii_lowercase()
        .starts_with("/computemetadata/")
        || !query::get(&pairs, "wait_for_change").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Duration::ZERO;
    }
    match query::get(&pairs, "timeout_sec").and_then(|t| t.parse::<u64>().ok()) {
        Some(t) => Duration::from_secs(t).min(MAX_LONG_POLL),
        None => DEFAULT_LONG_POLL,
    }
}

/// 404, as the server answers a path it does not have.
pub fn not_found() -> Response<Full<Bytes>> {
    let body = "<!DOCTYPE html>\n<html lang=en>\n<title>Error 404 (Not Found)!!1</title>\n<p><b>404.</b> <ins>That\u{2019}s an error.</ins>\n<p>The requested URL was not found on this server. <ins>That\u{2019}s all we know.</ins>\n";
    builder(StatusCode::NOT_FOUND, "text/html; charset=UTF-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts are valid")
}

/// How a request of a container pinned to one service account is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Forward as it is; then fix the answer as said.
    Pass(Fix),
    /// Forward this path instead (`default` replaced by the account's email).
    Rewrite(CanonicalPath, Fix),
    /// Another account: it does not exist for this container.
    NotFound,
}

/// What to change in the real server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    None,
    /// The `service-accounts/` listing: only `default/` and the account.
    Listing,
    /// The account's own subtree read through `default`: its aliases are `default`.
    DefaultAccount,
    /// A recursive JSON answer holding `serviceAccounts` at this depth below the root
    /// (0: the answer is the map itself; 1: under `instance`; 2: under the root's
    /// `instance`).
    Accounts(u8),
}

/// Where `/computeMetadata/v1/instance/service-accounts/...` starts, in segments.
const SA: [&str; 4] = ["computemetadata", "v1", "instance", "service-accounts"];

/// The route for a request of a container pinned to `email`. Pure.
pub fn route(path: &CanonicalPath, recursive: bool, email: &str) -> Route {
    let l = path.lower();
    let depth = l
        .iter()
        .zip(SA)
        .take_while(|(a, b)| a.as_str() == *b)
        .count();
    if depth < l.len().min(SA.len()) {
        return Route::Pass(Fix::None); // elsewhere in the tree
    }
    match l.len() {
        // Above the accounts: only a recursive answer includes them.
        n if n < SA.len() => Route::Pass(if recursive && n >= 2 {
            Fix::Accounts((SA.len() - n) as u8)
        } else {
            Fix::None
        }),
        4 => Route::Pass(if recursive {
            Fix::Accounts(0)
        } else {
            Fix::Listing
        }),
        _ => {
            let account = &path.segments()[4];
            if account == "default" {
                let fix = if l.len() == 5 || (l.len() == 6 && l[5] == "aliases") {
                    Fix::DefaultAccount
                } else {
                    Fix::None
                };
                Route::Rewrite(path.with_segment(4, email), fix)
            } else if account.eq_ignore_ascii_case(email) {
                Route::Pass(Fix::None)
            } else {
                Route::NotFound
            }
        }
    }
}

/// The answer with `fix` applied for a container pinned to `email` (`path` as the
/// container asked it). Error answers and answers that do not parse pass unchanged.
pub fn fix_body(
    fix: Fix,
    path: &CanonicalPath,
    email: &str,
    status: StatusCode,
    body: Bytes,
) -> Bytes {
    if !status.is_success() || fix == Fix::None {
        return body;
    }
    match fix {
        Fix::None => body,
        Fix::Listing => {
            let text = String::from_utf8_lossy(&body);
            let has = text
                .lines()
                .any(|l| l.trim_end_matches('/').eq_ignore_ascii_case(email));
            Bytes::from(if has {
                format!("default/\n{email}/\n")
            } else {
                String::new()
            })
        }
        Fix::DefaultAccount => {
            let aliases_leaf = path.lower().len() == 6;
            if aliases_leaf {
                return Bytes::from_static(b"default\n");
            }
            match serde_json::from_slice::<Value>(&body) {
                Ok(mut v) => {
                    if let Some(o) = v.as_object_mut() {
                        o.insert("aliases".into(), Value::from(vec!["default"]));
                    }
                    Bytes::from(v.to_string())
                }
                // A text listing of the account directory is the same for any account.
                Err(_) => body,
            }
        }
        Fix::Accounts(depth) => {
            let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
                return body;
            };
            let mut node = &mut v;
            let keys: &[&str] = if depth == 2 { &["instance"] } else { &[] };
            for k in keys {
                match node.get_mut(*k) {
                    Some(n) => node = n,
                    None => return Bytes::from(v.to_string()),
                }
            }
            let map = if depth == 0 {
                Some(node)
            } else {
                node.get_mut("serviceAccounts")
            };
            if let Some(Value::Object(accounts)) = map {
                let own = accounts
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(email))
                    .map(|(_, a)| a.clone());
                accounts.clear();
                if let Some(mut own) = own {
                    if let Some(o) = own.as_object_mut() {
                        o.insert("aliases".into(), Value::from(vec!["default"]));
                    }
                    accounts.insert("default".into(), own.clone());
                    accounts.insert(email.to_owned(), own);
                }
            }
            Bytes::from(v.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me@p.iam.gserviceaccount.com";

    fn p(s: &str) -> CanonicalPath {
        CanonicalPath::parse(s).unwrap()
    }

    #[test]
    fn routes_for_a_pinned_container() {
        let base = "/computeMetadata/v1/instance/service-accounts";
        assert_eq!(
            route(&p(&format!("{base}/")), false, ME),
            Route::Pass(Fix::Listing)
        );
        assert_eq!(
            route(&p(&format!("{base}/")), true, ME),
            Route::Pass(Fix::Accounts(0))
        );
        assert_eq!(
            route(&p(&format!("{base}/default/token")), false, ME),
            Route::Rewrite(p(&format!("{base}/{ME}/token")), Fix::None)
        );
        assert_eq!(
            route(&p(&format!("{base}/default/")), true, ME),
            Route::Rewrite(p(&format!("{base}/{ME}/")), Fix::DefaultAccount)
        );
        assert_eq!(
            route(&p(&format!("{base}/{ME}/email")), false, ME),
            Route::Pass(Fix::None)
        );
        assert_eq!(
            route(
                &p(&format!("{base}/other@p.iam.gserviceaccount.com/token")),
                false,
                ME
            ),
            Route::NotFound
        );
        assert_eq!(
            route(&p("/computeMetadata/v1/instance/"), true, ME),
            Route::Pass(Fix::Accounts(1))
        );
        assert_eq!(
            route(&p("/computeMetadata/v1/"), true, ME),
            Route::Pass(Fix::Accounts(2))
        );
        assert_eq!(
            route(&p("/computeMetadata/v1/instance/"), false, ME),
            Route::Pass(Fix::None)
        );
        assert_eq!(
            route(&p("/computeMetadata/v1/project/project-id"), false, ME),
            Route::Pass(Fix::None)
        );
        assert_eq!(route(&p("/"), true, ME), Route::Pass(Fix::None));
    }

    #[test]
    fn answers_show_only_the_pinned_account() {
        let ok = StatusCode::OK;
        let listing = Bytes::from(format!(
            "default/\nboss@p.iam.gserviceaccount.com/\n{ME}/\n"
        ));
        let sa = p("/computeMetadata/v1/instance/service-accounts/");
        assert_eq!(
            fix_body(Fix::Listing, &sa, ME, ok, listing),
            format!("default/\n{ME}/\n")
        );
        let without = Bytes::from_static(b"default/\nboss@p.iam.gserviceaccount.com/\n");
        assert_eq!(fix_body(Fix::Listing, &sa, ME, ok, without), "");
        let tree = serde_json::json!({
            "instance": {"id": 1, "serviceAccounts": {
                "default": {"email": "boss@p", "aliases": ["default"]},
                "boss@p": {"email": "boss@p", "aliases": ["default"]},
                ME: {"email": ME, "aliases": [ME]},
            }},
            "project": {"projectId": "p"}
        });
        let out = fix_body(
            Fix::Accounts(2),
            &p("/computeMetadata/v1/"),
            ME,
            ok,
            Bytes::from(tree.to_string()),
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        let accounts = v["instance"]["serviceAccounts"].as_object().unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts["default"]["email"], ME);
        assert_eq!(
            accounts["default"]["aliases"],
            serde_json::json!(["default"])
        );
        assert_eq!(v["project"]["projectId"], "p");
        let inst = serde_json::json!({"serviceAccounts": {"boss@p": {"email": "boss@p"}}});
        let out = fix_body(
            Fix::Accounts(1),
            &p("/computeMetadata/v1/instance/"),
            ME,
            ok,
            Bytes::from(inst.to_string()),
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["serviceAccounts"], serde_json::json!({}));
        let acct = serde_json::json!({"email": ME, "aliases": [ME], "scopes": ["s"]});
        let out = fix_body(
            Fix::DefaultAccount,
            &p(&format!(
                "/computeMetadata/v1/instance/service-accounts/{ME}/"
            )),
            ME,
            ok,
            Bytes::from(acct.to_string()),
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["aliases"], serde_json::json!(["default"]));
        let err = Bytes::from_static(b"nope");
        assert_eq!(
            fix_body(Fix::Listing, &sa, ME, StatusCode::NOT_FOUND, err.clone()),
            err
        );
    }
}
