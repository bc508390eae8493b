//! The `[azure]` section of the emulator file, validated once into what the service
//! serves: every problem is reported at once, each naming its key below `azure.`.

use std::time::Duration;

use serde_json::Value as Json;
use toml::{Table, Value};

use super::instance;
use crate::emulator::tokens::TokenSource;

/// Token lifetime when an identity names none: what real managed-identity tokens
/// carry (`expires_in` 86399, a day less a second).
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 86_399;
/// Shortest lifetime: half of it (the least any answer has left) must stay beyond
/// MSAL's five-minute "about to expire" margin.
const MIN_TOKEN_LIFETIME_SECS: u64 = 900;
/// Longest lifetime (a week): bounds the arithmetic, and no real token lives longer.
const MAX_TOKEN_LIFETIME_SECS: u64 = 7 * 86_400;
/// Where a token command takes the requested resource.
pub const RESOURCE_PLACEHOLDER: &str = "{resource}";

/// The `[azure]` section: what the emulated Azure IMDS serves.
#[derive(Debug, Clone, PartialEq)]
pub struct AzureConfig {
    /// Accepted `api-version` values, oldest first (as `/metadata/versions` lists them):
    /// every documented one unless the file narrows them.
    pub api_versions: Vec<String>,
    /// What `extended=true` adds to `/metadata/instance` (from 2021-03-01), every
    /// primitive a string.
    pub extended: Json,
    /// Served by `/metadata/identity/info`.
    pub tenant_id: String,
    /// `/metadata/instance`, every primitive already a string.
    pub instance: Json,
    /// The system-assigned identity, if the VM has one.
    pub system: Option<ManagedIdentity>,
    /// User-assigned identities.
    pub user_assigned: Vec<ManagedIdentity>,
    /// `/metadata/scheduledevents` as the file starts it.
    pub scheduled_events: ScheduledEvents,
}

/// One managed identity: how requests name it and where its tokens come from.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedIdentity {
    pub client_id: String,
    pub object_id: Option<String>,
    pub msi_res_id: Option<String>,
    pub token_lifetime: Duration,
    /// `Command` arguments may hold [`RESOURCE_PLACEHOLDER`].
    pub token: TokenSource,
}

/// The scheduled-events document the file starts with; approvals (POST) change the
/// served copy, not this.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledEvents {
    pub document_incarnation: u64,
    /// Each event as JSON, types as in the file (real events mix strings and numbers).
    pub events: Vec<Json>,
}

impl AzureConfig {
    /// Validates the section; every problem, each naming its key below `azure.`.
    pub fn from_value(
        raw: Value,
        _env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<String>> {
        let mut p = Problems::default();
        let Some(top) = p.table(&raw, "") else {
            return Err(vec!["must be a table".into()]);
        };
        p.unknown(
            top,
            "",
            &[
                "api_versions",
                "tenant_id",
                "instance",
                "extended",
                "identity",
                "scheduled_events",
            ],
        );
        let api_versions = api_versions(top, &mut p);
        let tenant_id = match top.get("tenant_id") {
            None => {
                p.at(
                    "tenant_id",
                    "is required (served by /metadata/identity/info)",
                );
                String::new()
            }
            Some(v) => p.string(v, "tenant_id").unwrap_or_default(),
        };
        let instance = match top.get("instance") {
            None => instance::document(&Table::new()),
            Some(v) => match p.table(v, "instance") {
                Some(t) => instance::document(t),
                None => Json::Null,
            },
        };
        let extended = match top.get("extended") {
            None => serde_json::json!({"compute": {"ppsType": "None"}}),
            Some(v) => match p.table(v, "extended") {
                Some(t) => instance::stringified(&Value::Table(t.clone())),
                None => Json::Null,
            },
        };
        let (system, user_assigned) = identities(top.get("identity"), &mut p);
        let scheduled_events = scheduled_events(top.get("scheduled_events"), &mut p);
        p.finish(Self {
            api_versions,
            extended,
            tenant_id,
            instance,
            system,
            user_assigned,
            scheduled_events,
        })
    }

    /// The newest three versions, newest first: what a bad `api-version` answer names.
    pub fn newest_versions(&self) -> Vec<&str> {
        self.api_versions
            .iter()
            .rev()
            .take(3)
            .map(String::as_str)
            .collect()
    }

    /// Every identity, the system-assigned one first.
    pub fn identities(&self) -> impl Iterator<Item = &ManagedIdentity> {
        self.system.iter().chain(self.user_assigned.iter())
    }
}

fn api_versions(top: &Table, p: &mut Problems) -> Vec<String> {
    let Some(v) = top.get("api_versions") else {
        return super::versions::DOCUMENTED
            .iter()
            .map(|v| (*v).to_owned())
            .collect();
    };
    let Some(list) = v.as_array() else {
        p.at("api_versions", "must be a list of strings");
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = format!("api_versions[{i}]");
        match v.as_str() {
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) => {
                if out.iter().any(|o| o == s) {
                    p.at(&key, format!("{s:?} is listed twice"));
                } else {
                    out.push(s.to_owned());
                }
            }
            _ => p.at(&key, "must be a non-empty string without spaces"),
        }
    }
    if list.is_empty() {
        p.at("api_versions", "must name at least one version");
    }
    // Dated versions sort by their text; the newest is last.
    out.sort();
    out
}

