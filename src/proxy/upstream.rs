//! The real metadata service behind the proxy: a pool of keep-alive connections, and
//! for AWS the proxy's own IMDSv2 session, so containers never need a token the
//! upstream issued (their tokens are the proxy's; see `providers::aws`).
//!
//! Every request it sends, its own session PUT included, first passes the service's
//! [`Protection`] (rate and requests in flight per provider class), and a transient
//! failure is tried again while the caller's deadline allows (see [`retry`]).

use std::sync::PoisonError;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
// Tokio's clock: the system's unless a test pauses it (pacing, retries and the session
// token's renewal then follow the test's time).
use tokio::time::Instant;
use tracing::{debug, warn};

use super::protect::{Class, Limits, Protection};
use super::retry::{self, Next, Outcome};
use super::{headers, ProxyError, MAX_UPSTREAM_BODY};
use crate::providers::aws::{MAX_TTL_SECS, TOKEN_HEADER, TTL_HEADER};
use crate::request::canonical::CanonicalPath;
use crate::request::Provider;

/// How long the proxy waits for the upstream's token answer (botocore's own budget
/// for the whole PUT is 1 s); never more than half the caller's time, so the request
/// the token is for can still go without one.
const TOKEN_TIMEOUT: Duration = Duration::from_millis(900);
/// A session token is renewed when it has less than this left.
const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(300);
/// After an upstream said it has no token endpoint, how long to believe it.
const NO_V2_FOR: Duration = Duration::from_secs(60);

/// An answer of the upstream, read whole.
pub struct Answer {
    pub parts: http::response::Parts,
    pub body: Bytes,
}

/// The proxy's IMDSv2 session with the upstream.
#[derive(Default)]
enum Session {
    #[default]
    None,
    Token {
        value: HeaderValue,
        renew_at: Instant,
    },
    /// The upstream answered the token PUT with 403/404/405: IMDSv1 only.
    V1Only { until: Instant },
}

/// The upstream metadata service.
pub struct Upstream {
    base: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Held while a token is fetched, so concurrent requests share one PUT.
    session: tokio::sync::Mutex<Session>,
    /// The service's quotas, shared by every caller.
    protect: Protection,
    /// How the latest exchange with the service went, for readiness.
    health: Health,
}

/// How long a failed exchange with the service keeps the daemon not ready, unless one
/// that is answered comes after it.
pub const FAILURE_COUNTS_FOR: Duration = Duration::from_secs(30);

/// The latest exchange with the service: answered, or why not and when.
#[derive(Default)]
struct Health {
    failed: std::sync::Mutex<Option<(Instant, String)>>,
}

impl Health {
    fn record(&self, result: &Result<Answer, ProxyError>) {
        let failure = match result {
            Ok(_) => None,
            Err(
                e @ (ProxyError::UpstreamUnreachable(_)
                | ProxyError::UpstreamTimeout(_)
                | ProxyError::UpstreamFailed(_)),
            ) => Some(super::error_chain(e)),
            // The proxy's own refusals (its budget, a bad request) say nothing of the service.
            Err(_) => return,
        };
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        match failure {
            None if failed.is_some() => *failed = None,
            None => {}
            Some(why) => *failed = Some((Instant::now(), why)),
        }
    }
}

/// One request to send, as the retry loop needs it.
struct Exchange<'a> {
    method: &'a http::Method,
    path_and_query: &'a str,
    headers: &'a HeaderMap,
    body: Bytes,
    token: Option<HeaderValue>,
    /// The request's answer shape, should the proxy refuse it.
    provider: Provider,
    class: Class,
    /// May be sent more than once.
    repeatable: bool,
    /// A GCE long poll: hangs by design, so takes no place in flight.
    long_poll: bool,
}

