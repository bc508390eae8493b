//! The `[aws]` section of the emulator file, validated once into what the service
//! serves: every problem is reported at once, each naming its key below `aws.`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value as Json};
use toml::{Table, Value};

/// Role credentials lifetime when a role names none: six hours, as EC2 hands out.
pub const DEFAULT_CREDENTIALS_LIFETIME_SECS: u64 = 21_600;
/// Shortest lifetime: credentials are replaced at half-life, and half of it must stay
/// beyond botocore's and the Java SDK's 15-minute refresh windows.
const MIN_CREDENTIALS_LIFETIME_SECS: u64 = 1_800;
/// Longest: the longest session an IAM role allows (12 hours).
const MAX_CREDENTIALS_LIFETIME_SECS: u64 = 43_200;
/// Fields of the real identity document that are null on most instances; a file that
/// leaves them out gets them as null, as the real document has them.
const IDENTITY_DOCUMENT_NULLS: &[&str] = &[
    "billingProducts",
    "devpayProductCodes",
    "kernelId",
    "marketplaceProductCodes",
    "ramdiskId",
];

/// The `[aws]` section: what the emulated EC2 metadata service serves.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsConfig {
    http_tokens: HttpTokens,
    /// `/latest/user-data`; absent: 404, and not listed.
    pub user_data: Option<String>,
    /// `/latest/meta-data/` (without `iam/`, which comes from the roles).
    pub meta_data: BTreeMap<String, Node>,
    /// `/latest/dynamic/instance-identity/document`; absent: `dynamic/` is 404.
    pub identity_document: Option<Map<String, Json>>,
    pub roles: Vec<Role>,
    /// `meta-data/public-keys/`: listed as `<index>=<name>`, each key under
    /// `<index>/openssh-key`, as EC2 serves the instance's key pair.
    pub public_keys: Vec<PublicKey>,
}

/// One `[[aws.public_keys]]` entry: the key pair the instance was launched with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    pub openssh_key: String,
}

/// `http_tokens`: whether IMDSv1 (no session token) is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpTokens {
    Optional,
    Required,
}

/// One entry of the meta-data tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Leaf(String),
    Dir(BTreeMap<String, Node>),
}

/// An instance-profile role, as `iam/` serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// The instance's own role: what callers without a role label see.
    pub default: bool,
    pub instance_profile_arn: String,
    pub instance_profile_id: String,
    pub credentials_lifetime: Duration,
    /// Keys from the file; `None`: generated.
    pub keys: Option<StaticKeys>,
}

/// Credentials the file names instead of generated ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticKeys {
    pub access_key_id: KeySource,
    pub secret_access_key: KeySource,
    /// Absent: served as `""` (long-term keys have no session token).
    pub session_token: Option<KeySource>,
}

/// A key as the file gives it: the value, or an environment variable read when
/// credentials are issued.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    Value(String),
    Env(String),
}

/// Never shows a key's value (configs may be logged).
impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Value(_) => f.write_str("Value(<redacted>)"),
            KeySource::Env(name) => write!(f, "Env({name:?})"),
        }
    }
}

impl KeySource {
    /// The key now; an error names the unset variable.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match self {
            KeySource::Value(v) => Ok(v.clone()),
            KeySource::Env(name) => env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("environment variable {name} is not set")),
        }
    }
}

