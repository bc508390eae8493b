//! The embedded HTTP proxy: identifies the caller by its peer address (DNAT keeps the
//! container's source address), forwards the request to the metadata service and
//! returns the answer; never hangs a container on a slow or dead upstream.

pub mod headers;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{info, info_span, warn, Instrument};

use crate::docker::Endpoint;
use crate::policy::canonical::{CanonicalError, CanonicalPath};
use crate::policy::{self, select, Provider, Verdict};

/// Largest answer accepted from the upstream (metadata documents are small; user data
/// is at most a few hundred KiB on every cloud).
const MAX_UPSTREAM_BODY: usize = 4 << 20;
/// Open connections from one container at most: one container cannot starve the others.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// Open connections in all.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long an unknown caller waits for Docker to report its container.
pub const IDENTIFY_WAIT: Duration = Duration::from_secs(1);
/// A client must send its whole request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The caller, as the kernel reports it: the container's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Settings of the proxy.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `http://host[:port]` of the metadata service.
    pub upstream: Uri,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    /// Who is behind an address, when Docker can say.
    pub inventory: Option<tokio::sync::watch::Receiver<Arc<crate::docker::Inventory>>>,
    /// The policies in force; replaced whole when the configuration is reloaded.
    pub policies: tokio::sync::watch::Receiver<Arc<select::Policies>>,
}

/// Why a request was answered by the proxy itself instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the metadata service did not accept a connection")]
    UpstreamUnreachable(#[source] hyper_util::client::legacy::Error),
    #[error("the metadata service failed while answering")]
    UpstreamFailed(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the metadata service did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("the metadata service's answer exceeds {MAX_UPSTREAM_BODY} bytes")]
    UpstreamTooLarge,
    #[error("the request body exceeds {0} bytes")]
    RequestTooLarge(usize),
    #[error("the request body did not arrive in time")]
    RequestBodyTimeout,
    #[error("the request body could not be read")]
    BadRequestBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0} is not a metadata request; the proxy does not tunnel")]
    MethodNotAllowed(http::Method),
    #[error("the answer embeds data the policy denies and is not JSON that could be redacted")]
    Unredactable,
    #[error("denied by {reason}")]
    Denied { provider: Provider, reason: String },
    #[error("the request path has no canonical form: {0}")]
    BadPath(#[source] CanonicalError),
    #[error("the request target cannot be forwarded")]
    BadTarget(#[source] http::Error),
}

impl ProxyError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UpstreamUnreachable(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            Self::UpstreamFailed(_) => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            Self::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Self::UpstreamTooLarge => (StatusCode::BAD_GATEWAY, "upstream_response_too_large"),
            Self::RequestTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            Self::BadRequestBody(_) => (StatusCode::BAD_REQUEST, "bad_request_body"),
            Self::RequestBodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::BadTarget(_) => (StatusCode::BAD_REQUEST, "bad_request_target"),
            Self::BadPath(_) => (StatusCode::BAD_REQUEST, "bad_request_path"),
            Self::Denied { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Unredactable => (StatusCode::BAD_GATEWAY, "unredactable_answer"),
        }
    }

    /// A short JSON answer naming the cause; a policy denial in the shape of the
    /// provider the request was for.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        if let Self::Denied { provider, reason } = &self {
            return denial(*provider, reason);
        }
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": code, "message": self.to_string() }).to_string();
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    }
}