impl Upstream {
    pub fn new(base: Uri, connect_timeout: Duration, limits: &Limits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            base,
            client,
            session: tokio::sync::Mutex::new(Session::None),
            protect: Protection::new(limits),
            health: Health::default(),
        }
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.base.scheme_str().unwrap_or("http"))
            .authority(
                self.base
                    .authority()
                    .map(|a| a.as_str())
                    .unwrap_or_default(),
            )
            .path_and_query(path_and_query)
            .build()
            .map_err(ProxyError::BadTarget)
    }

    /// The proxy's own `GET path` of the real service (with `headers`; `aws`: through
    /// its IMDSv2 session), within `timeout`: the body of a 200, else why not.
    pub async fn get_ok(
        &self,
        path: &str,
        headers: &HeaderMap,
        aws: bool,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let deadline = Instant::now() + timeout;
        let a = self
            .send(
                http::Method::GET,
                path,
                headers,
                Bytes::new(),
                aws,
                deadline,
            )
            .await
            .map_err(|e| format!("{path}: {}", crate::errors::error_chain(&e)))?;
        if a.parts.status != http::StatusCode::OK {
            return Err(format!("{path}: HTTP {}", a.parts.status));
        }
        Ok(a.body)
    }

    /// Sends one request (`headers` as the container sent them: hop-by-hop headers
    /// and the container's own AWS session headers are dropped here). `aws`: the
    /// request is for AWS and carries the proxy's own session token. `deadline`: when
    /// the caller must have its answer; waits for the service's budget and retries end
    /// in time for it (a `std` or a tokio instant).
    ///
    /// The answer is the service's last one (a 503 that persisted passes through), or
    /// for a request that never got an answer the proxy's error; a request the budget
    /// had no room for before the deadline is [`ProxyError::UpstreamBusy`].
    pub async fn send(
        &self,
        method: http::Method,
        path_and_query: &str,
        in_headers: &HeaderMap,
        body: Bytes,
        aws: bool,
        deadline: impl Into<Instant>,
    ) -> Result<Answer, ProxyError> {
        let deadline = deadline.into();
        let mut hdrs = headers::end_to_end(in_headers);
        // The body was read whole: hyper derives its length from it, so a framing
        // header that disagreed with the body can never reach the upstream.
        hdrs.remove(http::header::CONTENT_LENGTH);
        hdrs.remove(TOKEN_HEADER);
        hdrs.remove(TTL_HEADER);
        let path = path_and_query.split('?').next().unwrap_or_default();
        let canonical = CanonicalPath::parse(path).map_err(ProxyError::BadPath)?;
        let long_poll = path_and_query
            .parse::<Uri>()
            .is_ok_and(|u| !crate::providers::gce::long_poll(&u).is_zero());
        let mut x = Exchange {
            method: &method,
            path_and_query,
            headers: &hdrs,
            body,
            token: if aws {
                self.aws_token(deadline).await
            } else {
                None
            },
            provider: Provider::of(&canonical),
            class: Class::of(&canonical),
            repeatable: retry::repeatable(&method) && !long_poll,
            long_poll,
        };
        let mut answer = self.exchange(&x, deadline).await;
        if let Ok(first) = &answer {
            if aws && x.token.is_some() && first.parts.status == http::StatusCode::UNAUTHORIZED {
                // The upstream forgot our session (it restarted): one new token, one retry;
                // if the budget has no room for it, the upstream's 401 stands.
                *self.session.lock().await = Session::None;
                x.token = self.aws_token(deadline).await;
                let again = self.exchange(&x, deadline).await;
                if !matches!(again, Err(ProxyError::UpstreamBusy { .. })) {
                    answer = again;
                }
            }
        }
        if let Err(ProxyError::UpstreamBusy { retry_after, .. }) = &answer {
            warn!(
                class = x.class.key(),
                retry_after_ms = retry_after.as_millis() as u64,
                "the metadata service's request budget has no room before the caller's deadline: answering 429"
            );
        }
        answer
    }

    /// Sends `x`, once or, while it fails in a way worth retrying and the deadline
    /// allows, again; each attempt first passes the class's budget.
    async fn exchange(&self, x: &Exchange<'_>, deadline: Instant) -> Result<Answer, ProxyError> {
        let result = self.exchange_retrying(x, deadline).await;
        self.health.record(&result);
        result
    }

    /// Why the service is not answering: its latest exchange failed, within
    /// [`FAILURE_COUNTS_FOR`]; `None`: it answers (or nothing asked it lately).
    pub fn failing(&self) -> Option<String> {
        let failed = self
            .health
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &*failed {
            Some((at, why)) if at.elapsed() < FAILURE_COUNTS_FOR => Some(why.clone()),
            _ => None,
        }
    }

    async fn exchange_retrying(
        &self,
        x: &Exchange<'_>,
        deadline: Instant,
    ) -> Result<Answer, ProxyError> {
        retrying(&self.protect, x, deadline, || {
            self.once(
                x.method,
                x.path_and_query,
                x.headers,
                x.body.clone(),
                x.token.clone(),
            )
        })
        .await
    }

    async fn once(
        &self,
        method: &http::Method,
        path_and_query: &str,
        hdrs: &HeaderMap,
        body: Bytes,
        token: Option<HeaderValue>,
    ) -> Result<Answer, ProxyError> {
        let mut out = Request::builder()
            .method(method.clone())
            .uri(self.uri(path_and_query)?)
            .body(Full::new(body))
            .map_err(ProxyError::BadTarget)?;
        *out.headers_mut() = hdrs.clone();
        if let Some(t) = token {
            out.headers_mut().insert(TOKEN_HEADER, t);
        }
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
        Ok(Answer { parts, body })
    }

    /// The proxy's session token with the upstream, fetched when missing or close to
    /// expiry; `None` when the upstream has no token endpoint or could not give one
    /// (the request then goes without, and the upstream decides).
    async fn aws_token(&self, deadline: Instant) -> Option<HeaderValue> {
        let mut session = self.session.lock().await;
        let now = Instant::now();
        match &*session {
            Session::Token { value, renew_at } if *renew_at > now => return Some(value.clone()),
            Session::V1Only { until } if *until > now => return None,
            _ => {}
        }
        let mut hdrs = HeaderMap::new();
        hdrs.insert(TTL_HEADER, HeaderValue::from(MAX_TTL_SECS));
        let put = Exchange {
            method: &http::Method::PUT,
            path_and_query: "/latest/api/token",
            headers: &hdrs,
            body: Bytes::new(),
            token: None,
            provider: Provider::Aws,
            class: Class::Aws,
            // The proxy's own PUT only opens a session: safe to send again.
            repeatable: true,
            long_poll: false,
        };
        let budget = TOKEN_TIMEOUT.min(deadline.saturating_duration_since(now) / 2);
        match self.exchange(&put, now + budget).await {
            Ok(a) if a.parts.status.is_success() => {
                let ttl = a
                    .parts
                    .headers
                    .get(TTL_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(MAX_TTL_SECS);
                let Ok(value) = HeaderValue::from_bytes(a.body.trim_ascii()) else {
                    warn!("the metadata service's session token is not a valid header value");
                    return None;
                };
                let life = Duration::from_secs(ttl);
                *session = Session::Token {
                    value: value.clone(),
                    renew_at: now + life.saturating_sub(TOKEN_RENEW_BEFORE.min(life / 2)),
                };
                debug!(ttl, "new IMDSv2 session with the metadata service");
                Some(value)
            }
            Ok(a) if matches!(a.parts.status.as_u16(), 403..=405) => {
                *session = Session::V1Only {
                    until: now + NO_V2_FOR,
                };
                None
            }
            Ok(a) => {
                warn!(
                    status = a.parts.status.as_u16(),
                    "the metadata service refused a session token"
                );
                None
            }
            Err(e) => {
                warn!(error = %super::error_chain(&e), "no session token from the metadata service");
                None
            }
        }
    }
}

