//! The built-in metadata service: serves GCE, Azure and AWS from one config file where
//! there is no cloud (laptops, CI, Vagrant VMs). Every value comes from the file; the
//! code knows the protocols, not any cloud's data.
//!
//! The proxy has already checked what every provider checks on the way in (headers,
//! `X-Forwarded-For`, AWS session tokens) and which identity the caller may use; the
//! emulator answers the request as that caller's instance would.

pub mod aws;
pub mod azure;
pub mod gce;
pub mod signing;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;

use crate::providers::identity::Identity;
use crate::request::canonical::CanonicalPath;
use crate::request::Provider;
use tokens::TokenCache;

/// The example shipped with the project, built in: what `run` serves when there is no
/// cloud and no `--emulator` file.
pub const EXAMPLE: &str = include_str!("../../examples/emulator.toml");

/// A whole emulator file, validated. A provider left out answers 404 everywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    pub gce: Option<gce::GceConfig>,
    pub azure: Option<azure::AzureConfig>,
    pub aws: Option<aws::AwsConfig>,
    /// The key EC2's and Azure's signed documents and Azure's tokens are signed with.
    pub signing: signing::SigningConfig,
    /// The file it came from (`None`: the built-in example).
    pub file: Option<PathBuf>,
}

/// The file's top level; each provider reads its own section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopLevel {
    gce: Option<toml::Value>,
    azure: Option<toml::Value>,
    aws: Option<toml::Value>,
    signing: Option<toml::Value>,
}

/// Why an emulator file was refused: every problem, each naming its key.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorConfigError {
    #[error("cannot read emulator file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("emulator file {file}: {}", .problems.join("; "))]
    Invalid { file: String, problems: Vec<String> },
}

/// Reads the process environment (the GOOGLE_* fallbacks, `token = { env = ... }`).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl EmulatorConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, EmulatorConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EmulatorConfigError::Read(path.to_owned(), e))?;
        let mut cfg =
            Self::parse(&text, &process_env).map_err(|problems| EmulatorConfigError::Invalid {
                file: path.display().to_string(),
                problems,
            })?;
        cfg.file = Some(path.to_owned());
        Ok(cfg)
    }

    /// The built-in example.
    pub fn example() -> Self {
        Self::parse(EXAMPLE, &process_env).expect("the shipped example validates")
    }

    /// Parses and validates a file's text; every problem at once.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Vec<String>> {
        let top: TopLevel = toml::from_str(text).map_err(|e| vec![toml_error(&e)])?;
        let mut problems = Vec::new();
        fn section<T>(
            problems: &mut Vec<String>,
            name: &str,
            r: Result<T, Vec<String>>,
        ) -> Option<T> {
            r.map_err(|p| problems.extend(p.into_iter().map(|p| format!("{name}.{p}"))))
                .ok()
        }
        let gce = top
            .gce
            .and_then(|v| section(&mut problems, "gce", gce::GceConfig::from_value(v, env)));
        let azure = top.azure.and_then(|v| {
            section(
                &mut problems,
                "azure",
                azure::AzureConfig::from_value(v, env),
            )
        });
        let aws = top
            .aws
            .and_then(|v| section(&mut problems, "aws", aws::AwsConfig::from_value(v, env)));
        let signing = top
            .signing
            .and_then(|v| {
                section(
                    &mut problems,
                    "signing",
                    signing::SigningConfig::from_value(v),
                )
            })
            .unwrap_or_default();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            gce,
            azure,
            aws,
            signing,
            file: None,
        })
    }
}

/// A TOML error on one line: where, and what.
pub fn toml_error(e: &toml::de::Error) -> String {
    e.to_string().replace('\n', " ").trim().to_owned()
}

/// One request, as the emulator sees it.
pub struct EmuRequest<'a> {
    pub method: &'a Method,
    pub path: &'a CanonicalPath,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    /// Which identities the caller is pinned to (labels); `None` fields: the instance's.
    pub identity: &'a Identity,
    /// When the answer is due at the latest (a `wait_for_change` must answer by then).
    pub deadline: Instant,
}

/// What every provider's answer may need besides the request.
pub struct Ctx {
    /// The file in force for this request.
    pub config: Arc<EmulatorConfig>,
    /// Changes of the file (GCE `wait_for_change` wakes on them).
    pub changes: tokio::sync::watch::Receiver<Arc<EmulatorConfig>>,
    pub now: SystemTime,
    pub env: fn(&str) -> Option<String>,
    /// The instance's signing key.
    pub keys: signing::Keys,
}

