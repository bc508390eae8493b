//! GCE service accounts by impersonation: IAM Credentials' `generateAccessToken` and
//! `generateIdToken`, called with the instance's own access token. Building the calls
//! and reading their answers is pure; the exchange goes through [`Transport`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{Request, StatusCode, Uri};
use serde_json::{json, Value};

use super::broker::{Broker, Failure, Fetcher, Held, Key};
use super::sts::Transport;
use crate::providers::aws_doc::parse_timestamp;

pub use crate::providers::gce::DEFAULT_SCOPE;
/// Lifetime asked of `generateAccessToken` (its default and, without an org policy
/// allowing more, its maximum).
const LIFETIME: &str = "3600s";

/// What is held for an impersonated account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GceKey {
    pub email: String,
    pub want: Want,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Want {
    /// An access token for these scopes (sorted, without repeats).
    Access { scopes: Vec<String> },
    /// An ID token for this audience; `full`: with the account's email.
    Id { audience: String, full: bool },
}

impl Key for GceKey {
    fn service() -> &'static str {
        "iam_credentials"
    }

    fn describe(&self) -> String {
        match &self.want {
            Want::Access { scopes } => {
                format!(
                    "account {} access token, scopes {}",
                    self.email,
                    scopes.join(",")
                )
            }
            Want::Id { audience, full } => {
                format!(
                    "account {} ID token, audience {audience}, full {full}",
                    self.email
                )
            }
        }
    }
}

/// A token IAM Credentials issued.
#[derive(Clone, PartialEq, Eq)]
pub struct GceToken {
    pub token: String,
    pub expiration: SystemTime,
}

/// Never shows the token.
impl std::fmt::Debug for GceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GceToken")
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

impl Held for GceToken {
    fn expiration(&self) -> SystemTime {
        self.expiration
    }
    fn describe(&self) -> String {
        "a token".into()
    }
}

/// Why an account's token could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamError {
    /// IAM Credentials refused (no `iam.serviceAccountTokenCreator` for the instance's
    /// account, an account that does not exist, a bad request).
    #[error("IAM Credentials refused: HTTP {status}: {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("IAM Credentials failed: HTTP {status}: {code}: {message}")]
    Failed {
        status: u16,
        code: String,
        message: String,
    },
    #[error("IAM Credentials could not be asked: {0}")]
    Unreachable(String),
    #[error("the instance's own token is unavailable: {0}")]
    NoInstanceToken(String),
}

impl Failure for IamError {
    fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
    fn unreachable(reason: String) -> Self {
        Self::Unreachable(reason)
    }
}

/// The broker of impersonated tokens.
pub type GceBroker = Broker<GceKey, GceToken, IamError>;

/// The call for `key` to the IAM Credentials service at `base`, made with the
/// instance's `bearer` token.
pub fn request(base: &Uri, key: &GceKey, bearer: &str) -> Result<Request<Bytes>, String> {
    let (method, body) = match &key.want {
        Want::Access { scopes } => (
            "generateAccessToken",
            json!({ "scope": scopes, "lifetime": LIFETIME }),
        ),
        Want::Id { audience, full } => (
            "generateIdToken",
            json!({ "audience": audience, "includeEmail": full }),
        ),
    };
    let email: String = form_urlencoded::byte_serialize(key.email.as_bytes()).collect();
    let base = base.to_string();
    let uri = format!(
        "{}/v1/projects/-/serviceAccounts/{email}:{method}",
        base.trim_end_matches('/')
    );
    Request::builder()
        .method("POST")
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, format!("Bearer {bearer}"))
        .body(Bytes::from(body.to_string()))
        .map_err(|e| format!("request: {e}"))
}

/// The service's answer to the call for `key`, read.
pub fn read_answer(
    key: &GceKey,
    status: StatusCode,
    body: &[u8],
    now: SystemTime,
) -> Result<GceToken, IamError> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if !status.is_success() {
        let err = &v["error"];
        let code = err["status"].as_str().unwrap_or("UNKNOWN").to_owned();
        let message = err["message"].as_str().unwrap_or_default().to_owned();
        let status = status.as_u16();
        return Err(if matches!(status, 400 | 403 | 404) {
            IamError::Refused {
                status,
                code,
                message,
            }
        } else {
            IamError::Failed {
                status,
                code,
                message,
            }
        });
    }
    let unreadable = |what: &str| IamError::Unreachable(format!("the answer lacks {what}"));
    match &key.want {
        Want::Access { .. } => {
            let token = v["accessToken"]
                .as_str()
                .ok_or_else(|| unreadable("accessToken"))?;
            let expiration = v["expireTime"]
                .as_str()
                .and_then(parse_timestamp)
                .ok_or_else(|| unreadable("a readable expireTime"))?;
            Ok(GceToken {
                token: token.to_owned(),
                expiration,
            })
        }
        Want::Id { .. } => {
            let token = v["token"].as_str().ok_or_else(|| unreadable("token"))?;
            let expiration = jwt_expiry(token).unwrap_or(now + Duration::from_secs(3600));
            Ok(GceToken {
                token: token.to_owned(),
                expiration,
            })
        }
    }
}

