//! The real metadata service behind the proxy: a pool of keep-alive connections, and
//! for AWS the proxy's own IMDSv2 session, so containers never need a token the
//! upstream issued (their tokens are the proxy's; see `providers::aws`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::{debug, warn};

use super::{headers, ProxyError, MAX_UPSTREAM_BODY};
use crate::providers::aws::{MAX_TTL_SECS, TOKEN_HEADER, TTL_HEADER};

/// How long the proxy waits for the upstream's token answer (botocore's own budget
/// for the whole PUT is 1 s).
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
}

impl Upstream {
    pub fn new(base: Uri, connect_timeout: Duration) -> Self {
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

    /// Sends one request (`headers` as the container sent them: hop-by-hop headers
    /// and the container's own AWS session headers are dropped here). `aws`: the
    /// request is for AWS and carries the proxy's own session token.
    pub async fn send(
        &self,
        method: http::Method,
        path_and_query: &str,
        in_headers: &HeaderMap,
        body: Bytes,
        aws: bool,
    ) -> Result<Answer, ProxyError> {
        let mut hdrs = headers::end_to_end(in_headers);
        // The body was read whole: hyper derives its length from it, so a framing
        // header that disagreed with the body can never reach the upstream.
        hdrs.remove(http::header::CONTENT_LENGTH);
        hdrs.remove(TOKEN_HEADER);
        hdrs.remove(TTL_HEADER);
        let token = if aws { self.aws_token().await } else { None };
        let first = self
            .once(&method, path_and_query, &hdrs, body.clone(), token.clone())
            .await?;
        if aws && token.is_some() && first.parts.status == http::StatusCode::UNAUTHORIZED {
            // The upstream forgot our session (it restarted): one new token, one retry.
            *self.session.lock().await = Session::None;
            let token = self.aws_token().await;
            return self.once(&method, path_and_query, &hdrs, body, token).await;
        }
        Ok(first)
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
    async fn aws_token(&self) -> Option<HeaderValue> {
        let mut session = self.session.lock().await;
        let now = Instant::now();
        match &*session {
            Session::Token { value, renew_at } if *renew_at > now => return Some(value.clone()),
            Session::V1Only { until } if *until > now => return None,
            _ => {}
        }
        let mut hdrs = HeaderMap::new();
        hdrs.insert(TTL_HEADER, HeaderValue::from(MAX_TTL_SECS));
        let put = self.once(
            &http::Method::PUT,
            "/latest/api/token",
            &hdrs,
            Bytes::new(),
            None,
        );
        match tokio::time::timeout(TOKEN_TIMEOUT, put).await {
            Ok(Ok(a)) if a.parts.status.is_success() => {
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
            Ok(Ok(a)) if matches!(a.parts.status.as_u16(), 403..=405) => {
                *session = Session::V1Only {
                    until: now + NO_V2_FOR,
                };
                None
            }
            Ok(Ok(a)) => {
                warn!(
                    status = a.parts.status.as_u16(),
                    "the metadata service refused a session token"
                );
                None
            }
            Ok(Err(e)) => {
                warn!(error = %super::error_chain(&e), "no session token from the metadata service");
                None
            }
            Err(_) => {
                warn!(timeout = ?TOKEN_TIMEOUT, "no session token from the metadata service in time");
                None
            }
        }
    }
}