fn identities(
    v: Option<&Value>,
    p: &mut Problems,
) -> (Option<ManagedIdentity>, Vec<ManagedIdentity>) {
    let Some(v) = v else {
        return (None, Vec::new());
    };
    let Some(t) = p.table(v, "identity") else {
        return (None, Vec::new());
    };
    p.unknown(t, "identity", &["system", "user_assigned"]);
    let system = t
        .get("system")
        .and_then(|v| identity(v, "identity.system", false, p));
    let mut user = Vec::new();
    if let Some(v) = t.get("user_assigned") {
        match v.as_array() {
            Some(list) => {
                for (i, v) in list.iter().enumerate() {
                    if let Some(id) = identity(v, &format!("identity.user_assigned[{i}]"), true, p)
                    {
                        user.push(id);
                    }
                }
            }
            None => p.at("identity.user_assigned", "must be a list of tables"),
        }
    }
    // A request names an identity by any of its ids: two identities sharing one would
    // make the choice ambiguous.
    let all: Vec<(String, &ManagedIdentity)> = system
        .iter()
        .map(|i| ("identity.system".to_owned(), i))
        .chain(
            user.iter()
                .enumerate()
                .map(|(n, i)| (format!("identity.user_assigned[{n}]"), i)),
        )
        .collect();
    for (n, (key, a)) in all.iter().enumerate() {
        for (_, b) in &all[..n] {
            for (field, x, y) in [
                ("client_id", Some(&a.client_id), Some(&b.client_id)),
                ("object_id", a.object_id.as_ref(), b.object_id.as_ref()),
                ("msi_res_id", a.msi_res_id.as_ref(), b.msi_res_id.as_ref()),
            ] {
                if let (Some(x), Some(y)) = (x, y) {
                    if x.eq_ignore_ascii_case(y) {
                        p.at(
                            &format!("{key}.{field}"),
                            "is used by another identity (ids compare without case)",
                        );
                    }
                }
            }
        }
    }
    (system, user)
}

