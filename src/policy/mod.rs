//! Per-container policy as a pure function: `(policy, canonical request) -> decision`.
//!
//! Paths are matched on their canonical form (see [`crate::request::canonical`]), segment by segment
//! and without case. A policy is an ordered list of path rules (first match wins) and a
//! default. Denying a subtree also covers the ways to read it from above: a GCE
//! `recursive=true` listing of an ancestor is denied, and an Azure document that would
//! embed the subtree (`/metadata/instance` embeds `compute/userData`) is allowed with
//! that part removed from the answer.
//!
//! A policy may also carry a [`RateLimit`]; [`ratelimit::RateLimiter`] keeps the
//! per-container token buckets that enforce it.

pub mod ratelimit;
pub mod select;

use crate::request::canonical::CanonicalPath;
use crate::request::Provider;
pub use ratelimit::{RateLimit, RateLimiter};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// A literal segment, as written (matched without case).
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: any number of segments, including none; only last.
    Rest,
}

/// A path pattern like `/metadata/identity/**` or `/*/meta-data/iam/security-credentials/**`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segs: Vec<Seg>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?}: a path pattern starts with /"));
        }
        let parts: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            segs.push(match *p {
                "**" if i + 1 == parts.len() => Seg::Rest,
                "**" => return Err(format!("{text:?}: ** may only end a pattern")),
                "*" => Seg::One,
                p if p.contains('*') => {
                    return Err(format!("{text:?}: * stands for a whole segment"))
                }
                p if p == "." || p == ".." || p.contains('\\') => {
                    return Err(format!("{text:?}: write patterns in canonical form"))
                }
                p => Seg::Literal(p.to_owned()),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            segs,
        })
    }

    /// Whether the (lower-case) path matches.
    pub fn matches(&self, path: &[String]) -> bool {
        match_from(&self.segs, path)
    }

    /// Whether some path strictly below `path` matches: the subtree at `path` contains
    /// what this pattern names.
    pub fn matches_below(&self, path: &[String]) -> bool {
        let mut segs = self.segs.iter();
        for p in path {
            match segs.next() {
                Some(Seg::Literal(l)) if l.to_lowercase() == *p => {}
                Some(Seg::One) => {}
                Some(Seg::Rest) => return false, // then `matches` decides: it is inside
                _ => return false,
            }
        }
        // Something must remain to be below.
        segs.next()
            .is_some_and(|s| !matches!(s, Seg::Rest) || self.segs.len() > path.len() + 1)
    }

    /// For an all-literal pattern below `path`: the segments between, as written.
    fn literal_rest_below(&self, path: &[String]) -> Option<Vec<String>> {
        let rest = self.segs.get(path.len()..)?;
        let mut out = Vec::new();
        for s in rest {
            match s {
                Seg::Literal(l) => out.push(l.clone()),
                Seg::Rest => break,
                Seg::One => return None,
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

fn match_from(segs: &[Seg], path: &[String]) -> bool {
    match (segs.first(), path.first()) {
        (None, None) => true,
        (Some(Seg::Rest), _) => true,
        (Some(Seg::Literal(l)), Some(p)) => {
            l.to_lowercase() == *p && match_from(&segs[1..], &path[1..])
        }
        (Some(Seg::One), Some(_)) => match_from(&segs[1..], &path[1..]),
        _ => false,
    }
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: Pattern,
    pub verdict: Verdict,
}

/// A named policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// First match wins.
    pub rules: Vec<Rule>,
    pub default: Verdict,
    /// Requests one container may make under this policy; `None`: no limit (the
    /// built-in policies).
    pub rate_limit: Option<RateLimit>,
    /// AWS: whether a GET needs an IMDSv2 session token (401 without one, as with
    /// `HttpTokens=required`); otherwise IMDSv1 works too.
    pub aws_tokens_required: bool,
    /// Role ARNs a container under this policy may have assumed for it (its
    /// `imds-proxy.aws.role-arn` label): none unless listed, since a label is not a
    /// credential.
    pub aws_roles: Vec<Glob>,
    /// GCE service accounts a container under this policy may be given by
    /// impersonation (its `imds-proxy.gce.service-account` label, when the account is
    /// not the instance's own).
    pub gce_service_accounts: Vec<Glob>,
}

/// A pattern over a whole identifier (a role ARN, an account email): `*` stands for
/// any run of characters, `?` for one; everything else is itself, with case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        if !t.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!("{t:?}: printable ASCII without spaces only"));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `s`, whole, matches.
    pub fn matches(&self, s: &str) -> bool {
        glob_match(self.0.as_bytes(), s.as_bytes())
    }
}

/// Iterative wildcard match: on a mismatch, the last `*` takes one more character.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl Policy {
    /// Whether this policy lets a container have `arn` assumed for it.
    pub fn allows_aws_role(&self, arn: &str) -> bool {
        self.aws_roles.iter().any(|g| g.matches(arn))
    }

    /// Whether this policy lets a container be given `email` by impersonation.
    pub fn allows_gce_account(&self, email: &str) -> bool {
        self.gce_service_accounts.iter().any(|g| g.matches(email))
    }
}