/// The emulator: the config in force and the state of each provider.
pub struct Emulator {
    config: tokio::sync::watch::Receiver<Arc<EmulatorConfig>>,
    gce: gce::Gce,
    azure: azure::Azure,
    aws: aws::Aws,
    keys: signing::Keys,
}

impl Emulator {
    /// Serves `config` and whatever replaces it.
    pub fn new(config: tokio::sync::watch::Receiver<Arc<EmulatorConfig>>) -> Self {
        let tokens = TokenCache::new();
        let gce = gce::Gce::new(tokens.clone());
        // The ID-token key takes a moment to make: start now, not on the first request.
        if config.borrow().gce.is_some() {
            gce.prepare_identity_key();
        }
        let keys = signing::Keys::default();
        {
            let cfg = config.borrow();
            if cfg.signing.key.is_none() && (cfg.aws.is_some() || cfg.azure.is_some()) {
                keys.prepare();
            }
        }
        Self {
            gce,
            azure: azure::Azure::new(tokens.clone()),
            aws: aws::Aws::new(),
            keys,
            config,
        }
    }

    /// Whether the file requires IMDSv2 session tokens on AWS GETs.
    pub fn aws_tokens_required(&self) -> bool {
        self.config
            .borrow()
            .aws
            .as_ref()
            .is_some_and(|a| a.tokens_required())
    }

    /// The answer to one request.
    pub async fn answer(&self, req: &EmuRequest<'_>) -> Response<Full<Bytes>> {
        let ctx = Ctx {
            config: self.config.borrow().clone(),
            changes: self.config.clone(),
            now: SystemTime::now(),
            env: process_env,
            keys: self.keys.clone(),
        };
        if let Some(r) = self.published(&ctx, req).await {
            return r;
        }
        match Provider::of(req.path) {
            Provider::Gce => self.gce.answer(&ctx, req).await,
            Provider::Azure => self.azure.answer(&ctx, req).await,
            Provider::Aws => self.aws.answer(&ctx, req).await,
            Provider::Other => {
                // `/`: Google's SDKs detect GCE by `GET /` with Metadata-Flavor; AWS
                // lists its versions there.
                let google = req
                    .headers
                    .get("metadata-flavor")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"google"));
                if google && ctx.config.gce.is_some() {
                    self.gce.answer(&ctx, req).await
                } else if ctx.config.aws.is_some() && !google {
                    let mut resp = self.aws.answer(&ctx, req).await;
                    // Go's GCE detection asks `/` without the header and looks for it
                    // in the answer; AWS clients ignore it.
                    if ctx.config.gce.is_some() {
                        resp.headers_mut()
                            .insert("metadata-flavor", http::HeaderValue::from_static("Google"));
                    }
                    resp
                } else {
                    not_found()
                }
            }
        }
    }
}

impl Emulator {
    /// The certificate and key set the signed answers verify against (GET only).
    async fn published(&self, ctx: &Ctx, req: &EmuRequest<'_>) -> Option<Response<Full<Bytes>>> {
        let path = req.path.to_string();
        if path != signing::CERTIFICATE_PATH && path != signing::KEYS_PATH {
            return None;
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            return Some(not_found());
        }
        let (status, content_type, body) = match self.keys.get(&ctx.config.signing).await {
            Ok(k) if path == signing::CERTIFICATE_PATH => (
                StatusCode::OK,
                "application/x-pem-file",
                k.certificate_pem().to_owned(),
            ),
            Ok(k) => (StatusCode::OK, "application/json", k.key_set().to_string()),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{}\n", crate::errors::error_chain(&e)),
            ),
        };
        Some(
            Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body)))
                .expect("static response parts are valid"),
        )
    }
}

/// A plain 404 (a provider left out of the file, or no provider's path).
pub fn not_found() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(b"Not Found\n")))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_validates() {
        let cfg = EmulatorConfig::parse(EXAMPLE, &|_| None).unwrap();
        assert!(cfg.gce.is_some() && cfg.azure.is_some() && cfg.aws.is_some());
    }

    #[test]
    fn unknown_sections_and_bad_toml_are_named() {
        let e = EmulatorConfig::parse("[gcp]\nx = 1\n", &|_| None).unwrap_err();
        assert!(e[0].contains("gcp"), "{e:?}");
        let e = EmulatorConfig::parse("[gce\n", &|_| None).unwrap_err();
        assert!(e[0].contains("line 1"), "{e:?}");
    }
}
