//! STS `AssumeRole`: the signed request (SigV4 from `aws-sigv4`), its answer read
//! (`quick-xml`), and which failures are the role's (permanent) and which the
//! service's (worth trying again). Building and reading are pure; the exchange itself
//! goes through [`Transport`].

use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, StatusCode, Uri};

use super::spec::RoleSpec;
use super::Session;
use crate::providers::aws_doc::parse_timestamp;

/// STS error codes that are the role's or the request's, not the service's: trying
/// again gives the same answer.
const PERMANENT: &[&str] = &[
    "AccessDenied",
    "ValidationError",
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "RegionDisabledException",
    "NoSuchEntity",
    "InvalidParameterValue",
    "InvalidIdentityToken",
];

/// The instance's own credentials, which sign the call.
#[derive(Clone)]
pub struct InstanceKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: Option<String>,
}

/// Never shows the secret parts.
impl std::fmt::Debug for InstanceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceKeys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Why a role could not be assumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// STS refused the role itself (`AccessDenied`, a role that does not exist, a bad
    /// external id): asking again will not help.
    #[error("STS refused: {code}: {message}")]
    Refused { code: String, message: String },
    /// STS answered with an error worth trying again (throttling, its own failure,
    /// credentials it did not accept this time).
    #[error("STS failed: HTTP {status}: {code}: {message}")]
    Failed {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: unreachable, timed out, unreadable.
    #[error("STS could not be asked: {0}")]
    Unreachable(String),
    /// The instance's own credentials or region could not be had.
    #[error("the instance's own credentials are unavailable: {0}")]
    NoInstanceCredentials(String),
}

impl StsError {
    /// Whether the held credentials should be dropped and the role answered as one
    /// EC2 cannot serve.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    /// The `Code` the container sees in EC2's failure document.
    pub fn ec2_code(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "AssumeRoleUnauthorizedAccess",
            _ => "CredentialsUnavailable",
        }
    }
}

/// Sends one request and reads the whole answer, or says why not (within its own
/// time limit).
pub trait Transport: Send + Sync + 'static {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'static, Result<(StatusCode, Bytes), String>>;
}

/// STS's endpoint for `region`: the regional one (the global endpoint's lag is a known
/// cause of failures).
pub fn regional_endpoint(region: &str) -> Result<Uri, String> {
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("{region:?} is not a region name"));
    }
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://sts.{region}.{suffix}/")
        .parse()
        .map_err(|e| format!("{e}"))
}

/// The form body of the call.
pub fn form(spec: &RoleSpec) -> String {
    let mut f = form_urlencoded::Serializer::new(String::new());
    f.append_pair("Action", "AssumeRole");
    f.append_pair("Version", "2011-06-15");
    f.append_pair("RoleArn", &spec.arn);
    f.append_pair("RoleSessionName", &spec.session_name);
    f.append_pair("DurationSeconds", &spec.duration_secs.to_string());
    if let Some(x) = &spec.external_id {
        f.append_pair("ExternalId", x);
    }
    if let Some(s) = &spec.source_identity {
        f.append_pair("SourceIdentity", s);
    }
    for (i, (k, v)) in spec.tags.iter().enumerate() {
        f.append_pair(&format!("Tags.member.{}.Key", i + 1), k);
        f.append_pair(&format!("Tags.member.{}.Value", i + 1), v);
    }
    f.finish()
}

/// The signed `AssumeRole` request for `spec` to `endpoint`, in `region`, at `now`.
pub fn request(
    spec: &RoleSpec,
    keys: &InstanceKeys,
    endpoint: &Uri,
    region: &str,
    now: SystemTime,
) -> Result<Request<Bytes>, String> {
    let body = form(spec);
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let uri = endpoint.to_string();
    let identity = aws_credential_types::Credentials::new(
        &keys.access_key_id,
        &keys.secret_access_key,
        keys.token.clone(),
        None,
        "imds-proxy-instance",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        uri.as_str(),
        [("content-type", content_type)].into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| format!("signing: {e}"))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("signing: {e}"))?
        .into_parts();
    let mut req = Request::builder()
        .method("POST")
        .uri(endpoint.clone())
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "text/xml")
        .body(Bytes::from(body))
        .map_err(|e| format!("request: {e}"))?;
    instructions.apply_to_request_http1x(&mut req);
    if let Some(host) = endpoint.authority() {
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(host.as_str()).map_err(|e| format!("host: {e}"))?,
        );
    }
    Ok(req)
}

