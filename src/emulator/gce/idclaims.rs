//! The claims of the ID tokens the emulator signs: who the token is for and whom it
//! names, and with `format=full` the project and instance, as Compute Engine fills
//! them from the VM's own values.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::config::{GceConfig, ServiceAccount};
use super::idtoken::{Format, IdRequest};

/// The claims of an ID token for `account`, issued at `now`. Pure.
pub fn claims(
    cfg: &GceConfig,
    account: &ServiceAccount,
    req: &IdRequest,
    now: SystemTime,
) -> Value {
    let identity = cfg.identity.as_ref();
    let issuer = identity.map(|i| i.issuer.as_str()).unwrap_or_default();
    let lifetime = identity.map(|i| i.lifetime.as_secs()).unwrap_or_default();
    let iat = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut c = Map::new();
    c.insert("aud".into(), json!(req.audience));
    c.insert("azp".into(), json!(account.unique_id));
    c.insert("email".into(), json!(account.email));
    c.insert("email_verified".into(), json!(true));
    c.insert("exp".into(), json!(iat + lifetime));
    c.insert("iat".into(), json!(iat));
    c.insert("iss".into(), json!(issuer));
    c.insert("sub".into(), json!(account.unique_id));
    if req.format == Format::Full {
        let inst = &cfg.instance;
        let mut ce = Map::new();
        ce.insert("instance_id".into(), json!(inst.id.to_string()));
        ce.insert("instance_name".into(), json!(inst.name));
        ce.insert("project_id".into(), json!(cfg.project_id));
        ce.insert("project_number".into(), json!(cfg.numeric_project_id));
        ce.insert("zone".into(), json!(inst.zone));
        if let Some(t) = inst.creation_timestamp {
            ce.insert("instance_creation_timestamp".into(), json!(t));
        }
        if req.licenses {
            ce.insert("license_id".into(), json!(inst.licenses));
        }
        c.insert("google".into(), json!({ "compute_engine": ce }));
    }
    Value::Object(c)
}
