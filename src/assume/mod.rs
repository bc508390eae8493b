//! Cloud identities the proxy obtains for containers: an AWS role assumed through STS
//! for each container labelled with one, held and refreshed ahead of every SDK's
//! threshold.
//!
//! - [`spec`]: a container's labels and the daemon's settings → the [`spec::RoleSpec`]
//!   its credentials are held under (pure);
//! - [`sts`]: the signed `AssumeRole` call and its answer (pure), over a
//!   [`sts::Transport`];
//! - [`broker`]: the one owner of the held credentials — prefetch when a labelled
//!   container appears, one call for many askers, refresh ahead, keep serving through
//!   an STS outage, drop when the last container of a role is gone;
//! - [`transport`]: HTTPS (rustls, the system's CA store) or plain HTTP to test servers.

pub mod broker;
pub mod gce;
pub mod spec;
pub mod sts;
pub mod transport;

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::FutureExt;
use http::Uri;

use broker::{Failure, Fetcher, Held, Key};
use spec::RoleSpec;
use sts::{InstanceKeys, StsError, Transport};

/// The broker of assumed AWS roles.
pub type RoleBroker = broker::Broker<RoleSpec, Session, StsError>;

impl Key for RoleSpec {
    fn describe(&self) -> String {
        format!("role {} session {}", self.arn, self.session_name)
    }
    fn service() -> &'static str {
        "sts"
    }
}

impl Held for Session {
    fn expiration(&self) -> SystemTime {
        self.expiration
    }
    fn describe(&self) -> String {
        self.assumed_role_arn.clone()
    }
}

impl Failure for StsError {
    fn is_permanent(&self) -> bool {
        StsError::is_permanent(self)
    }
    fn unreachable(reason: String) -> Self {
        StsError::Unreachable(reason)
    }
}

/// The instance's own role credentials and region (the proxy reads them from the real
/// service, through its IMDSv2 session).
pub trait InstanceKeysSource: Send + Sync + 'static {
    fn keys_and_region(&self) -> BoxFuture<'static, Result<(InstanceKeys, String), String>>;
}

/// Assumes roles with the instance's credentials at STS: the regional endpoint of the
/// instance's region, or the configured one.
pub struct StsAssumer {
    pub instance: Arc<dyn InstanceKeysSource>,
    pub endpoint: Option<Uri>,
    pub transport: Arc<dyn Transport>,
}

impl Fetcher<RoleSpec, Session, StsError> for StsAssumer {
    fn fetch(&self, spec: RoleSpec) -> BoxFuture<'static, Result<Session, StsError>> {
        let instance = self.instance.keys_and_region();
        let endpoint = self.endpoint.clone();
        let transport = self.transport.clone();
        async move {
            let (keys, region) = instance.await.map_err(StsError::NoInstanceCredentials)?;
            let endpoint = match endpoint {
                Some(e) => e,
                None => sts::regional_endpoint(&region).map_err(StsError::NoInstanceCredentials)?,
            };
            let now = SystemTime::now();
            let req = sts::request(&spec, &keys, &endpoint, &region, now)
                .map_err(StsError::Unreachable)?;
            let (status, body) = transport.send(req).await.map_err(StsError::Unreachable)?;
            sts::read_answer(status, &body, now)
        }
        .boxed()
    }
}

/// Credentials STS issued for one role session.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    pub expiration: SystemTime,
    /// When the proxy received them (`LastUpdated`).
    pub issued_at: SystemTime,
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>`.
    pub assumed_role_arn: String,
    pub assumed_role_id: String,
}

/// Never shows the secret parts.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("assumed_role_arn", &self.assumed_role_arn)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}
