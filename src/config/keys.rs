//! Every configuration key, each described once: its name, its help, its default and
//! how its value is read. The file's keys are checked against [`KEYS`], the command
//! line's flags and variables are built from it (`cli`), validation reads each key
//! through its entry here, and the README's table of keys is this table (a test holds
//! them equal).
//!
//! A key's flag and variable follow from its name: `request_timeout_ms` is
//! `--request-timeout-ms` and `IMDS_PROXY_REQUEST_TIMEOUT_MS`.

use std::collections::BTreeMap;
use std::net::{SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::time::Duration;

use super::parse::{self, bool_value, millis, size, text};
use super::{policies, quotas, Class, Raw, TableOwner};
use crate::ifname::BridgePattern;
use crate::policy::{Policy, RateLimit};

/// One key, typed by the value it gives.
pub struct Key<T> {
    /// Its name in the file.
    pub name: &'static str,
    /// One sentence or two for `--help` and the README.
    pub help: &'static str,
    pub form: Form,
    pub default: DefaultValue<T>,
    /// Reads a value given in the file, a flag or a variable; the reason on failure.
    pub parse: fn(&Raw) -> Result<T, String>,
}

/// Where besides the file a key can be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A flag with a value, and a variable.
    Flag,
    /// A flag that alone means `true`, and a variable.
    Switch,
    /// Only the file: a table, which no flag could hold.
    FileOnly,
}

/// What a key not given stands for.
pub enum DefaultValue<T> {
    /// A value written as a flag would give it: parsed for the value, shown as it is.
    Text(&'static str),
    /// A value no text of the key's gives (nothing, or what each class has by itself),
    /// shown as `text` describes it.
    Described {
        value: fn() -> T,
        text: &'static str,
    },
}

impl<T> Key<T> {
    /// The value of the key when it is not given.
    pub fn default_value(&self) -> T {
        match &self.default {
            DefaultValue::Text(t) => (self.parse)(&Raw::Text((*t).to_owned()))
                .unwrap_or_else(|e| panic!("the default of {} is invalid: {e}", self.name)),
            DefaultValue::Described { value, .. } => value(),
        }
    }
}

/// What the command line, the README and the file's check need of a key, whatever the
/// type of its value.
pub trait Described: Sync {
    fn name(&self) -> &'static str;
    fn help(&self) -> &'static str;
    fn form(&self) -> Form;
    /// The default as the help shows it.
    fn default_text(&self) -> &'static str;
    /// Whether the default is a value in the key's own syntax (else a description).
    fn default_is_value(&self) -> bool;
}

impl<T> Described for Key<T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn help(&self) -> &'static str {
        self.help
    }
    fn form(&self) -> Form {
        self.form
    }
    fn default_text(&self) -> &'static str {
        match &self.default {
            DefaultValue::Text(t) | DefaultValue::Described { text: t, .. } => t,
        }
    }
    fn default_is_value(&self) -> bool {
        matches!(self.default, DefaultValue::Text(_))
    }
}

/// A key's flag without its dashes: `request-timeout-ms`.
pub fn long_flag(key: &str) -> String {
    key.replace('_', "-")
}

/// A key's environment variable: `IMDS_PROXY_REQUEST_TIMEOUT_MS`.
pub fn variable(key: &str) -> String {
    format!("IMDS_PROXY_{}", key.to_uppercase())
}

/// Every key, in the order of the help and the README.
pub static KEYS: &[&dyn Described] = &[
    &UPSTREAM,
    &EMULATOR,
    &LISTEN,
    &LISTEN6,
    &LINK_NAME,
    &BRIDGES,
    &DIRECT_INTERFACES,
    &MACVLAN_PARENTS,
    &TABLE_OWNER,
    &REQUEST_TIMEOUT,
    &AWS_REQUEST_TIMEOUT,
    &UPSTREAM_LIMITS,
    &UPSTREAM_CONCURRENCY,
    &TOKEN_CACHE,
    &METADATA_CACHE_TTL,
    &ERROR_CACHE,
    &CACHE_MAX_ENTRIES,
    &DRAIN_TIMEOUT,
    &MAX_REQUEST_BODY,
    &MAX_HEADER,
    &REMOVE_ON_EXIT,
    &GCE_DNS,
    &DOCKER_SOCKET,
    &UNLABELLED_POLICY,
    &UNKNOWN_POLICY,
    &HOST_POLICY,
    &IDENTIFY_WAIT,
    &AUDIT_SUMMARY,
    &AWS_BASE_ROLE_ARN,
    &AWS_STS_ENDPOINT,
    &AWS_SESSION_SECONDS,
    &AWS_SESSION_TAGS,
    &AWS_SOURCE_IDENTITY,
    &GCE_IAM_CREDENTIALS_URL,
    &METRICS_LISTEN,
    &POLICIES,
];

