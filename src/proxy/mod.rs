//! The embedded HTTP proxy: identifies the caller by the bridge port its connection
//! came in by (see [`identify`]), decides by its policy, forwards the request to the
//! metadata service and returns the answer; never hangs a container on a slow or dead
//! upstream.

mod admit;
#[cfg(test)]
mod admit_tests;
mod assumed;
mod audit;
pub mod cache;
mod forward;
pub mod headers;
pub mod identify;
mod impersonated;
pub mod protect;
pub mod retry;
pub mod trail;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{info, info_span, warn, Instrument};

use audit::Audit;

use crate::docker::InventoryHandle;
use crate::policy::{self, select};
use crate::providers::refusal;
use crate::request::canonical::{CanonicalError, CanonicalPath};
use crate::request::Provider;
use identify::{Caller, Lookup, Origin, Origins};

/// Largest answer accepted from the upstream (metadata documents are small; user data
/// is at most a few hundred KiB on every cloud).
const MAX_UPSTREAM_BODY: usize = 4 << 20;
/// Open connections from one container at most: one container cannot starve the others.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// Open connections in all.
pub const MAX_CONNECTIONS: usize = 4096;
/// What a caller Docker could not name in time is told to wait before trying again.
const RETRY_AFTER_SECS: u64 = 1;
/// The header of the daemon's own readiness probe: a request from the host carrying the
/// proxy's probe key is answered `204` at once, unaudited (see [`Proxy::probe_key`]).
pub const PROBE_HEADER: &str = "imds-proxy-probe";
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
    /// Where answers come from: the real metadata service or the emulator.
    pub backend: Backend,
    pub request_timeout: Duration,
    /// The deadline of AWS requests forwarded to a real service: AWS's SDKs give up
    /// after about a second, so the proxy answers before they do.
    pub aws_request_timeout: Duration,
    /// The real service's quotas: rate and requests in flight per provider class.
    pub upstream_limits: protect::Limits,
    /// What is held in front of the real service (unused with the emulator).
    pub cache: cache::CacheSettings,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    /// Which container is behind a bridge port, when Docker can say.
    pub inventory: Option<InventoryHandle>,
    /// How long a request from a port Docker has not reported yet waits for it.
    pub identify_wait: Duration,
    /// Reads which bridge port a connection came in by.
    pub origins: Arc<dyn Origins>,
    /// The policies in force; replaced whole when the configuration is reloaded.
    pub policies: tokio::sync::watch::Receiver<Arc<select::Policies>>,
    /// Roles assumed for labelled containers (upstream mode).
    pub assume: AssumeSettings,
    /// How often repeats of routine requests are written as one line each (zero: every
    /// request gets a line of its own).
    pub audit_summary: Duration,
}

/// How the proxy assumes roles for labelled containers.
#[derive(Debug, Clone, Default)]
pub struct AssumeSettings {
    pub aws: crate::assume::spec::AwsSettings,
    /// STS's endpoint; `None`: the regional one of the instance's region.
    pub sts_endpoint: Option<Uri>,
    /// The IAM Credentials service impersonating GCE accounts.
    pub gce_iam_url: Option<Uri>,
}

/// Where answers come from.
#[derive(Clone)]
pub enum Backend {
    /// `http://host[:port]` of the real metadata service.
    Upstream(Uri),
    /// The built-in emulator.
    Emulator(Arc<crate::emulator::Emulator>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Upstream(u) => write!(f, "Upstream({u})"),
            Backend::Emulator(_) => f.write_str("Emulator"),
        }
    }
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
    #[error("Docker has not reported the calling container yet; retry shortly")]
    CallerNotYetReported,
    #[error(
        "the metadata service's {class} request budget has no room before the request's deadline"
    )]
    UpstreamBusy {
        provider: Provider,
        class: protect::Class,
        retry_after: Duration,
    },
    #[error("rate limit {limit} of {reason} exceeded")]
    RateLimited {
        provider: Provider,
        limit: policy::RateLimit,
        reason: String,
        retry_after: Duration,
    },
    /// The failure of a request to the service that this caller shared with others
    /// (coalesced), or that was remembered from a moment ago.
    #[error(transparent)]
    Coalesced(Arc<ProxyError>),
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
            Self::CallerNotYetReported => (StatusCode::SERVICE_UNAVAILABLE, "caller_not_yet_known"),
            Self::RateLimited { .. } | Self::UpstreamBusy { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            Self::Coalesced(e) => e.status_and_code(),
        }
    }

    /// Whether the service's request budget had no room for it (a `429` of the proxy's
    /// own, not the service's).
    fn is_busy(&self) -> bool {
        match self {
            Self::UpstreamBusy { .. } => true,
            Self::Coalesced(e) => e.is_busy(),
            _ => false,
        }
    }

    /// A short JSON answer naming the cause; a policy denial in the shape of the
    /// provider the request was for.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        self.response()
    }

    fn response(&self) -> Response<Full<Bytes>> {
        if let Self::Coalesced(e) = self {
            return e.response();
        }
        if let Self::Denied { provider, reason } = self {
            return refusal(
                *provider,
                StatusCode::FORBIDDEN,
                &format!("denied by imds-proxy {reason}"),
                None,
            );
        }
        if let Self::RateLimited {
            provider,
            retry_after,
            ..
        }
        | Self::UpstreamBusy {
            provider,
            retry_after,
            ..
        } = self
        {
            // Whole seconds, rounded up: never invite a retry that is refused again.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            return refusal(
                *provider,
                StatusCode::TOO_MANY_REQUESTS,
                &format!("imds-proxy: {self}"),
                Some(secs.max(1)),
            );
        }
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": code, "message": self.to_string() }).to_string();
        let mut b = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json");
        if matches!(self, Self::CallerNotYetReported) {
            b = b.header(http::header::RETRY_AFTER, RETRY_AFTER_SECS);
        }
        b.body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    }
}

