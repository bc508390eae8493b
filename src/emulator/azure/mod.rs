//! The emulated Azure Instance Metadata Service, as azure-identity, MSAL and the Rust
//! `azure_identity` crate expect it (research/protocols.md §1, §4.2).
//!
//! The proxy has already required `Metadata: true` and refused `X-Forwarded-For`.
//! Paths match without case. Every answer is `application/json; charset=utf-8`
//! except a `format=text` answer (`text/plain; charset=utf-8`). Choices where the
//! real service is undocumented:
//! - a query parameter named twice (after decoding and case folding) → 400:
//!   `{"error":"invalid_request","error_description":"Duplicate query parameter '<name>'"}`
//!   on identity paths, `{"error":"Bad request. Duplicate query parameter '<name>'"}`
//!   elsewhere;
//! - a leaf of the instance document without `format=text` → 400
//!   `{"error":"Bad request. Leaf nodes can only be requested with format=text"}`;
//!   `format=text` on a list or object lists its children one a line (`name/` for
//!   those with children), which is how IMDS lets a caller drill down;
//! - unknown paths → 404 `{"error":"Not found"}`; a known path with another method →
//!   405 with `Allow`;
//! - every documented `api-version` (or those the file names) is accepted on every
//!   path; the instance document shows the `compute` fields of the version asked
//!   for, and with `extended=true` (from 2021-03-01) the `extended` object;
//! - `/metadata/attested/document` is signed by the emulator's instance key, whose
//!   certificate is published at `/imds-proxy/certificate.pem` (the real one chains
//!   to Microsoft's CA, which the emulator cannot sign for).

mod attested;
mod config;
mod events;
mod identity;
mod instance;
mod query;
#[cfg(test)]
mod tests;
pub mod versions;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value as Json};

use super::tokens::TokenCache;
use super::{Ctx, EmuRequest};
pub use config::{AzureConfig, ManagedIdentity, ScheduledEvents, DEFAULT_TOKEN_LIFETIME_SECS};
use instance::{Format, Rendered};
use query::Query;

const JSON: &str = "application/json; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
/// IMDS's answer to a missing or unknown `api-version` (with `newest-versions`).
pub const BAD_API_VERSION: &str = "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds";

/// State of the emulated service: tokens and the scheduled events as served.
pub struct Azure {
    tokens: identity::Tokens,
    events: events::Events,
}

/// The endpoints, each with its error style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Versions,
    Instance,
    Token,
    Info,
    ScheduledEvents,
    Attested,
}

impl Route {
    /// Identity endpoints answer errors OAuth-style (`error` + `error_description`).
    fn oauth_errors(self) -> bool {
        matches!(self, Route::Token | Route::Info)
    }

    fn methods(self) -> &'static [Method] {
        match self {
            Route::ScheduledEvents => &[Method::GET, Method::POST],
            _ => &[Method::GET],
        }
    }
}

impl Azure {
    /// Uses `tokens`, the emulator's shared token cache, for access tokens.
    pub fn new(tokens: Arc<TokenCache>) -> Self {
        Self {
            tokens: identity::Tokens::new(tokens),
            events: events::Events::default(),
        }
    }

    /// The answer to one request under `/metadata`.
    pub async fn answer(&self, ctx: &Ctx, req: &EmuRequest<'_>) -> Response<Full<Bytes>> {
        let Some(cfg) = ctx.config.azure.as_ref() else {
            return super::not_found();
        };
        let lower = req.path.lower();
        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
        let route = match lower.as_slice() {
            ["metadata", "versions"] => Route::Versions,
            ["metadata", "instance", ..] => Route::Instance,
            ["metadata", "identity", "oauth2", "token"] => Route::Token,
            ["metadata", "identity", "info"] => Route::Info,
            ["metadata", "scheduledevents"] => Route::ScheduledEvents,
            ["metadata", "attested", "document"] => Route::Attested,
            _ => return json_answer(StatusCode::NOT_FOUND, &json!({"error": "Not found"})),
        };
        if !route.methods().contains(req.method) {
            let allow: Vec<&str> = route.methods().iter().map(Method::as_str).collect();
            let mut r = error(
                route,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            );
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_str(&allow.join(", ")).expect("method names are valid"),
            );
            return r;
        }
        let q = match Query::parse(req.query) {
            Ok(q) => q,
            Err(e) => {
                return error(
                    route,
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &e.to_string(),
                )
            }
        };
        if route != Route::Versions {
            let known = q
                .get("api-version")
                .is_some_and(|v| cfg.api_versions.iter().any(|a| a == v));
            if !known {
                return json_answer(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": BAD_API_VERSION, "newest-versions": cfg.newest_versions()}),
                );
            }
        }
        match route {
            Route::Versions => {
                json_answer(StatusCode::OK, &json!({"apiVersions": cfg.api_versions}))
            }
            Route::Instance => instance_answer(cfg, &req.path.segments()[2..], &q),
            Route::Info => json_answer(StatusCode::OK, &json!({"tenantId": cfg.tenant_id})),
            Route::ScheduledEvents if *req.method == Method::POST => {
                match self.events.approve(&cfg.scheduled_events, req.body) {
                    Ok(()) => answer(StatusCode::OK, JSON, Bytes::new()),
                    Err(why) => json_answer(StatusCode::BAD_REQUEST, &json!({"error": why})),
                }
            }
            Route::ScheduledEvents => {
                json_answer(StatusCode::OK, &self.events.document(&cfg.scheduled_events))
            }
            Route::Token => self.token_answer(ctx, cfg, req, &q).await,
            Route::Attested => attested_answer(ctx, cfg, &q).await,
        }
    }

    async fn token_answer(
        &self,
        ctx: &Ctx,
        cfg: &AzureConfig,
        req: &EmuRequest<'_>,
        q: &Query,
    ) -> Response<Full<Bytes>> {
        let bad = |why: &str| {
            error(
                Route::Token,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                why,
            )
        };
        let treq = match identity::TokenRequest::parse(q) {
            Ok(t) => t,
            Err(why) => return bad(&why),
        };
        let asked = treq.named.as_ref().map(|(_, a)| a);
        let id = match identity::select(cfg, asked, req.identity.azure.as_ref()) {
            Ok(id) => id,
            Err(why) => return bad(why),
        };
        let Some(source) = identity::source_for(&id.token, &treq.resource) else {
            return bad("Query variable 'resource' is not a valid resource");
        };
        match self
            .tokens
            .get(
                id,
                &treq.resource,
                &source,
                treq.bypass_cache,
                ctx.now,
                &ctx.env,
            )
            .await
        {
            Ok(mut t) => {
                // A generated token is a JWT signed by the instance's key, with the
                // claims applications read; a token from the file, a variable or a
                // command is served as it came.
                if id.token == super::tokens::TokenSource::Generated {
                    match ctx.keys.get(&ctx.config.signing).await {
                        Ok(key) => {
                            t.value = key.jwt(&identity::claims(cfg, id, &treq.resource, &t));
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::errors::error_chain(&e), "cannot sign an emulated Azure token");
                            return error(
                                Route::Token,
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "unknown",
                                "Failed to retrieve token from the Active directory",
                            );
                        }
                    }
                }
                json_answer(
                    StatusCode::OK,
                    &identity::token_body(id, &treq, &t, ctx.now),
                )
            }
            Err(e) => {
                tracing::warn!(client_id = %id.client_id, error = %e, "emulated Azure token unavailable");
                error(
                    Route::Token,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unknown",
                    "Failed to retrieve token from the Active directory",
                )
            }
        }
    }
}

