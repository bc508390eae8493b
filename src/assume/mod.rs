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
pub mod spec;
pub mod sts;
pub mod transport;

use std::time::SystemTime;

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
