//! The HTTP exchange with STS: HTTPS through rustls with the system's CA store, or
//! plain HTTP where an endpoint override says so (a test server, a local endpoint).

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::sts::Transport;

/// Largest answer read (an AssumeRole answer is a few KiB).
const MAX_ANSWER: usize = 256 << 10;
/// How long one exchange may take, answer read included.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A pooled HTTP/1.1 client for STS.
pub struct Https {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Https {
    /// A client trusting the system's CA store. Without one (no CA certificates
    /// installed), HTTPS endpoints fail with the TLS error and plain HTTP still works.
    pub fn new() -> Self {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no CA certificates found: HTTPS to STS will fail");
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Default for Https {
    fn default() -> Self {
        Self::new()
    }
}

impl Transport for Https {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'static, Result<(StatusCode, Bytes), String>> {
        let fut = self.client.request(req.map(Full::new));
        let exchange = async move {
            let resp = fut.await.map_err(|e| crate::errors::error_chain(&e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        async move {
            tokio::time::timeout(CALL_TIMEOUT, exchange)
                .await
                .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
        }
        .boxed()
    }
}
