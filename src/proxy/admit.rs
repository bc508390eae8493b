//! The decision on one request, made before any of it is sent anywhere: what the
//! provider's protocol requires, who is calling, the caller's policy and rate budget,
//! the identity its labels pin, and the provider-specific gates. The outcome is either
//! an answer the proxy gives itself ([`Local`], the one channel for every refusal) or a
//! [`Plan`] for the answering step.
//!
//! Nothing here does I/O. The two pieces of state a decision consults (the per-caller
//! rate budgets and the AWS session tokens) are reached through [`Gates`], so the whole
//! decision is table-tested without sockets (`admit_tests`).

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::Full;

use super::identify::Caller;
use super::{ClientAddr, ProxyError, RateKey};
use crate::assume::spec::{self, AwsSettings, RoleSpec};
use crate::docker::Endpoint;
use crate::policy::{self, select, RateLimit, Verdict};
use crate::providers::identity::Identity;
use crate::providers::{self, aws, azure, gce, query};
use crate::request::canonical::CanonicalPath;
use crate::request::Provider;

/// What the audit says of a request's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(super) enum Decision {
    /// Answered: by the backend, or by the proxy's own protocol step (a session token).
    Allow,
    /// A policy, an unreadable label or a forged or taken-over connection said no.
    Deny,
    /// The provider's protocol, or the caller's pinned identity, said no: the answer is
    /// the one the real service gives.
    Refuse,
    /// The caller's budget, or the service's, had no room.
    RateLimited,
    /// Docker has not reported the caller yet: try again shortly.
    Retry,
    /// The request failed (a bad request, the service failing or timing out).
    #[default]
    Error,
}

impl Decision {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Refuse => "refuse",
            Self::RateLimited => "rate-limited",
            Self::Retry => "retry",
            Self::Error => "error",
        }
    }
}

/// The request as the decision sees it: its head, with the path already canonical.
pub(super) struct Head<'a> {
    pub method: &'a Method,
    pub path: &'a CanonicalPath,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Who asks, by which rules, and where answers come from.
pub(super) struct Context<'a> {
    pub caller: &'a Caller,
    pub client: ClientAddr,
    pub policies: &'a select::Policies,
    pub backend: BackendKind,
    /// How labelled roles are assumed.
    pub aws: &'a AwsSettings,
}

/// Where the answer will come from, as far as the decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BackendKind {
    /// The real service: the proxy itself narrows a pinned GCE account's view.
    Upstream,
    /// The emulator, which serves pinned identities itself; whether its file demands
    /// AWS session tokens.
    Emulator { aws_tokens_required: bool },
}

/// The state a decision consults.
pub(super) trait Gates {
    /// Takes one request from `key`'s budget; `Err`: how long until there is room.
    fn rate(&mut self, key: &RateKey, limit: RateLimit) -> Result<(), Duration>;
    /// AWS session tokens: the answer given here (a token issued, a 401), or `None`
    /// when the request may proceed.
    fn aws_session(
        &mut self,
        owner: &str,
        head: &Head<'_>,
        required: bool,
    ) -> Option<Response<Full<Bytes>>>;
}

/// An answer the proxy gives itself, and why.
#[derive(Debug)]
pub(super) struct Local {
    pub decision: Decision,
    pub rule: String,
    /// A provider-shaped answer, or the error whose answer it gets (and whose chain
    /// the audit records).
    pub answer: Result<Response<Full<Bytes>>, ProxyError>,
}

impl Local {
    fn answer(
        decision: Decision,
        rule: impl Into<String>,
        resp: Response<Full<Bytes>>,
    ) -> Box<Self> {
        Box::new(Self {
            decision,
            rule: rule.into(),
            answer: Ok(resp),
        })
    }

    /// A denial, shaped as `provider` shapes a 403.
    fn deny(provider: Provider, rule: String) -> Box<Self> {
        Box::new(Self {
            decision: Decision::Deny,
            answer: Err(ProxyError::Denied {
                provider,
                reason: rule.clone(),
            }),
            rule,
        })
    }
}

