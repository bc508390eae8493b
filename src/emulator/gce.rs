//! The emulated Gce metadata service (to be filled in).

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use super::{Ctx, EmuRequest};

/// The `[gce]` section of the emulator file.
#[derive(Debug, Clone, PartialEq)]
pub struct GceConfig {
    raw: toml::Value,
}

impl GceConfig {
    /// Validates the section; every problem, each naming its key below `gce.`.
    pub fn from_value(
        raw: toml::Value,
        _env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<String>> {
        Ok(Self { raw })
    }
}

/// State of the emulated service.
pub struct Gce {}

impl Gce {
    pub fn new(_tokens: std::sync::Arc<super::tokens::TokenCache>) -> Self {
        Self {}
    }

    pub async fn answer(&self, _ctx: &Ctx, _req: &EmuRequest<'_>) -> Response<Full<Bytes>> {
        super::not_found()
    }
}