fn instance_answer(cfg: &AzureConfig, path: &[String], q: &Query) -> Response<Full<Bytes>> {
    let Some(format) = Format::parse(q.get("format")) else {
        return json_answer(
            StatusCode::BAD_REQUEST,
            &json!({"error": "Bad request. format must be json or text"}),
        );
    };
    let version = q.get("api-version").unwrap_or_default();
    let extended = match q.get("extended") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => {
            return json_answer(
                StatusCode::BAD_REQUEST,
                &json!({"error": "Bad request. extended must be true or false"}),
            )
        }
    };
    let doc = versioned(
        cfg,
        version,
        extended && version >= versions::EXTENDED_SINCE,
    );
    let Some(node) = instance::walk(&doc, path) else {
        return json_answer(StatusCode::NOT_FOUND, &json!({"error": "Not found"}));
    };
    match instance::render(node, format) {
        Rendered::Json(body) => answer(StatusCode::OK, JSON, Bytes::from(body)),
        Rendered::Text(body) => answer(StatusCode::OK, TEXT, Bytes::from(body)),
        Rendered::LeafNeedsText => json_answer(
            StatusCode::BAD_REQUEST,
            &json!({"error": "Bad request. Leaf nodes can only be requested with format=text"}),
        ),
    }
}

/// `/metadata/attested/document`: the VM's identity signed as PKCS#7 (the content
/// attached, the certificate in it), with the caller's `nonce` to show it is fresh.
async fn attested_answer(ctx: &Ctx, cfg: &AzureConfig, q: &Query) -> Response<Full<Bytes>> {
    let nonce = match q.get("nonce") {
        None => None,
        Some(n)
            if !n.is_empty() && n.len() <= 32 && n.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Some(n.to_owned())
        }
        Some(_) => {
            return json_answer(
                StatusCode::BAD_REQUEST,
                &json!({"error": "Bad request. nonce must be at most 32 letters and digits"}),
            )
        }
    };
    let content = attested::content(cfg, nonce.as_deref(), ctx.now);
    let signed = match ctx.keys.get(&ctx.config.signing).await {
        Ok(key) => key.pkcs7(content.to_string().as_bytes(), true),
        Err(e) => Err(e),
    };
    match signed {
        Ok(der) => {
            use base64::Engine;
            let signature = base64::engine::general_purpose::STANDARD.encode(der);
            json_answer(
                StatusCode::OK,
                &json!({"encoding": "pkcs7", "signature": signature}),
            )
        }
        Err(e) => {
            tracing::warn!(error = %crate::errors::error_chain(&e), "cannot sign the Azure attested document");
            json_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "Internal server error"}),
            )
        }
    }
}

/// The instance document as `version` serves it: fields (nested ones too) from the
/// version that brought them, and the `extended` object when asked for.
fn versioned(cfg: &AzureConfig, version: &str, extended: bool) -> Json {
    let mut doc = cfg.instance.clone();
    versions::shape(&mut doc, version);
    if extended {
        if let Json::Object(d) = &mut doc {
            d.insert("extended".into(), cfg.extended.clone());
        }
    }
    doc
}

/// An error in the endpoint's style: OAuth-style on identity paths, IMDS-style
/// (`{"error":"Bad request. …"}`) elsewhere.
fn error(route: Route, status: StatusCode, code: &str, description: &str) -> Response<Full<Bytes>> {
    let body = if route.oauth_errors() {
        json!({"error": code, "error_description": description})
    } else if status == StatusCode::BAD_REQUEST {
        json!({"error": format!("Bad request. {description}")})
    } else {
        json!({"error": description})
    };
    json_answer(status, &body)
}

fn json_answer(status: StatusCode, body: &Json) -> Response<Full<Bytes>> {
    answer(status, JSON, Bytes::from(body.to_string()))
}

fn answer(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .expect("static response parts are valid")
}
