//! One validated [`Config`] from a TOML file, `IMDS_PROXY_*` environment variables and
//! command-line flags (in rising precedence).
//!
//! Every source is reduced to raw key/value pairs first and each key is validated on its
//! own, so a bad configuration is reported whole (every wrong key, its source and the
//! reason) instead of one error per attempt.

pub mod quotas;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::path::Path;
use std::time::Duration;

use crate::addrs::{IMDS_V4, IMDS_V6};
use crate::ifname::{BridgePattern, IFNAMSIZ};
use crate::policy::select::Policies;
use crate::policy::{Pattern, Policy, RateLimit, Rule, Verdict};
pub use crate::table_owner::TableOwner;
pub use quotas::{Class, Limits, MAX_CONCURRENCY};

/// Default address of the proxy: link-local, and used by no cloud for anything.
pub const DEFAULT_LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(169, 254, 93, 254), 80);
/// Default IPv6 address of the proxy: a unique-local /128 from a randomly drawn /48
/// (RFC 4193), so it is no cloud's service address (AWS uses fd00:ec2::/32, GCE
/// fd20:ce::254).
pub const DEFAULT_LISTEN6: SocketAddrV6 = SocketAddrV6::new(
    Ipv6Addr::new(0xfdf3, 0x6f62, 0xab7c, 0, 0, 0, 0, 0x254),
    80,
    0,
    0,
);
/// Default deadline of AWS requests to a real service. botocore waits 1 s for
/// connection and answer together, in one attempt, and then gives up (or falls back
/// from IMDSv2 to IMDSv1); aws-config's timeouts are 1 s too. 900 ms leaves 100 ms for
/// the container's own connection to the proxy and for scheduling, so a slow service
/// gets the caller the proxy's prompt answer (or a retry's success) rather than a
/// timeout of its own.
pub const DEFAULT_AWS_TIMEOUT: Duration = Duration::from_millis(900);
/// Where the Docker Engine API listens by default.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Default name of the daemon's own link.
pub const DEFAULT_LINK: &str = "imdsproxy0";

/// Link-local addresses that clouds use for their own services; the proxy must not take
/// them or the host would lose the service.
const RESERVED_LINK_LOCAL: &[(Ipv4Addr, &str)] = &[
    (IMDS_V4, "the metadata service itself"),
    (Ipv4Addr::new(169, 254, 169, 253), "AWS DNS resolver"),
    (Ipv4Addr::new(169, 254, 169, 123), "AWS time service"),
    (Ipv4Addr::new(169, 254, 170, 2), "ECS task credentials"),
    (Ipv4Addr::new(169, 254, 170, 23), "EKS pod identity"),
    (Ipv4Addr::new(169, 254, 169, 252), "GKE metadata server"),
    (Ipv4Addr::new(169, 254, 20, 10), "node-local DNS"),
];

/// IPv6 service addresses of clouds, likewise.
const RESERVED_UNIQUE_LOCAL: &[(Ipv6Addr, &str)] = &[
    (IMDS_V6, "the AWS metadata service itself"),
    (
        Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
        "the GCE metadata server",
    ),
];

