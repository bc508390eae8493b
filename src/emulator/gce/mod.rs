//! The emulated GCE metadata server: the `/computeMetadata/v1/` tree from the config
//! file, access tokens and ID tokens per service account, `recursive`, `alt` and
//! `wait_for_change`, with the headers Google's clients look for on every answer.
//!
//! Choices where the real server's behaviour could not be confirmed:
//! - A directory asked for without its trailing slash answers `301` to the slash form
//!   (query kept), as the reference emulator does; clients follow it.
//! - `alt=text` of a recursive answer prints a `path value` line per value, paths
//!   relative to the directory asked for; a list prints a line per item.
//! - `alt=json` of a leaf is its JSON value (a string, or a number for numeric leaves);
//!   `alt=json` of a plain listing is a JSON array of the listed names.
//! - Only GET and HEAD are served (and PUT, DELETE on `instance/guest-attributes/`);
//!   other methods get `405` with `Allow`.

mod config;
mod fields;
mod guest;
mod idclaims;
pub mod idtoken;
mod instance;
mod query;
#[cfg(test)]
mod tests;
pub mod tree;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::tokens::TokenCache;
use super::{Ctx, EmuRequest};
use crate::errors::error_chain;
pub use config::{
    Disk, GceConfig, IdentityConfig, Instance, NetworkInterface, ServiceAccount, ACCESS_TOKEN_ENV,
    DEFAULT_TOKEN_LIFETIME, NUMERIC_PROJECT_ID_ENV, PROJECT_ID_ENV,
};
use idtoken::{IdKey, IdKeyError};
use query::{Alt, Query, QueryError, Wait};
use tree::{Dynamic, Node};

/// Where the emulator publishes the public half of its ID-token key (not part of
/// Google's tree, so it is listed nowhere).
pub const IDENTITY_KEYS_PATH: [&str; 4] = ["computeMetadata", "v1", "imds-proxy", "identity-keys"];

/// Where guests write their attributes (`PUT`, `DELETE` as well as `GET`).
const GUEST_ATTRIBUTES_PATH: [&str; 4] = ["computeMetadata", "v1", "instance", "guest-attributes"];

/// How long before the request's deadline a waiting request answers, so that the
/// answer is out before whoever set the deadline gives up.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// Content types as the metadata server sends them.
const TEXT: &str = "application/text";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=UTF-8";
const PLAIN: &str = "text/plain; charset=utf-8";

/// Why a request got a 500.
#[derive(Debug, thiserror::Error)]
enum GceError {
    #[error("cannot get an access token for {email}")]
    Token {
        email: String,
        #[source]
        source: super::tokens::TokenError,
    },
    #[error("the ID-token signing key is not available")]
    Key(#[source] IdKeyError),
    #[error("the ID-token key generation task failed")]
    KeyTask(#[source] tokio::task::JoinError),
}

/// State of the emulated service: tokens handed out, and the generated signing key.
pub struct Gce {
    tokens: Arc<TokenCache>,
    guest: guest::GuestAttributes,
    /// Made on first use (or by `prepare_identity_key`), off the request threads.
    generated: Arc<tokio::sync::OnceCell<Arc<IdKey>>>,
}

/// One answer before the headers every answer carries.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    location: Option<String>,
}

impl Reply {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            location: None,
        }
    }

    fn text(body: String) -> Self {
        Self::new(StatusCode::OK, TEXT, body)
    }

    fn json(v: &Value) -> Self {
        Self::new(StatusCode::OK, JSON, v.to_string())
    }

    /// A hash of the body: what `last_etag` is compared with.
    fn etag(&self) -> String {
        let d = Sha256::digest(&self.body);
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut b = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, self.content_type)
            .header(header::ETAG, self.etag())
            .header("metadata-flavor", "Google")
            .header(header::SERVER, "Metadata Server for VM")
            .header("x-xss-protection", "0")
            .header("x-frame-options", "SAMEORIGIN");
        if let Some(l) = &self.location {
            b = b.header(header::LOCATION, l);
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            b = b.header(header::ALLOW, "GET, HEAD");
        }
        b.body(Full::new(self.body))
            .expect("header values are checked when built")
    }
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

/// Google's kind of error page, short.
fn error_page(status: StatusCode, detail: &str) -> Reply {
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en>\n<meta charset=utf-8>\n<title>Error {code} ({reason})!!1</title>\n<p><b>{code}.</b> <ins>That’s an error.</ins>\n<p>{detail}\n"
    );
    Reply::new(status, HTML, body)
}

fn not_found(req: &EmuRequest<'_>) -> Reply {
    let path = html_escape(&req.path.to_string());
    error_page(
        StatusCode::NOT_FOUND,
        &format!("The requested URL <code>{path}</code> was not found on this server."),
    )
}

fn bad_request(e: &QueryError) -> Reply {
    error_page(
        StatusCode::BAD_REQUEST,
        &format!("Bad request: {}", html_escape(&e.to_string())),
    )
}

fn server_error(e: &GceError) -> Reply {
    Reply::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        PLAIN,
        format!("{}\n", error_chain(e)),
    )
}