/// Whether `name` is a key.
pub fn known(name: &str) -> bool {
    KEYS.iter().any(|k| k.name() == name)
}

pub static UPSTREAM: Key<Option<http::Uri>> = Key {
    name: "upstream",
    help: "The metadata service to forward to, e.g. http://169.254.169.254",
    form: Form::Flag,
    default: DefaultValue::Described {
        value: || None,
        text: "none: `run` looks for a real service at 169.254.169.254 for 1.5 s, else serves the emulator",
    },
    parse: |r| parse::upstream(r).map(Some),
};

pub static EMULATOR: Key<Option<PathBuf>> = Key {
    name: "emulator",
    help: "Serve this emulator file (GCE, Azure and AWS from one TOML file; see examples/emulator.toml) instead of forwarding",
    form: Form::Flag,
    default: DefaultValue::Described {
        value: || None,
        text: "the built-in `examples/emulator.toml` when no real service answers",
    },
    parse: parse::emulator_file,
};

/// Link-local, and used by no cloud for anything.
pub static LISTEN: Key<SocketAddrV4> = Key {
    name: "listen",
    help: "Proxy address (link-local IPv4[:port]) on the daemon's own link",
    form: Form::Flag,
    default: DefaultValue::Text("169.254.93.254:80"),
    parse: parse::listen,
};

/// A unique-local /128 from a randomly drawn /48 (RFC 4193), so it is no cloud's
/// service address.
pub static LISTEN6: Key<SocketAddrV6> = Key {
    name: "listen6",
    help: "IPv6 proxy address (unique-local, [address]:port) on the daemon's own link, for containers calling [fd00:ec2::254]; the default is a /128 from a random /48, no cloud's address (not in AWS's fd00:ec2::/32, not GCE's fd20:ce::254)",
    form: Form::Flag,
    default: DefaultValue::Text("[fdf3:6f62:ab7c::254]:80"),
    parse: parse::listen6,
};

pub static LINK_NAME: Key<String> = Key {
    name: "link_name",
    help: "Name of the daemon's own link",
    form: Form::Flag,
    default: DefaultValue::Text("imdsproxy0"),
    parse: parse::ifname,
};

/// `docker0` and every user-defined Docker bridge network.
pub static BRIDGES: Key<Vec<BridgePattern>> = Key {
    name: "bridges",
    help: "Container bridges, whose containers are intercepted (every other interface is refused): names or prefix patterns, comma-separated",
    form: Form::Flag,
    default: DefaultValue::Text("docker0,br-*"),
    parse: parse::bridges,
};

pub static DIRECT_INTERFACES: Key<Vec<String>> = Key {
    name: "direct_interfaces",
    help: "Interfaces (exact names, comma-separated) whose forwarded or bridged packets to the metadata addresses pass on purpose, not proxied (a warning at start); every other interface's are refused",
    form: Form::Flag,
    default: DefaultValue::Described {
        value: Vec::new,
        text: "none",
    },
    parse: parse::ifnames,
};

pub static MACVLAN_PARENTS: Key<Option<Vec<String>>> = Key {
    name: "macvlan_parents",
    help: "Interfaces (exact names, comma-separated) whose macvlan children are refused the metadata addresses; an empty list (`--macvlan-parents \"\"`, `macvlan_parents = []`) guards none, with a warning at start",
    form: Form::Flag,
    default: DefaultValue::Described {
        value: || None,
        text: "the interfaces the host's routes to the metadata addresses use, followed as they change",
    },
    parse: |r| parse::ifnames(r).map(Some),
};

pub static TABLE_OWNER: Key<TableOwner> = Key {
    name: "table_owner",
    help: "`auto`: the tables are owned by the daemon where the kernel can (Linux 6.9+), so no other process can change them, and outlive it; `off`: plain tables, restored on drift (to test that path, or to let other tools change the tables)",
    form: Form::Flag,
    default: DefaultValue::Text("auto"),
    parse: parse::table_owner,
};

pub static REQUEST_TIMEOUT: Key<Duration> = Key {
    name: "request_timeout_ms",
    help: "Deadline for one proxied request, in milliseconds",
    form: Form::Flag,
    default: DefaultValue::Text("10000"),
    parse: |r| millis(r, 1, 600_000),
};

/// botocore waits 1 s for connection and answer together, in one attempt, and then
/// gives up (or falls back from IMDSv2 to IMDSv1); aws-config's timeouts are 1 s too.
/// 900 ms leaves 100 ms for the container's own connection to the proxy and for
/// scheduling, so a slow service gets the caller the proxy's prompt answer (or a
/// retry's success) rather than a timeout of its own.
pub static AWS_REQUEST_TIMEOUT: Key<Duration> = Key {
    name: "aws_request_timeout_ms",
    help: "Deadline for one AWS request forwarded to a real service, in milliseconds: under the SDKs' own 1 s",
    form: Form::Flag,
    default: DefaultValue::Text("900"),
    parse: |r| millis(r, 1, 600_000),
};