/// What the answering step does with an admitted request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub provider: Provider,
    /// The rule that allowed it, and why that policy applied.
    pub rule: String,
    /// The identity the caller is pinned to (none: the instance's).
    pub identity: Identity,
    /// The query to send (an Azure token request gets the pinned identity's).
    pub query: Option<String>,
    /// The path to send the real service where it is not the request's own, and how
    /// to fix its answer (a pinned GCE account is seen as `default`).
    pub rewritten: Option<CanonicalPath>,
    pub fix: gce::Fix,
    /// JSON key paths the policy removes from the answer.
    pub redact: Vec<Vec<String>>,
    /// The role session whose credentials answer the caller's `iam/` paths.
    pub assume: Option<RoleSpec>,
    /// The caller's pinned GCE account may be impersonated, should the instance not
    /// have it (its policy lists it in `gce_service_accounts`).
    pub gce_impersonate: bool,
}

/// Decides one request.
pub(super) fn admit(
    head: &Head<'_>,
    cx: &Context<'_>,
    gates: &mut impl Gates,
) -> Result<Plan, Box<Local>> {
    let provider = Provider::of(head.path);
    // What the provider itself requires comes first: the answer is the one the real
    // service gives (the Azure SDK's probe depends on it).
    if let Some(resp) = providers::admit(provider, head.method, head.path, head.headers) {
        let rule = format!("{provider:?} protocol: request lacks what the service requires");
        return Err(Local::answer(Decision::Refuse, rule, resp));
    }
    let who = known_caller(cx.caller, provider)?;
    let asker = match (who, cx.caller) {
        (Some(e), _) => select::Asker::Container(&e.labels),
        (None, Caller::Host) => select::Asker::Host,
        (None, _) => select::Asker::Unknown,
    };
    let (chosen, why) = select::policy_for(asker, cx.policies);
    let request = policy::Request {
        path: head.path,
        query: head.query,
    };
    let mut decision = policy::decide(&chosen, &request);
    let mut rule = std::mem::take(&mut decision.because);
    let _ = write!(rule, " ({why})");
    if decision.verdict == Verdict::Deny {
        return Err(Local::deny(provider, rule));
    }
    if let Some(limit) = chosen.rate_limit {
        if let Err(retry_after) = gates.rate(&rate_key(cx.caller), limit) {
            let error = ProxyError::RateLimited {
                provider,
                limit,
                reason: chosen.name.clone(),
                retry_after,
            };
            return Err(Box::new(Local {
                decision: Decision::RateLimited,
                rule,
                answer: Err(error),
            }));
        }
    }
    // A label that cannot be read refuses the container rather than hand it the
    // instance's identity.
    let mut identity = match who.map(|e| Identity::from_labels(&e.labels)) {
        None => Identity::default(),
        Some(Ok(id)) => id,
        Some(Err(e)) => return Err(Local::deny(provider, e.to_string())),
    };
    let assume = assumed_role(provider, head.path, who, &mut identity, &chosen, cx)?;
    let query = provider_gates(provider, head, cx, &chosen, &identity, gates)?;
    let (rewritten, fix) =
        upstream_route(provider, head.path, query.as_deref(), &identity, cx.backend)?;
    let gce_impersonate = provider == Provider::Gce
        && cx.backend == BackendKind::Upstream
        && identity
            .gce_service_account
            .as_deref()
            .is_some_and(|email| chosen.allows_gce_account(email));
    Ok(Plan {
        provider,
        rule,
        identity,
        query,
        rewritten,
        fix,
        redact: decision.redact,
        assume,
        gce_impersonate,
    })
}

fn asker_of(e: &Endpoint) -> spec::Asker<'_> {
    spec::Asker {
        name: &e.name,
        image: &e.image,
        labels: &e.labels,
    }
}

/// The role to assume for a container labelled with one, if its policy lists it. A
/// role the policy does not list refuses the container's `iam/` paths (the instance's
/// role included); the rest of the instance's metadata stays as the policy says. The
/// emulator serves the role of that name from its file itself.
fn assumed_role(
    provider: Provider,
    path: &CanonicalPath,
    who: Option<&Endpoint>,
    identity: &mut Identity,
    policy: &policy::Policy,
    cx: &Context<'_>,
) -> Result<Option<RoleSpec>, Box<Local>> {
    let (Provider::Aws, Some(e), Some(asked)) = (provider, who, &identity.aws_assume) else {
        return Ok(None);
    };
    let spec = spec::role_spec(asked, &asker_of(e), cx.aws)
        .map_err(|err| Local::deny(provider, err.to_string()))?;
    if !policy.allows_aws_role(&spec.arn) {
        if aws::iam_path(path, spec.role_name()).is_some() {
            let rule = format!(
                "role {} is not in the aws_roles of policy {}",
                spec.arn, policy.name
            );
            return Err(Local::deny(provider, rule));
        }
        return Ok(None);
    }
    match cx.backend {
        BackendKind::Emulator { .. } => {
            identity.aws_role = Some(spec.role_name().to_owned());
            Ok(None)
        }
        BackendKind::Upstream => Ok(Some(spec)),
    }
}