/// Forwards requests to the upstream over a pool of keep-alive connections.
pub struct Proxy {
    settings: ProxySettings,
    /// The real service, when there is one.
    upstream: Option<Arc<upstream::Upstream>>,
    /// Its tokens and credentials (and documents, if configured), when there is one.
    cache: Option<cache::Cache>,
    /// Issues and checks the AWS session tokens containers use.
    mint: crate::providers::aws::TokenMint,
    /// Per-caller request budgets of policies that set `rate_limit` (held only for the
    /// check itself, never across an await).
    limiter: std::sync::Mutex<policy::RateLimiter<RateKey>>,
    /// The credentials of assumed roles (upstream mode).
    broker: Option<crate::assume::RoleBroker>,
    /// Impersonated GCE accounts (upstream mode).
    gce: Option<impersonated::GceSide>,
    /// Writes each request's audit event, or counts a routine one's repeats.
    trail: Arc<trail::Trail>,
    /// What the daemon's own probe carries in [`PROBE_HEADER`]: random, known only to
    /// this process.
    probe_key: String,
}

/// Whose budget a request uses: each container its own; host processes share one,
/// unknown callers another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RateKey {
    Container(crate::docker::ContainerId),
    Host,
    Unknown,
}

impl Proxy {
    pub fn new(settings: ProxySettings) -> Self {
        let upstream = match &settings.backend {
            Backend::Upstream(uri) => Some(Arc::new(upstream::Upstream::new(
                uri.clone(),
                settings.request_timeout,
                &settings.upstream_limits,
            ))),
            Backend::Emulator(_) => None,
        };
        let trail = trail::Trail::new(settings.audit_summary);
        let cache = (upstream.is_some() && settings.cache.enabled())
            .then(|| cache::Cache::new(settings.cache.clone()));
        // One HTTPS client (one read of the CA store) for STS and IAM Credentials.
        let transport = upstream
            .as_ref()
            .map(|_| Arc::new(crate::assume::transport::Https::new()));
        let broker = upstream
            .as_ref()
            .zip(transport.clone())
            .map(|(u, t)| assumed::broker(u.clone(), t, &settings));
        let gce = upstream
            .as_ref()
            .zip(transport)
            .and_then(|(u, t)| impersonated::side(u.clone(), t, &settings));
        Self {
            settings,
            upstream,
            cache,
            mint: crate::providers::aws::TokenMint::new(),
            limiter: std::sync::Mutex::new(policy::RateLimiter::new()),
            broker,
            gce,
            trail,
            probe_key: format!("{:032x}", rand::random::<u128>()),
        }
    }

    /// The key of the daemon's own probe (see [`PROBE_HEADER`]).
    pub fn probe_key(&self) -> &str {
        &self.probe_key
    }

    /// Why the real service is not answering (its latest exchange failed lately);
    /// `None` with the emulator, or while it answers.
    pub fn upstream_failing(&self) -> Option<String> {
        self.upstream.as_ref()?.failing()
    }

    /// The audit trail: the latest decision of each caller.
    pub fn trail(&self) -> &trail::Trail {
        &self.trail
    }

