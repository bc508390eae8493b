//! Which AWS role session a container gets: its labels read with the daemon's settings
//! into a [`RoleSpec`], the key under which credentials are held. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::providers::identity::{AwsAssume, AWS_ROLE_ARN};

/// Longest session a chained role may have (STS refuses more when the caller's
/// credentials are themselves a role's, as the instance's are).
pub const MAX_CHAINED_DURATION: Duration = Duration::from_secs(3600);
/// Shortest session STS grants.
pub const MIN_DURATION: Duration = Duration::from_secs(900);

/// Labels that name a container's service: its replicas share one role session.
const SERVICE_LABELS: &[&str] = &[
    "com.docker.swarm.service.name",
    "com.docker.compose.service",
];

/// The daemon's settings for assumed roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// Put before a label that gives only a role name (`arn:aws:iam::<account>:role/`,
    /// optionally with a path).
    pub base_role_arn: Option<String>,
    /// `DurationSeconds`.
    pub duration: Duration,
    /// Session tags `imds-proxy:container`, `imds-proxy:image`, `imds-proxy:host` on
    /// each session.
    pub session_tags: bool,
    /// `SourceIdentity` set to the container's name.
    pub source_identity: bool,
    /// This host's name, for the session tag.
    pub host: String,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            base_role_arn: None,
            duration: MAX_CHAINED_DURATION,
            session_tags: false,
            source_identity: false,
            host: String::new(),
        }
    }
}

/// One role session: credentials are held, shared and refreshed per spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleSpec {
    pub arn: String,
    pub external_id: Option<String>,
    pub session_name: String,
    pub duration_secs: u64,
    pub tags: Vec<(String, String)>,
    pub source_identity: Option<String>,
}

impl RoleSpec {
    /// The role's name, as `iam/security-credentials/` lists it.
    pub fn role_name(&self) -> &str {
        self.arn.rsplit('/').next().unwrap_or(&self.arn)
    }
}

/// Why a label cannot be turned into a role session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {AWS_ROLE_ARN}={given:?}: {reason}")]
pub struct SpecError {
    pub given: String,
    pub reason: String,
}

/// The container a role session is for, as the session's name and tags see it.
pub struct Asker<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The role session for `asker`, which asked for `assume`.
pub fn role_spec(
    assume: &AwsAssume,
    asker: &Asker<'_>,
    settings: &AwsSettings,
) -> Result<RoleSpec, SpecError> {
    let (name, labels) = (asker.name, asker.labels);
    let arn =
        role_arn(&assume.role, settings.base_role_arn.as_deref()).map_err(|reason| SpecError {
            given: assume.role.clone(),
            reason,
        })?;
    if let Some(x) = &assume.external_id {
        let ok = (2..=1224).contains(&x.len())
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@:/-_".contains(&b));
        if !ok {
            return Err(SpecError {
                given: assume.role.clone(),
                reason: "its external id must be 2 to 1224 of [A-Za-z0-9+=,.@:/_-]".into(),
            });
        }
    }
    let service = SERVICE_LABELS.iter().find_map(|l| labels.get(*l));
    let session_name = session_name(
        assume
            .session_name
            .as_deref()
            .or(service.map(String::as_str))
            .unwrap_or(name),
    );
    let mut tags = Vec::new();
    if settings.session_tags {
        tags.push(("imds-proxy:container".to_owned(), tag_value(name)));
        if !asker.image.is_empty() {
            tags.push(("imds-proxy:image".to_owned(), tag_value(asker.image)));
        }
        tags.push(("imds-proxy:host".to_owned(), tag_value(&settings.host)));
    }
    Ok(RoleSpec {
        arn,
        external_id: assume.external_id.clone(),
        session_name,
        duration_secs: settings.duration.as_secs(),
        tags,
        source_identity: settings
            .source_identity
            .then(|| session_name_of_len(name, 64)),
    })
}

/// A full role ARN from a label: an ARN as given, or a name under `base`.
pub fn role_arn(given: &str, base: Option<&str>) -> Result<String, String> {
    let arn = if given.starts_with("arn:") {
        given.to_owned()
    } else {
        let Some(base) = base else {
            return Err(
                "is not a role ARN (arn:aws:iam::<account>:role/<name>), and no \
                        aws_base_role_arn is configured to put a name under"
                    .into(),
            );
        };
        format!(
            "{}/{}",
            base.trim_end_matches('/'),
            given.trim_start_matches('/')
        )
    };
    check_arn(&arn)?;
    Ok(arn)
}

