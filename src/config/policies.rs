//! The file's named policies (`[policies.<name>]`) and the names that pick a policy for
//! each kind of caller.

use std::collections::BTreeMap;

use super::Raw;
use crate::policy::{Glob, Pattern, Policy, RateLimit, Rule, Verdict};

/// The policy `name` (surrounding blanks ignored) names: one of the file's, or a
/// built-in one.
pub fn resolve(name: &str, named: &BTreeMap<String, Policy>) -> Result<Policy, String> {
    named
        .get(name.trim())
        .cloned()
        .or_else(|| Policy::builtin(name.trim()))
        .ok_or_else(|| {
            let mut known: Vec<&str> = vec!["allow", "metadata-only", "deny"];
            known.extend(named.keys().map(String::as_str));
            format!("{name:?} is not a policy (known: {})", known.join(", "))
        })
}

/// `[policies.<name>]` tables: `default = "allow"|"deny"`, `deny = [patterns]`,
/// `allow = [patterns]`, `rate_limit = "20/s"` (optional; see [`RateLimit`]),
/// `aws_tokens = "optional"|"required"`, `aws_roles = [role ARN globs]`,
/// `gce_service_accounts = [email globs]`. Deny patterns are tried first, then allow
/// patterns, then the default. Every problem in every policy is reported.
pub fn parse_named(r: &Raw) -> Result<BTreeMap<String, Policy>, String> {
    let Raw::Toml(toml::Value::Table(t)) = r else {
        return Err("expected tables like [policies.readonly]".into());
    };
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, body) in t {
        if Policy::builtin(name).is_some() {
            errors.push(format!("{name}: the built-in policies cannot be redefined"));
            continue;
        }
        let Some(body) = body.as_table() else {
            errors.push(format!("{name}: expected a table"));
            continue;
        };
        out.insert(name.clone(), policy(name, body, &mut errors));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

/// One named policy; its problems are added to `errors`.
fn policy(name: &str, body: &toml::Table, errors: &mut Vec<String>) -> Policy {
    let mut rules = Vec::new();
    let mut default = Verdict::Deny;
    let mut rate_limit = None;
    let mut aws_tokens_required = false;
    let mut aws_roles = Vec::new();
    let mut gce_service_accounts = Vec::new();
    for (key, v) in body {
        match (key.as_str(), v) {
            ("default", toml::Value::String(d)) if d == "allow" => default = Verdict::Allow,
            ("default", toml::Value::String(d)) if d == "deny" => default = Verdict::Deny,
            ("default", v) => errors.push(format!(
                "{name}.default: expected \"allow\" or \"deny\", got {v}"
            )),
            ("deny", toml::Value::Array(items)) => {
                rules.extend(patterns(name, "deny", items, Verdict::Deny, errors))
            }
            ("allow", toml::Value::Array(items)) => {
                rules.extend(patterns(name, "allow", items, Verdict::Allow, errors))
            }
            ("rate_limit", toml::Value::String(text)) => match text.parse::<RateLimit>() {
                Ok(limit) => rate_limit = Some(limit),
                Err(e) => errors.push(format!("{name}.rate_limit: {e}")),
            },
            ("rate_limit", v) => errors.push(format!(
                "{name}.rate_limit: expected a string like \"20/s\", \"300/min\" or \"5/s burst 10\", got {}",
                v.type_str()
            )),
            ("aws_tokens", toml::Value::String(t)) if t == "required" => {
                aws_tokens_required = true
            }
            ("aws_tokens", toml::Value::String(t)) if t == "optional" => {
                aws_tokens_required = false
            }
            ("aws_tokens", v) => errors.push(format!(
                "{name}.aws_tokens: expected \"optional\" or \"required\", got {v}"
            )),
            ("aws_roles", v) => aws_roles = globs(name, "aws_roles", v, errors),
            ("gce_service_accounts", v) => {
                gce_service_accounts = globs(name, "gce_service_accounts", v, errors)
            }
            (other, _) => errors.push(format!(
                "{name}.{other}: unknown key (default, deny, allow, rate_limit, aws_tokens, aws_roles, gce_service_accounts)"
            )),
        }
    }
    // Deny rules first: a deny can never be shadowed by a broader allow.
    rules.sort_by_key(|r| r.verdict != Verdict::Deny);
    Policy {
        name: name.to_owned(),
        rules,
        default,
        rate_limit,
        aws_tokens_required,
        aws_roles,
        gce_service_accounts,
    }
}

/// An allow-list of identities (`aws_roles`, `gce_service_accounts`); its problems are
/// added to `errors`.
fn globs(name: &str, list: &str, v: &toml::Value, errors: &mut Vec<String>) -> Vec<Glob> {
    let Some(items) = v.as_array() else {
        errors.push(format!(
            "{name}.{list}: expected a list of patterns like [\"arn:aws:iam::123456789012:role/app-*\"], got {}",
            v.type_str()
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str().map(Glob::parse) {
            Some(Ok(g)) => out.push(g),
            Some(Err(e)) => errors.push(format!("{name}.{list}[{i}]: {e}")),
            None => errors.push(format!("{name}.{list}[{i}]: expected a string")),
        }
    }
    out
}

/// The rules of a policy's `deny` or `allow` list; its problems are added to `errors`.
fn patterns(
    name: &str,
    list: &str,
    items: &[toml::Value],
    verdict: Verdict,
    errors: &mut Vec<String>,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str().map(Pattern::parse) {
            Some(Ok(pattern)) => rules.push(Rule { pattern, verdict }),
            Some(Err(e)) => errors.push(format!("{name}.{list}[{i}]: {e}")),
            None => errors.push(format!(
                "{name}.{list}[{i}]: expected a path pattern string"
            )),
        }
    }
    rules
}