/// Forwards requests to the upstream over a pool of keep-alive connections.
pub struct Proxy {
    settings: ProxySettings,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Proxy {
    pub fn new(settings: ProxySettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.request_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self { settings, client }
    }

    /// Answers one request from `client`. Never fails: errors become JSON answers.
    pub async fn handle(
        &self,
        client: ClientAddr,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let who = self.identify(client).await;
        let deadline = self.settings.request_timeout;
        let result = match tokio::time::timeout(
            deadline,
            self.forward(req, started + deadline, who.as_deref()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamTimeout(deadline)),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let container = who
            .map(|e| format!("{}/{}", e.name, e.container.short()))
            .unwrap_or_else(|| "-".into());
        match result {
            Ok((resp, because)) => {
                info!(%client, status = resp.status().as_u16(), container = %container, policy = %because, elapsed_ms, "forwarded");
                resp
            }
            Err(e) => {
                warn!(%client, container = %container, error = %error_chain(&e), elapsed_ms, "answered by the proxy");
                e.into_response()
            }
        }
    }

    /// The container at `client`. A container's first request can arrive before Docker
    /// has reported its start: while Docker is reachable, an unknown address waits for
    /// the inventory's next updates, at most [`IDENTIFY_WAIT`].
    async fn identify(&self, client: ClientAddr) -> Option<Arc<crate::docker::Endpoint>> {
        let IpAddr::V4(ip) = client.0 else {
            return None;
        };
        let mut rx = self.settings.inventory.clone()?;
        let give_up = tokio::time::Instant::now() + IDENTIFY_WAIT;
        loop {
            {
                let inv = rx.borrow_and_update();
                if let Some(e) = inv.lookup(ip) {
                    return Some(e.clone());
                }
                if !inv.connected {
                    return None;
                }
            }
            match tokio::time::timeout_at(give_up, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Decides, then forwards; returns the answer and the policy reason.
    async fn forward(
        &self,
        req: Request<Incoming>,
        deadline: Instant,
        who: Option<&Endpoint>,
    ) -> Result<(Response<Full<Bytes>>, String), ProxyError> {
        let (parts, body) = req.into_parts();
        if parts.method == http::Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed(parts.method));
        }
        // A client that is slow to send its body is the client's fault, not the
        // upstream's: it gets its own answer, just before the overall deadline.
        let read = Limited::new(body, self.settings.max_body_bytes).collect();
        let margin = Duration::from_millis(5);
        let body =
            match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline - margin), read)
                .await
            {
                Err(_) => return Err(ProxyError::RequestBodyTimeout),
                Ok(r) => r,
            };
        let body = match body {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::RequestTooLarge(self.settings.max_body_bytes))
            }
            Err(e) => return Err(ProxyError::BadRequestBody(e)),
        };
        // The canonical path is what policy sees and what the upstream receives: the
        // two can never read the request differently.
        let canonical = CanonicalPath::parse(parts.uri.path()).map_err(ProxyError::BadPath)?;
        let policies = self.settings.policies.borrow().clone();
        let (chosen, why) = select::policy_for(who, &policies);
        let decision = policy::decide(
            &chosen,
            &policy::Request {
                path: &canonical,
                query: parts.uri.query(),
            },
        );
        let because = format!("{} ({why})", decision.because);
        if decision.verdict == Verdict::Deny {
            return Err(ProxyError::Denied {
                provider: Provider::of(&canonical),
                reason: because,
            });
        }
        let path = match parts.uri.query() {
            Some(q) => format!("{canonical}?{q}"),
            None => canonical.to_string(),
        };
        let up = &self.settings.upstream;
        let uri = Uri::builder()
            .scheme(up.scheme_str().unwrap_or("http"))
            .authority(up.authority().map(|a| a.as_str()).unwrap_or_default())
            .path_and_query(path.as_str())
            .build()
            .map_err(ProxyError::BadTarget)?;
        let mut out = Request::builder()
            .method(parts.method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(ProxyError::BadTarget)?;
        *out.headers_mut() = headers::end_to_end(&parts.headers);
        // The body was read whole: hyper derives its length from it, so a framing header
        // that disagreed with the body can never reach the upstream.
        out.headers_mut().remove(http::header::CONTENT_LENGTH);
        let head_request = out.method() == http::Method::HEAD;

        let resp = self.client.request(out).await.map_err(|e| {
            if e.is_connect() {
                ProxyError::UpstreamUnreachable(e)
            } else {
                ProxyError::UpstreamFailed(Box::new(e))
            }
        })?;
        let (parts, body) = resp.into_parts();
        let body = match Limited::new(body, MAX_UPSTREAM_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::UpstreamTooLarge)
            }
            Err(e) => return Err(ProxyError::UpstreamFailed(e)),
        };
        let body = if decision.redact.is_empty() {
            body
        } else {
            redact(parts.status, body, &decision.redact)?
        };
        let mut resp = Response::builder()
            .status(parts.status)
            .body(Full::new(body))
            .expect("status is valid");
        *resp.headers_mut() = headers::end_to_end(&parts.headers);
        // Likewise for the answer (an upstream sending both Transfer-Encoding and a
        // wrong Content-Length must not desync the container's connection). A HEAD
        // answer has no body, and its Content-Length describes the resource: kept.
        if !head_request {
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        Ok((resp, because))
    }
}