/// A JWT's `exp`, unverified (the token is the service's; the proxy only needs to know
/// how long to hold it).
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Value>(&raw).ok()?["exp"].as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

/// The instance's own access token (the proxy reads it from the real service).
pub trait InstanceToken: Send + Sync + 'static {
    fn token(&self) -> BoxFuture<'static, Result<String, String>>;
}

/// Impersonates accounts at the IAM Credentials service at `base`.
pub struct IamFetcher {
    pub instance: Arc<dyn InstanceToken>,
    pub base: Uri,
    pub transport: Arc<dyn Transport>,
}

impl Fetcher<GceKey, GceToken, IamError> for IamFetcher {
    fn fetch(&self, key: GceKey) -> BoxFuture<'static, Result<GceToken, IamError>> {
        let instance = self.instance.token();
        let base = self.base.clone();
        let transport = self.transport.clone();
        async move {
            let bearer = instance.await.map_err(IamError::NoInstanceToken)?;
            let req = request(&base, &key, &bearer).map_err(IamError::Unreachable)?;
            let (status, body) = transport.send(req).await.map_err(IamError::Unreachable)?;
            read_answer(&key, status, &body, SystemTime::now())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(email: &str) -> GceKey {
        GceKey {
            email: email.into(),
            want: Want::Access {
                scopes: vec![DEFAULT_SCOPE.into()],
            },
        }
    }

    #[test]
    fn the_calls_name_the_account_and_carry_the_instances_token() {
        let base: Uri = "http://127.0.0.1:8080/".parse().unwrap();
        let r = request(
            &base,
            &access("app@p.iam.gserviceaccount.com"),
            "ya29.instance",
        )
        .unwrap();
        assert_eq!(
            r.uri().to_string(),
            "http://127.0.0.1:8080/v1/projects/-/serviceAccounts/app%40p.iam.gserviceaccount.com:generateAccessToken"
        );
        assert_eq!(r.headers()["authorization"], "Bearer ya29.instance");
        let body: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body, json!({"scope": [DEFAULT_SCOPE], "lifetime": "3600s"}));
        let id = GceKey {
            email: "app@p.iam.gserviceaccount.com".into(),
            want: Want::Id {
                audience: "https://aud".into(),
                full: true,
            },
        };
        let r = request(
            &"https://iamcredentials.googleapis.com".parse().unwrap(),
            &id,
            "t",
        )
        .unwrap();
        assert!(r.uri().to_string().ends_with(":generateIdToken"));
        let body: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(
            body,
            json!({"audience": "https://aud", "includeEmail": true})
        );
    }

    #[test]
    fn answers_and_errors_are_read() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let k = access("a@p");
        let ok = br#"{"accessToken": "ya29.x", "expireTime": "2023-11-14T23:13:20Z"}"#;
        let t = read_answer(&k, StatusCode::OK, ok, now).unwrap();
        assert_eq!(
            (t.token.as_str(), t.expiration),
            ("ya29.x", now + Duration::from_secs(3600))
        );
        assert!(!format!("{t:?}").contains("ya29"));
        let denied = br#"{"error": {"code": 403, "message": "Permission 'iam.serviceAccounts.getAccessToken' denied", "status": "PERMISSION_DENIED"}}"#;
        let e = read_answer(&k, StatusCode::FORBIDDEN, denied, now).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("PERMISSION_DENIED"));
        for status in [429, 500, 503, 401] {
            let e =
                read_answer(&k, StatusCode::from_u16(status).unwrap(), b"oops", now).unwrap_err();
            assert!(!e.is_permanent(), "{status}");
        }
        assert!(matches!(
            read_answer(&k, StatusCode::OK, b"{}", now),
            Err(IamError::Unreachable(_))
        ));
        // An ID token is held until its own expiry.
        let claims =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1700001000}"#);
        let jwt = format!("eyJhbGciOiJSUzI1NiJ9.{claims}.sig");
        let id = GceKey {
            email: "a@p".into(),
            want: Want::Id {
                audience: "x".into(),
                full: false,
            },
        };
        let body = json!({ "token": jwt }).to_string();
        let t = read_answer(&id, StatusCode::OK, body.as_bytes(), now).unwrap();
        assert_eq!(t.expiration, now + Duration::from_secs(1000));
    }
}