/// Paths `metadata-only` denies: tokens and credentials of every provider, and user
/// data.
const SECRET_PATHS: &[&str] = &[
    "/metadata/identity/**",
    "/metadata/instance/compute/userData/**",
    "/metadata/instance/compute/customData/**",
    "/computeMetadata/v1/instance/service-accounts/*/token/**",
    "/computeMetadata/v1/instance/service-accounts/*/identity/**",
    "/computeMetadata/v1/instance/attributes/user-data/**",
    "/*/meta-data/iam/security-credentials/**",
    "/*/meta-data/identity-credentials/**",
    "/*/user-data/**",
];

impl Policy {
    /// `allow`, `metadata-only` or `deny`.
    pub fn builtin(name: &str) -> Option<Self> {
        let deny = |p: &str| Rule {
            pattern: Pattern::parse(p).expect("built-in pattern"),
            verdict: Verdict::Deny,
        };
        match name {
            "allow" => Some(Self {
                name: name.into(),
                rules: vec![],
                default: Verdict::Allow,
                rate_limit: None,
                aws_tokens_required: false,
                aws_roles: Vec::new(),
                gce_service_accounts: Vec::new(),
            }),
            "deny" => Some(Self {
                name: name.into(),
                rules: vec![],
                default: Verdict::Deny,
                rate_limit: None,
                aws_tokens_required: false,
                aws_roles: Vec::new(),
                gce_service_accounts: Vec::new(),
            }),
            "metadata-only" => Some(Self {
                name: name.into(),
                rules: SECRET_PATHS.iter().map(|p| deny(p)).collect(),
                default: Verdict::Allow,
                rate_limit: None,
                aws_tokens_required: false,
                aws_roles: Vec::new(),
                gce_service_accounts: Vec::new(),
            }),
            _ => None,
        }
    }
}

/// The request as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub path: &'a CanonicalPath,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
}

/// What to do, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided, for the log and the denial message.
    pub because: String,
    /// JSON key paths to remove from the answer (Azure documents that embed a denied
    /// subtree).
    pub redact: Vec<Vec<String>>,
}

/// The decision for one request. Pure.
pub fn decide(policy: &Policy, req: &Request<'_>) -> Decision {
    let path = req.path.lower();
    if let Some(rule) = policy.rules.iter().find(|r| r.pattern.matches(path)) {
        let mut because = format!(
            "policy {}: {:?} {}",
            policy.name, rule.verdict, rule.pattern.text
        );
        if because.is_ascii() {
            because.make_ascii_lowercase();
        } else {
            because = because.to_lowercase();
        }
        return Decision {
            verdict: rule.verdict,
            because,
            redact: vec![],
        };
    }
    let denied_below: Vec<&Rule> = policy
        .rules
        .iter()
        .filter(|r| r.verdict == Verdict::Deny && r.pattern.matches_below(path))
        .collect();
    if !denied_below.is_empty() {
        match Provider::of(req.path) {
            Provider::Gce if query_flag(req.query, "recursive") => {
                return Decision {
                    verdict: Verdict::Deny,
                    because: format!(
                        "policy {}: recursive listing would include denied {}",
                        policy.name, denied_below[0].pattern.text
                    ),
                    redact: vec![],
                };
            }
            Provider::Azure if policy.default == Verdict::Allow => {
                let redact = denied_below
                    .iter()
                    .filter_map(|r| r.pattern.literal_rest_below(path))
                    .collect();
                return Decision {
                    verdict: Verdict::Allow,
                    because: format!("policy {}: allow, redacted", policy.name),
                    redact,
                };
            }
            _ => {}
        }
    }
    Decision {
        verdict: policy.default,
        because: format!("policy {}: default {:?}", policy.name, policy.default).to_lowercase(),
        redact: vec![],
    }
}

/// Whether `name=true` (any case) is in the query; a repeated key counts if any says so.
fn query_flag(query: Option<&str>, name: &str) -> bool {
    query.unwrap_or("").split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        k.eq_ignore_ascii_case(name) && v.eq_ignore_ascii_case("true")
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
