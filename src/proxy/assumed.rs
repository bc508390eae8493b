//! Assumed roles in the proxy: which role sessions the running containers want (so
//! the broker fetches them before their first request), the instance's own keys read
//! from the real service, and the answers to an assumed-role caller's `iam/` paths.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::watch;

use super::admit::Decision;
use super::audit::Audit;
use super::upstream::Upstream;
use super::{Proxy, ProxySettings};
use crate::assume::spec::{role_spec, AwsSettings, RoleSpec};
use crate::assume::sts::{InstanceKeys, StsError};
use crate::assume::transport::Https;
use crate::assume::{InstanceKeysSource, RoleBroker, StsAssumer};
use crate::docker::Inventory;
use crate::policy::select::{self, Policies};
use crate::providers::aws::{self, IamPath};
use crate::providers::aws_doc;
use crate::providers::identity::Identity;

/// How long the proxy's own reads of the instance's role and region may take.
const INSTANCE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The broker for this proxy, following the containers Docker reports.
pub(super) fn broker(
    upstream: Arc<Upstream>,
    transport: Arc<Https>,
    settings: &ProxySettings,
) -> RoleBroker {
    let assumer = StsAssumer {
        instance: Arc::new(FromUpstream(upstream)),
        endpoint: settings.assume.sts_endpoint.clone(),
        transport,
    };
    let (tx, rx) = watch::channel(BTreeSet::new());
    if let Some(inv) = &settings.inventory {
        tokio::spawn(follow(
            inv.rx.clone(),
            settings.policies.clone(),
            settings.assume.aws.clone(),
            tx,
        ));
    }
    RoleBroker::spawn(Arc::new(assumer), rx)
}

/// Publishes the wanted role sessions whenever the containers or the policies change.
async fn follow(
    mut inventory: watch::Receiver<Arc<Inventory>>,
    mut policies: watch::Receiver<Arc<Policies>>,
    aws: AwsSettings,
    tx: watch::Sender<BTreeSet<RoleSpec>>,
) {
    loop {
        let set = wanted(
            &inventory.borrow_and_update(),
            &policies.borrow_and_update(),
            &aws,
        );
        tx.send_if_modified(|old| {
            let changed = *old != set;
            *old = set;
            changed
        });
        tokio::select! {
            r = inventory.changed() => if r.is_err() { return },
            r = policies.changed() => if r.is_err() { return },
        }
    }
}

/// The role sessions of the running containers whose policy lists their role.
pub(super) fn wanted(
    inv: &Inventory,
    policies: &Policies,
    aws: &AwsSettings,
) -> BTreeSet<RoleSpec> {
    inv.endpoints()
        .filter_map(|e| {
            let asked = Identity::from_labels(&e.labels).ok()?.aws_assume?;
            let spec = role_spec(
                &asked,
                &crate::assume::spec::Asker {
                    name: &e.name,
                    image: &e.image,
                    labels: &e.labels,
                },
                aws,
            )
            .ok()?;
            let (policy, _) = select::policy_for(select::Asker::Container(&e.labels), policies);
            policy.allows_aws_role(&spec.arn).then_some(spec)
        })
        .collect()
}

/// The instance's own role credentials and region, asked of the real service.
struct FromUpstream(Arc<Upstream>);

impl InstanceKeysSource for FromUpstream {
    fn keys_and_region(&self) -> BoxFuture<'static, Result<(InstanceKeys, String), String>> {
        let up = self.0.clone();
        async move {
            let get = |path: String| {
                let up = up.clone();
                async move {
                    let none = HeaderMap::new();
                    let body = up.get_ok(&path, &none, true, INSTANCE_READ_TIMEOUT).await?;
                    Ok::<_, String>(String::from_utf8_lossy(&body).into_owned())
                }
            };
            let base = "/latest/meta-data";
            let listing = get(format!("{base}/iam/security-credentials/")).await?;
            let role = listing
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .ok_or("the instance has no role")?
                .to_owned();
            let doc = get(format!("{base}/iam/security-credentials/{role}")).await?;
            let keys = instance_keys(&doc)?;
            let region = get(format!("{base}/placement/region")).await?;
            Ok((keys, region.trim().to_owned()))
        }
        .boxed()
    }
}