/// The container behind the request, if any; callers that cannot be served at all
/// (a forged source, one Docker has not reported yet) are answered here.
fn known_caller(caller: &Caller, provider: Provider) -> Result<Option<&Endpoint>, Box<Local>> {
    match caller {
        Caller::Container(e) => Ok(Some(e)),
        Caller::Host | Caller::Unknown => Ok(None),
        Caller::Forged { claimed, .. } => Err(Local::deny(
            provider,
            format!("source address {claimed} is not the calling container's"),
        )),
        Caller::NotYetReported => Err(Box::new(Local {
            decision: Decision::Retry,
            rule: String::new(),
            answer: Err(ProxyError::CallerNotYetReported),
        })),
    }
}

/// Whose budget a request uses: each container its own; host processes share one,
/// unknown callers another.
fn rate_key(caller: &Caller) -> RateKey {
    match caller {
        Caller::Container(e) => RateKey::Container(e.container.clone()),
        Caller::Host => RateKey::Host,
        _ => RateKey::Unknown,
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

/// AWS session tokens and a pinned AWS role; a pinned Azure identity. Returns the
/// query to send.
fn provider_gates(
    provider: Provider,
    head: &Head<'_>,
    cx: &Context<'_>,
    policy: &policy::Policy,
    identity: &Identity,
    gates: &mut impl Gates,
) -> Result<Option<String>, Box<Local>> {
    let query = head.query.map(str::to_owned);
    match provider {
        Provider::Aws => {
            let required = policy.aws_tokens_required
                || matches!(
                    cx.backend,
                    BackendKind::Emulator {
                        aws_tokens_required: true
                    }
                );
            let owner = session_owner(cx.caller, cx.client);
            if let Some(resp) = gates.aws_session(&owner, head, required) {
                let decision = if resp.status().is_success() {
                    Decision::Allow
                } else {
                    Decision::Refuse
                };
                return Err(Local::answer(decision, "IMDSv2 session token", resp));
            }
            if let Some(role) = &identity.aws_role {
                if aws::reads_role(head.path, role) == Some(false) {
                    let rule = format!("AWS role other than the container's ({role})");
                    return Err(Local::answer(Decision::Refuse, rule, aws::not_found()));
                }
            }
            Ok(query)
        }
        Provider::Azure if azure::is_token_path(head.path) => {
            azure::select_identity(identity.azure.as_ref(), head.query).map_err(|resp| {
                let rule = "managed identity not assigned to the container";
                Local::answer(Decision::Refuse, rule, *resp)
            })
        }
        _ => Ok(query),
    }
}

/// The path the real service is asked and how its answer is fixed: a container pinned
/// to a GCE account sees it as `default`, and no other. The emulator serves pinned
/// identities itself: there the path is the request's.
fn upstream_route(
    provider: Provider,
    path: &CanonicalPath,
    query: Option<&str>,
    identity: &Identity,
    backend: BackendKind,
) -> Result<(Option<CanonicalPath>, gce::Fix), Box<Local>> {
    let pinned = identity.gce_service_account.as_deref();
    let (Provider::Gce, Some(email), BackendKind::Upstream) = (provider, pinned, backend) else {
        return Ok((None, gce::Fix::None));
    };
    let recursive = query::get(&query::pairs(query), "recursive") == Some("true");
    match gce::route(path, recursive, email) {
        gce::Route::NotFound => {
            let rule = "GCE service account other than the container's";
            Err(Local::answer(Decision::Refuse, rule, gce::not_found()))
        }
        gce::Route::Pass(fix) => Ok((None, fix)),
        gce::Route::Rewrite(p, fix) => Ok((Some(p), fix)),
    }
}