/// Overrides of [`quotas::Limits`]'s rates; the classes not named keep theirs.
pub static UPSTREAM_LIMITS: Key<Vec<(Class, RateLimit)>> = Key {
    name: "upstream_limits",
    help: "Requests a second the proxy sends to the real service, per class (azure, azure_identity, gce, aws), in a policy's `rate_limit` syntax",
    form: Form::FileOnly,
    default: DefaultValue::Described {
        value: Vec::new,
        text: "`azure = \"5/s burst 1\"`, `azure_identity = \"20/s burst 1\"`, `gce = \"50/s burst 20\"`, `aws = \"50/s burst 20\"`",
    },
    parse: quotas::parse_rates,
};

/// Overrides of [`quotas::Limits`]'s caps on requests in flight.
pub static UPSTREAM_CONCURRENCY: Key<Vec<(Class, u32)>> = Key {
    name: "upstream_concurrency",
    help: "Requests in flight to the real service at most, per class, 1 to 1024",
    form: Form::FileOnly,
    default: DefaultValue::Described {
        value: Vec::new,
        text: "`azure = 16`, `azure_identity = 5`, `gce = 16`, `aws = 16`",
    },
    parse: quotas::parse_concurrency,
};

pub static TOKEN_CACHE: Key<bool> = Key {
    name: "token_cache",
    help: "Hold the real service's tokens and credentials, per identity, and make concurrent requests for the same one a single request",
    form: Form::Switch,
    default: DefaultValue::Text("true"),
    parse: bool_value,
};

pub static METADATA_CACHE_TTL: Key<Duration> = Key {
    name: "metadata_cache_ttl_ms",
    help: "How long the real service's unchanging documents (Azure /metadata/instance, the AWS identity document, GCE project/) are held, in milliseconds; 0 holds none",
    form: Form::Flag,
    default: DefaultValue::Text("0"),
    parse: |r| millis(r, 0, 3_600_000),
};

pub static ERROR_CACHE: Key<Duration> = Key {
    name: "error_cache_ms",
    help: "How long a failure of the real service (5xx, 429, no answer) answers the same request without asking again, in milliseconds; 0 remembers none",
    form: Form::Flag,
    default: DefaultValue::Text("1000"),
    parse: |r| millis(r, 0, 60_000),
};

pub static CACHE_MAX_ENTRIES: Key<usize> = Key {
    name: "cache_max_entries",
    help: "Most answers held at once",
    form: Form::Flag,
    default: DefaultValue::Text("4096"),
    parse: parse::entries,
};

pub static DRAIN_TIMEOUT: Key<Duration> = Key {
    name: "drain_timeout_ms",
    help: "How long shutdown waits for in-flight requests, in milliseconds",
    form: Form::Flag,
    default: DefaultValue::Text("5000"),
    parse: |r| millis(r, 0, 600_000),
};

pub static MAX_REQUEST_BODY: Key<usize> = Key {
    name: "max_request_body_bytes",
    help: "Largest request body accepted, in bytes",
    form: Form::Flag,
    default: DefaultValue::Text("65536"),
    parse: |r| size(r, 0, 16 << 20),
};

pub static MAX_HEADER: Key<usize> = Key {
    name: "max_header_bytes",
    help: "Largest request head accepted, in bytes",
    form: Form::Flag,
    default: DefaultValue::Text("16384"),
    parse: |r| size(r, 8192, 1 << 20),
};

pub static REMOVE_ON_EXIT: Key<bool> = Key {
    name: "remove_on_exit",
    help: "On exit, remove table and link (containers then reach the metadata address directly) instead of leaving containers refused",
    form: Form::Switch,
    default: DefaultValue::Text("false"),
    parse: bool_value,
};

pub static GCE_DNS: Key<bool> = Key {
    name: "gce_dns",
    help: "Answer containers' DNS queries for metadata.google.internal (and metadata) with 169.254.169.254, as on GCE; no other query is touched",
    form: Form::Switch,
    default: DefaultValue::Text("true"),
    parse: bool_value,
};

pub static DOCKER_SOCKET: Key<String> = Key {
    name: "docker_socket",
    help: "Docker Engine API socket, to name the container behind each request",
    form: Form::Flag,
    default: DefaultValue::Text("/var/run/docker.sock"),
    parse: parse::socket_path,
};

pub static AWS_BASE_ROLE_ARN: Key<Option<String>> = Key {
    name: "aws_base_role_arn",
    help: "Role ARN prefix (arn:aws:iam::<account>:role/, optionally with a path) under which an imds-proxy.aws.role-arn label may give only a role name",
    form: Form::Flag,
    default: DefaultValue::Described {
        value: || None,
        text: "none: labels give whole role ARNs",
    },
    parse: |r| parse::base_role_arn(r).map(Some),
};