/// `arn:<partition>:iam::<12 digits>:role/[path/]name`.
fn check_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let bad = || {
        Err(format!(
            "{arn:?} is not a role ARN (arn:aws:iam::<account>:role/<name>)"
        ))
    };
    let [arn_, partition, "iam", "", account, resource] = parts[..] else {
        return bad();
    };
    let name = resource
        .strip_prefix("role/")
        .and_then(|r| r.rsplit('/').next());
    let name_ok = name.is_some_and(|n| {
        (1..=64).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    });
    if arn_ != "arn"
        || !partition.starts_with("aws")
        || account.len() != 12
        || !account.bytes().all(|b| b.is_ascii_digit())
        || !name_ok
    {
        return bad();
    }
    Ok(())
}

/// A `RoleSessionName` from any text: `[\w+=,.@-]`, 2 to 64 characters (others become
/// `-`; a short one is padded).
pub fn session_name(raw: &str) -> String {
    session_name_of_len(raw, 64)
}

fn session_name_of_len(raw: &str, max: usize) -> String {
    let mut s: String = raw
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    while s.len() < 2 {
        s.push('-');
    }
    s
}

/// A session tag value: at most 256 characters of what STS accepts.
fn tag_value(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_alphanumeric() || " _.:/=+-@".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(256)
        .collect()
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

    fn assume(role: &str) -> AwsAssume {
        AwsAssume {
            role: role.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_role_is_an_arn_or_a_name_under_the_base() {
        let arn = "arn:aws:iam::123456789012:role/team/reader";
        assert_eq!(role_arn(arn, None).unwrap(), arn);
        assert_eq!(
            role_arn("reader", Some("arn:aws:iam::123456789012:role/")).unwrap(),
            "arn:aws:iam::123456789012:role/reader"
        );
        assert_eq!(
            role_arn("team/reader", Some("arn:aws:iam::123456789012:role")).unwrap(),
            arn
        );
        assert!(role_arn("reader", None)
            .unwrap_err()
            .contains("aws_base_role_arn"));
        for bad in [
            "arn:aws:iam::12345:role/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a b",
        ] {
            assert!(role_arn(bad, None).is_err(), "{bad}");
        }
        assert_eq!(
            RoleSpec {
                arn: arn.into(),
                external_id: None,
                session_name: "x".into(),
                duration_secs: 900,
                tags: vec![],
                source_identity: None
            }
            .role_name(),
            "reader"
        );
    }

    #[test]
    fn session_names_fit_sts_and_name_the_service_or_container() {
        assert_eq!(session_name("/web-1"), "web-1");
        assert_eq!(session_name("a b/c:d"), "a-b-c-d");
        assert_eq!(session_name("x"), "x-");
        assert_eq!(session_name(&"y".repeat(100)).len(), 64);
        let s = AwsSettings::default();
        let a = assume("arn:aws:iam::123456789012:role/r");
        let spec = |l: &[(&str, &str)]| {
            let labels = labels(l);
            let asker = Asker {
                name: "proj-web-3",
                image: "",
                labels: &labels,
            };
            role_spec(&a, &asker, &s).unwrap()
        };
        assert_eq!(spec(&[]).session_name, "proj-web-3");
        assert_eq!(
            spec(&[("com.docker.compose.service", "web")]).session_name,
            "web",
            "replicas of a service share a session"
        );
        assert_eq!(
            spec(&[("com.docker.swarm.service.name", "stack_api")]).session_name,
            "stack_api"
        );
        let named = AwsAssume {
            session_name: Some("billing job".into()),
            ..a.clone()
        };
        let none = labels(&[]);
        let c = Asker {
            name: "c",
            image: "",
            labels: &none,
        };
        assert_eq!(
            role_spec(&named, &c, &s).unwrap().session_name,
            "billing-job"
        );
    }

    #[test]
    fn tags_source_identity_and_external_id_follow_the_settings() {
        let a = AwsAssume {
            role: "arn:aws:iam::123456789012:role/r".into(),
            external_id: Some("ext-1".into()),
            session_name: None,
        };
        let none = labels(&[]);
        let c1 = Asker {
            name: "c1",
            image: "registry/app:1.2",
            labels: &none,
        };
        let plain = role_spec(&a, &c1, &AwsSettings::default()).unwrap();
        assert!(plain.tags.is_empty() && plain.source_identity.is_none());
        assert_eq!(plain.external_id.as_deref(), Some("ext-1"));
        assert_eq!(plain.duration_secs, 3600);
        let s = AwsSettings {
            session_tags: true,
            source_identity: true,
            host: "host-a".into(),
            ..Default::default()
        };
        let tagged = role_spec(&a, &c1, &s).unwrap();
        assert_eq!(
            tagged.tags,
            vec![
                ("imds-proxy:container".to_owned(), "c1".to_owned()),
                ("imds-proxy:image".to_owned(), "registry/app:1.2".to_owned()),
                ("imds-proxy:host".to_owned(), "host-a".to_owned())
            ]
        );
        assert_eq!(tagged.source_identity.as_deref(), Some("c1"));
        let bad = AwsAssume {
            external_id: Some("x".into()),
            ..a
        };
        assert!(role_spec(&bad, &c1, &s).is_err());
    }
}