impl AwsConfig {
    /// Validates the section; every problem, each naming its key below `aws.`.
    pub fn from_value(
        raw: Value,
        _env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<String>> {
        let mut p = Problems::default();
        let Some(top) = raw.as_table() else {
            return Err(vec!["must be a table".into()]);
        };
        p.unknown(
            top,
            "",
            &[
                "http_tokens",
                "user_data",
                "meta_data",
                "identity_document",
                "roles",
                "public_keys",
            ],
        );
        let http_tokens = match top.get("http_tokens").map(Value::as_str) {
            None | Some(Some("optional")) => HttpTokens::Optional,
            Some(Some("required")) => HttpTokens::Required,
            Some(_) => {
                p.at("http_tokens", "must be \"optional\" or \"required\"");
                HttpTokens::Optional
            }
        };
        let user_data = top.get("user_data").and_then(|v| {
            let s = v.as_str().map(str::to_owned);
            if s.is_none() {
                p.at("user_data", "must be a string");
            }
            s
        });
        let meta_data = match top.get("meta_data") {
            None => BTreeMap::new(),
            Some(Value::Table(t)) => {
                if t.contains_key("iam") {
                    p.at(
                        "meta_data.iam",
                        "is generated from [[aws.roles]]; remove it",
                    );
                }
                if t.contains_key("public-keys") {
                    p.at(
                        "meta_data.public-keys",
                        "is generated from [[aws.public_keys]]; remove it",
                    );
                }
                tree(t, "meta_data", &mut p)
            }
            Some(_) => {
                p.at("meta_data", "must be a table");
                BTreeMap::new()
            }
        };
        let identity_document = match top.get("identity_document") {
            None => None,
            Some(Value::Table(t)) => {
                let mut doc: Map<String, Json> =
                    t.iter().map(|(k, v)| (k.clone(), typed_json(v))).collect();
                for k in IDENTITY_DOCUMENT_NULLS {
                    doc.entry(*k).or_insert(Json::Null);
                }
                Some(doc)
            }
            Some(_) => {
                p.at("identity_document", "must be a table");
                None
            }
        };
        let roles = roles(top.get("roles"), &mut p);
        let public_keys = public_keys(top.get("public_keys"), &mut p);
        p.finish(Self {
            http_tokens,
            user_data,
            meta_data,
            identity_document,
            roles,
            public_keys,
        })
    }

    /// Whether every GET needs an IMDSv2 session token (`http_tokens = "required"`):
    /// the proxy enforces it (401 without a valid token), as EC2 does with
    /// HttpTokens=required.
    pub fn tokens_required(&self) -> bool {
        self.http_tokens == HttpTokens::Required
    }
}

fn tree(t: &Table, key: &str, p: &mut Problems) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for (k, v) in t {
        let here = format!("{key}.{k}");
        if k.is_empty() || k.contains('/') || k.chars().any(char::is_control) {
            p.at(&here, "a path segment may not be empty or hold '/'");
            continue;
        }
        let node = match v {
            Value::Table(t) => Node::Dir(tree(t, &here, p)),
            Value::Array(items) => {
                let lines: Option<Vec<String>> = items.iter().map(primitive).collect();
                match lines {
                    Some(lines) => Node::Leaf(lines.join("\n")),
                    None => {
                        p.at(
                            &here,
                            "a list must hold strings or numbers (served one a line)",
                        );
                        continue;
                    }
                }
            }
            v => Node::Leaf(primitive(v).expect("tables and lists are handled above")),
        };
        out.insert(k.clone(), node);
    }
    out
}

fn primitive(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(n) => Some(n.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Datetime(d) => Some(d.to_string()),
        Value::Array(_) | Value::Table(_) => None,
    }
}

fn typed_json(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.clone()),
        Value::Integer(n) => Json::from(*n),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Boolean(b) => Json::Bool(*b),
        Value::Datetime(d) => Json::String(d.to_string()),
        Value::Array(a) => Json::Array(a.iter().map(typed_json).collect()),
        Value::Table(t) => {
            Json::Object(t.iter().map(|(k, v)| (k.clone(), typed_json(v))).collect())
        }
    }
}

fn public_keys(v: Option<&Value>, p: &mut Problems) -> Vec<PublicKey> {
    let Some(v) = v else { return Vec::new() };
    let Some(list) = v.as_array() else {
        p.at(
            "public_keys",
            "must be a list of tables ([[aws.public_keys]])",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = format!("public_keys[{i}]");
        let Some(t) = v.as_table() else {
            p.at(&key, "must be a table");
            continue;
        };
        p.unknown(t, &key, &["name", "openssh_key"]);
        let name = t.get("name").and_then(Value::as_str).unwrap_or("");
        // The listing line is `<index>=<name>`: a name is one line of printable text.
        if name.is_empty() || name.contains('\n') || name.chars().any(char::is_control) {
            p.at(
                &format!("{key}.name"),
                "is required: the key pair's name, one line",
            );
        }
        let openssh_key = t.get("openssh_key").and_then(Value::as_str).unwrap_or("");
        let fields: Vec<&str> = openssh_key.split_whitespace().collect();
        if fields.len() < 2 || openssh_key.contains('\n') || !fields[0].contains('-') {
            p.at(
                &format!("{key}.openssh_key"),
                "is required: one line as in authorized_keys (\"ssh-ed25519 AAAA... comment\")",
            );
        }
        out.push(PublicKey {
            name: name.to_owned(),
            openssh_key: openssh_key.to_owned(),
        });
    }
    out
}

fn roles(v: Option<&Value>, p: &mut Problems) -> Vec<Role> {
    let Some(v) = v else { return Vec::new() };
    let Some(list) = v.as_array() else {
        p.at("roles", "must be a list of tables ([[aws.roles]])");
        return Vec::new();
    };
    let mut out: Vec<Role> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = format!("roles[{i}]");
        let Some(role) = role(v, &key, p) else {
            continue;
        };
        if out.iter().any(|r| r.name.eq_ignore_ascii_case(&role.name)) {
            p.at(
                &format!("{key}.name"),
                "is used by another role (IAM names ignore case)",
            );
        }
        if role.default && out.iter().any(|r| r.default) {
            p.at(
                &format!("{key}.default"),
                "another role is the default already (an instance has one role)",
            );
        }
        out.push(role);
    }
    out
}