/// A policy denial as the provider itself would shape a refusal, with the reason.
fn denial(provider: Provider, reason: &str) -> Response<Full<Bytes>> {
    let b = Response::builder().status(StatusCode::FORBIDDEN);
    let (b, body) = match provider {
        Provider::Azure => (
            b.header(http::header::CONTENT_TYPE, "application/json; charset=utf-8"),
            serde_json::json!({ "error": "forbidden", "error_description": format!("Denied by imds-proxy {reason}") }).to_string(),
        ),
        Provider::Gce => (
            b.header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8").header("Metadata-Flavor", "Google"),
            format!("403 Forbidden: denied by imds-proxy {reason}\n"),
        ),
        Provider::Aws => (
            b.header(http::header::CONTENT_TYPE, "text/plain"),
            format!("Forbidden: denied by imds-proxy {reason}\n"),
        ),
        Provider::Other => (
            b.header(http::header::CONTENT_TYPE, "application/json"),
            serde_json::json!({ "error": "forbidden", "message": format!("denied by imds-proxy {reason}") }).to_string(),
        ),
    };
    b.body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Removes the given key paths from a JSON answer (an Azure document that embeds a
/// subtree the policy denies). A successful answer that is not JSON is withheld rather
/// than passed whole; error answers pass as they are.
fn redact(status: StatusCode, body: Bytes, paths: &[Vec<String>]) -> Result<Bytes, ProxyError> {
    let mut doc: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) if !status.is_success() => return Ok(body),
        Err(_) => return Err(ProxyError::Unredactable),
    };
    for path in paths {
        remove_path(&mut doc, path);
    }
    Ok(Bytes::from(doc.to_string()))
}

/// Removes `path` (keys matched without case, as Azure paths are) from a JSON value.
fn remove_path(v: &mut serde_json::Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(obj) = v.as_object_mut() else { return };
    let keys: Vec<String> = obj
        .keys()
        .filter(|k| k.eq_ignore_ascii_case(first))
        .cloned()
        .collect();
    for k in keys {
        if rest.is_empty() {
            obj.remove(&k);
        } else if let Some(child) = obj.get_mut(&k) {
            remove_path(child, rest);
        }
    }
}

/// "outer: inner: innermost", for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open when the drain deadline passed (0 = all finished).
    pub abandoned: usize,
}

/// Serves until `shutdown` completes, then stops accepting and waits up to `drain` for
/// in-flight requests to finish (idle keep-alive connections are closed at once).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> DrainReport {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(proxy.settings.max_header_bytes)
        .keep_alive(true);
    let limits = ConnLimits::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let client = ClientAddr(canonical_ip(peer));
        let Some(permit) = limits.admit(client) else {
            // Closing at once costs the others nothing; the container sees a reset.
            warn!(%client, "connection refused: too many open connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let span = info_span!("conn", client.addr = %client);
        let service = service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            let span = info_span!("request", client.addr = %client, method = %req.method(), path = %req.uri().path());
            async move { Ok::<_, Infallible>(proxy.handle(client, req).await) }.instrument(span)
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(
            async move {
                let _permit = permit;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    let open = graceful.count();
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => {
            info!(connections = open, "drained");
            DrainReport { abandoned: 0 }
        }
        Err(_) => {
            warn!(
                connections = open,
                "drain deadline passed with requests still in flight"
            );
            DrainReport {
                abandoned: open.max(1),
            }
        }
    }
}

/// Counts open connections, overall and per client.
#[derive(Default, Clone)]
struct ConnLimits {
    open: Arc<std::sync::Mutex<OpenConns>>,
}

#[derive(Default)]
struct OpenConns {
    total: usize,
    per_client: std::collections::HashMap<ClientAddr, usize>,
}

/// One admitted connection; releases its place when dropped.
struct ConnPermit {
    limits: ConnLimits,
    client: ClientAddr,
}

impl ConnLimits {
    fn admit(&self, client: ClientAddr) -> Option<ConnPermit> {
        let mut open = self.open.lock().expect("connection table lock");
        let mine = open.per_client.get(&client).copied().unwrap_or(0);
        if mine >= MAX_CONNECTIONS_PER_CLIENT || open.total >= MAX_CONNECTIONS {
            return None;
        }
        open.total += 1;
        *open.per_client.entry(client).or_insert(0) += 1;
        Some(ConnPermit {
            limits: self.clone(),
            client,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("connection table lock");
        open.total -= 1;
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

/// IPv4-mapped IPv6 peers are IPv4 callers.
fn canonical_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}