/// AWS puts its IPv6 services (metadata, DNS, time, EKS pod identity at fd00:ec2::23)
/// in this /32.
const AWS_SERVICE_PREFIX: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0), 32);

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
    /// The same for AWS requests forwarded to a real service (see [`DEFAULT_AWS_TIMEOUT`]).
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
    /// Named policies and the defaults for unlabelled containers and unknown callers.
    pub policies: Policies,
    /// The file this came from, watched for changes.
    pub config_file: Option<std::path::PathBuf>,
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
    fn default() -> Self {
        Self {
            tokens: true,
            metadata_ttl: Duration::ZERO,
            errors: Duration::from_secs(1),
            max_entries: 4096,
        }
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
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File => f.write_str("config file"),
            Source::Flag(key) => write!(
                f,
                "--{} / IMDS_PROXY_{}",
                key.replace('_', "-"),
                key.to_uppercase()
            ),
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

/// Every key the daemon understands.
pub const KEYS: &[&str] = &[
    "upstream",
    "emulator",
    "listen",
    "listen6",
    "link_name",
    "bridges",
    "direct_interfaces",
    "macvlan_parents",
    "table_owner",
    "request_timeout_ms",
    "aws_request_timeout_ms",
    "upstream_limits",
    "upstream_concurrency",
    "token_cache",
    "metadata_cache_ttl_ms",
    "error_cache_ms",
    "cache_max_entries",
    "drain_timeout_ms",
    "max_request_body_bytes",
    "max_header_bytes",
    "remove_on_exit",
    "gce_dns",
    "docker_socket",
    "unlabelled_policy",
    "unknown_policy",
    "host_policy",
    "identify_wait_ms",
    "policies",
];

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
            if KEYS.contains(&k.as_str()) {
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

    /// Validates every key; returns all problems at once.
    pub fn validate(&self, require_upstream: bool) -> Result<Config, ConfigError> {
        let mut errors: Vec<KeyError> = self
            .unknown
            .iter()
            .map(|k| KeyError {
                key: k.clone(),
                source: Some(Source::File),
                reason: format!("unknown key (known keys: {})", KEYS.join(", ")),
            })
            .collect();
        let field =
            |key: &str| -> Option<(&Source, &Raw)> { self.values.get(key).map(|(s, r)| (s, r)) };
        let take = |key: &str,
                    res: Result<(), String>,
                    src: Option<&Source>,
                    errors: &mut Vec<KeyError>| {
            if let Err(reason) = res {
                errors.push(KeyError {
                    key: key.to_owned(),
                    source: src.cloned(),
                    reason,
                });
            }
        };

        macro_rules! parse {
            ($key:literal, $parser:expr, $default:expr) => {{
                match field($key) {
                    None => $default,
                    Some((src, raw)) => match $parser(raw) {
                        Ok(v) => v,
                        Err(reason) => {
                            take($key, Err(reason), Some(src), &mut errors);
                            $default
                        }
                    },
                }
            }};
        }

        let upstream = parse!("upstream", |r| parse_upstream(r).map(Some), None);
        if require_upstream && upstream.is_none() && field("upstream").is_none() {
            errors.push(KeyError {
                key: "upstream".into(),
                source: None,
                reason: "required: the metadata service to forward to, e.g. --upstream http://169.254.169.254".into(),
            });
        }
        let emulator = parse!(
            "emulator",
            |r: &Raw| match r {
                Raw::Text(t) if !t.trim().is_empty() =>
                    Ok(Some(std::path::PathBuf::from(t.trim()))),
                Raw::Toml(toml::Value::String(t)) if !t.trim().is_empty() => {
                    Ok(Some(std::path::PathBuf::from(t.trim())))
                }
                _ => Err("expected the path of an emulator file".to_string()),
            },
            None
        );
        if upstream.is_some() && emulator.is_some() {
            errors.push(KeyError {
                key: "emulator".into(),
                source: field("emulator").map(|(s, _)| s.clone()),
                reason:
                    "cannot be used with upstream: serve either the real service or the emulator"
                        .into(),
            });
        }
        let listen = parse!("listen", parse_listen, DEFAULT_LISTEN);
        let listen6 = parse!("listen6", parse_listen6, DEFAULT_LISTEN6);
        let link_name = parse!("link_name", parse_ifname, DEFAULT_LINK.to_owned());
        let bridges = parse!("bridges", parse_bridges, default_bridges());
        let direct_interfaces = parse!("direct_interfaces", parse_ifnames, Vec::new());
        let macvlan_parents = parse!("macvlan_parents", |r| parse_ifnames(r).map(Some), None);
        let table_owner = parse!("table_owner", parse_table_owner, TableOwner::Auto);
        let request_timeout = parse!(
            "request_timeout_ms",
            |r| parse_millis(r, 1, 600_000),
            Duration::from_secs(10)
        );
        let aws_request_timeout = parse!(
            "aws_request_timeout_ms",
            |r| parse_millis(r, 1, 600_000),
            DEFAULT_AWS_TIMEOUT
        );
        let mut upstream_limits = Limits::default();
        for (class, rate) in parse!("upstream_limits", parse_upstream_limits, Vec::new()) {
            upstream_limits.set_rate(class, rate);
        }
        for (class, n) in parse!(
            "upstream_concurrency",
            parse_upstream_concurrency,
            Vec::new()
        ) {
            upstream_limits.set_concurrency(class, n);
        }
        let cache_defaults = CacheSettings::default();
        let cache = CacheSettings {
            tokens: parse!("token_cache", parse_bool, cache_defaults.tokens),
            metadata_ttl: parse!(
                "metadata_cache_ttl_ms",
                |r| parse_millis(r, 0, 3_600_000),
                cache_defaults.metadata_ttl
            ),
            errors: parse!(
                "error_cache_ms",
                |r| parse_millis(r, 0, 60_000),
                cache_defaults.errors
            ),
            max_entries: parse!(
                "cache_max_entries",
                parse_entries,
                cache_defaults.max_entries
            ),
        };
        let drain_timeout = parse!(
            "drain_timeout_ms",
            |r| parse_millis(r, 0, 600_000),
            Duration::from_secs(5)
        );
        let max_body_bytes = parse!(
            "max_request_body_bytes",
            |r| parse_size(r, 0, 16 << 20),
            64 * 1024
        );
        let max_header_bytes = parse!(
            "max_header_bytes",
            |r| parse_size(r, 8192, 1 << 20),
            16 * 1024
        );
        let remove_on_exit = parse!("remove_on_exit", parse_bool, false);
        let gce_dns = parse!("gce_dns", parse_bool, true);
        let docker_socket = parse!(
            "docker_socket",
            parse_socket_path,
            DEFAULT_DOCKER_SOCKET.to_owned()
        );
        let named = parse!("policies", parse_named_policies, BTreeMap::new());
        let resolve = |r: &Raw| parse_policy_name(r, &named);
        let unlabelled_policy = parse!(
            "unlabelled_policy",
            resolve,
            Policy::builtin("allow").expect("built-in")
        );
        let unknown_policy = parse!(
            "unknown_policy",
            resolve,
            Policy::builtin("deny").expect("built-in")
        );
        let host_policy = parse!(
            "host_policy",
            resolve,
            Policy::builtin("allow").expect("built-in")
        );
        let identify_wait = parse!(
            "identify_wait_ms",
            |r| parse_millis(r, 0, 60_000),
            Duration::from_secs(1)
        );
        let policies = Policies {
            named,
            unlabelled: unlabelled_policy,
            unknown: unknown_policy,
            host: host_policy,
        };

        if let Some(p) = bridges.iter().find(|p| p.matches(&link_name)) {
            let src = field("link_name").map(|(s, _)| s);
            take(
                "link_name",
                Err(format!("{link_name:?} matches bridge pattern {:?}; the daemon's own link must not count as a container bridge", p.to_string())),
                src,
                &mut errors,
            );
        }

        if errors.is_empty() {
            Ok(Config {
                upstream,
                emulator,
                listen,
                listen6,
                link_name,
                bridges,
                direct_interfaces,
                macvlan_parents,
                table_owner,
                request_timeout,
                aws_request_timeout,
                upstream_limits,
                cache,
                drain_timeout,
                max_body_bytes,
                max_header_bytes,
                remove_on_exit,
                gce_dns,
                docker_socket,
                identify_wait,
                policies,
                config_file: None,
            })
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

fn parse_policy_name(r: &Raw, named: &BTreeMap<String, Policy>) -> Result<Policy, String> {
    let s = text(r)?;
    let name = s.trim();
    named
        .get(name)
        .cloned()
        .or_else(|| Policy::builtin(name))
        .ok_or_else(|| {
            let mut known: Vec<&str> = vec!["allow", "metadata-only", "deny"];
            known.extend(named.keys().map(String::as_str));
            format!("{s:?} is not a policy (known: {})", known.join(", "))
        })
}

/// `[policies.<name>]` tables: `default = "allow"|"deny"`, `deny = [patterns]`,
/// `allow = [patterns]`, `rate_limit = "20/s"` (optional; see [`RateLimit`]). Deny
/// patterns are tried first, then allow patterns, then the default. Every problem in
/// every policy is reported.
fn parse_named_policies(r: &Raw) -> Result<BTreeMap<String, Policy>, String> {
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
        let mut rules = Vec::new();
        let mut default = Verdict::Deny;
        let mut rate_limit = None;
        let mut aws_tokens_required = false;
        for (key, v) in body {
            match (key.as_str(), v) {
                ("default", toml::Value::String(d)) if d == "allow" => default = Verdict::Allow,
                ("default", toml::Value::String(d)) if d == "deny" => default = Verdict::Deny,
                ("default", v) => errors.push(format!(
                    "{name}.default: expected \"allow\" or \"deny\", got {v}"
                )),
                (list @ ("deny" | "allow"), toml::Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        match item.as_str().map(Pattern::parse) {
                            Some(Ok(pattern)) => rules.push((
                                list == "deny",
                                Rule {
                                    pattern,
                                    verdict: if list == "deny" {
                                        Verdict::Deny
                                    } else {
                                        Verdict::Allow
                                    },
                                },
                            )),
                            Some(Err(e)) => errors.push(format!("{name}.{list}[{i}]: {e}")),
                            None => errors.push(format!(
                                "{name}.{list}[{i}]: expected a path pattern string"
                            )),
                        }
                    }
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
                (other, _) => errors.push(format!(
                    "{name}.{other}: unknown key (default, deny, allow, rate_limit, aws_tokens)"
                )),
            }
        }
        // Deny rules first: a deny can never be shadowed by a broader allow.
        rules.sort_by_key(|(deny, _)| !*deny);
        out.insert(
            name.clone(),
            Policy {
                name: name.clone(),
                rules: rules.into_iter().map(|(_, r)| r).collect(),
                default,
                rate_limit,
                aws_tokens_required,
            },
        );
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

/// The entries of an `upstream_limits` / `upstream_concurrency` table, each checked
/// by `value`; every bad entry is reported.
fn class_table<T>(
    r: &Raw,
    example: &str,
    value: impl Fn(&toml::Value) -> Result<T, String>,
) -> Result<Vec<(Class, T)>, String> {
    let Raw::Toml(toml::Value::Table(t)) = r else {
        return Err(format!("expected a table like {example}"));
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (key, v) in t {
        let Some(class) = Class::from_key(key) else {
            let known: Vec<&str> = Class::ALL.iter().map(|c| c.key()).collect();
            errors.push(format!(
                "{key}: unknown class (known: {})",
                known.join(", ")
            ));
            continue;
        };
        match value(v) {
            Ok(x) => out.push((class, x)),
            Err(e) => errors.push(format!("{key}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

/// `[upstream_limits]`: `<class> = "<rate>"` in the syntax of a policy's `rate_limit`
/// (see [`RateLimit`]), for the classes of [`Class`].
fn parse_upstream_limits(r: &Raw) -> Result<Vec<(Class, RateLimit)>, String> {
    class_table(
        r,
        "[upstream_limits] azure = \"5/s burst 1\"",
        |v| match v {
            // A rate of 0 is refused with advice for policies (deny them instead), which
            // does not apply here: only the reason is kept.
            toml::Value::String(text) => text
                .parse::<RateLimit>()
                .map_err(|e| e.split("; to refuse").next().unwrap_or_default().to_owned()),
            v => Err(format!(
                "expected a string like \"5/s\" or \"20/s burst 1\", got {}",
                v.type_str()
            )),
        },
    )
}

/// `[upstream_concurrency]`: `<class> = <requests in flight>`, 1..=1024.
fn parse_upstream_concurrency(r: &Raw) -> Result<Vec<(Class, u32)>, String> {
    class_table(
        r,
        "[upstream_concurrency] azure_identity = 5",
        |v| match v {
            toml::Value::Integer(n) if (1..=i64::from(MAX_CONCURRENCY)).contains(n) => {
                Ok(*n as u32)
            }
            toml::Value::Integer(n) => Err(format!(
                "{n} requests in flight is outside 1..={MAX_CONCURRENCY}"
            )),
            v => Err(format!("expected a whole number, got {}", v.type_str())),
        },
    )
}

fn parse_socket_path(r: &Raw) -> Result<String, String> {
    let s = text(r)?;
    let path = s.strip_prefix("unix://").unwrap_or(&s);
    if !path.starts_with('/') {
        return Err(format!(
            "{s:?}: give an absolute path to the Docker socket (e.g. /var/run/docker.sock)"
        ));
    }
    Ok(path.to_owned())
}

/// `docker0` and every user-defined Docker bridge network.
pub fn default_bridges() -> Vec<BridgePattern> {
    vec![
        BridgePattern::Exact("docker0".into()),
        BridgePattern::Prefix("br-".into()),
    ]
}

fn text(r: &Raw) -> Result<String, String> {
    match r {
        Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => Ok(s.clone()),
        Raw::Toml(v) => Err(format!("expected a string, got {}", v.type_str())),
    }
}

fn parse_upstream(r: &Raw) -> Result<http::Uri, String> {
    let s = text(r)?;
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "{s:?}: scheme {other:?} is not supported; metadata services speak plain http"
            ))
        }
        None => {
            return Err(format!(
                "{s:?}: missing scheme, e.g. http://169.254.169.254"
            ))
        }
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(format!("{s:?}: missing host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("{s:?}: credentials in the URL are not supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{s:?}: give only scheme, host and port; the container's path is forwarded as is"
        ));
    }
    Ok(uri)
}

fn parse_listen(r: &Raw) -> Result<SocketAddrV4, String> {
    let s = text(r)?;
    let addr: SocketAddrV4 = match s.parse() {
        Ok(a) => a,
        Err(_) => s
            .parse::<Ipv4Addr>()
            .map(|ip| SocketAddrV4::new(ip, 80))
            .map_err(|_| format!("{s:?} is not an IPv4 address or address:port"))?,
    };
    let ip = *addr.ip();
    if !ip.is_link_local() {
        return Err(format!("{ip} is not link-local (169.254.0.0/16); the proxy address must not be reachable from other hosts"));
    }
    if let Some((_, what)) = RESERVED_LINK_LOCAL.iter().find(|(a, _)| *a == ip) {
        return Err(format!(
            "{ip} is used by {what}; pick an address no cloud uses"
        ));
    }
    if addr.port() == 0 {
        return Err("port 0 is not a fixed port".into());
    }
    Ok(addr)
}

fn parse_listen6(r: &Raw) -> Result<SocketAddrV6, String> {
    let s = text(r)?;
    let addr: SocketAddrV6 = match s.parse() {
        Ok(a) => a,
        Err(_) => s
            .parse::<Ipv6Addr>()
            .map(|ip| SocketAddrV6::new(ip, 80, 0, 0))
            .map_err(|_| {
                format!("{s:?} is not an IPv6 address or [address]:port (e.g. [fdf3:6f62:ab7c::254]:80)")
            })?,
    };
    let ip = *addr.ip();
    if !ip.is_unique_local() {
        return Err(format!("{ip} is not unique-local (fc00::/7); the proxy address must not be reachable from other networks"));
    }
    if addr.scope_id() != 0 {
        return Err(format!(
            "{s:?}: a unique-local address needs no scope (%interface)"
        ));
    }
    if let Some((_, what)) = RESERVED_UNIQUE_LOCAL.iter().find(|(a, _)| *a == ip) {
        return Err(format!(
            "{ip} is used by {what}; pick an address no cloud uses"
        ));
    }
    let (prefix, len) = AWS_SERVICE_PREFIX;
    if u128::from(ip) >> (128 - len) == u128::from(prefix) >> (128 - len) {
        return Err(format!(
            "{ip} is in {prefix}/{len}, where AWS puts its IPv6 services; pick an address no cloud uses"
        ));
    }
    if addr.port() == 0 {
        return Err("port 0 is not a fixed port".into());
    }
    Ok(addr)
}

fn parse_ifname(r: &Raw) -> Result<String, String> {
    let s = text(r)?;
    match BridgePattern::parse(&s)? {
        BridgePattern::Exact(n) if n.len() < IFNAMSIZ => Ok(n),
        _ => Err(format!("{s:?} is not a plain interface name")),
    }
}

fn parse_bridges(r: &Raw) -> Result<Vec<BridgePattern>, String> {
    let items = text_list(r, "interface names or patterns")?;
    if items.is_empty() {
        return Err("at least one bridge name or pattern is needed".into());
    }
    items.iter().map(|p| BridgePattern::parse(p)).collect()
}

/// A list of texts: comma-separated in a flag or variable, a TOML array in the file.
/// `what` names the items for the error.
fn text_list(r: &Raw, what: &str) -> Result<Vec<String>, String> {
    match r {
        Raw::Text(s) => Ok(s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect()),
        Raw::Toml(toml::Value::Array(a)) => a.iter().map(|v| text(&Raw::Toml(v.clone()))).collect(),
        Raw::Toml(v) => Err(format!("expected a list of {what}, got {}", v.type_str())),
    }
}

/// A list of exact interface names (comma-separated as text); empty is fine.
fn parse_ifnames(r: &Raw) -> Result<Vec<String>, String> {
    let items = text_list(r, "interface names")?;
    let mut names = Vec::new();
    for item in items {
        match BridgePattern::parse(&item)? {
            BridgePattern::Exact(n) => {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            BridgePattern::Prefix(_) => {
                return Err(format!(
                    "{item:?}: exact interface names only, not patterns"
                ))
            }
        }
    }
    Ok(names)
}

fn parse_table_owner(r: &Raw) -> Result<TableOwner, String> {
    let s = text(r)?;
    match s.trim() {
        "auto" => Ok(TableOwner::Auto),
        "off" => Ok(TableOwner::Off),
        other => Err(format!("{other:?} is not auto or off")),
    }
}

fn integer(r: &Raw) -> Result<i64, String> {
    match r {
        Raw::Toml(toml::Value::Integer(i)) => Ok(*i),
        Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a whole number")),
        Raw::Toml(v) => Err(format!("expected a whole number, got {}", v.type_str())),
    }
}

fn parse_millis(r: &Raw, min: i64, max: i64) -> Result<Duration, String> {
    let n = integer(r)?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} ms is outside {min}..={max} ms"));
    }
    Ok(Duration::from_millis(n as u64))
}

fn parse_size(r: &Raw, min: i64, max: i64) -> Result<usize, String> {
    let n = integer(r)?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} bytes is outside {min}..={max} bytes"));
    }
    Ok(n as usize)
}

/// The cache's cap on keys: at least one, at most a million (each holds a token of a
/// few KiB, or a document).
fn parse_entries(r: &Raw) -> Result<usize, String> {
    let n = integer(r)?;
    if !(1..=1_000_000).contains(&n) {
        return Err(format!("{n} entries is outside 1..=1000000"));
    }
    Ok(n as usize)
}

fn parse_bool(r: &Raw) -> Result<bool, String> {
    match r {
        Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
        Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => {
            match s.trim().to_ascii_lowercase().as_str() {
                // An empty value (`VAR=` in a unit file, an unset compose variable) must not
                // switch anything on: it is refused rather than guessed.
                "" => Err("empty value; write true or false".into()),
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!("{s:?} is not true or false")),
            }
        }
        Raw::Toml(v) => Err(format!("expected true or false, got {}", v.type_str())),
    }
}

#[cfg(test)]
mod tests;