/// The keys in EC2's credentials document.
fn instance_keys(doc: &str) -> Result<InstanceKeys, String> {
    let v: serde_json::Value =
        serde_json::from_str(doc).map_err(|_| "the instance's credentials are not JSON")?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    if field("Code").as_deref().is_some_and(|c| c != "Success") {
        return Err(format!(
            "the instance's role has no credentials ({})",
            field("Code").unwrap_or_default()
        ));
    }
    Ok(InstanceKeys {
        access_key_id: field("AccessKeyId").ok_or("no AccessKeyId")?,
        secret_access_key: field("SecretAccessKey").ok_or("no SecretAccessKey")?,
        token: field("Token").filter(|t| !t.is_empty()),
    })
}

impl Proxy {
    /// The answer to an assumed-role caller's `iam/` path, if `spec`'s role answers it.
    pub(super) async fn answer_assumed(
        &self,
        spec: &RoleSpec,
        path: &crate::request::canonical::CanonicalPath,
        deadline: Instant,
        audit: &mut Audit,
    ) -> Option<Response<Full<Bytes>>> {
        let which = aws::iam_path(path, spec.role_name())?;
        let broker = self.broker.as_ref()?;
        audit.rule = format!("{}; role assumed: {}", audit.rule, spec.arn);
        match which {
            IamPath::Listing => return Some(aws::text_owned(StatusCode::OK, spec.role_name())),
            IamPath::Credentials { own: false } => {
                audit.decision = Decision::Refuse;
                return Some(aws::not_found());
            }
            _ => {}
        }
        let until = tokio::time::Instant::from_std(deadline);
        let now = SystemTime::now();
        let got = match tokio::time::timeout_at(until, broker.get(spec.clone())).await {
            Ok(got) => got,
            Err(_) => Err(Arc::new(StsError::Unreachable(
                "no answer before the request's deadline".into(),
            ))),
        };
        let session = match got {
            Ok(s) => s,
            Err(e) => {
                audit.error = Some(e.to_string());
                let (status, decision) = if e.is_permanent() {
                    (StatusCode::OK, Decision::Refuse)
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, Decision::Error)
                };
                audit.decision = decision;
                let message = format!("imds-proxy could not assume role {}: {e}", spec.arn);
                let body = aws_doc::failure_json(e.ec2_code(), &message, now);
                return Some(aws::text_owned(status, &body));
            }
        };
        let body = match which {
            IamPath::Info => {
                let id = session
                    .assumed_role_id
                    .split(':')
                    .next()
                    .unwrap_or_default();
                aws_doc::info_json(&spec.arn, id, session.issued_at)
            }
            _ => aws_doc::credentials_json(&aws_doc::RoleKeys {
                access_key_id: &session.access_key_id,
                secret_access_key: &session.secret_access_key,
                token: &session.token,
                last_updated: session.issued_at,
                expiration: session.expiration,
            }),
        };
        Some(aws::text_owned(StatusCode::OK, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instances_keys_are_read_from_its_document() {
        let k = instance_keys(
            r#"{"Code":"Success","AccessKeyId":"ASIAX","SecretAccessKey":"s","Token":"t"}"#,
        )
        .unwrap();
        assert_eq!(
            (k.access_key_id.as_str(), k.token.as_deref()),
            ("ASIAX", Some("t"))
        );
        assert!(instance_keys(r#"{"Code":"AssumeRoleUnauthorizedAccess"}"#)
            .unwrap_err()
            .contains("AssumeRoleUnauthorizedAccess"));
        assert!(instance_keys("<html>").is_err());
        assert!(instance_keys(r#"{"Code":"Success"}"#).is_err());
    }
}