    /// What the cache holds, by kind (`None`: no cache, as with the emulator).
    pub fn cache_census(&self) -> Option<std::collections::BTreeMap<&'static str, usize>> {
        self.cache.as_ref().map(cache::Cache::census)
    }

    /// Answers one request from `client`, whose connection came in from `origin` (read
    /// once, when it was accepted: the kernel drops a connection's packets that come in
    /// by another bridge port). Never fails: errors become answers. Writes one audit
    /// event per request.
    pub async fn handle(
        &self,
        client: ClientAddr,
        origin: Origin,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        if origin == Origin::Host && self.is_probe(&req) {
            return Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::default())
                .expect("static response parts are valid");
        }
        let started = Instant::now();
        let method = req.method().clone();
        let caller = self.identify(client, origin, started).await;
        let identify = started.elapsed();
        let identify_us = identify.as_micros() as u64;
        // Canonical once: the deadline depends on the provider, and the decision reads it.
        let path = CanonicalPath::parse(req.uri().path());
        // A GCE `wait_for_change` may hang by design, up to its own timeout.
        let deadline =
            self.request_timeout(path.as_ref().ok()) + crate::providers::gce::long_poll(req.uri());
        let mut audit = Audit::default();
        let result = match tokio::time::timeout_at(
            (started + deadline).into(),
            self.forward(req, path, client, started + deadline, &caller, &mut audit),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamTimeout(deadline)),
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                if e.is_busy() {
                    audit.decision = admit::Decision::RateLimited;
                }
                audit.error = Some(error_chain(&e));
                e.into_response()
            }
        };
        let timing = audit::Timing {
            identify_us,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        audit.count(resp.status(), started.elapsed(), identify);
        self.trail.record(
            audit,
            &caller,
            client,
            origin,
            &method,
            resp.status(),
            timing,
        );
        resp
    }

    fn is_probe(&self, req: &Request<Incoming>) -> bool {
        req.headers()
            .get(PROBE_HEADER)
            .is_some_and(|v| v.as_bytes() == self.probe_key.as_bytes())
    }

    /// The request's own time: AWS requests to a real service get the shorter AWS
    /// deadline (the emulator's answers may run a credential command, which takes what
    /// it takes).
    fn request_timeout(&self, path: Option<&CanonicalPath>) -> Duration {
        let aws = path.is_some_and(|p| Provider::of(p) == Provider::Aws);
        if aws && matches!(self.settings.backend, Backend::Upstream(_)) {
            self.settings.aws_request_timeout
        } else {
            self.settings.request_timeout
        }
    }

    /// The caller behind a connection. A container's first request can arrive before
    /// Docker has reported its start: while Docker is reachable, a port no known
    /// container owns is looked into (the kernel names the container, Docker its labels)
    /// and the request waits for the answer, at most `identify_wait`.
    async fn identify(&self, client: ClientAddr, origin: Origin, arrived: Instant) -> Caller {
        let Some(handle) = &self.settings.inventory else {
            return match identify::lookup(None, origin, client.0) {
                Lookup::Decided(c) => c,
                Lookup::Wait => Caller::Unknown,
            };
        };
        let mut rx = handle.rx.clone();
        let give_up = tokio::time::Instant::from_std(arrived + self.settings.identify_wait);
        let mut asked = false;
        loop {
            {
                let inv = rx.borrow_and_update();
                if let Lookup::Decided(c) = identify::lookup(Some(&inv), origin, client.0) {
                    return c;
                }
            }
            if !asked {
                if let Origin::Port(p) = origin {
                    let _ = handle.resolve.send((p, client.0));
                }
                asked = true;
            }
            // Timed out, or the inventory task is gone (no news will come): decide now.
            if !matches!(
                tokio::time::timeout_at(give_up, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return identify::give_up(Some(&rx.borrow()), origin, arrived);
            }
        }
    }
}

/// Shown the one way every module shows errors (see [`crate::errors`]).
pub use crate::errors::error_chain;

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
        let local = stream.local_addr().ok();
        let origin = match local {
            Some(local) => proxy.settings.origins.origin(local, peer),
            None => Origin::Elsewhere,
        };
        let Some(permit) = limits.admit(conn_key(origin, client)) else {
            // Closing at once costs the others nothing; the container sees a reset.
            warn!(%client, "connection refused: too many open connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let span = info_span!("conn", client.addr = %client, origin = ?origin);
        // No span per request: the audit event names the request, and what is logged
        // inside one has the connection's span (client and origin). Formatting a span's
        // fields for every request cost more than the audit line itself.
        let service = service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(client, origin, req).await) }
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
    per_client: std::collections::HashMap<ConnKey, usize>,
}

/// Whose share a connection counts against: its bridge port when it has one (a forged
/// source address cannot use up another container's share), else its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ConnKey {
    Port(crate::ports::BridgePort),
    Addr(ClientAddr),
}

fn conn_key(origin: Origin, client: ClientAddr) -> ConnKey {
    match origin {
        Origin::Port(p) => ConnKey::Port(p),
        _ => ConnKey::Addr(client),
    }
}

/// One admitted connection; releases its place when dropped.
struct ConnPermit {
    limits: ConnLimits,
    client: ConnKey,
}

impl ConnLimits {
    fn admit(&self, client: ConnKey) -> Option<ConnPermit> {
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