/// The leaf texts of an XML document, by their element path (`A/B/C`).
fn leaves(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut out = Vec::new();
    loop {
        match reader.read_event().map_err(|e| format!("XML: {e}"))? {
            Event::Start(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                text.clear();
            }
            Event::End(_) => {
                if !text.trim().is_empty() {
                    out.push((path.join("/"), text.trim().to_owned()));
                }
                text.clear();
                path.pop();
            }
            Event::Text(t) => text.push_str(&t.decode().map_err(|e| format!("XML text: {e}"))?),
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(|e| format!("XML reference: {e}"))?;
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c),
                    _ => {
                        quick_xml::escape::resolve_xml_entity(&name).and_then(|s| s.chars().next())
                    }
                };
                text.push(c.ok_or_else(|| format!("XML: unknown entity &{name};"))?);
            }
            Event::Eof => return Ok(out),
            _ => {}
        }
    }
}

/// STS's answer read: the session, or why there is none.
pub fn read_answer(status: StatusCode, body: &[u8], now: SystemTime) -> Result<Session, StsError> {
    let leaves = match leaves(body) {
        Ok(l) => l,
        // An error page that is not STS's XML still says the service failed.
        Err(_) if !status.is_success() => Vec::new(),
        Err(e) => return Err(StsError::Unreachable(format!("unreadable answer ({e})"))),
    };
    let get = |suffix: &str| {
        leaves
            .iter()
            .find(|(p, _)| p.ends_with(suffix))
            .map(|(_, v)| v.clone())
    };
    if !status.is_success() {
        let code = get("Error/Code").unwrap_or_else(|| "Unknown".into());
        let message = get("Error/Message").unwrap_or_default();
        return Err(if PERMANENT.contains(&code.as_str()) {
            StsError::Refused { code, message }
        } else {
            StsError::Failed {
                status: status.as_u16(),
                code,
                message,
            }
        });
    }
    let need = |suffix: &str| {
        get(suffix).ok_or_else(|| StsError::Unreachable(format!("answer lacks {suffix}")))
    };
    let expiration = need("Credentials/Expiration")?;
    let expiration = parse_timestamp(&expiration)
        .ok_or_else(|| StsError::Unreachable(format!("unreadable Expiration {expiration:?}")))?;
    Ok(Session {
        access_key_id: need("Credentials/AccessKeyId")?,
        secret_access_key: need("Credentials/SecretAccessKey")?,
        token: need("Credentials/SessionToken")?,
        expiration,
        issued_at: now,
        assumed_role_arn: need("AssumedRoleUser/Arn")?,
        assumed_role_id: need("AssumedRoleUser/AssumedRoleId")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> RoleSpec {
        RoleSpec {
            arn: "arn:aws:iam::123456789012:role/reader".into(),
            external_id: Some("ext id".into()),
            session_name: "web".into(),
            duration_secs: 3600,
            tags: vec![("imds-proxy:container".into(), "web 1".into())],
            source_identity: None,
        }
    }

    #[test]
    fn the_request_is_a_signed_form_post() {
        let keys = InstanceKeys {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            token: Some("instance-session-token".into()),
        };
        let endpoint: Uri = "https://sts.eu-west-1.amazonaws.com/".parse().unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let req = request(&spec(), &keys, &endpoint, "eu-west-1", t).unwrap();
        assert_eq!(req.method(), "POST");
        let body = String::from_utf8(req.body().to_vec()).unwrap();
        assert_eq!(
            body,
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Freader&RoleSessionName=web&DurationSeconds=3600&ExternalId=ext+id&Tags.member.1.Key=imds-proxy%3Acontainer&Tags.member.1.Value=web+1"
        );
        let h = req.headers();
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/eu-west-1/sts/aws4_request, SignedHeaders="
            ),
            "{auth}"
        );
        assert!(
            auth.contains("content-type") && auth.contains("host"),
            "{auth}"
        );
        assert_eq!(h["x-amz-date"], "20231114T221320Z");
        assert_eq!(h["x-amz-security-token"], "instance-session-token");
        assert_eq!(h["host"], "sts.eu-west-1.amazonaws.com");
        // The secret signs; it is never sent.
        assert!(!format!("{h:?}{body}").contains("wJalrXUtnFEMI"));
        // The same request a second later is signed differently.
        let later = request(
            &spec(),
            &keys,
            &endpoint,
            "eu-west-1",
            t + Duration::from_secs(1),
        )
        .unwrap();
        assert_ne!(later.headers()["authorization"], h["authorization"]);
    }

    #[test]
    fn regional_endpoints() {
        assert_eq!(
            regional_endpoint("us-east-2").unwrap().to_string(),
            "https://sts.us-east-2.amazonaws.com/"
        );
        assert_eq!(
            regional_endpoint("cn-north-1").unwrap().to_string(),
            "https://sts.cn-north-1.amazonaws.com.cn/"
        );
        assert!(regional_endpoint("").is_err());
        assert!(regional_endpoint("us-east-1/x").is_err());
    }

    const OK: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <SourceIdentity>c1</SourceIdentity>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/reader/web</Arn>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:web</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAJEXAMPLEXEG2JICEA</AccessKeyId>
      <SecretAccessKey>9drTJvcXLB89EXAMPLELB8923FB892xMFI</SecretAccessKey>
      <SessionToken>AQoXdzELDDY//////////wEaoAK1wvxJY12r2IrDFT2IvAzTCn3zHoZ7YNtpiQLF0MqZye/qwjzP2iEXAMPLEtmsZ&amp;x</SessionToken>
      <Expiration>2023-11-14T23:13:20Z</Expiration>
    </Credentials>
    <PackedPolicySize>6</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#;

    #[test]
    fn a_success_is_read_whole() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = read_answer(StatusCode::OK, OK.as_bytes(), now).unwrap();
        assert_eq!(s.access_key_id, "ASIAJEXAMPLEXEG2JICEA");
        assert!(s.token.ends_with("EXAMPLEtmsZ&x"), "entities decoded");
        assert_eq!(s.expiration, now + Duration::from_secs(3600));
        assert_eq!(
            s.assumed_role_arn,
            "arn:aws:sts::123456789012:assumed-role/reader/web"
        );
        assert_eq!(s.assumed_role_id, "AROA3XFRBF535PLBIFPI4:web");
        assert!(
            !format!("{s:?}").contains("9drTJ"),
            "Debug hides the secret"
        );
        let partial = OK
            .replace("<SessionToken>", "<Other>")
            .replace("</SessionToken>", "</Other>");
        assert!(matches!(
            read_answer(StatusCode::OK, partial.as_bytes(), now),
            Err(StsError::Unreachable(_))
        ));
    }

    #[test]
    fn errors_are_the_roles_or_the_services() {
        let err = |status: u16, code: &str| {
            let body = format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>m &lt;1&gt;</Message></Error></ErrorResponse>"
            );
            read_answer(
                StatusCode::from_u16(status).unwrap(),
                body.as_bytes(),
                SystemTime::now(),
            )
            .unwrap_err()
        };
        let denied = err(403, "AccessDenied");
        assert!(denied.is_permanent());
        assert_eq!(
            denied,
            StsError::Refused {
                code: "AccessDenied".into(),
                message: "m <1>".into()
            }
        );
        assert_eq!(denied.ec2_code(), "AssumeRoleUnauthorizedAccess");
        assert!(err(400, "ValidationError").is_permanent());
        for (status, code) in [
            (400, "Throttling"),
            (500, "InternalFailure"),
            (403, "ExpiredToken"),
            (403, "SignatureDoesNotMatch"),
        ] {
            let e = err(status, code);
            assert!(!e.is_permanent(), "{code}");
            assert_eq!(e.ec2_code(), "CredentialsUnavailable");
        }
        assert!(matches!(
            read_answer(StatusCode::BAD_GATEWAY, b"<html>", SystemTime::now()),
            Err(StsError::Failed { status: 502, .. })
        ));
    }
}