fn identity(
    v: &Value,
    key: &str,
    user_assigned: bool,
    p: &mut Problems,
) -> Option<ManagedIdentity> {
    let t = p.table(v, key)?;
    p.unknown(
        t,
        key,
        &[
            "client_id",
            "object_id",
            "msi_res_id",
            "token_lifetime_secs",
            "token",
        ],
    );
    let id = |p: &mut Problems, field: &str| -> Option<String> {
        let k = format!("{key}.{field}");
        let s = p.string(t.get(field)?, &k)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
            p.at(&k, "must be non-empty printable ASCII without spaces");
            return None;
        }
        Some(s)
    };
    let client_id = id(p, "client_id");
    if t.get("client_id").is_none() {
        p.at(
            &format!("{key}.client_id"),
            "is required (token answers carry it)",
        );
    }
    let object_id = id(p, "object_id");
    let msi_res_id = id(p, "msi_res_id");
    if msi_res_id.is_some() && !user_assigned {
        p.at(
            &format!("{key}.msi_res_id"),
            "belongs to user-assigned identities only",
        );
    }
    let lifetime = match t.get("token_lifetime_secs") {
        None => Some(DEFAULT_TOKEN_LIFETIME_SECS),
        Some(v) => p.u64_in(
            v,
            &format!("{key}.token_lifetime_secs"),
            MIN_TOKEN_LIFETIME_SECS..=MAX_TOKEN_LIFETIME_SECS,
        ),
    };
    let token = match t.get("token") {
        None => Some(TokenSource::Generated),
        Some(v) => match v.clone().try_into::<TokenSource>() {
            Ok(s) => match s.problem() {
                Some(why) => {
                    p.at(&format!("{key}.token"), why);
                    None
                }
                None => Some(s),
            },
            Err(_) => {
                p.at(
                    &format!("{key}.token"),
                    "must be a string, { env = \"NAME\" } or { command = [\"program\", ...] }",
                );
                None
            }
        },
    };
    Some(ManagedIdentity {
        client_id: client_id?,
        object_id,
        msi_res_id,
        token_lifetime: Duration::from_secs(lifetime?),
        token: token?,
    })
}

fn scheduled_events(v: Option<&Value>, p: &mut Problems) -> ScheduledEvents {
    let mut out = ScheduledEvents {
        document_incarnation: 1,
        events: Vec::new(),
    };
    let Some(t) = v.and_then(|v| p.table(v, "scheduled_events")) else {
        return out;
    };
    p.unknown(t, "scheduled_events", &["document_incarnation", "events"]);
    if let Some(v) = t.get("document_incarnation") {
        if let Some(n) = p.u64_in(
            v,
            "scheduled_events.document_incarnation",
            0..=u32::MAX as u64,
        ) {
            out.document_incarnation = n;
        }
    }
    let Some(v) = t.get("events") else {
        return out;
    };
    let Some(list) = v.as_array() else {
        p.at("scheduled_events.events", "must be a list of tables");
        return out;
    };
    let mut ids: Vec<String> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = format!("scheduled_events.events[{i}]");
        let Some(e) = p.table(v, &key) else { continue };
        match e.get("EventId").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => {
                if ids.iter().any(|o| o.eq_ignore_ascii_case(id)) {
                    p.at(&format!("{key}.EventId"), "is used by another event");
                }
                ids.push(id.to_owned());
            }
            _ => p.at(
                &format!("{key}.EventId"),
                "is required (a non-empty string; approvals name it)",
            ),
        }
        out.events.push(instance::typed_json(v));
    }
    out
}

/// Problems found so far, each `key: what is wrong`.
#[derive(Default)]
pub(super) struct Problems(Vec<String>);

impl Problems {
    pub(super) fn at(&mut self, key: &str, what: impl std::fmt::Display) {
        self.0.push(format!("{key}: {what}"));
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<String>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    fn table<'a>(&mut self, v: &'a Value, key: &str) -> Option<&'a Table> {
        let t = v.as_table();
        if t.is_none() && !key.is_empty() {
            self.at(key, "must be a table");
        }
        t
    }

    fn unknown(&mut self, t: &Table, prefix: &str, known: &[&str]) {
        for k in t.keys() {
            if !known.contains(&k.as_str()) {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                self.at(&key, format!("unknown key (known: {})", known.join(", ")));
            }
        }
    }

    fn string(&mut self, v: &Value, key: &str) -> Option<String> {
        let s = v.as_str().map(str::to_owned);
        if s.is_none() {
            self.at(key, "must be a string");
        }
        s
    }

    fn u64_in(
        &mut self,
        v: &Value,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<u64> {
        match v.as_integer().and_then(|n| u64::try_from(n).ok()) {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                self.at(
                    key,
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }
}
