//! Which policy applies to a caller: from its container's labels, or the configured
//! defaults for unlabelled containers and for callers no container owns.

use super::Policy;
use crate::docker::Endpoint;

/// The label a container picks its policy with.
pub const POLICY_LABEL: &str = "imds-proxy.policy";
/// The origin project's label for "may use the managed identity": the `allow` policy.
pub const LEGACY_ALLOW_LABEL: &str = "MSIClientContainer";

/// The defaults, validated at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// For containers without a policy label.
    pub unlabelled: Policy,
    /// For addresses no known container holds.
    pub unknown: Policy,
}

/// The policy for a caller and a short reason, for the log.
pub fn policy_for<'a>(
    caller: Option<&Endpoint>,
    defaults: &'a Defaults,
) -> (std::borrow::Cow<'a, Policy>, String) {
    use std::borrow::Cow;
    let Some(c) = caller else {
        return (Cow::Borrowed(&defaults.unknown), "unknown caller".into());
    };
    if let Some(name) = c.labels.get(POLICY_LABEL) {
        return match Policy::builtin(name.trim()) {
            Some(p) => (Cow::Owned(p), format!("label {POLICY_LABEL}={name}")),
            // A typo must not widen access: an unknown name denies.
            None => (
                Cow::Owned(Policy::builtin("deny").expect("built-in")),
                format!("label {POLICY_LABEL}={name} names no policy"),
            ),
        };
    }
    if c.labels.contains_key(LEGACY_ALLOW_LABEL) {
        return (
            Cow::Owned(Policy::builtin("allow").expect("built-in")),
            format!("label {LEGACY_ALLOW_LABEL}"),
        );
    }
    (
        Cow::Borrowed(&defaults.unlabelled),
        "unlabelled container".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::ContainerId;

    fn ep(labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            container: ContainerId("c".repeat(64)),
            name: "c".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            network: "bridge".into(),
            ipv4: "172.17.0.2".parse().unwrap(),
            mac: None,
        }
    }

    fn defaults() -> Defaults {
        Defaults {
            unlabelled: Policy::builtin("allow").unwrap(),
            unknown: Policy::builtin("deny").unwrap(),
        }
    }

    #[test]
    fn labels_pick_the_policy_and_defaults_cover_the_rest() {
        let d = defaults();
        let name = |c: Option<&Endpoint>| policy_for(c, &d).0.name.clone();
        assert_eq!(
            name(Some(&ep(&[("imds-proxy.policy", "metadata-only")]))),
            "metadata-only"
        );
        assert_eq!(name(Some(&ep(&[("imds-proxy.policy", "deny")]))), "deny");
        assert_eq!(name(Some(&ep(&[("MSIClientContainer", "")]))), "allow");
        assert_eq!(name(Some(&ep(&[("other", "x")]))), "allow");
        assert_eq!(name(None), "deny");
    }

    #[test]
    fn a_misspelt_policy_denies() {
        let d = defaults();
        let (p, why) = policy_for(Some(&ep(&[("imds-proxy.policy", "alow")])), &d);
        assert_eq!(p.name, "deny");
        assert!(why.contains("names no policy"), "{why}");
    }

    #[test]
    fn the_policy_label_wins_over_the_legacy_label() {
        let d = defaults();
        let (p, _) = policy_for(
            Some(&ep(&[
                ("imds-proxy.policy", "deny"),
                ("MSIClientContainer", ""),
            ])),
            &d,
        );
        assert_eq!(p.name, "deny");
    }
}