pub static AWS_STS_ENDPOINT: Key<Option<http::Uri>> = Key {
    name: "aws_sts_endpoint",
    help: "STS endpoint for assumed roles (a VPC endpoint, a test server; http:// allowed); when not given, AWS_ENDPOINT_URL_STS is honoured",
    form: Form::Flag,
    default: DefaultValue::Described {
        value: || None,
        text: "the regional endpoint of the instance's region, https://sts.<region>.amazonaws.com",
    },
    parse: |r| parse::endpoint(r).map(Some),
};

pub static AWS_SESSION_SECONDS: Key<Duration> = Key {
    name: "aws_session_seconds",
    help: "DurationSeconds of each assumed-role session, 900 to 3600 (a role assumed with the instance's role credentials may last at most an hour)",
    form: Form::Flag,
    default: DefaultValue::Text("3600"),
    parse: |r| parse::seconds(r, 900, 3600),
};

pub static AWS_SESSION_TAGS: Key<bool> = Key {
    name: "aws_session_tags",
    help: "Tag each assumed-role session with imds-proxy:container, imds-proxy:image and imds-proxy:host (the role's trust policy must allow sts:TagSession); one session per container then",
    form: Form::Switch,
    default: DefaultValue::Text("false"),
    parse: bool_value,
};

pub static AWS_SOURCE_IDENTITY: Key<bool> = Key {
    name: "aws_source_identity",
    help: "Set SourceIdentity of each assumed-role session to the container's name (the trust policy must allow sts:SetSourceIdentity); one session per container then",
    form: Form::Switch,
    default: DefaultValue::Text("false"),
    parse: bool_value,
};

pub static GCE_IAM_CREDENTIALS_URL: Key<http::Uri> = Key {
    name: "gce_iam_credentials_url",
    help: "The IAM Credentials service that impersonates GCE service accounts for labelled containers (http:// allowed, for test servers)",
    form: Form::Flag,
    default: DefaultValue::Text("https://iamcredentials.googleapis.com"),
    parse: parse::endpoint,
};

pub static METRICS_LISTEN: Key<Option<std::net::SocketAddr>> = Key {
    name: "metrics_listen",
    help: "Loopback address[:port] of /metrics, /healthz and /readyz (only the host reaches it), or off",
    form: Form::Flag,
    default: DefaultValue::Text("127.0.0.1:9469"),
    parse: parse::metrics_listen,
};

/// The name of a policy; `policies` resolves it once the file's policies are read.
pub static UNLABELLED_POLICY: Key<String> = Key {
    name: "unlabelled_policy",
    help: "Policy for containers without an imds-proxy.policy label: allow, metadata-only, deny or one of the file's; metadata-only or deny harden the host",
    form: Form::Flag,
    default: DefaultValue::Text("allow"),
    parse: text,
};

pub static UNKNOWN_POLICY: Key<String> = Key {
    name: "unknown_policy",
    help: "Policy for callers no known container holds",
    form: Form::Flag,
    default: DefaultValue::Text("deny"),
    parse: text,
};

pub static HOST_POLICY: Key<String> = Key {
    name: "host_policy",
    help: "Policy for host processes and `--network host` containers calling the proxy's own address (their direct path is not intercepted)",
    form: Form::Flag,
    default: DefaultValue::Text("allow"),
    parse: text,
};

pub static IDENTIFY_WAIT: Key<Duration> = Key {
    name: "identify_wait_ms",
    help: "How long a request from a container Docker has not reported yet waits for it before a 503 with Retry-After, in milliseconds",
    form: Form::Flag,
    default: DefaultValue::Text("1000"),
    parse: |r| millis(r, 0, 60_000),
};

pub static AUDIT_SUMMARY: Key<Duration> = Key {
    name: "audit_summary_ms",
    help: "A routine request (allowed, answered from the cache, the emulator or held credentials) is logged on its first occurrence per container, method, path, decision and status, any other (a denial, a refusal, an error, a request to the real service) its first 10 times, and their further repeats as one line with their count per this interval, in milliseconds (0: every request on its own)",
    form: Form::Flag,
    default: DefaultValue::Text("60000"),
    parse: |r| millis(r, 0, 3_600_000),
};

pub static POLICIES: Key<BTreeMap<String, Policy>> = Key {
    name: "policies",
    help: "Named policies, `[policies.<name>]` tables of `default`, `allow`, `deny`, `rate_limit`, `aws_tokens`, `aws_roles` and `gce_service_accounts`",
    form: Form::FileOnly,
    default: DefaultValue::Described {
        value: BTreeMap::new,
        text: "none besides the built-in `allow`, `metadata-only` and `deny`",
    },
    parse: policies::parse_named,
};
