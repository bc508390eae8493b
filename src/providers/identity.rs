//! Which cloud identity a container gets, read from its Docker labels. Pure.
//!
//! A container without identity labels gets the instance's own identities, as every
//! process on the instance does (narrow that with a policy). A label pins the container
//! to exactly one identity of that cloud: the proxy selects it for requests that name
//! none and refuses requests that name another.

use std::collections::BTreeMap;

/// Azure user-assigned identity, as its labels describe it. Several labels may describe
/// the same identity (its client id and its resource id, say); a request naming any of
/// them names this identity.
pub const AZURE_CLIENT_ID: &str = "imds-proxy.azure.client-id";
pub const AZURE_OBJECT_ID: &str = "imds-proxy.azure.object-id";
pub const AZURE_MSI_RES_ID: &str = "imds-proxy.azure.msi-res-id";
/// GCE service account (its email): it becomes the container's `default`, and the only
/// account the container can see.
pub const GCE_SERVICE_ACCOUNT: &str = "imds-proxy.gce.service-account";
/// AWS role name: the only one of the instance's roles under
/// `iam/security-credentials/` the container can see (narrows; assumes nothing).
pub const AWS_ROLE: &str = "imds-proxy.aws.role";
/// AWS role to assume for the container through STS: a role ARN, or with
/// `aws_base_role_arn` configured a role name (or `path/name`) under that base.
pub const AWS_ROLE_ARN: &str = "imds-proxy.aws.role-arn";
/// `ExternalId` of the AssumeRole call, when the role's trust policy requires one.
pub const AWS_EXTERNAL_ID: &str = "imds-proxy.aws.external-id";
/// `RoleSessionName` of the AssumeRole call (sanitised); by default the container's
/// service or name.
pub const AWS_SESSION_NAME: &str = "imds-proxy.aws.session-name";

/// An AWS role to assume for a container, as its labels ask for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsAssume {
    /// The role ARN, or a name to put under the configured base ARN.
    pub role: String,
    pub external_id: Option<String>,
    pub session_name: Option<String>,
}

/// An Azure managed identity as a request or a label names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureIdentity {
    pub client_id: Option<String>,
    pub object_id: Option<String>,
    /// ARM resource id of the identity (`msi_res_id`; `mi_res_id` is accepted too).
    pub msi_res_id: Option<String>,
}

impl AzureIdentity {
    /// No field set: the system-assigned identity.
    pub fn is_system(&self) -> bool {
        self.client_id.is_none() && self.object_id.is_none() && self.msi_res_id.is_none()
    }

    /// Whether `asked` (one parameter, as a request names an identity) names this one.
    /// Ids compare without case (GUIDs and ARM ids are case-insensitive).
    pub fn is_named_by(&self, asked: &AzureIdentity) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        };
        same(&self.client_id, &asked.client_id)
            || same(&self.object_id, &asked.object_id)
            || same(&self.msi_res_id, &asked.msi_res_id)
    }
}

/// The identities a container is pinned to; `None` means the instance's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub azure: Option<AzureIdentity>,
    pub gce_service_account: Option<String>,
    /// One of the instance's roles, by name.
    pub aws_role: Option<String>,
    /// A role to assume through STS.
    pub aws_assume: Option<AwsAssume>,
}

/// A label value the proxy cannot use; the container is refused rather than given the
/// instance's identity by mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {label}: {reason}")]
pub struct LabelError {
    pub label: &'static str,
    pub reason: String,
}