fn role(v: &Value, key: &str, p: &mut Problems) -> Option<Role> {
    let Some(t) = v.as_table() else {
        p.at(key, "must be a table");
        return None;
    };
    p.unknown(
        t,
        key,
        &[
            "name",
            "default",
            "instance_profile_arn",
            "instance_profile_id",
            "credentials_lifetime_secs",
            "access_key_id",
            "secret_access_key",
            "session_token",
        ],
    );
    let mut required = |field: &str, why: &str| -> Option<String> {
        match t.get(field).map(Value::as_str) {
            Some(Some(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(s.to_owned())
            }
            Some(_) => {
                p.at(
                    &format!("{key}.{field}"),
                    "must be non-empty printable ASCII without spaces",
                );
                None
            }
            None => {
                p.at(&format!("{key}.{field}"), format!("is required ({why})"));
                None
            }
        }
    };
    let name = required("name", "the role name under iam/security-credentials/");
    let arn = required("instance_profile_arn", "served in iam/info");
    let id = required("instance_profile_id", "served in iam/info");
    if let Some(n) = &name {
        let ok = n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
        if !ok {
            p.at(
                &format!("{key}.name"),
                "an IAM role name has at most 64 of A-Z a-z 0-9 + = , . @ _ -",
            );
        }
    }
    let default = match t.get("default") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(_) => {
            p.at(&format!("{key}.default"), "must be true or false");
            false
        }
    };
    let lifetime = match t.get("credentials_lifetime_secs") {
        None => Some(DEFAULT_CREDENTIALS_LIFETIME_SECS),
        Some(v) => match v.as_integer().and_then(|n| u64::try_from(n).ok()) {
            Some(n)
                if (MIN_CREDENTIALS_LIFETIME_SECS..=MAX_CREDENTIALS_LIFETIME_SECS).contains(&n) =>
            {
                Some(n)
            }
            _ => {
                p.at(
                    &format!("{key}.credentials_lifetime_secs"),
                    format!(
                        "must be a whole number from {MIN_CREDENTIALS_LIFETIME_SECS} to {MAX_CREDENTIALS_LIFETIME_SECS}"
                    ),
                );
                None
            }
        },
    };
    let keys = static_keys(t, key, p);
    Some(Role {
        name: name?,
        default,
        instance_profile_arn: arn?,
        instance_profile_id: id?,
        credentials_lifetime: Duration::from_secs(lifetime?),
        keys: keys.ok()?,
    })
}

/// `Ok(None)`: generated credentials.
fn static_keys(t: &Table, key: &str, p: &mut Problems) -> Result<Option<StaticKeys>, ()> {
    let mut source = |field: &str| -> Result<Option<KeySource>, ()> {
        let here = format!("{key}.{field}");
        match t.get(field) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) => {
                Ok(Some(KeySource::Value(s.clone())))
            }
            Some(Value::Table(e)) if e.len() == 1 => match e.get("env").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => Ok(Some(KeySource::Env(name.to_owned()))),
                _ => {
                    p.at(&here, "must be a string or { env = \"NAME\" }");
                    Err(())
                }
            },
            Some(_) => {
                p.at(
                    &here,
                    "must be a string (printable ASCII without spaces) or { env = \"NAME\" }",
                );
                Err(())
            }
        }
    };
    let access = source("access_key_id");
    let secret = source("secret_access_key");
    let token = source("session_token");
    match (access?, secret?, token?) {
        (None, None, None) => Ok(None),
        (Some(access_key_id), Some(secret_access_key), session_token) => Ok(Some(StaticKeys {
            access_key_id,
            secret_access_key,
            session_token,
        })),
        _ => {
            p.at(
                &format!("{key}.access_key_id"),
                "access_key_id and secret_access_key go together (session_token is optional)",
            );
            Err(())
        }
    }
}

/// Problems found so far, each `key: what is wrong`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn at(&mut self, key: &str, what: impl fmt::Display) {
        self.0.push(format!("{key}: {what}"));
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<String>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    fn unknown(&mut self, t: &Table, prefix: &str, known: &[&str]) {
        for k in t.keys().filter(|k| !known.contains(&k.as_str())) {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            self.at(&key, format!("unknown key (known: {})", known.join(", ")));
        }
    }
}
