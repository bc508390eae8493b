//! `instance/guest-attributes/`: values the guest writes for others to read (cloud-init
//! and Google's guest agent publish the VM's SSH host keys under `hostkeys/`). Held in
//! memory, shared by every caller of the instance, gone on restart — as on a VM, where
//! they live as long as the instance. Served only when the metadata key
//! `enable-guest-attributes` is `TRUE` (the instance's, else the project's), as GCE does.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::config::GceConfig;

/// Most attributes held at once, and the longest value: bounds the memory a guest can
/// take (GCE bounds both too).
const MAX_ATTRIBUTES: usize = 1024;
const MAX_VALUE_BYTES: usize = 16 * 1024;

/// What a guest-attributes request comes to, before the headers every answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A listing or a value, as text.
    Text(String),
    /// A write or a delete took effect.
    Done,
    NotFound,
    /// The metadata key `enable-guest-attributes` is not `TRUE`.
    Disabled,
    Bad(String),
    MethodNotAllowed,
}

/// The attributes, by namespace and key.
#[derive(Debug, Default)]
pub struct GuestAttributes {
    held: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

impl GuestAttributes {
    /// Carries out one request for `rest`, the path below `guest-attributes/`.
    pub fn handle(
        &self,
        cfg: &GceConfig,
        method: &Method,
        rest: &[String],
        body: &Bytes,
    ) -> Outcome {
        if !enabled(cfg) {
            return Outcome::Disabled;
        }
        if let Some(bad) = rest.iter().find(|s| !is_name(s)) {
            return Outcome::Bad(format!(
                "{bad:?} is not a namespace or key (letters, digits, '-', '_')"
            ));
        }
        let mut held = self.held.lock().expect("guest attributes lock");
        match (method, rest) {
            (&Method::GET | &Method::HEAD, []) => {
                Outcome::Text(held.keys().map(|n| format!("{n}/\n")).collect())
            }
            (&Method::GET | &Method::HEAD, [ns]) => match held.get(ns) {
                Some(keys) => Outcome::Text(keys.keys().map(|k| format!("{k}\n")).collect()),
                None => Outcome::NotFound,
            },
            (&Method::GET | &Method::HEAD, [ns, key]) => held
                .get(ns)
                .and_then(|keys| keys.get(key))
                .map_or(Outcome::NotFound, |v| Outcome::Text(v.clone())),
            (&Method::PUT, [ns, key]) => {
                let Ok(value) = std::str::from_utf8(body) else {
                    return Outcome::Bad("the value is not UTF-8 text".into());
                };
                if value.len() > MAX_VALUE_BYTES {
                    return Outcome::Bad(format!("a value holds at most {MAX_VALUE_BYTES} bytes"));
                }
                let count: usize = held.values().map(BTreeMap::len).sum();
                let new = held.get(ns).is_none_or(|keys| !keys.contains_key(key));
                if new && count >= MAX_ATTRIBUTES {
                    return Outcome::Bad(format!("at most {MAX_ATTRIBUTES} guest attributes"));
                }
                held.entry(ns.clone())
                    .or_default()
                    .insert(key.clone(), value.to_owned());
                Outcome::Done
            }
            (&Method::PUT, _) => {
                Outcome::Bad("a guest attribute is written at <namespace>/<key>".into())
            }
            (&Method::DELETE, [ns, key]) => {
                let Some(keys) = held.get_mut(ns) else {
                    return Outcome::NotFound;
                };
                if keys.remove(key).is_none() {
                    return Outcome::NotFound;
                }
                if keys.is_empty() {
                    held.remove(ns);
                }
                Outcome::Done
            }
            (&Method::DELETE, _) => {
                Outcome::Bad("a guest attribute is deleted at <namespace>/<key>".into())
            }
            _ => Outcome::MethodNotAllowed,
        }
    }
}

/// `enable-guest-attributes`: the instance's value, else the project's.
fn enabled(cfg: &GceConfig) -> bool {
    cfg.instance
        .attributes
        .get("enable-guest-attributes")
        .or_else(|| cfg.project_attributes.get("enable-guest-attributes"))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the methods allowed here are, for `Allow`.
pub const ALLOW: &str = "GET, HEAD, PUT, DELETE";

/// The status for an outcome.
pub fn status(o: &Outcome) -> StatusCode {
    match o {
        Outcome::Text(_) | Outcome::Done => StatusCode::OK,
        Outcome::NotFound => StatusCode::NOT_FOUND,
        Outcome::Disabled => StatusCode::FORBIDDEN,
        Outcome::Bad(_) => StatusCode::BAD_REQUEST,
        Outcome::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
    }
}
