//! What each metadata protocol requires of a request, and which identity a container
//! may use with it: shared by the proxy in front of a real service and the emulator.
//!
//! Each check is a pure function returning the answer the real service gives when the
//! request fails it, so a container sees the same answer with or without the proxy.

pub mod aws;
pub mod aws_doc;
pub mod azure;
pub mod gce;
pub mod identity;
pub mod query;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;

use crate::request::canonical::CanonicalPath;
use crate::request::Provider;

/// A header that marks a request as relayed; every provider refuses it.
const FORWARDED_FOR: &str = "x-forwarded-for";

/// The answer the provider itself gives to a request that lacks what its protocol
/// requires (`None`: the request may proceed). AWS session tokens are checked by
/// [`aws::TokenMint`], which needs the caller.
pub fn admit(
    provider: Provider,
    method: &Method,
    path: &CanonicalPath,
    headers: &HeaderMap,
) -> Option<Response<Full<Bytes>>> {
    let relayed = headers.contains_key(FORWARDED_FOR);
    match provider {
        Provider::Azure => {
            let metadata_true = headers
                .get_all("metadata")
                .iter()
                .any(|v| v.as_bytes() == b"true");
            if !metadata_true {
                return Some(azure::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Required metadata header not specified",
                ));
            }
            if relayed {
                return Some(azure::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Request contains X-Forwarded-For header",
                ));
            }
            None
        }
        Provider::Gce => {
            // Only the v1 tree is served; the retired trees answer 404 downstream.
            let v1 = path
                .lower()
                .get(1)
                .is_some_and(|s| s == "v1" || s.is_empty());
            if relayed {
                return Some(gce::forbidden(
                    "Your client does not have permission to get this URL: requests with X-Forwarded-For are refused.",
                ));
            }
            let flavor = headers
                .get_all("metadata-flavor")
                .iter()
                .any(|v| v.as_bytes() == b"Google");
            if v1 && !flavor {
                return Some(gce::forbidden(
                    "Your client does not have permission to get this URL: Missing Metadata-Flavor:Google header.",
                ));
            }
            None
        }
        Provider::Aws => {
            // PUTs are the token endpoint's (checked with the caller by TokenMint); a
            // PUT to a dated version is refused as the real service does.
            if method == Method::PUT && !aws::is_token_path(path) {
                return Some(aws::text(StatusCode::FORBIDDEN, "Forbidden\n"));
            }
            None
        }
        Provider::Other => None,
    }
}

/// A refusal (policy denial, rate limit) as the provider itself would shape it, with
/// the reason.
pub fn refusal(
    provider: Provider,
    status: StatusCode,
    message: &str,
    retry_after: Option<u64>,
) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    if let Some(secs) = retry_after {
        b = b.header(http::header::RETRY_AFTER, secs);
    }
    let code = match status {
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        _ => "forbidden",
    };
    let reason = status.canonical_reason().unwrap_or("");
    let (b, body) = match provider {
        Provider::Azure => (
            b.header(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            ),
            serde_json::json!({ "error": code, "error_description": message }).to_string(),
        ),
        Provider::Gce => (
            b.header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .header("Metadata-Flavor", "Google"),
            format!("{} {reason}: {message}\n", status.as_u16()),
        ),
        Provider::Aws => (
            b.header(http::header::CONTENT_TYPE, "text/plain"),
            format!("{reason}: {message}\n"),
        ),
        Provider::Other => (
            b.header(http::header::CONTENT_TYPE, "application/json"),
            serde_json::json!({ "error": code, "message": message }).to_string(),
        ),
    };
    b.body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn check(path: &str, pairs: &[(&str, &str)]) -> Option<(u16, String)> {
        let p = CanonicalPath::parse(path).unwrap();
        admit(Provider::of(&p), &Method::GET, &p, &headers(pairs)).map(|r| {
            let status = r.status().as_u16();
            let ct = r.headers()[http::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_owned();
            (status, ct)
        })
    }

    #[test]
    fn azure_needs_metadata_true_and_no_forwarding() {
        let t = "/metadata/identity/oauth2/token";
        assert_eq!(check(t, &[("metadata", "true")]), None);
        let refused = Some((400, "application/json; charset=utf-8".to_string()));
        assert_eq!(check(t, &[]), refused);
        assert_eq!(check(t, &[("metadata", "True")]), refused);
        assert_eq!(
            check(t, &[("metadata", "true"), ("x-forwarded-for", "1.2.3.4")]),
            refused
        );
    }

    #[test]
    fn the_azure_probe_gets_imds_own_answer() {
        let p = CanonicalPath::parse("/metadata/identity/oauth2/token").unwrap();
        let r = admit(Provider::Azure, &Method::GET, &p, &HeaderMap::new()).unwrap();
        let body = futures::executor::block_on(http_body_util::BodyExt::collect(r.into_body()))
            .unwrap()
            .to_bytes();
        assert_eq!(
            &body[..],
            br#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#
        );
        assert_eq!(body.len(), 88);
    }

    #[test]
    fn gce_needs_the_flavor_header_on_v1_and_never_forwarding() {
        let t = "/computeMetadata/v1/project/project-id";
        assert_eq!(check(t, &[("metadata-flavor", "Google")]), None);
        assert_eq!(check(t, &[]).map(|r| r.0), Some(403));
        assert_eq!(
            check(t, &[("metadata-flavor", "google")]).map(|r| r.0),
            Some(403)
        );
        assert_eq!(
            check(
                t,
                &[("metadata-flavor", "Google"), ("x-forwarded-for", "a")]
            )
            .map(|r| r.0),
            Some(403)
        );
        // The retired trees are not refused here: they answer 404 downstream.
        assert_eq!(
            check("/computeMetadata/v1beta1/project/project-id", &[]),
            None
        );
        assert_eq!(check("/", &[]), None);
    }

    #[test]
    fn aws_refuses_puts_off_the_token_path() {
        let p = CanonicalPath::parse("/2021-03-23/api/token").unwrap();
        let r = admit(Provider::Aws, &Method::PUT, &p, &HeaderMap::new()).unwrap();
        assert_eq!(r.status(), 403);
        let p = CanonicalPath::parse("/latest/api/token").unwrap();
        assert!(admit(Provider::Aws, &Method::PUT, &p, &HeaderMap::new()).is_none());
    }
}
