//! The `[gce]` section of the emulator file, validated into the values the metadata
//! tree serves. Every problem is reported at once, each under its key path.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::fields::{attributes, is_hostname, parse_digits, Fields, Problems};
use super::idtoken::{self, IdKey};
pub use super::instance::{Disk, Instance, NetworkInterface};
use crate::emulator::tokens::TokenSource;

/// Where the project ids come from when the file leaves them out (as the original
/// emulator script read them).
pub const PROJECT_ID_ENV: &str = "GOOGLE_PROJECT_ID";
pub const NUMERIC_PROJECT_ID_ENV: &str = "GOOGLE_NUMERIC_PROJECT_ID";
/// Access tokens for accounts without `token`, when it is set at load time.
pub const ACCESS_TOKEN_ENV: &str = "GOOGLE_ACCESS_TOKEN";
/// An access token's lifetime when the file names none: what GCE hands out.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

/// The `[gce]` section of the emulator file: what one emulated VM serves.
#[derive(Debug, Clone, PartialEq)]
pub struct GceConfig {
    pub project_id: String,
    pub numeric_project_id: u64,
    /// `universe/universe-domain`; absent answers 404 there (clients then assume
    /// googleapis.com, as on VMs from before universes existed).
    pub universe_domain: Option<String>,
    pub project_attributes: BTreeMap<String, String>,
    pub instance: Instance,
    pub service_accounts: Vec<ServiceAccount>,
    /// ID tokens; absent: the VM serves no `identity` endpoint.
    pub identity: Option<IdentityConfig>,
}

/// `[[gce.service_accounts]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAccount {
    pub email: String,
    /// The instance's own account: `default` for callers not pinned to another.
    pub default: bool,
    pub scopes: Vec<String>,
    pub token: TokenSource,
    pub token_lifetime: Duration,
    /// The numeric id (the ID token's `sub` and `azp`); from the file, else derived
    /// from the email so that it is stable across restarts.
    pub unique_id: String,
}

/// `[gce.identity]`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    pub issuer: String,
    pub lifetime: Duration,
    /// The signing key from `key_file`; `None`: the emulator's own generated key.
    pub key: Option<Arc<IdKey>>,
    pub key_file: Option<PathBuf>,
}

impl GceConfig {
    /// Validates the section; every problem, each naming its key below `gce.`.
    pub fn from_value(
        raw: toml::Value,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<String>> {
        let mut p = Problems::new();
        let Some(table) = raw.as_table() else {
            return Err(vec!["must be a table".into()]);
        };
        let f = Fields::new(table, "");
        f.refuse_unknown(
            &mut p,
            &[
                "project_id",
                "numeric_project_id",
                "universe_domain",
                "project_attributes",
                "instance",
                "service_accounts",
                "identity",
            ],
        );
        let project_id = project_id(&f, &mut p, env);
        let numeric_project_id = numeric_project_id(&f, &mut p, env);
        let universe_domain = f.string(&mut p, "universe_domain");
        if let Some(u) = &universe_domain {
            if !is_hostname(u) {
                f.problem(&mut p, "universe_domain", format!("{u:?} is not a domain"));
            }
        }
        let project_attributes = attributes(&f, &mut p, "project_attributes");
        let instance = match f.table(&mut p, "instance") {
            Some(t) => super::instance::instance(&t, &mut p),
            None => {
                if f.get("instance").is_none() {
                    f.problem(&mut p, "instance", "missing");
                }
                None
            }
        };
        let service_accounts = service_accounts(&f, &mut p, env);
        let identity = f
            .table(&mut p, "identity")
            .and_then(|t| identity(&t, &mut p));
        match (project_id, numeric_project_id, instance) {
            (Some(project_id), Some(numeric_project_id), Some(instance)) if p.is_empty() => {
                Ok(Self {
                    project_id,
                    numeric_project_id,
                    universe_domain,
                    project_attributes,
                    instance,
                    service_accounts,
                    identity,
                })
            }
            _ => Err(p),
        }
    }

    /// The account a caller without a label gets as `default`.
    pub fn default_account(&self) -> Option<&ServiceAccount> {
        self.service_accounts.iter().find(|a| a.default)
    }
}

fn project_id(
    f: &Fields,
    p: &mut Problems,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let (value, from) = match f.string(p, "project_id") {
        Some(v) => (v, String::new()),
        None if f.get("project_id").is_some() => return None,
        None => match env(PROJECT_ID_ENV) {
            Some(v) => (v.trim().to_owned(), format!(" (from {PROJECT_ID_ENV})")),
            None => {
                f.problem(
                    p,
                    "project_id",
                    format!("missing (set it here or in {PROJECT_ID_ENV})"),
                );
                return None;
            }
        },
    };
    let ok = value.len() <= 100
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c));
    if !ok {
        f.problem(
            p,
            "project_id",
            format!("{value:?}{from} is not a project id (lower-case letters, digits and hyphens, starting with a letter)"),
        );
        return None;
    }
    Some(value)
}

