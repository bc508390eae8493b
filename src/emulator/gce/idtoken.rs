//! ID tokens (`.../identity?audience=...`): RS256 JWTs with the claims Compute Engine
//! puts in them, signed by a key the emulator holds and publishes, so that a test can
//! verify them as a relying party would verify Google's.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Size of a generated key, and the least a key file may hold.
pub const KEY_BITS: usize = 2048;

/// Why the signing key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdKeyError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} holds no RSA private key in PKCS#8 (or PKCS#1) PEM")]
    Parse(PathBuf),
    #[error("the key has {0} bits; at least {KEY_BITS} are needed")]
    TooSmall(usize),
    #[error("cannot generate an RSA key")]
    Generate(#[source] rsa::Error),
    #[error("cannot encode the public key")]
    Encode(#[source] rsa::pkcs8::spki::Error),
}

/// The key ID tokens are signed with, its id (`kid`) and its public half in PEM.
pub struct IdKey {
    signer: rsa::pkcs1v15::SigningKey<Sha256>,
    kid: String,
    public_pem: String,
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdKey").field("kid", &self.kid).finish()
    }
}

/// Two keys are the same key when their public halves are.
impl PartialEq for IdKey {
    fn eq(&self, other: &Self) -> bool {
        self.public_pem == other.public_pem
    }
}

impl IdKey {
    /// A new random key (takes a moment: call it off the request path).
    pub fn generate() -> Result<Self, IdKeyError> {
        let key =
            RsaPrivateKey::new(&mut rand::thread_rng(), KEY_BITS).map_err(IdKeyError::Generate)?;
        Self::from_key(key)
    }

    /// The key in a PEM file (PKCS#8, or PKCS#1 as older tools write).
    pub fn load(path: &Path) -> Result<Self, IdKeyError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| IdKeyError::Read(path.to_owned(), e))?;
        let key = RsaPrivateKey::from_pkcs8_pem(&text)
            .ok()
            .or_else(|| RsaPrivateKey::from_pkcs1_pem(&text).ok())
            .ok_or_else(|| IdKeyError::Parse(path.to_owned()))?;
        Self::from_key(key)
    }

    /// Wraps a key already in hand (at least `KEY_BITS` bits).
    pub fn from_key(key: RsaPrivateKey) -> Result<Self, IdKeyError> {
        let bits = key.size() * 8;
        if bits < KEY_BITS {
            return Err(IdKeyError::TooSmall(bits));
        }
        let public = key.to_public_key();
        let der = public.to_public_key_der().map_err(IdKeyError::Encode)?;
        let kid = hex(&Sha256::digest(der.as_bytes())[..20]);
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(IdKeyError::Encode)?;
        Ok(Self {
            signer: rsa::pkcs1v15::SigningKey::new(key),
            kid,
            public_pem,
        })
    }

    /// The key id in every token's header and in the published key set.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `-----BEGIN PUBLIC KEY-----...` (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The published key set: `{"<kid>": "<PEM>"}`, what google-auth's
    /// `jwt.decode(token, certs=...)` takes.
    pub fn key_set(&self) -> Value {
        json!({ &self.kid: &self.public_pem })
    }

    /// `claims` as a compact RS256 JWT.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.signer.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

/// `format=` of an identity request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Who the token is for and whom it names.
    Standard,
    /// Standard plus the `google.compute_engine` claim (project and instance).
    Full,
}

/// What one identity request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRequest {
    pub audience: String,
    pub format: Format,
    /// `licenses=TRUE`: the full format also names the instance's license ids.
    pub licenses: bool,
}

/// A service account's numeric id when the file names none: 21 digits, like Google's,
/// derived from the email so that it is the same on every start.
pub fn derived_unique_id(email: &str) -> String {
    let digest = Sha256::digest(email.to_ascii_lowercase().as_bytes());
    let n = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
    format!("1{:020}", n % 10u128.pow(20))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
