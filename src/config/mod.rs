//! One validated [`Config`] from a TOML file, `IMDS_PROXY_*` environment variables and
//! command-line flags (in rising precedence).
//!
//! Every source is reduced to raw key/value pairs first and each key is validated on its
//! own, so a bad configuration is reported whole (every wrong key, its source and the
//! reason) instead of one error per attempt. Each key (name, help, default, reader) is
//! described once, in [`keys`]; [`Config::defaults`] is what they give when nothing is
//! set, for every command.

pub mod keys;
mod parse;
mod policies;
pub mod quotas;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddrV4, SocketAddrV6};
use std::path::Path;
use std::time::Duration;

use crate::ifname::BridgePattern;
use crate::policy::select::Policies;
pub use crate::table_owner::TableOwner;
pub use quotas::{Class, Limits, MAX_CONCURRENCY};

/// The daemon's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the real metadata service (`http://host[:port]`); `None` only for
    /// commands that do not proxy.
    pub upstream: Option<http::Uri>,
    /// The emulator file to serve instead of forwarding (`run` with neither this nor
    /// `upstream` looks for a real service and falls back to the built-in example).
    pub emulator: Option<std::path::PathBuf>,
    /// Where the proxy listens (a /32 on the daemon's own link).
    pub listen: SocketAddrV4,
    /// Where the proxy listens for IPv6 callers (a /128 on the daemon's own link), where
    /// the host has IPv6.
    pub listen6: SocketAddrV6,
    /// Name of the daemon's own link.
    pub link_name: String,
    /// Which interfaces are container bridges.
    pub bridges: Vec<BridgePattern>,
    /// Interfaces whose forwarded or bridged packets to the metadata addresses are let
    /// through on purpose; every other interface's are refused.
    pub direct_interfaces: Vec<String>,
    /// Interfaces whose macvlan children must not reach the metadata service directly.
    /// `None` (the default): the interfaces the host's own routes to the metadata
    /// addresses leave by; an empty list: no guard at all.
    pub macvlan_parents: Option<Vec<String>>,
    /// Whether the tables are created owned by the daemon and persisting after it.
    pub table_owner: TableOwner,
    /// Deadline for one proxied request, upstream answer and body included.
    pub request_timeout: Duration,
    /// The same for AWS requests forwarded to a real service (see [`keys::AWS_REQUEST_TIMEOUT`]).
    pub aws_request_timeout: Duration,
    /// The real service's quotas: rate and requests in flight per provider class.
    pub upstream_limits: Limits,
    /// What the proxy holds in front of the real service: tokens, documents, failures.
    pub cache: CacheSettings,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Largest request body accepted from a container.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted from a container.
    pub max_header_bytes: usize,
    /// Remove table and link on exit instead of leaving containers refused.
    pub remove_on_exit: bool,
    /// Answer containers' DNS queries for `metadata.google.internal` (and `metadata`)
    /// with the metadata address; every other query is left alone.
    pub gce_dns: bool,
    /// The Docker Engine API socket.
    pub docker_socket: String,
    /// How long a request from a port Docker has not reported yet waits for it.
    pub identify_wait: Duration,
    /// How often repeats of routine requests are summarised (zero: never).
    pub audit_summary: Duration,
    /// Named policies and the defaults for unlabelled containers and unknown callers.
    pub policies: Policies,
    /// How roles are assumed for labelled containers.
    pub aws_roles: AwsRoleSettings,
    /// Where GCE service accounts are impersonated.
    pub gce_iam_credentials_url: http::Uri,
    /// The management listener (`/metrics`, `/healthz`, `/readyz`); `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The file this came from, watched for changes.
    pub config_file: Option<std::path::PathBuf>,
}

impl Config {
    /// Every key at its default: what `emulate`, which reads no configuration, serves
    /// with, and what `run` starts from.
    pub fn defaults() -> Self {
        RawConfig::default()
            .validate(false)
            .unwrap_or_else(|e| panic!("the keys' defaults are invalid: {e}"))
    }
}

