//! One request's way through the proxy: its head and body read, the decision
//! ([`super::admit`]), then the answer from the emulator or the real service (through
//! the cache), fixed up for the caller's identity and policy.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use futures::FutureExt;

use super::admit::{self, BackendKind, Context, Decision, Gates, Head, Local, Plan};
use super::audit::{query_keys, Audit};
use super::cache::{self, Purpose, Stored};
use super::identify::Caller;
use super::impersonated::Pinned;
use super::{Backend, ClientAddr, Proxy, ProxyError, RateKey};
use crate::emulator::EmuRequest;
use crate::policy::RateLimit;
use crate::providers::aws;
use crate::request::canonical::{CanonicalError, CanonicalPath};
use crate::request::Provider;

/// The proxy's rate budgets and AWS session tokens, as the decision consults them.
struct ProxyGates<'a> {
    proxy: &'a Proxy,
}

impl Gates for ProxyGates<'_> {
    fn rate(&mut self, key: &RateKey, limit: RateLimit) -> Result<(), Duration> {
        let mut limiter = self.proxy.limiter.lock().expect("rate limiter lock");
        limiter.check(key, limit, Instant::now())
    }

    fn aws_session(
        &mut self,
        owner: &str,
        head: &Head<'_>,
        required: bool,
    ) -> Option<Response<Full<Bytes>>> {
        let now = std::time::SystemTime::now();
        let mint = &self.proxy.mint;
        mint.gate(owner, head.method, head.path, head.headers, required, now)
    }
}

/// What was read of a request: its head, canonical path and whole body.
struct Read {
    parts: http::request::Parts,
    path: CanonicalPath,
    body: Bytes,
}

impl Proxy {
    /// Reads, decides, answers; fills in the audit record.
    pub(super) async fn forward(
        &self,
        req: Request<Incoming>,
        path: Result<CanonicalPath, CanonicalError>,
        client: ClientAddr,
        deadline: Instant,
        caller: &Caller,
        audit: &mut Audit,
    ) -> Result<Response<Full<Bytes>>, ProxyError> {
        audit.query_keys = req.uri().query().map(query_keys);
        let read = self.read(req, path, deadline).await?;
        audit.path = Some(read.path.to_string());
        audit.provider = Some(Provider::of(&read.path));
        let policies = self.settings.policies.borrow().clone();
        let backend = match &self.settings.backend {
            Backend::Upstream(_) => BackendKind::Upstream,
            Backend::Emulator(e) => BackendKind::Emulator {
                aws_tokens_required: e.aws_tokens_required(),
            },
        };
        let cx = Context {
            caller,
            client,
            policies: &policies,
            backend,
            aws: &self.settings.assume.aws,
        };
        let head = Head {
            method: &read.parts.method,
            path: &read.path,
            query: read.parts.uri.query(),
            headers: &read.parts.headers,
        };
        match admit::admit(&head, &cx, &mut ProxyGates { proxy: self }) {
            Err(local) => {
                let Local {
                    decision,
                    rule,
                    answer,
                } = *local;
                audit.decision = decision;
                audit.rule = rule;
                answer
            }
            Ok(mut plan) => {
                audit.decision = Decision::Allow;
                audit.rule = std::mem::take(&mut plan.rule);
                self.answer(&read, &plan, deadline, audit).await
            }
        }
    }

