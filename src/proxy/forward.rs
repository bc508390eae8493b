//! One request's way through the proxy: protocol checks, policy, the caller's
//! identity, then the emulator or the real service, and the answer fixed up for the
//! caller's identity.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use futures::FutureExt;

use super::cache::{self, Purpose, Stored};
use super::identify::Caller;
use super::{query_keys, Audit, Backend, ClientAddr, Proxy, ProxyError, RateKey};
use crate::emulator::EmuRequest;
use crate::policy::canonical::CanonicalPath;
use crate::policy::{self, select, Provider, Verdict};
use crate::providers::identity::Identity;
use crate::providers::{self, aws, azure, gce, query};

/// Longest a GCE `wait_for_change` may hang (its `timeout_sec`, or this when it gives
/// none).
const MAX_LONG_POLL: Duration = Duration::from_secs(3600);
const DEFAULT_LONG_POLL: Duration = Duration::from_secs(300);

/// How much longer than usual a request may take: a GCE `wait_for_change` hangs until
/// the value changes or its `timeout_sec` passes.
pub(super) fn long_poll(uri: &Uri) -> Duration {
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

/// The name a caller's AWS session tokens are bound to.
fn session_owner(caller: &Caller, client: ClientAddr) -> String {
    match caller {
        Caller::Container(e) => format!("container:{}", e.container.0),
        Caller::Host => "host".into(),
        _ => format!("address:{}", client.0),
    }
}

impl Proxy {
    /// Decides, then forwards; fills in the audit record as it goes.
    pub(super) async fn forward(
        &self,
        req: Request<Incoming>,
        client: ClientAddr,
        deadline: Instant,
        caller: &Caller,
        audit: &mut Audit,
    ) -> Result<Response<Full<Bytes>>, ProxyError> {
        let (parts, body) = req.into_parts();
        audit.query_keys = parts.uri.query().map(query_keys);
        if parts.method == http::Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed(parts.method));
        }
        // A client that is slow to send its body is the client's fault, not the
        // upstream's: it gets its own answer, just before the overall deadline.
        let read = Limited::new(body, self.settings.max_body_bytes).collect();
        let margin = Duration::from_millis(5);
        let body =
            match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline - margin), read)
                .await
            {
                Err(_) => return Err(ProxyError::RequestBodyTimeout),
                Ok(r) => r,
            };
        let body = match body {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::RequestTooLarge(self.settings.max_body_bytes))
            }
            Err(e) => return Err(ProxyError::BadRequestBody(e)),
        };
        // The canonical path is what policy sees and what the upstream receives: the
        // two can never read the request differently.
        let canonical = CanonicalPath::parse(parts.uri.path()).map_err(ProxyError::BadPath)?;
        audit.path = Some(canonical.to_string());
        let provider = Provider::of(&canonical);
        // What the provider itself requires comes first: the answer is the one the
        // real service gives (the Azure SDK's probe depends on it).
        if let Some(resp) = providers::admit(provider, &parts.method, &canonical, &parts.headers) {
            audit.decision = "refuse";
            audit.rule = format!("{provider:?} protocol: request lacks what the service requires");
            return Ok(resp);
        }
        let who = match caller {
            Caller::Container(e) => Some(&**e),
            Caller::Forged { claimed, .. } => {
                audit.decision = "deny";
                audit.rule = format!("source address {claimed} is not the calling container's");
                return Err(ProxyError::Denied {
                    provider,
                    reason: audit.rule.clone(),
                });
            }
            Caller::Undetermined => {
                audit.decision = "retry";
                return Err(ProxyError::Undetermined);
            }
            Caller::Moved { accepted, now } => {
                audit.decision = "deny";
                audit.rule = format!(
                    "the connection was opened from {accepted:?} but this request came from {now:?}"
                );
                return Err(ProxyError::Denied {
                    provider,
                    reason: audit.rule.clone(),
                });
            }
            Caller::Host | Caller::Unknown => None,
        };
        let policies = self.settings.policies.borrow().clone();
        let (chosen, why) = select::policy_for(who, matches!(caller, Caller::Host), &policies);
        let decision = policy::decide(
            &chosen,
            &policy::Request {
                path: &canonical,
                query: parts.uri.query(),
            },
        );
        audit.rule = format!("{} ({why})", decision.because);
        if decision.verdict == Verdict::Deny {
            audit.decision = "deny";
            return Err(ProxyError::Denied {
                provider,
                reason: audit.rule.clone(),
            });
        }
        if let Some(limit) = chosen.rate_limit {
            let key = match caller {
                Caller::Container(e) => RateKey::Container(e.container.clone()),
                Caller::Host => RateKey::Host,
                _ => RateKey::Unknown,
            };
            let checked =
                self.limiter
                    .lock()
                    .expect("rate limiter lock")
                    .check(&key, limit, Instant::now());
            if let Err(retry_after) = checked {
                audit.decision = "rate-limited";
                return Err(ProxyError::RateLimited {
                    provider,
                    limit,
                    reason: chosen.name.clone(),
                    retry_after,
                });
            }
        }
        // Which identity the caller is pinned to. A label that cannot be read refuses
        // the container rather than hand it the instance's identity.
        let identity = match who.map(|e| Identity::from_labels(&e.labels)) {
            None => Identity::default(),
            Some(Ok(id)) => id,
            Some(Err(e)) => {
                audit.decision = "deny";
                audit.rule = e.to_string();
                return Err(ProxyError::Denied {
                    provider,
                    reason: audit.rule.clone(),
                });
            }
        };
        let mut query = parts.uri.query().map(str::to_owned);
        match provider {
            Provider::Aws => {
                let required = chosen.aws_tokens_required
                    || matches!(&self.settings.backend, Backend::Emulator(e) if e.aws_tokens_required());
                let owner = session_owner(caller, client);
                if let Some(resp) = self.mint.gate(
                    &owner,
                    &parts.method,
                    &canonical,
                    &parts.headers,
                    required,
                    SystemTime::now(),
                ) {
                    audit.decision = if resp.status().is_success() {
                        "allow"
                    } else {
                        "refuse"
                    };
                    audit.rule = "IMDSv2 session token".into();
                    return Ok(resp);
                }
                if let Some(role) = &identity.aws_role {
                    if aws::reads_role(&canonical, role) == Some(false) {
                        audit.decision = "refuse";
                        audit.rule = format!("AWS role other than the container's ({role})");
                        return Ok(aws_not_found());
                    }
                }
            }
            Provider::Azure if azure::is_token_path(&canonical) => {
                match azure::select_identity(identity.azure.as_ref(), query.as_deref()) {
                    Ok(q) => query = q,
                    Err(resp) => {
                        audit.decision = "refuse";
                        audit.rule = "managed identity not assigned to the container".into();
                        return Ok(*resp);
                    }
                }
            }
            _ => {}
        }
        audit.decision = "allow";
        let head_request = parts.method == http::Method::HEAD;
        let mut resp = match &self.settings.backend {
            Backend::Emulator(emu) => {
                let req = EmuRequest {
                    method: &parts.method,
                    path: &canonical,
                    query: query.as_deref(),
                    headers: &parts.headers,
                    body: &body,
                    identity: &identity,
                    deadline,
                };
                let resp = emu.answer(&req).await;
                let (rparts, rbody) = resp.into_parts();
                let rbody = rbody
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let rbody = if decision.redact.is_empty() {
                    rbody
                } else {
                    redact(rparts.status, rbody, &decision.redact)?
                };
                Response::from_parts(rparts, Full::new(rbody))
            }
            Backend::Upstream(_) => {
                let upstream = self
                    .upstream
                    .as_ref()
                    .expect("an upstream backend has a client");
                // A container pinned to a GCE account sees it as `default`, and no other.
                let mut route = gce::Route::Pass(gce::Fix::None);
                if let (Provider::Gce, Some(email)) = (provider, &identity.gce_service_account) {
                    let recursive =
                        query::get(&query::pairs(query.as_deref()), "recursive") == Some("true");
                    route = gce::route(&canonical, recursive, email);
                }
                let (path, fix) = match route {
                    gce::Route::NotFound => {
                        audit.decision = "refuse";
                        audit.rule = "GCE service account other than the container's".into();
                        return Ok(gce::not_found());
                    }
                    gce::Route::Pass(fix) => (canonical.clone(), fix),
                    gce::Route::Rewrite(p, fix) => (p, fix),
                };
                let target = match &query {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                };
                let aws = provider == Provider::Aws;
                let keyed = self
                    .cache
                    .as_ref()
                    .and_then(|c| Some((c, c.classify(&parts.method, &path, query.as_deref())?)));
                let answer = match keyed {
                    Some((cache, keyed)) => {
                        // Built only when the cache asks the service (never on a hit).
                        let fetch = |purpose: Purpose| {
                            let upstream = upstream.clone();
                            let (method, headers, body) =
                                (parts.method.clone(), parts.headers.clone(), body.clone());
                            // What the cache sends on its own (a fill, a refresh) never
                            // carries a bypass it was not asked for.
                            let plain = || match query.as_deref().and_then(cache::without_bypass) {
                                Some(q) if q.is_empty() => path.to_string(),
                                Some(q) => format!("{path}?{q}"),
                                None => target.clone(),
                            };
                            // A refresh outlives the request that started it: its own
                            // deadline, as the request's would be (upstream mode).
                            let timeout = if aws {
                                self.settings.aws_request_timeout
                            } else {
                                self.settings.request_timeout
                            };
                            let (target, deadline) = match purpose {
                                Purpose::Bypass => (target.clone(), deadline),
                                Purpose::Fill => (plain(), deadline),
                                Purpose::Refresh => (plain(), Instant::now() + timeout),
                            };
                            async move {
                                let answer = upstream
                                    .send(method, &target, &headers, body, aws, deadline)
                                    .await?;
                                Ok(Stored::from(answer))
                            }
                            .boxed()
                        };
                        let (answer, how) = cache.get(&keyed, deadline, fetch).await;
                        audit.cache = Some(how);
                        answer?
                    }
                    None => Stored::from(
                        upstream
                            .send(
                                parts.method.clone(),
                                &target,
                                &parts.headers,
                                body,
                                aws,
                                deadline,
                            )
                            .await?,
                    ),
                };
                audit.upstream_status = Some(answer.status.as_u16());
                let status = answer.status;
                let mut rbody = answer.body;
                if let Some(email) = &identity.gce_service_account {
                    rbody = gce::fix_body(fix, &canonical, email, status, rbody);
                }
                if let Some(role) = &identity.aws_role {
                    if provider == Provider::Aws
                        && aws::is_role_listing(&canonical)
                        && status.is_success()
                    {
                        let visible = aws::visible_roles(&String::from_utf8_lossy(&rbody), role);
                        if visible.is_empty() {
                            return Ok(aws_not_found());
                        }
                        rbody = Bytes::from(visible);
                    }
                }
                let rbody = if decision.redact.is_empty() {
                    rbody
                } else {
                    redact(status, rbody, &decision.redact)?
                };
                let mut resp = Response::builder()
                    .status(status)
                    .body(Full::new(rbody))
                    .expect("status is valid");
                *resp.headers_mut() = answer.headers;
                resp
            }
        };
        // Likewise for the answer (an upstream sending both Transfer-Encoding and a
        // wrong Content-Length must not desync the container's connection). A HEAD
        // answer has no body, and its Content-Length describes the resource: kept.
        if !head_request {
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        Ok(resp)
    }
}