fn numeric_project_id(
    f: &Fields,
    p: &mut Problems,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<u64> {
    if f.get("numeric_project_id").is_some() {
        return f.number(p, "numeric_project_id");
    }
    match env(NUMERIC_PROJECT_ID_ENV) {
        Some(v) => parse_digits(v.trim()).or_else(|| {
            f.problem(
                p,
                "numeric_project_id",
                format!("{v:?} (from {NUMERIC_PROJECT_ID_ENV}) is not a number"),
            );
            None
        }),
        None => {
            f.problem(
                p,
                "numeric_project_id",
                format!("missing (set it here or in {NUMERIC_PROJECT_ID_ENV})"),
            );
            None
        }
    }
}

fn service_accounts(
    f: &Fields,
    p: &mut Problems,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<ServiceAccount> {
    let accounts: Vec<ServiceAccount> = f
        .tables(p, "service_accounts")
        .iter()
        .filter_map(|t| service_account(t, p, env))
        .collect();
    let mut seen = HashSet::new();
    let mut default = None;
    for (i, a) in accounts.iter().enumerate() {
        if !seen.insert(a.email.to_ascii_lowercase()) {
            p.push(format!(
                "service_accounts[{i}].email: {} is listed twice",
                a.email
            ));
        }
        if a.default {
            if let Some(first) = default {
                p.push(format!(
                    "service_accounts[{i}].default: service_accounts[{first}] is the default already"
                ));
            }
            default.get_or_insert(i);
        }
    }
    accounts
}

fn service_account(
    f: &Fields,
    p: &mut Problems,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ServiceAccount> {
    f.refuse_unknown(
        p,
        &[
            "email",
            "default",
            "scopes",
            "token",
            "token_lifetime_secs",
            "unique_id",
        ],
    );
    let email = f.required_string(p, "email");
    if let Some(e) = &email {
        if !is_email(e) {
            f.problem(p, "email", format!("{e:?} is not a service account email"));
        }
    }
    let default = f.boolean(p, "default").unwrap_or(false);
    let scopes = f.strings(p, "scopes");
    for (i, s) in scopes.iter().enumerate() {
        if !s.starts_with("https://") || s.len() <= 8 || !s.chars().all(|c| c.is_ascii_graphic()) {
            p.push(format!(
                "{}[{i}]: {s:?} is not a scope URL (https://...)",
                f.path("scopes")
            ));
        }
    }
    let token = match f.get("token") {
        Some(v) => match v.clone().try_into::<TokenSource>() {
            Ok(t) => {
                if let Some(why) = t.problem() {
                    f.problem(p, "token", why);
                }
                t
            }
            Err(_) => {
                f.problem(
                    p,
                    "token",
                    "must be a string, { env = \"NAME\" } or { command = [\"program\", ...] }",
                );
                TokenSource::Generated
            }
        },
        None if env(ACCESS_TOKEN_ENV).is_some() => TokenSource::Env {
            env: ACCESS_TOKEN_ENV.to_owned(),
        },
        None => TokenSource::Generated,
    };
    let token_lifetime = f
        .integer(p, "token_lifetime_secs", 60..=86400)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    let unique_id = match f.string(p, "unique_id") {
        Some(u) if parse_digits(&u).is_some() && u.len() <= 30 => Some(u),
        Some(u) => {
            f.problem(p, "unique_id", format!("{u:?} is not a numeric id"));
            None
        }
        None => email.as_deref().map(idtoken::derived_unique_id),
    };
    Some(ServiceAccount {
        email: email?,
        default,
        scopes,
        token,
        token_lifetime,
        unique_id: unique_id?,
    })
}

fn identity(f: &Fields, p: &mut Problems) -> Option<IdentityConfig> {
    f.refuse_unknown(p, &["issuer", "lifetime_secs", "key_file"]);
    let issuer = f.required_string(p, "issuer");
    if let Some(i) = &issuer {
        let ok = (i.starts_with("https://") || i.starts_with("http://"))
            && i.chars().all(|c| c.is_ascii_graphic());
        if !ok {
            f.problem(p, "issuer", format!("{i:?} is not an issuer URL"));
        }
    }
    if f.get("lifetime_secs").is_none() {
        f.problem(p, "lifetime_secs", "missing");
    }
    let lifetime = f
        .integer(p, "lifetime_secs", 60..=86400)
        .map(|s| Duration::from_secs(s as u64));
    let key_file = f.string(p, "key_file").map(PathBuf::from);
    let key = match &key_file {
        Some(path) => match IdKey::load(path) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                f.problem(p, "key_file", crate::errors::error_chain(&e));
                None
            }
        },
        None => None,
    };
    Some(IdentityConfig {
        issuer: issuer?,
        lifetime: lifetime?,
        key,
        key_file,
    })
}

/// An email that can be a path segment: `local@domain`, printable, no `/`, `?`, `#`.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && s.len() <= 254
        && is_hostname(domain)
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !"/?#%\\".contains(c))
}