impl Identity {
    /// The identity the labels pin, or the first label that cannot be used.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Self, LabelError> {
        let get = |label: &'static str| -> Result<Option<String>, LabelError> {
            let Some(v) = labels.get(label) else {
                return Ok(None);
            };
            let v = v.trim();
            let bad = |reason: &str| LabelError {
                label,
                reason: reason.to_owned(),
            };
            if v.is_empty() {
                return Err(bad("is empty"));
            }
            if v.len() > 512 {
                return Err(bad("is longer than 512 bytes"));
            }
            if !v.chars().all(|c| c.is_ascii_graphic()) {
                return Err(bad("may hold only printable ASCII without spaces"));
            }
            Ok(Some(v.to_owned()))
        };
        let azure = AzureIdentity {
            client_id: get(AZURE_CLIENT_ID)?,
            object_id: get(AZURE_OBJECT_ID)?,
            msi_res_id: get(AZURE_MSI_RES_ID)?,
        };
        let gce_service_account = get(GCE_SERVICE_ACCOUNT)?;
        if let Some(email) = &gce_service_account {
            if !email.contains('@') || email.contains('/') {
                return Err(LabelError {
                    label: GCE_SERVICE_ACCOUNT,
                    reason: "is not a service account email".into(),
                });
            }
        }
        let aws_role = get(AWS_ROLE)?;
        if aws_role.as_deref().is_some_and(|r| r.contains('/')) {
            return Err(LabelError {
                label: AWS_ROLE,
                reason: "a role name has no '/'".into(),
            });
        }
        let aws_assume = match get(AWS_ROLE_ARN)? {
            Some(role) => Some(AwsAssume {
                role,
                external_id: get(AWS_EXTERNAL_ID)?,
                session_name: get(AWS_SESSION_NAME)?,
            }),
            None => None,
        };
        if aws_role.is_some() && aws_assume.is_some() {
            return Err(LabelError {
                label: AWS_ROLE_ARN,
                reason: format!(
                    "names a role to assume, and {AWS_ROLE} one of the instance's: give one"
                ),
            });
        }
        Ok(Self {
            azure: (!azure.is_system()).then_some(azure),
            gce_service_account,
            aws_role,
            aws_assume,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_labels_is_the_instance_identity() {
        assert_eq!(
            Identity::from_labels(&labels(&[("other", "x")])),
            Ok(Identity::default())
        );
    }

    #[test]
    fn each_cloud_reads_its_own_labels() {
        let id = Identity::from_labels(&labels(&[
            (AZURE_CLIENT_ID, "1111"),
            (AZURE_MSI_RES_ID, "/subscriptions/s/x/id1"),
            (GCE_SERVICE_ACCOUNT, "a@p.iam.gserviceaccount.com"),
            (AWS_ROLE_ARN, "arn:aws:iam::123456789012:role/team/reader"),
        ]))
        .unwrap();
        let az = id.azure.unwrap();
        assert_eq!(az.client_id.as_deref(), Some("1111"));
        assert_eq!(az.msi_res_id.as_deref(), Some("/subscriptions/s/x/id1"));
        assert!(az.is_named_by(&AzureIdentity {
            msi_res_id: Some("/SUBSCRIPTIONS/s/x/ID1".into()),
            ..Default::default()
        }));
        assert!(!az.is_named_by(&AzureIdentity {
            client_id: Some("2222".into()),
            ..Default::default()
        }));
        assert!(!az.is_named_by(&AzureIdentity::default()));
        assert_eq!(
            id.gce_service_account.as_deref(),
            Some("a@p.iam.gserviceaccount.com")
        );
        assert_eq!(id.aws_role, None);
        let assume = id.aws_assume.unwrap();
        assert_eq!(assume.role, "arn:aws:iam::123456789012:role/team/reader");
        assert_eq!((assume.external_id, assume.session_name), (None, None));
    }

    #[test]
    fn unusable_labels_are_errors_not_the_instance_identity() {
        for (k, v) in [
            (AZURE_CLIENT_ID, ""),
            (AZURE_CLIENT_ID, "a b"),
            (GCE_SERVICE_ACCOUNT, "default"),
            (AWS_ROLE_ARN, "two words"),
            (AWS_ROLE, "a/b"),
        ] {
            let e = Identity::from_labels(&labels(&[(k, v)])).unwrap_err();
            assert_eq!(e.label, k, "{v:?}");
        }
        let e = Identity::from_labels(&labels(&[
            (AWS_ROLE, "a"),
            (AWS_ROLE_ARN, "arn:aws:iam::1:role/b"),
        ]))
        .unwrap_err();
        assert_eq!(e.label, AWS_ROLE_ARN);
    }
}
