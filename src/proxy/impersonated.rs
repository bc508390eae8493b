//! GCE service accounts by impersonation in the proxy: which accounts the instance has
//! (a container pinned to one of those is served as before), the accounts the running
//! containers want impersonated (fetched before their first request), the instance's
//! own token for the calls, and the answers under `service-accounts/`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::watch;

use super::admit::Decision;
use super::audit::Audit;
use super::upstream::Upstream;
use super::{ProxyError, ProxySettings};
use crate::assume::gce::{GceBroker, GceKey, IamFetcher, InstanceToken, Want, DEFAULT_SCOPE};
use crate::docker::Inventory;
use crate::policy::select::{self, Policies};
use crate::providers::gce::{self, Impersonated};
use crate::providers::identity::Identity;
use crate::providers::query;
use crate::request::canonical::CanonicalPath;
use crate::request::Provider;

/// How long the instance's account list is believed.
const ACCOUNTS_FOR: Duration = Duration::from_secs(60);
/// How long the proxy's own reads of the real service may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const SA: &str = "/computeMetadata/v1/instance/service-accounts/";

/// Impersonation's state in a proxy in front of a real server.
pub(super) struct GceSide {
    broker: GceBroker,
    accounts: Arc<InstanceAccounts>,
}

/// The instance's own service accounts (emails, lower case), read from the real
/// server and held for a minute.
pub(super) struct InstanceAccounts {
    upstream: Arc<Upstream>,
    memo: tokio::sync::Mutex<Option<(Instant, Arc<BTreeSet<String>>)>>,
}

fn flavor() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("metadata-flavor", HeaderValue::from_static("Google"));
    h
}

/// `GET path` of the real server with the GCE header: its body, if 200.
async fn get(up: &Upstream, path: &str) -> Result<Bytes, String> {
    up.get_ok(path, &flavor(), false, READ_TIMEOUT).await
}

impl InstanceAccounts {
    async fn get(&self) -> Result<Arc<BTreeSet<String>>, String> {
        let mut memo = self.memo.lock().await;
        if let Some((at, set)) = memo.as_ref() {
            if at.elapsed() < ACCOUNTS_FOR {
                return Ok(set.clone());
            }
        }
        match get(&self.upstream, SA).await {
            Ok(body) => {
                let set: BTreeSet<String> = String::from_utf8_lossy(&body)
                    .lines()
                    .map(|l| l.trim().trim_end_matches('/').to_ascii_lowercase())
                    .filter(|l| !l.is_empty() && l != "default")
                    .collect();
                let set = Arc::new(set);
                *memo = Some((Instant::now(), set.clone()));
                Ok(set)
            }
            // The last list keeps serving while the server cannot be asked.
            Err(e) => memo.as_ref().map(|(_, s)| s.clone()).ok_or(e),
        }
    }

    /// Whether the instance has `email` itself.
    pub(super) async fn is_own(&self, email: &str) -> Result<bool, String> {
        Ok(self.get().await?.contains(&email.to_ascii_lowercase()))
    }
}

/// The instance's default account's token, from the real server.
struct FromUpstream(Arc<Upstream>);

impl InstanceToken for FromUpstream {
    fn token(&self) -> BoxFuture<'static, Result<String, String>> {
        let up = self.0.clone();
        async move {
            let body = get(&up, &format!("{SA}default/token")).await?;
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| "the instance's token answer is not JSON".to_owned())?;
            v["access_token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| "the instance's token answer has no access_token".to_owned())
        }
        .boxed()
    }
}

/// Impersonation for this proxy, following the containers Docker reports.
pub(super) fn side(
    upstream: Arc<Upstream>,
    transport: Arc<crate::assume::transport::Https>,
    settings: &ProxySettings,
) -> Option<GceSide> {
    let base = settings.assume.gce_iam_url.clone()?;
    let fetcher = IamFetcher {
        instance: Arc::new(FromUpstream(upstream.clone())),
        base,
        transport,
    };
    let accounts = Arc::new(InstanceAccounts {
        upstream,
        memo: tokio::sync::Mutex::new(None),
    });
    let (tx, rx) = watch::channel(BTreeSet::new());
    if let Some(inv) = &settings.inventory {
        tokio::spawn(follow(
            inv.rx.clone(),
            settings.policies.clone(),
            accounts.clone(),
            tx,
        ));
    }
    Some(GceSide {
        broker: GceBroker::spawn(Arc::new(fetcher), rx),
        accounts,
    })
}

/// Publishes the accounts to impersonate whenever the containers or policies change.
async fn follow(
    mut inventory: watch::Receiver<Arc<Inventory>>,
    mut policies: watch::Receiver<Arc<Policies>>,
    accounts: Arc<InstanceAccounts>,
    tx: watch::Sender<BTreeSet<GceKey>>,
) {
    loop {
        let asked = wanted(
            &inventory.borrow_and_update(),
            &policies.borrow_and_update(),
        );
        if !asked.is_empty() {
            // Accounts the instance has itself are served as before, not impersonated.
            if let Ok(own) = accounts.get().await {
                let set: BTreeSet<GceKey> = asked
                    .into_iter()
                    .filter(|k| !own.contains(&k.email.to_ascii_lowercase()))
                    .collect();
                tx.send_if_modified(|old| std::mem::replace(old, set.clone()) != set);
            }
        } else {
            tx.send_if_modified(|old| std::mem::take(old) != BTreeSet::new());
        }
        tokio::select! {
            r = inventory.changed() => if r.is_err() { return },
            r = policies.changed() => if r.is_err() { return },
        }
    }
}