    /// The request's head and whole body, and its canonical path: what policy sees and
    /// what the upstream receives, so the two can never read the request differently.
    async fn read(
        &self,
        req: Request<Incoming>,
        path: Result<CanonicalPath, CanonicalError>,
        deadline: Instant,
    ) -> Result<Read, ProxyError> {
        let (parts, body) = req.into_parts();
        if parts.method == http::Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed(parts.method));
        }
        // A client that is slow to send its body is the client's fault, not the
        // upstream's: it gets its own answer, just before the overall deadline.
        let limit = self.settings.max_body_bytes;
        let collect = Limited::new(body, limit).collect();
        let margin = Duration::from_millis(5);
        let until = tokio::time::Instant::from_std(deadline - margin);
        let body = match tokio::time::timeout_at(until, collect).await {
            Err(_) => return Err(ProxyError::RequestBodyTimeout),
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::RequestTooLarge(limit))
            }
            Ok(Err(e)) => return Err(ProxyError::BadRequestBody(e)),
        };
        let path = path.map_err(ProxyError::BadPath)?;
        Ok(Read { parts, path, body })
    }

    /// The answer to an admitted request.
    async fn answer(
        &self,
        read: &Read,
        plan: &Plan,
        deadline: Instant,
        audit: &mut Audit,
    ) -> Result<Response<Full<Bytes>>, ProxyError> {
        let mut resp = match &self.settings.backend {
            Backend::Emulator(emu) => {
                let req = EmuRequest {
                    method: &read.parts.method,
                    path: &read.path,
                    query: plan.query.as_deref(),
                    headers: &read.parts.headers,
                    body: &read.body,
                    identity: &plan.identity,
                    deadline,
                };
                let (rparts, rbody) = emu.answer(&req).await.into_parts();
                let rbody = rbody
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let rbody = redact(rparts.status, rbody, &plan.redact)?;
                Response::from_parts(rparts, Full::new(rbody))
            }
            Backend::Upstream(_) => {
                if let Some(spec) = &plan.assume {
                    if let Some(resp) = self.answer_assumed(spec, &read.path, deadline, audit).await
                    {
                        return Ok(resp);
                    }
                }
                let mut impersonating = None;
                if let (Provider::Gce, Some(email), Some(side)) =
                    (plan.provider, &plan.identity.gce_service_account, &self.gce)
                {
                    let query = read.parts.uri.query();
                    match side
                        .pinned(
                            email,
                            plan.gce_impersonate,
                            &read.path,
                            query,
                            deadline,
                            audit,
                        )
                        .await
                    {
                        Pinned::Own => {}
                        Pinned::Answer(r) => return r,
                        Pinned::Impersonated => impersonating = Some(email.as_str()),
                    }
                }
                let answer = self.ask_upstream(read, plan, deadline, audit).await?;
                audit.upstream_status = Some(answer.status.as_u16());
                let Some(rbody) = fix_upstream_body(read, plan, &answer, impersonating)? else {
                    return Ok(aws::not_found());
                };
                let mut resp = Response::builder()
                    .status(answer.status)
                    .body(Full::new(rbody))
                    .expect("status is valid");
                *resp.headers_mut() = answer.headers;
                resp
            }
        };
        // Likewise for the answer (an upstream sending both Transfer-Encoding and a
        // wrong Content-Length must not desync the container's connection). A HEAD
        // answer has no body, and its Content-Length describes the resource: kept.
        if read.parts.method != http::Method::HEAD {
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        Ok(resp)
    }

    /// The real service's answer, through the cache where it may answer.
    async fn ask_upstream(
        &self,
        read: &Read,
        plan: &Plan,
        deadline: Instant,
        audit: &mut Audit,
    ) -> Result<Stored, ProxyError> {
        let upstream = self
            .upstream
            .as_ref()
            .expect("an upstream backend has a client");
        let path = plan.rewritten.as_ref().unwrap_or(&read.path);
        let query = plan.query.as_deref();
        // Written out only when the service is asked (never on a hit).
        let target = || match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let aws = plan.provider == Provider::Aws;
        let (method, headers) = (&read.parts.method, &read.parts.headers);
        let keyed = self
            .cache
            .as_ref()
            .and_then(|c| Some((c, c.classify(method, path, query)?)));
        let Some((cache, keyed)) = keyed else {
            let answer = upstream
                .send(
                    method.clone(),
                    &target(),
                    headers,
                    read.body.clone(),
                    aws,
                    deadline,
                )
                .await?;
            return Ok(Stored::from(answer));
        };
        // Built only when the cache asks the service (never on a hit).
        let fetch = |purpose: Purpose| {
            let upstream = upstream.clone();
            let (method, headers, body) = (method.clone(), headers.clone(), read.body.clone());
            // What the cache sends on its own (a fill, a refresh) never carries a
            // bypass it was not asked for.
            let plain = || match query.and_then(cache::without_bypass) {
                Some(q) if q.is_empty() => path.to_string(),
                Some(q) => format!("{path}?{q}"),
                None => target(),
            };
            // A refresh outlives the request that started it: its own deadline, as the
            // request's would be (upstream mode).
            let timeout = if aws {
                self.settings.aws_request_timeout
            } else {
                self.settings.request_timeout
            };
            let (target, deadline) = match purpose {
                Purpose::Bypass => (target(), deadline),
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
        answer
    }
}

/// The real service's answer body as the caller may see it: a pinned GCE account seen
/// as `default`, a pinned AWS role the only one listed, the policy's redactions made.
/// `None`: the caller's role is not among the instance's (answered as AWS's 404).
fn fix_upstream_body(
    read: &Read,
    plan: &Plan,
    answer: &Stored,
    impersonating: Option<&str>,
) -> Result<Option<Bytes>, ProxyError> {
    let status = answer.status;
    let mut body = answer.body.clone();
    if let Some(email) = impersonating {
        body = crate::providers::gce::fix_impersonated(plan.fix, email, status, body);
    } else if let Some(email) = &plan.identity.gce_service_account {
        body = crate::providers::gce::fix_body(plan.fix, &read.path, email, status, body);
    }
    if let Some(role) = &plan.identity.aws_role {
        if plan.provider == Provider::Aws && aws::is_role_listing(&read.path) && status.is_success()
        {
            let visible = aws::visible_roles(&String::from_utf8_lossy(&body), role);
            if visible.is_empty() {
                return Ok(None);
            }
            body = Bytes::from(visible);
        }
    }
    redact(status, body, &plan.redact).map(Some)
}

/// Removes the given key paths from a JSON answer (an Azure document that embeds a
/// subtree the policy denies). A successful answer that is not JSON is withheld rather
/// than passed whole; error answers pass as they are.
fn redact(status: StatusCode, body: Bytes, paths: &[Vec<String>]) -> Result<Bytes, ProxyError> {
    if paths.is_empty() {
        return Ok(body);
    }
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