/// `301` to the directory form of the path, query kept.
fn redirect(req: &EmuRequest<'_>) -> Reply {
    let mut target = format!("{}/", req.path);
    if let Some(q) = req.query.filter(|q| !q.is_empty()) {
        target = format!("{target}?{q}");
    }
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()));
    let location = match host {
        Some(h) => format!("http://{h}{target}"),
        None => target,
    };
    let mut r = Reply::new(
        StatusCode::MOVED_PERMANENTLY,
        HTML,
        format!("{}\n", html_escape(&location)),
    );
    r.location = Some(location);
    r
}

impl Gce {
    /// Uses `tokens` for every access token (shared with the other providers; keys
    /// start with `gce`).
    pub fn new(tokens: Arc<TokenCache>) -> Self {
        Self {
            tokens,
            guest: guest::GuestAttributes::default(),
            generated: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Starts making the signing key in the background (needs a tokio runtime), so
    /// that the first ID token does not wait for it.
    pub fn prepare_identity_key(&self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let cell = self.generated.clone();
            rt.spawn(async move {
                if let Err(e) = generated_key(&cell).await {
                    tracing::warn!(error = %error_chain(&e), "cannot make the GCE ID-token key");
                }
            });
        }
    }

    /// The answer to one request under `/computeMetadata` (or `/` with
    /// `Metadata-Flavor: Google`).
    pub async fn answer(&self, ctx: &Ctx, req: &EmuRequest<'_>) -> Response<Full<Bytes>> {
        let Some(cfg) = ctx.config.gce.as_ref() else {
            return super::not_found();
        };
        let segs = req.path.segments();
        if segs.len() >= GUEST_ATTRIBUTES_PATH.len()
            && segs.iter().zip(GUEST_ATTRIBUTES_PATH).all(|(a, b)| a == b)
        {
            return self.guest_attributes(cfg, req, &segs[GUEST_ATTRIBUTES_PATH.len()..]);
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            return error_page(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!(
                    "The method {} is not allowed here.",
                    html_escape(req.method.as_str())
                ),
            )
            .into_response();
        }
        let q = match Query::parse(req.query) {
            Ok(q) => q,
            Err(e) => return bad_request(&e).into_response(),
        };
        let first = self.respond(cfg, req, &q, ctx.now, ctx.env).await;
        let reply = match &q.wait {
            Some(w) if first.status == StatusCode::OK => self.wait(ctx, req, &q, w, first).await,
            _ => first,
        };
        reply.into_response()
    }

    /// `instance/guest-attributes/...`: the one place a guest writes.
    fn guest_attributes(
        &self,
        cfg: &GceConfig,
        req: &EmuRequest<'_>,
        rest: &[String],
    ) -> Response<Full<Bytes>> {
        let outcome = self.guest.handle(cfg, req.method, rest, req.body);
        let status = guest::status(&outcome);
        let reply = match outcome {
            guest::Outcome::Text(t) => Reply::text(t),
            guest::Outcome::Done => Reply::new(StatusCode::OK, TEXT, ""),
            guest::Outcome::NotFound => not_found(req),
            guest::Outcome::Disabled => error_page(
                status,
                "Guest attributes endpoint access is disabled for this instance.",
            ),
            guest::Outcome::Bad(why) => error_page(status, &html_escape(&why)),
            guest::Outcome::MethodNotAllowed => error_page(
                status,
                &format!(
                    "The method {} is not allowed here.",
                    html_escape(req.method.as_str())
                ),
            ),
        };
        let mut r = reply.into_response();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static(guest::ALLOW));
        }
        r
    }

    /// The answer `cfg` gives to `req` at `now`.
    async fn respond(
        &self,
        cfg: &GceConfig,
        req: &EmuRequest<'_>,
        q: &Query,
        now: SystemTime,
        env: fn(&str) -> Option<String>,
    ) -> Reply {
        let segments = req.path.segments();
        let slash = req.path.to_string().ends_with('/');
        if segments.iter().map(String::as_str).eq(IDENTITY_KEYS_PATH) && !slash {
            return match self.signing_key(cfg).await {
                Some(Ok(k)) => Reply::json(&k.key_set()),
                Some(Err(e)) => server_error(&e),
                None => not_found(req),
            };
        }
        let root = tree::root(cfg, req.identity);
        let Some(node) = tree::resolve(&root, segments) else {
            return not_found(req);
        };
        match node {
            Node::Dir(_) if !slash => redirect(req),
            Node::Dir(d) => match (q.recursive, q.alt) {
                (true, Some(Alt::Text)) => Reply::text(tree::to_text(node)),
                (true, _) => Reply::json(&tree::to_json(node)),
                (false, Some(Alt::Json)) => Reply::json(&tree::listing_json(d)),
                (false, _) => Reply::text(tree::listing(d)),
            },
            _ if slash => not_found(req),
            Node::Leaf(l) => match (q.recursive, q.alt) {
                (_, Some(Alt::Json)) | (true, None) => Reply::json(&l.json()),
                _ => Reply::text(l.text()),
            },
            Node::Dynamic(Dynamic::Token(i)) => {
                self.token(&cfg.service_accounts[*i], q, now, env).await
            }
            // Answered before the tree is built (`guest_attributes`).
            Node::Dynamic(Dynamic::GuestAttributes) => not_found(req),
            Node::Dynamic(Dynamic::Identity(i)) => {
                let r = match q.id_request() {
                    Ok(r) => r,
                    Err(e) => return bad_request(&e),
                };
                match self.signing_key(cfg).await {
                    Some(Ok(key)) => {
                        let claims = idclaims::claims(cfg, &cfg.service_accounts[*i], &r, now);
                        Reply::text(key.sign(&claims))
                    }
                    Some(Err(e)) => server_error(&e),
                    None => not_found(req),
                }
            }
        }
    }

    /// `.../token[?scopes=a,b]`: the account's scopes unless others are asked for;
    /// one cached token per account and scope set.
    async fn token(
        &self,
        account: &ServiceAccount,
        q: &Query,
        now: SystemTime,
        env: fn(&str) -> Option<String>,
    ) -> Reply {
        let scopes = match q.scopes() {
            Ok(Some(s)) => s,
            Ok(None) => {
                let mut s = account.scopes.clone();
                s.sort();
                s.dedup();
                s
            }
            Err(e) => return bad_request(&e),
        };
        let key = format!(
            "gce\0{}\0{}",
            account.email.to_ascii_lowercase(),
            scopes.join(" ")
        );
        match self
            .tokens
            .get(&key, &account.token, account.token_lifetime, now, &env)
            .await
        {
            Ok(t) => Reply::json(&json!({
                // Generated tokens look like Google's (`ya29.` and a long opaque
                // tail), so code that checks the shape accepts them.
                "access_token": match account.token {
                    super::tokens::TokenSource::Generated => format!("ya29.c.{}", t.value),
                    _ => t.value.clone(),
                },
                "expires_in": t.expires_in(now),
                "token_type": "Bearer",
            })),
            Err(source) => server_error(&GceError::Token {
                email: account.email.clone(),
                source,
            }),
        }
    }

    /// The key ID tokens are signed with: the file's, else the generated one; `None`
    /// when the file has no `[gce.identity]`.
    async fn signing_key(&self, cfg: &GceConfig) -> Option<Result<Arc<IdKey>, GceError>> {
        let identity = cfg.identity.as_ref()?;
        Some(match &identity.key {
            Some(k) => Ok(k.clone()),
            None => generated_key(&self.generated).await,
        })
    }

    /// `wait_for_change`: answers when the value's ETag differs from `last_etag` (or
    /// from the first answer's), when `timeout_sec` passes, or just before the
    /// request's deadline — whichever comes first.
    async fn wait(
        &self,
        ctx: &Ctx,
        req: &EmuRequest<'_>,
        q: &Query,
        w: &Wait,
        first: Reply,
    ) -> Reply {
        let baseline = w.last_etag.clone().unwrap_or_else(|| first.etag());
        if first.etag() != baseline {
            return first;
        }
        let hard = req.deadline;
        let soft = hard.checked_sub(DEADLINE_MARGIN).unwrap_or(hard);
        let until = match w.timeout {
            Some(t) => soft.min(Instant::now() + t),
            None => soft,
        };
        let until = tokio::time::Instant::from_std(until);
        let mut changes = ctx.changes.clone();
        let mut current = first;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        // No further change can come: wait out the time, then answer.
                        tokio::time::sleep_until(until).await;
                        break;
                    }
                    let latest = changes.borrow_and_update().clone();
                    let reply = self.respond_latest(&latest, ctx, req, q, hard).await;
                    match reply {
                        Some(r) if r.etag() != baseline => return r,
                        Some(r) => current = r,
                        None => {}
                    }
                }
            }
        }
        let latest = changes.borrow().clone();
        self.respond_latest(&latest, ctx, req, q, hard)
            .await
            .unwrap_or(current)
    }

    /// The answer under the newest config, or `None` if it cannot be had by `by`.
    async fn respond_latest(
        &self,
        latest: &super::EmulatorConfig,
        ctx: &Ctx,
        req: &EmuRequest<'_>,
        q: &Query,
        by: Instant,
    ) -> Option<Reply> {
        let answer = async {
            match latest.gce.as_ref() {
                Some(cfg) => self.respond(cfg, req, q, SystemTime::now(), ctx.env).await,
                None => not_found(req),
            }
        };
        tokio::time::timeout_at(tokio::time::Instant::from_std(by), answer)
            .await
            .ok()
    }
}

async fn generated_key(cell: &tokio::sync::OnceCell<Arc<IdKey>>) -> Result<Arc<IdKey>, GceError> {
    cell.get_or_try_init(|| async {
        tokio::task::spawn_blocking(IdKey::generate)
            .await
            .map_err(GceError::KeyTask)?
            .map(Arc::new)
            .map_err(GceError::Key)
    })
    .await
    .cloned()
}
