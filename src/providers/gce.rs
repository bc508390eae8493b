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

/// The scope an impersonated account's token is asked for when the request names
/// none, and the scopes it is shown with.
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A request under `service-accounts/` of a container whose account is impersonated:
/// the proxy answers all of it (the real server does not have the account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Impersonated {
    /// `service-accounts/` (as JSON when recursive).
    Listing {
        recursive: bool,
    },
    /// `service-accounts/<default|email>/`.
    Account {
        recursive: bool,
    },
    Email,
    Aliases,
    Scopes,
    Token,
    Identity,
    /// Another account, or nothing there.
    NotFound,
}

/// What `path` is for a container given `email` by impersonation; `None`: not under
/// `service-accounts/` (the real server answers; a recursive answer above it is fixed
/// with [`fix_impersonated`]).
pub fn impersonated(path: &CanonicalPath, recursive: bool, email: &str) -> Option<Impersonated> {
    let l = path.lower();
    if l.len() < SA.len() || l.iter().zip(SA).any(|(a, b)| a.as_str() != b) {
        return None;
    }
    let Some(account) = path.segments().get(4) else {
        return Some(Impersonated::Listing { recursive });
    };
    if account != "default" && !account.eq_ignore_ascii_case(email) {
        return Some(Impersonated::NotFound);
    }
    Some(match l.get(5).map(String::as_str) {
        None => Impersonated::Account { recursive },
        Some(_) if l.len() > 6 => Impersonated::NotFound,
        Some("email") => Impersonated::Email,
        Some("aliases") => Impersonated::Aliases,
        Some("scopes") => Impersonated::Scopes,
        Some("token") => Impersonated::Token,
        Some("identity") => Impersonated::Identity,
        Some(_) => Impersonated::NotFound,
    })
}

/// The account as its recursive answer shows it.
pub fn impersonated_account(email: &str) -> Value {
    serde_json::json!({ "aliases": ["default"], "email": email, "scopes": [DEFAULT_SCOPE] })
}

/// The answer to an impersonated container's `service-accounts/` request that needs no
/// token; `None` for the token and identity paths.
pub fn impersonated_answer(kind: &Impersonated, email: &str) -> Option<Response<Full<Bytes>>> {
    let text = |body: String| {
        builder(StatusCode::OK, "application/text")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    let json = |v: Value| {
        builder(StatusCode::OK, "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .expect("static response parts are valid")
    };
    Some(match kind {
        Impersonated::Listing { recursive: false } => text(format!("default/\n{email}/\n")),
        Impersonated::Listing { recursive: true } => {
            let a = impersonated_account(email);
            json(serde_json::json!({ "default": a, email: a }))
        }
        Impersonated::Account { recursive: false } => {
            text("aliases\nemail\nidentity\nscopes\ntoken\n".into())
        }
        Impersonated::Account { recursive: true } => json(impersonated_account(email)),
        Impersonated::Email => text(email.to_owned()),
        Impersonated::Aliases => text("default\n".into()),
        Impersonated::Scopes => text(format!("{DEFAULT_SCOPE}\n")),
        Impersonated::NotFound => not_found(),
        Impersonated::Token | Impersonated::Identity => return None,
    })
}

/// An access token's answer, as the metadata server gives it.
pub fn token_answer(token: &str, expires_in: u64) -> Response<Full<Bytes>> {
    let v = serde_json::json!({ "access_token": token, "expires_in": expires_in, "token_type": "Bearer" });
    builder(StatusCode::OK, "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("static response parts are valid")
}

/// An ID token's answer: the JWT as text.
pub fn identity_answer(token: &str) -> Response<Full<Bytes>> {
    builder(StatusCode::OK, "text/html; charset=UTF-8")
        .body(Full::new(Bytes::from(token.to_owned())))
        .expect("static response parts are valid")
}

/// 400 with the server's message (a missing audience, bad scopes).
pub fn bad_request(message: &str) -> Response<Full<Bytes>> {
    builder(StatusCode::BAD_REQUEST, "text/html; charset=UTF-8")
        .body(Full::new(Bytes::from(format!("{message}\n"))))
        .expect("static response parts are valid")
}

/// A recursive answer above `service-accounts/` for an impersonated container: its
/// accounts are `default` and the impersonated one, never the instance's.
pub fn fix_impersonated(fix: Fix, email: &str, status: StatusCode, body: Bytes) -> Bytes {
    let Fix::Accounts(depth) = fix else {
        return body;
    };
    if !status.is_success() {
        return body;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let a = impersonated_account(email);
    let view = serde_json::json!({ "default": a, email: a });
    let slot = match depth {
        0 => Some(&mut v),
        1 => v.get_mut("serviceAccounts"),
        _ => v
            .get_mut("instance")
            .and_then(|i| i.get_mut("serviceAccounts")),
    };
    if let Some(slot) = slot {
        *slot = view;
    }
    Bytes::from(v.to_string())
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
    fn an_impersonated_account_is_answered_whole_by_the_proxy() {
        let e = "app@p.iam.gserviceaccount.com";
        let k = |s: &str, r: bool| impersonated(&p(s), r, e);
        let sa = "/computeMetadata/v1/instance/service-accounts";
        assert_eq!(
            k(&format!("{sa}/"), false),
            Some(Impersonated::Listing { recursive: false })
        );
        assert_eq!(
            k(&format!("{sa}/default/"), true),
            Some(Impersonated::Account { recursive: true })
        );
        assert_eq!(
            k(&format!("{sa}/{e}/token"), false),
            Some(Impersonated::Token)
        );
        assert_eq!(
            k(&format!("{sa}/default/identity"), false),
            Some(Impersonated::Identity)
        );
        assert_eq!(
            k(&format!("{sa}/default/email"), false),
            Some(Impersonated::Email)
        );
        assert_eq!(
            k(
                &format!("{sa}/instance@p.iam.gserviceaccount.com/token"),
                false
            ),
            Some(Impersonated::NotFound)
        );
        assert_eq!(
            k(&format!("{sa}/default/token/x"), false),
            Some(Impersonated::NotFound)
        );
        assert_eq!(k("/computeMetadata/v1/instance/id", false), None);
        assert_eq!(k("/computeMetadata/v1/instance/", true), None);
        let body = |r: Response<Full<Bytes>>| {
            let b = futures::executor::block_on(http_body_util::BodyExt::collect(r.into_body()))
                .unwrap();
            String::from_utf8(b.to_bytes().to_vec()).unwrap()
        };
        let listing = impersonated_answer(&Impersonated::Listing { recursive: false }, e).unwrap();
        assert_eq!(listing.headers()["metadata-flavor"], "Google");
        assert_eq!(body(listing), format!("default/\n{e}/\n"));
        assert_eq!(
            body(impersonated_answer(&Impersonated::Email, e).unwrap()),
            e
        );
        assert!(impersonated_answer(&Impersonated::Token, e).is_none());
        // The instance's accounts vanish from a recursive answer above them.
        let real = Bytes::from(
            r#"{"id":1,"serviceAccounts":{"default":{"email":"instance@p"},"instance@p":{"email":"instance@p"}}}"#,
        );
        let fixed = fix_impersonated(Fix::Accounts(1), e, StatusCode::OK, real);
        let v: Value = serde_json::from_slice(&fixed).unwrap();
        assert_eq!(v["id"], 1);
        assert_eq!(v["serviceAccounts"]["default"]["email"], e);
        assert!(!String::from_utf8_lossy(&fixed).contains("instance@p"));
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
