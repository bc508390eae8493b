//! What Google's clients (google-auth, the Go and Rust metadata clients) rely on, asked
//! of the emulator as they ask it. Shared helpers here; the cases by subject below.

mod config;
mod guest;
mod tokens;
mod tree;
mod wait;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::*;
use crate::emulator::{EmulatorConfig, EXAMPLE};
use crate::providers::identity::Identity;
use crate::request::canonical::CanonicalPath;

const DEFAULT_SA: &str = "demo-vm@demo-project.iam.gserviceaccount.com";
const BATCH_SA: &str = "batch@demo-project.iam.gserviceaccount.com";

/// One RSA key per test binary: generating one takes a while.
pub(super) fn rsa_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap())
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn token_env(name: &str) -> Option<String> {
    (name == ACCESS_TOKEN_ENV).then(|| "ya29.from-env".to_owned())
}

pub(super) fn parse(text: &str) -> Arc<EmulatorConfig> {
    Arc::new(EmulatorConfig::parse(text, &|_| None).unwrap_or_else(|e| panic!("{e:?}")))
}

/// The shipped example with `from` replaced by `to` (which must occur).
fn example_with(from: &str, to: &str) -> Arc<EmulatorConfig> {
    assert!(EXAMPLE.contains(from), "{from}");
    parse(&EXAMPLE.replacen(from, to, 1))
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            "application/json",
            "{}",
            self.body
        );
        serde_json::from_str(&self.body).unwrap()
    }
}

/// An emulator serving one config, with a channel to change it.
struct Scene {
    gce: Gce,
    tx: watch::Sender<Arc<EmulatorConfig>>,
    rx: watch::Receiver<Arc<EmulatorConfig>>,
    env: fn(&str) -> Option<String>,
}

impl Scene {
    fn new(cfg: Arc<EmulatorConfig>) -> Self {
        let gce = Gce::new(TokenCache::new());
        gce.generated
            .set(Arc::new(IdKey::from_key(rsa_key().clone()).unwrap()))
            .unwrap();
        Self::with_gce(cfg, gce)
    }

    fn with_gce(cfg: Arc<EmulatorConfig>, gce: Gce) -> Self {
        let (tx, rx) = watch::channel(cfg);
        Self {
            gce,
            tx,
            rx,
            env: no_env,
        }
    }

    fn example() -> Self {
        Self::new(parse(EXAMPLE))
    }

    async fn get(&self, target: &str) -> Got {
        self.call(
            Method::GET,
            target,
            &Identity::default(),
            Duration::from_secs(5),
        )
        .await
    }

    async fn get_as(&self, account: &str, target: &str) -> Got {
        let who = Identity {
            gce_service_account: Some(account.to_owned()),
            ..Default::default()
        };
        self.call(Method::GET, target, &who, Duration::from_secs(5))
            .await
    }

    async fn call(&self, method: Method, target: &str, who: &Identity, within: Duration) -> Got {
        self.send(method, target, who, within, bytes::Bytes::new())
            .await
    }

    async fn send(
        &self,
        method: Method,
        target: &str,
        who: &Identity,
        within: Duration,
        body: bytes::Bytes,
    ) -> Got {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let path = CanonicalPath::parse(path).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("metadata.google.internal"));
        headers.insert("metadata-flavor", HeaderValue::from_static("Google"));
        let req = EmuRequest {
            method: &method,
            path: &path,
            query,
            headers: &headers,
            body: &body,
            identity: who,
            deadline: Instant::now() + within,
        };
        let ctx = Ctx {
            config: self.rx.borrow().clone(),
            changes: self.rx.clone(),
            now: SystemTime::now(),
            env: self.env,
            keys: crate::emulator::signing::test_keys(),
        };
        let resp = self.gce.answer(&ctx, &req).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }
}

fn sha_etag(body: &str) -> String {
    Reply::new(StatusCode::OK, TEXT, body.to_owned()).etag()
}