/// One attempt at the service, in the metrics.
fn count_attempt(provider: Provider, result: &Result<Answer, ProxyError>, took: Duration) {
    let m = crate::metrics::get();
    let status = match result {
        Ok(a) => crate::metrics::status_class(a.parts.status.as_u16()),
        Err(_) => "none",
    };
    m.upstream
        .get_or_create(&crate::metrics::UpstreamLabels {
            provider: provider.name(),
            status,
        })
        .inc();
    m.upstream_seconds.observe(took.as_secs_f64());
}

/// The retry loop of [`Upstream::exchange`], apart from the connection pool: makes
/// `attempt` (one request to the service) once or, while it fails in a way worth
/// retrying and the deadline allows, again; each attempt first passes the class's
/// budget in `protect`, and gets the part of the time left that
/// [`retry::attempt_timeout`] gives it.
async fn retrying<F, A>(
    protect: &Protection,
    x: &Exchange<'_>,
    deadline: Instant,
    mut attempt: F,
) -> Result<Answer, ProxyError>
where
    F: FnMut() -> A,
    A: std::future::Future<Output = Result<Answer, ProxyError>>,
{
    let mut made = 0;
    let mut last = None;
    loop {
        let admitted = match protect.admit(x.class, deadline, x.long_poll).await {
            Ok(a) => a,
            // No room for a retry: the previous answer stands.
            Err(_) if last.is_some() => return last.expect("checked"),
            Err(retry_after) => {
                return Err(ProxyError::UpstreamBusy {
                    provider: x.provider,
                    class: x.class,
                    retry_after,
                })
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let limit = retry::attempt_timeout(remaining, made, x.repeatable);
        made += 1;
        let sent = Instant::now();
        let result = match tokio::time::timeout(limit, attempt()).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamTimeout(limit)),
        };
        drop(admitted);
        count_attempt(x.provider, &result, sent.elapsed());
        let (outcome, retry_after) = match &result {
            Ok(a) => (
                Outcome::Status(a.parts.status),
                a.parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry::parse_retry_after(v, SystemTime::now())),
            ),
            Err(ProxyError::UpstreamUnreachable(_)) => (Outcome::ConnectFailed, None),
            Err(ProxyError::UpstreamTimeout(_)) => (Outcome::TimedOut, None),
            Err(_) => (Outcome::Failed, None),
        };
        let next = retry::plan(
            x.repeatable,
            made,
            outcome,
            retry_after,
            Instant::now(),
            deadline,
            rand::random(),
        );
        match next {
            Next::Stop(why) => {
                if made > 1 || outcome.transient() {
                    debug!(class = x.class.key(), attempts = made, outcome = ?outcome, why = ?why, "no further attempt at the metadata service");
                }
                return result;
            }
            Next::Retry(wait) => {
                crate::metrics::get()
                    .upstream_retries
                    .get_or_create(&crate::metrics::ProviderLabels {
                        provider: x.provider.name(),
                    })
                    .inc();
                debug!(class = x.class.key(), attempt = made, outcome = ?outcome, wait_ms = wait.as_millis() as u64, "retrying the metadata service");
                last = Some(result);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
