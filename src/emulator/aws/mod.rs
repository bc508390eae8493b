//! The emulated Aws metadata service (to be filled in).

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use super::{Ctx, EmuRequest};

/// The `[aws]` section of the emulator file.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsConfig {
    raw: toml::Value,
}

impl AwsConfig {
    /// Validates the section; every problem, each naming its key below `aws.`.
    pub fn from_value(
        raw: toml::Value,
        _env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<String>> {
        Ok(Self { raw })
    }
}

/// State of the emulated service.
#[derive(Default)]
pub struct Aws {}

impl Aws {
    pub fn new() -> Self {
        Self {}
    }

    pub async fn answer(&self, _ctx: &Ctx, _req: &EmuRequest<'_>) -> Response<Full<Bytes>> {
        super::not_found()
    }
}
