//! `/metadata/identity/oauth2/token`: which identity a request names, and the token
//! answer as azure-identity, MSAL and the Rust `azure_identity` crate read it (every
//! number a string; `expires_on` is what the Rust crate requires).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};

use super::config::{AzureConfig, ManagedIdentity, RESOURCE_PLACEHOLDER};
use super::query::Query;
use crate::emulator::tokens::{Issued, TokenCache, TokenError, TokenSource};
use crate::providers::identity::AzureIdentity;

/// Longest `resource` accepted (real resource URIs are far shorter).
const MAX_RESOURCE_BYTES: usize = 2048;
/// The identity parameters, as requests spell them; `mi_res_id` is App Service's
/// spelling of `msi_res_id`, accepted as the same.
const ID_PARAMS: [&str; 4] = ["client_id", "object_id", "msi_res_id", "mi_res_id"];

/// The body IMDS answers when no configured identity fits the request.
pub const IDENTITY_NOT_FOUND: &str = "Identity not found";
/// The body IMDS answers when a request names none and several user-assigned ones exist.
pub const MULTIPLE_IDENTITIES: &str = "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request";

/// A token request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub resource: String,
    /// The identity parameter, if any: its name as sent and the identity it names.
    pub named: Option<(&'static str, AzureIdentity)>,
    pub bypass_cache: bool,
}

impl TokenRequest {
    /// Reads the token parameters; an error is the `error_description` of a 400
    /// `invalid_request`.
    pub fn parse(q: &Query) -> Result<Self, String> {
        let resource = match q.get("resource") {
            None | Some("") => {
                return Err("Required query variable 'resource' is missing".into());
            }
            Some(r) if r.len() > MAX_RESOURCE_BYTES || r.chars().any(char::is_control) => {
                return Err("Query variable 'resource' is not a valid resource".into());
            }
            Some(r) => r.to_owned(),
        };
        let given: Vec<(&'static str, &str)> = ID_PARAMS
            .iter()
            .filter_map(|p| q.get(p).map(|v| (*p, v)))
            .collect();
        let named = match given.as_slice() {
            [] => None,
            [(param, value)] => {
                let value = Some((*value).to_owned());
                let id = match *param {
                    "client_id" => AzureIdentity {
                        client_id: value,
                        ..Default::default()
                    },
                    "object_id" => AzureIdentity {
                        object_id: value,
                        ..Default::default()
                    },
                    _ => AzureIdentity {
                        msi_res_id: value,
                        ..Default::default()
                    },
                };
                Some((*param, id))
            }
            _ => {
                return Err(
                    "Only one of client_id, object_id and msi_res_id may be specified".into(),
                )
            }
        };
        let bypass_cache = match q.get("bypass_cache") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(_) => return Err("Query variable 'bypass_cache' must be 'true'".into()),
        };
        Ok(Self {
            resource,
            named,
            bypass_cache,
        })
    }
}

/// How a configured identity is named (for [`AzureIdentity::is_named_by`]).
fn names(id: &ManagedIdentity) -> AzureIdentity {
    AzureIdentity {
        client_id: Some(id.client_id.clone()),
        object_id: id.object_id.clone(),
        msi_res_id: id.msi_res_id.clone(),
    }
}

/// The identity a request gets. `asked` is the request's identity parameter;
/// `pinned` the identity the caller's labels pin it to (the proxy has normally put it
/// in the query already; checked again here so a mismatch can never get a token).
/// An error is the `error_description` of a 400 `invalid_request`.
pub fn select<'a>(
    cfg: &'a AzureConfig,
    asked: Option<&AzureIdentity>,
    pinned: Option<&AzureIdentity>,
) -> Result<&'a ManagedIdentity, &'static str> {
    let named_by = |want: &AzureIdentity| cfg.identities().find(|i| names(i).is_named_by(want));
    match (asked, pinned) {
        (Some(a), pinned) => {
            let id = named_by(a).ok_or(IDENTITY_NOT_FOUND)?;
            match pinned {
                Some(p) if !names(id).is_named_by(p) => Err(IDENTITY_NOT_FOUND),
                _ => Ok(id),
            }
        }
        (None, Some(p)) => named_by(p).ok_or(IDENTITY_NOT_FOUND),
        (None, None) => match (&cfg.system, cfg.user_assigned.as_slice()) {
            (Some(system), _) => Ok(system),
            (None, [only]) => Ok(only),
            (None, []) => Err(IDENTITY_NOT_FOUND),
            (None, _) => Err(MULTIPLE_IDENTITIES),
        },
    }
}