/// The default-scope tokens of the accounts the running containers are labelled with
/// and their policies allow.
pub(super) fn wanted(inv: &Inventory, policies: &Policies) -> BTreeSet<GceKey> {
    inv.endpoints()
        .filter_map(|e| {
            let email = Identity::from_labels(&e.labels).ok()?.gce_service_account?;
            let (policy, _) = select::policy_for(select::Asker::Container(&e.labels), policies);
            policy
                .allows_gce_account(&email)
                .then(|| access(&email, vec![DEFAULT_SCOPE.into()]))
        })
        .collect()
}

fn access(email: &str, mut scopes: Vec<String>) -> GceKey {
    scopes.sort();
    scopes.dedup();
    GceKey {
        email: email.to_owned(),
        want: Want::Access { scopes },
    }
}

/// What happens to a GCE request of a container pinned to `email`.
pub(super) enum Pinned {
    /// The instance has the account: served as before.
    Own,
    /// Answered here.
    Answer(Result<Response<Full<Bytes>>, ProxyError>),
    /// The real server answers; its recursive answer is fixed for the impersonated
    /// account.
    Impersonated,
}

impl GceSide {
    /// The way for a request of a container pinned to `email` (`may`: its policy lets
    /// the account be impersonated).
    pub(super) async fn pinned(
        &self,
        email: &str,
        may: bool,
        path: &CanonicalPath,
        query: Option<&str>,
        deadline: Instant,
        audit: &mut Audit,
    ) -> Pinned {
        match self.accounts.is_own(email).await {
            Ok(true) => return Pinned::Own,
            Ok(false) => {}
            Err(e) => {
                audit.decision = Decision::Error;
                audit.error = Some(e.clone());
                return Pinned::Answer(Err(ProxyError::UpstreamFailed(e.into())));
            }
        }
        if !may {
            let rule = format!(
                "service account {email} is not the instance's and not in the gce_service_accounts of the container's policy"
            );
            audit.decision = Decision::Deny;
            audit.rule = rule.clone();
            return Pinned::Answer(Err(ProxyError::Denied {
                provider: Provider::Gce,
                reason: rule,
            }));
        }
        audit.rule = format!("{}; impersonating {email}", audit.rule);
        let pairs = query::pairs(query);
        let recursive = query::get(&pairs, "recursive") == Some("true");
        let Some(kind) = gce::impersonated(path, recursive, email) else {
            return Pinned::Impersonated;
        };
        if let Some(resp) = gce::impersonated_answer(&kind, email) {
            if kind == Impersonated::NotFound {
                audit.decision = Decision::Refuse;
            }
            return Pinned::Answer(Ok(resp));
        }
        let key = match kind {
            Impersonated::Token => {
                let scopes = match query::get(&pairs, "scopes") {
                    Some(s) => s
                        .split(',')
                        .map(|x| x.trim().to_owned())
                        .filter(|x| !x.is_empty())
                        .collect(),
                    None => vec![DEFAULT_SCOPE.to_owned()],
                };
                access(email, scopes)
            }
            _ => {
                let Some(audience) = query::get(&pairs, "audience").filter(|a| !a.is_empty())
                else {
                    audit.decision = Decision::Refuse;
                    return Pinned::Answer(Ok(gce::bad_request(
                        "non-empty audience parameter required",
                    )));
                };
                let full = query::get(&pairs, "format") == Some("full");
                GceKey {
                    email: email.to_owned(),
                    want: Want::Id {
                        audience: audience.to_owned(),
                        full,
                    },
                }
            }
        };
        let until = tokio::time::Instant::from_std(deadline);
        let got = match tokio::time::timeout_at(until, self.broker.get(key.clone())).await {
            Ok(got) => got,
            Err(_) => Err(Arc::new(crate::assume::gce::IamError::Unreachable(
                "no answer before the request's deadline".into(),
            ))),
        };
        Pinned::Answer(match got {
            Ok(t) => Ok(match key.want {
                Want::Access { .. } => {
                    let left = t
                        .expiration
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .as_secs();
                    gce::token_answer(&t.token, left)
                }
                Want::Id { .. } => gce::identity_answer(&t.token),
            }),
            Err(e) => {
                use crate::assume::broker::Failure;
                audit.error = Some(e.to_string());
                audit.decision = if e.is_permanent() {
                    Decision::Refuse
                } else {
                    Decision::Error
                };
                Ok(gce_failure(&e.to_string(), e.is_permanent()))
            }
        })
    }
}

/// What a container sees when its account's token cannot be had: as the metadata
/// server answers a token it cannot mint, with the reason.
fn gce_failure(reason: &str, permanent: bool) -> Response<Full<Bytes>> {
    let status = if permanent {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = gce::bad_request(&format!(
        "imds-proxy could not impersonate the account: {reason}"
    ));
    *r.status_mut() = status;
    r
}