/// AWS's answer for something that does not exist.
fn aws_not_found() -> Response<Full<Bytes>> {
    let body = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n <head>\n  <title>404 - Not Found</title>\n </head>\n <body>\n  <h1>404 - Not Found</h1>\n </body>\n</html>\n";
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(http::header::CONTENT_TYPE, "text/html")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts are valid")
}

/// A refusal (policy denial, rate limit) as the provider itself would shape it, with
/// the reason.
pub(super) fn refusal(
    provider: Provider,
    status: StatusCode,
    message: &str,
    retry_after: Option<u64>,
) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    if let Some(secs) = retry_after {
        b = b.header(http::header::RETRY_AFTER, secs);
    }
    let code = match status {
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        _ => "forbidden",
    };
    let reason = status.canonical_reason().unwrap_or("");
    let (b, body) = match provider {
        Provider::Azure => (
            b.header(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            ),
            serde_json::json!({ "error": code, "error_description": message }).to_string(),
        ),
        Provider::Gce => (
            b.header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .header("Metadata-Flavor", "Google"),
            format!("{} {reason}: {message}\n", status.as_u16()),
        ),
        Provider::Aws => (
            b.header(http::header::CONTENT_TYPE, "text/plain"),
            format!("{reason}: {message}\n"),
        ),
        Provider::Other => (
            b.header(http::header::CONTENT_TYPE, "application/json"),
            serde_json::json!({ "error": code, "message": message }).to_string(),
        ),
    };
    b.body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Removes the given key paths from a JSON answer (an Azure document that embeds a
/// subtree the policy denies). A successful answer that is not JSON is withheld rather
/// than passed whole; error answers pass as they are.
fn redact(status: StatusCode, body: Bytes, paths: &[Vec<String>]) -> Result<Bytes, ProxyError> {
    let mut doc: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) if !status.is_success() => return Ok(body),
        Err(_) => return Err(ProxyError::Unredactable),
    };
    for path in paths {
        remove_path(&mut doc, path);
    }
    Ok(Bytes::from(doc.to_string()))
}

/// Removes `path` (keys matched without case, as Azure paths are) from a JSON value.
fn remove_path(v: &mut serde_json::Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(obj) = v.as_object_mut() else { return };
    let keys: Vec<String> = obj
        .keys()
        .filter(|k| k.eq_ignore_ascii_case(first))
        .cloned()
        .collect();
    for k in keys {
        if rest.is_empty() {
            obj.remove(&k);
        } else if let Some(child) = obj.get_mut(&k) {
            remove_path(child, rest);
        }
    }
}
