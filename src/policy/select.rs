//! Which policy applies to a caller: from its container's labels, or the configured
//! defaults for unlabelled containers and for callers no container owns.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::Policy;

/// The label a container picks its policy with.
pub const POLICY_LABEL: &str = "imds-proxy.policy";
/// The origin project's label for "may use the managed identity": the `allow` policy.
pub const LEGACY_ALLOW_LABEL: &str = "MSIClientContainer";

/// Every policy a container can pick, and the defaults; validated as a whole, swapped
/// whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    /// Policies from the config file, by name (never a built-in name).
    pub named: BTreeMap<String, Policy>,
    /// For containers without a policy label.
    pub unlabelled: Policy,
    /// For callers no known container owns.
    pub unknown: Policy,
    /// For the host's own processes (and containers on `--network host`).
    pub host: Policy,
}

impl Policies {
    /// A policy by name: the config file's, or a built-in one.
    pub fn get(&self, name: &str) -> Option<Policy> {
        self.named
            .get(name)
            .cloned()
            .or_else(|| Policy::builtin(name))
    }

    /// Built-ins only, with the given defaults (host processes: `allow`).
    pub fn builtin(unlabelled: &str, unknown: &str) -> Self {
        Self {
            named: BTreeMap::new(),
            unlabelled: Policy::builtin(unlabelled).expect("built-in policy name"),
            unknown: Policy::builtin(unknown).expect("built-in policy name"),
            host: Policy::builtin("allow").expect("built-in policy name"),
        }
    }
}

/// Who asks, as far as choosing a policy goes.
#[derive(Debug, Clone, Copy)]
pub enum Asker<'a> {
    /// A container, with its labels.
    Container(&'a BTreeMap<String, String>),
    /// A host process (or a container on `--network host`).
    Host,
    /// A caller no known container owns.
    Unknown,
}

/// The policy for a caller and a short reason, for the log.
pub fn policy_for<'a>(asker: Asker<'_>, policies: &'a Policies) -> (Cow<'a, Policy>, String) {
    let labels = match asker {
        Asker::Container(labels) => labels,
        Asker::Host => return (Cow::Borrowed(&policies.host), "host process".into()),
        Asker::Unknown => return (Cow::Borrowed(&policies.unknown), "unknown caller".into()),
    };
    if let Some(name) = labels.get(POLICY_LABEL) {
        return match policies.get(name.trim()) {
            Some(p) => (Cow::Owned(p), format!("label {POLICY_LABEL}={name}")),
            // A typo must not widen access: an unknown name denies.
            None => (
                Cow::Owned(Policy::builtin("deny").expect("built-in")),
                format!("label {POLICY_LABEL}={name} names no policy"),
            ),
        };
    }
    if labels.contains_key(LEGACY_ALLOW_LABEL) {
        return (
            Cow::Owned(Policy::builtin("allow").expect("built-in")),
            format!("label {LEGACY_ALLOW_LABEL}"),
        );
    }
    (
        Cow::Borrowed(&policies.unlabelled),
        "container without a policy label".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    fn ep(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn defaults() -> Policies {
        Policies::builtin("allow", "deny")
    }

    #[test]
    fn labels_pick_the_policy_and_defaults_cover_the_rest() {
        let d = defaults();
        let name = |labels: &BTreeMap<String, String>| {
            policy_for(Asker::Container(labels), &d).0.name.clone()
        };
        assert_eq!(
            name(&ep(&[("imds-proxy.policy", "metadata-only")])),
            "metadata-only"
        );
        assert_eq!(name(&ep(&[("imds-proxy.policy", "deny")])), "deny");
        assert_eq!(name(&ep(&[("MSIClientContainer", "")])), "allow");
        assert_eq!(name(&ep(&[("other", "x")])), "allow");
        assert_eq!(policy_for(Asker::Unknown, &d).0.name, "deny");
        assert_eq!(policy_for(Asker::Host, &d).0.name, "allow");
        let mut hardened = defaults();
        hardened.host = Policy::builtin("metadata-only").unwrap();
        let (p, why) = policy_for(Asker::Host, &hardened);
        assert_eq!(
            (p.name.as_str(), why.as_str()),
            ("metadata-only", "host process")
        );
    }

    #[test]
    fn a_misspelt_policy_denies() {
        let d = defaults();
        let (p, why) = policy_for(Asker::Container(&ep(&[("imds-proxy.policy", "alow")])), &d);
        assert_eq!(p.name, "deny");
        assert!(why.contains("names no policy"), "{why}");
    }

    #[test]
    fn the_policy_label_wins_over_the_legacy_label() {
        let d = defaults();
        let labels = ep(&[("imds-proxy.policy", "deny"), ("MSIClientContainer", "")]);
        let (p, _) = policy_for(Asker::Container(&labels), &d);
        assert_eq!(p.name, "deny");
    }
}

#[cfg(test)]
mod named {
    use super::*;
    use crate::policy::{Pattern, Rule, Verdict};

    #[test]
    fn a_label_can_pick_a_policy_from_the_config_file() {
        let mut p = Policies::builtin("allow", "deny");
        let ci = Policy {
            name: "ci".into(),
            rules: vec![Rule {
                pattern: Pattern::parse("/latest/**").unwrap(),
                verdict: Verdict::Allow,
            }],
            default: Verdict::Deny,
            rate_limit: None,
            aws_tokens_required: false,
            aws_roles: Vec::new(),
            gce_service_accounts: Vec::new(),
        };
        p.named.insert("ci".into(), ci.clone());
        let labels: BTreeMap<String, String> =
            [("imds-proxy.policy".to_string(), "ci".to_string())].into();
        assert_eq!(*policy_for(Asker::Container(&labels), &p).0, ci);
    }
}