/// The 200 body: every number a string; `expires_on` = now + `expires_in`.
pub fn token_body(id: &ManagedIdentity, req: &TokenRequest, t: &Issued, now: SystemTime) -> Json {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expires_in = t.expires_in(now);
    let mut body = json!({
        "access_token": t.value,
        "refresh_token": "",
        "expires_in": expires_in.to_string(),
        "expires_on": (secs(now) + expires_in).to_string(),
        "not_before": secs(t.issued_at).to_string(),
        "ext_expires_in": expires_in.to_string(),
        "resource": req.resource,
        "token_type": "Bearer",
        "client_id": id.client_id,
    });
    // The swagger echoes the object or resource id the request named.
    match &req.named {
        Some(("object_id", a)) => body["object_id"] = json!(a.object_id),
        Some(("msi_res_id" | "mi_res_id", a)) => body["msi_res_id"] = json!(a.msi_res_id),
        _ => {}
    }
    body
}

/// The claims of a generated token, as Entra ID puts them in a managed identity's v1
/// access token: who it is for (`aud`), who issued it (`iss`, `tid`), whose it is
/// (`oid`, `sub`, `appid`, `xms_mirid`) and when it holds (`iat`, `nbf`, `exp`).
/// `t.value` (random) is the token's unique id (`uti`).
pub fn claims(cfg: &AzureConfig, id: &ManagedIdentity, resource: &str, t: &Issued) -> Json {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let issuer = format!("https://sts.windows.net/{}/", cfg.tenant_id);
    let oid = id
        .object_id
        .clone()
        .unwrap_or_else(|| derived_uuid(&id.client_id));
    // A system identity's resource is the VM; a user-assigned one's is its own.
    let mirid = id.msi_res_id.clone().unwrap_or_else(|| {
        cfg.instance["compute"]["resourceId"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    json!({
        "aud": resource,
        "iss": issuer,
        "iat": secs(t.issued_at),
        "nbf": secs(t.issued_at),
        "exp": secs(t.expires_at),
        "aio": "E2ZgYJg2WpTPnd/eOGJemMb5+PMXAQ==",
        "appid": id.client_id,
        "appidacr": "2",
        "idp": issuer,
        "idtyp": "app",
        "oid": oid,
        "rh": "0.AAAA",
        "sub": oid,
        "tid": cfg.tenant_id,
        "uti": &t.value[..t.value.len().min(22)],
        "ver": "1.0",
        "xms_mirid": mirid,
    })
}

/// A stable UUID-shaped id from a text (an identity's object id when the file names
/// none).
fn derived_uuid(from: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(from.to_ascii_lowercase().as_bytes());
    let x: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// The token source for one request: a command's `{resource}` arguments take the
/// requested resource (so `az account get-access-token --resource {resource}` gives
/// a real token for it). `None`: the resource cannot be passed to a command (it
/// would read as an option).
pub fn source_for(src: &TokenSource, resource: &str) -> Option<TokenSource> {
    match src {
        TokenSource::Command { command }
            if command.iter().any(|a| a.contains(RESOURCE_PLACEHOLDER)) =>
        {
            if resource.starts_with('-') {
                return None;
            }
            Some(TokenSource::Command {
                command: command
                    .iter()
                    .map(|a| a.replace(RESOURCE_PLACEHOLDER, resource))
                    .collect(),
            })
        }
        other => Some(other.clone()),
    }
}

/// Tokens per (identity, resource): the shared cache, plus the tokens `bypass_cache`
/// fetched, which replace the cached one for later requests until it is renewed.
#[derive(Debug)]
pub struct Tokens {
    cache: Arc<TokenCache>,
    fresh: Mutex<HashMap<String, Issued>>,
}

impl Tokens {
    /// Uses the emulator's shared cache (which keys by identity and resource).
    pub fn new(cache: Arc<TokenCache>) -> Self {
        Self {
            cache,
            fresh: Mutex::new(HashMap::new()),
        }
    }

    /// The token for `identity` and `resource`. With `bypass`, one fetched afresh from
    /// the source (a new random token, the command run again, the variable read again;
    /// a literal is the same value with a new lifetime).
    pub async fn get(
        &self,
        identity: &ManagedIdentity,
        resource: &str,
        source: &TokenSource,
        bypass: bool,
        now: SystemTime,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<Issued, TokenError> {
        // Client ids are unique (without case) and identify the identity; two
        // identities or two resources never share a key.
        let key = format!(
            "azure\u{0}{}\u{0}{resource}",
            identity.client_id.to_ascii_lowercase()
        );
        let fresh_key = format!("{key}\u{0}{source:?}");
        let life = identity.token_lifetime;
        if bypass {
            let t = TokenCache::default()
                .get(&key, source, life, now, env)
                .await?;
            let mut fresh = self.fresh.lock().expect("fresh token lock");
            fresh.retain(|_, t| t.expires_at > now);
            fresh.insert(fresh_key, t.clone());
            return Ok(t);
        }
        let cached = self.cache.get(&key, source, life, now, env).await?;
        let mut fresh = self.fresh.lock().expect("fresh token lock");
        let usable = |f: &Issued| {
            f.issued_at > cached.issued_at && f.issued_at <= now && f.expires_at >= now + life / 2
        };
        match fresh.get(&fresh_key) {
            Some(f) if usable(f) => Ok(f.clone()),
            Some(_) => {
                fresh.remove(&fresh_key);
                Ok(cached)
            }
            None => Ok(cached),
        }
    }
}