/// Assumed AWS roles (keys `aws_base_role_arn`, `aws_sts_endpoint`,
/// `aws_session_seconds`, `aws_session_tags`, `aws_source_identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsRoleSettings {
    pub base_role_arn: Option<String>,
    /// `None`: `AWS_ENDPOINT_URL_STS` if set, else the instance region's endpoint.
    pub sts_endpoint: Option<http::Uri>,
    pub session: Duration,
    pub session_tags: bool,
    pub source_identity: bool,
}

/// The cache's settings (configuration keys `token_cache`, `metadata_cache_ttl_ms`,
/// `error_cache_ms`, `cache_max_entries`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Hold tokens and credentials, and coalesce requests for them.
    pub tokens: bool,
    /// How long metadata documents that do not change are held; zero: not at all.
    pub metadata_ttl: Duration,
    /// How long a failing answer (5xx, 429, no answer) for a key is remembered, so a
    /// broken service is not asked again by every container; zero: not at all.
    pub errors: Duration,
    /// Most keys held at once (entries, remembered failures, requests in flight).
    pub max_entries: usize,
}

impl Default for CacheSettings {
    /// The keys' defaults.
    fn default() -> Self {
        Config::defaults().cache
    }
}

impl CacheSettings {
    /// Whether anything is cached at all.
    pub fn enabled(&self) -> bool {
        self.tokens || !self.metadata_ttl.is_zero()
    }
}

/// Where a raw value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File,
    /// The key whose flag or variable set it.
    Flag(&'static str),
    /// A variable of another tool's that the key honours (`AWS_ENDPOINT_URL_STS`).
    Variable(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File => f.write_str("config file"),
            Source::Flag(key) => write!(f, "--{} / {}", keys::long_flag(key), keys::variable(key)),
            Source::Variable(name) => write!(f, "variable {name}"),
        }
    }
}

/// A value before validation: typed from TOML, or text from a flag or variable.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Toml(toml::Value),
    Text(String),
}

/// One invalid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub source: Option<Source>,
    pub reason: String,
}

/// Errors of the config module.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("invalid configuration:{}", .0.iter().map(|e| format!("\n  {}{}: {}", e.key, e.source.as_ref().map(|s| format!(" (from {s})")).unwrap_or_default(), e.reason)).collect::<String>())]
    Invalid(Vec<KeyError>),
}

/// Raw key/value pairs, later sources overriding earlier ones.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    values: BTreeMap<String, (Source, Raw)>,
    /// Keys that no source may set (unknown keys, from the file).
    unknown: Vec<String>,
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Syntax {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        let mut raw = Self::default();
        for (k, v) in table {
            if keys::known(&k) {
                raw.values.insert(k, (Source::File, Raw::Toml(v)));
            } else {
                raw.unknown.push(k);
            }
        }
        Ok(raw)
    }

    /// Sets a key from its flag (`--<key>`, dashes for underscores) or its
    /// `IMDS_PROXY_<KEY>` variable; wins over the file.
    pub fn set_text(&mut self, key: &'static str, value: Option<String>) {
        if let Some(v) = value {
            self.values
                .insert(key.to_owned(), (Source::Flag(key), Raw::Text(v)));
        }
    }

    /// Sets a key from another tool's variable, unless the key is given already.
    pub fn set_fallback(
        &mut self,
        key: &'static str,
        variable: &'static str,
        value: Option<String>,
    ) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.values
                .entry(key.to_owned())
                .or_insert((Source::Variable(variable), Raw::Text(v)));
        }
    }

    /// The value given for a key, and where it came from.
    fn get(&self, key: &str) -> Option<(&Source, &Raw)> {
        self.values.get(key).map(|(s, r)| (s, r))
    }
}

#[cfg(test)]
mod tests;
