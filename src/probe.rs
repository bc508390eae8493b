//! Is a real metadata service at 169.254.169.254? `run` without `--upstream` or
//! `--emulator` asks once at start. Something answering HTTP there is not enough: a
//! network's filtering proxy or captive portal may answer every address, and
//! forwarding containers to it would serve nothing. So each cloud is asked the way its
//! own clients detect it, and only its own mark counts:
//! - GCE answers with `Metadata-Flavor: Google` (google-auth's detection);
//! - Azure lists its versions at `/metadata/versions` as JSON `apiVersions`;
//! - AWS answers with `Server: EC2ws`, or echoes the session TTL on a token PUT.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The cloud whose metadata service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Gce,
    Azure,
    Aws,
}

impl std::fmt::Display for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cloud::Gce => "GCE",
            Cloud::Azure => "Azure",
            Cloud::Aws => "AWS",
        })
    }
}

/// What the probe found when it found no metadata service, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoService {
    /// No HTTP answer in time (no route, nothing listening, or silence).
    Silent,
    /// An HTTP server answered without any cloud's mark: its status to the GCE ask.
    NotMetadata(StatusCode),
}

/// One of the three asks.
#[derive(Debug, Clone, Copy)]
enum Ask {
    Gce,
    Azure,
    Aws,
}

const ASKS: [Ask; 3] = [Ask::Gce, Ask::Azure, Ask::Aws];
const AWS_TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";

impl Ask {
    fn request(self, addr: SocketAddr) -> Request<Full<Bytes>> {
        let (method, path, header) = match self {
            Ask::Gce => (
                Method::GET,
                "/computeMetadata/v1/",
                ("metadata-flavor", "Google"),
            ),
            Ask::Azure => (Method::GET, "/metadata/versions", ("metadata", "true")),
            Ask::Aws => (Method::PUT, "/latest/api/token", (AWS_TTL, "60")),
        };
        Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(header.0, header.1)
            .body(Full::new(Bytes::new()))
            .expect("a fixed request is valid")
    }
}

/// Whether one answer carries a cloud's own mark. Pure: the table tests below are the
/// whole rule.
fn recognise(ask: Ask, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Option<Cloud> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("metadata-flavor").is_some_and(|v| v.eq_ignore_ascii_case("google")) {
        return Some(Cloud::Gce);
    }
    if header("server").is_some_and(|v| v.eq_ignore_ascii_case("ec2ws")) {
        return Some(Cloud::Aws);
    }
    match ask {
        Ask::Azure if status == StatusCode::OK => {
            let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
            doc.get("apiVersions")?.as_array()?;
            Some(Cloud::Azure)
        }
        Ask::Aws if status == StatusCode::OK && header(AWS_TTL) == Some("60") => Some(Cloud::Aws),
        _ => None,
    }
}

/// Asks the three clouds' questions at `addr` at once; the first cloud recognised wins.
/// Gives up after `within`.
pub async fn find(addr: SocketAddr, within: Duration) -> Result<Cloud, NoService> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let asks = ASKS.map(|ask| {
        let client = client.clone();
        Box::pin(async move {
            let resp = client.request(ask.request(addr)).await.ok()?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Some((
                ask,
                parts.status,
                recognise(ask, parts.status, &parts.headers, &body),
            ))
        })
    });
    let all = async {
        let mut pending: Vec<_> = asks.into_iter().collect();
        let mut other = None;
        while !pending.is_empty() {
            let (answer, _, rest) = futures::future::select_all(pending).await;
            pending = rest;
            match answer {
                Some((_, _, Some(cloud))) => return Ok(cloud),
                Some((Ask::Gce, status, None)) => other = Some(status),
                Some((_, status, None)) => other = other.or(Some(status)),
                None => {}
            }
        }
        Err(other.map_or(NoService::Silent, NoService::NotMetadata))
    };
    tokio::time::timeout(within, all)
        .await
        .unwrap_or(Err(NoService::Silent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn only_a_clouds_own_mark_counts() {
        let ok = StatusCode::OK;
        type Case = (
            Ask,
            StatusCode,
            &'static [(&'static str, &'static str)],
            &'static str,
            Option<Cloud>,
        );
        let cases: &[Case] = &[
            // GCE marks every answer, even a refusal.
            (
                Ask::Gce,
                ok,
                &[("metadata-flavor", "Google")],
                "",
                Some(Cloud::Gce),
            ),
            (
                Ask::Gce,
                StatusCode::FORBIDDEN,
                &[("metadata-flavor", "Google")],
                "",
                Some(Cloud::Gce),
            ),
            (
                Ask::Azure,
                ok,
                &[],
                r#"{"apiVersions":["2021-02-01"]}"#,
                Some(Cloud::Azure),
            ),
            (
                Ask::Aws,
                ok,
                &[(AWS_TTL, "60")],
                "AQAE...",
                Some(Cloud::Aws),
            ),
            (
                Ask::Aws,
                StatusCode::UNAUTHORIZED,
                &[("server", "EC2ws")],
                "",
                Some(Cloud::Aws),
            ),
            // A filtering proxy refusing everything is no metadata service.
            (
                Ask::Gce,
                StatusCode::FORBIDDEN,
                &[("server", "filter")],
                "forbidden",
                None,
            ),
            (Ask::Aws, StatusCode::FORBIDDEN, &[], "", None),
            // A web server answering 200 to anything is not one either.
            (
                Ask::Gce,
                ok,
                &[("content-type", "text/html")],
                "<html>",
                None,
            ),
            (Ask::Azure, ok, &[], "<html>", None),
            (Ask::Azure, ok, &[], r#"{"apiVersions":"x"}"#, None),
            (Ask::Aws, ok, &[], "token", None),
            (Ask::Aws, ok, &[(AWS_TTL, "21600")], "token", None),
            (
                Ask::Azure,
                StatusCode::BAD_REQUEST,
                &[],
                r#"{"apiVersions":[]}"#,
                None,
            ),
        ];
        for (ask, status, hs, body, want) in cases {
            let headers = headers(hs);
            assert_eq!(
                recognise(*ask, *status, &headers, body.as_bytes()),
                *want,
                "{ask:?} {status} {hs:?} {body}"
            );
        }
    }
}
