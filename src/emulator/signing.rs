//! The emulated instance's signing key and its certificate: what makes EC2's
//! `instance-identity/{pkcs7,rsa2048,signature}`, Azure's attested document and Azure
//! managed-identity tokens verify, as the real services' do against their published
//! certificates. The key is generated once per emulator (or read from the file's
//! `[signing] key_file`); the self-signed certificate is published at
//! [`CERTIFICATE_PATH`] (PEM) and its key set at [`KEYS_PATH`] (JWKS, as Entra ID
//! publishes its token keys), outside every provider's tree.
//!
//! The certificate is a function of the key alone (serial and validity included), so
//! the same key always publishes the same certificate, across reloads and restarts; a
//! key file whose content changes is a different key, and a reload of the emulator file
//! (SIGHUP or an edit) publishes the new one.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use cms::builder::{SignedDataBuilder, SignerInfoBuilder};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::ContentInfo;
use cms::signed_data::{EncapsulatedContentInfo, SignerIdentifier};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::{Signature, SigningKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::asn1::OctetString;
use x509_cert::der::{Any, Encode, EncodePem, Tag};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::Validity;
use x509_cert::Certificate;

/// Where the certificate is published, as PEM.
pub const CERTIFICATE_PATH: &str = "/imds-proxy/certificate.pem";
/// Where the key is published as a JSON Web Key Set (`kid`, `x5t`, `x5c`).
pub const KEYS_PATH: &str = "/imds-proxy/keys";
/// Size of a generated key, and the least a key file may hold.
const KEY_BITS: usize = 2048;
/// The certificate's validity: fixed, not from its making, so that one key always
/// makes the same certificate (2024-01-01 to 2049-12-31, the last year X.509's
/// UTCTime holds).
const NOT_BEFORE: Duration = Duration::from_secs(1_704_067_200);
const NOT_AFTER: Duration = Duration::from_secs(2_524_607_999);
/// The certificate's subject: says whose it is.
const SUBJECT: &str = "CN=metadata.imds-proxy.invalid,O=imds-proxy emulator";

/// Why the signing key or its certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} holds no RSA private key in PKCS#8 (or PKCS#1) PEM")]
    Parse(PathBuf),
    #[error("the signing key has {0} bits; at least {KEY_BITS} are needed")]
    TooSmall(usize),
    #[error("cannot generate an RSA key")]
    Generate(#[source] rsa::Error),
    #[error("cannot make the certificate")]
    Certificate(#[source] x509_cert::builder::Error),
    #[error("cannot encode the certificate or a signed document")]
    Encode(#[source] x509_cert::der::Error),
    /// The CMS builder's error is not a `std::error::Error`: its text is kept.
    #[error("cannot sign the document: {0}")]
    Sign(String),
}

/// The key, its certificate, and the forms clients fetch them in.
pub struct InstanceKey {
    signer: SigningKey<Sha256>,
    certificate: Certificate,
    certificate_pem: String,
    /// SHA-1 thumbprint of the certificate, base64url: a JWT's `x5t` and `kid`.
    thumbprint: String,
    /// SHA-256 of the public key (its SubjectPublicKeyInfo, DER): which key this is.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceKey")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl InstanceKey {
    /// A new random key (takes a moment: call it off the request path).
    pub fn generate() -> Result<Self, SigningError> {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), KEY_BITS)
            .map_err(SigningError::Generate)?;
        Self::from_key(key)
    }

    /// The key in a PEM file (PKCS#8, or PKCS#1).
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| SigningError::Read(path.to_owned(), e))?;
        let key = RsaPrivateKey::from_pkcs8_pem(&text)
            .ok()
            .or_else(|| RsaPrivateKey::from_pkcs1_pem(&text).ok())
            .ok_or_else(|| SigningError::Parse(path.to_owned()))?;
        Self::from_key(key)
    }

    /// Wraps a key in hand and makes its self-signed certificate.
    pub fn from_key(key: RsaPrivateKey) -> Result<Self, SigningError> {
        if key.size() * 8 < KEY_BITS {
            return Err(SigningError::TooSmall(key.size() * 8));
        }
        let signer = SigningKey::<Sha256>::new(key);
        let subject = Name::from_str(SUBJECT).map_err(SigningError::Encode)?;
        let spki = SubjectPublicKeyInfoOwned::from_key(signer.as_ref().to_public_key())
            .map_err(|e| SigningError::Certificate(e.into()))?;
        let fingerprint: [u8; 32] =
            Sha256::digest(spki.to_der().map_err(SigningError::Encode)?).into();
        // The serial comes from the key, so the certificate does too.
        let mut serial = fingerprint[..8].to_vec();
        serial[0] &= 0x7f; // positive
        serial[0] |= 0x01; // no leading zero byte
        let time = |since_epoch| {
            x509_cert::der::asn1::UtcTime::from_unix_duration(since_epoch)
                .map(x509_cert::time::Time::UtcTime)
                .map_err(SigningError::Encode)
        };
        let validity = Validity {
            not_before: time(NOT_BEFORE)?,
            not_after: time(NOT_AFTER)?,
        };
        let builder = CertificateBuilder::new(
            Profile::Root,
            SerialNumber::new(&serial).map_err(SigningError::Encode)?,
            validity,
            subject,
            spki,
            &signer,
        )
        .map_err(SigningError::Certificate)?;
        let certificate = builder
            .build::<Signature>()
            .map_err(SigningError::Certificate)?;
        let der = certificate.to_der().map_err(SigningError::Encode)?;
        let certificate_pem = certificate
            .to_pem(x509_cert::der::pem::LineEnding::LF)
            .map_err(SigningError::Encode)?;
        let thumbprint = URL_SAFE_NO_PAD.encode(sha1_digest(&der));
        Ok(Self {
            signer,
            certificate,
            certificate_pem,
            thumbprint,
            fingerprint,
        })
    }

    /// SHA-256 of the public key: equal for the same key, whatever file it came from.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The key as a JSON Web Key Set, the shape Entra ID publishes its keys in.
    pub fn key_set(&self) -> Value {
        let public = self.signer.as_ref().to_public_key();
        let der = self.certificate.to_der().unwrap_or_default();
        json!({"keys": [{
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.thumbprint,
            "x5t": self.thumbprint,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            "x5c": [STANDARD.encode(der)],
        }]})
    }

    /// RSA PKCS#1 v1.5 with SHA-256 over `data` (EC2's `signature`).
    pub fn sign_raw(&self, data: &[u8]) -> Vec<u8> {
        self.signer.sign(data).to_vec()
    }

    /// `claims` as an RS256 JWT whose `kid` and `x5t` name this certificate.
    pub fn jwt(&self, claims: &Value) -> String {
        let header =
            json!({"typ": "JWT", "alg": "RS256", "x5t": self.thumbprint, "kid": self.thumbprint});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = URL_SAFE_NO_PAD.encode(self.sign_raw(input.as_bytes()));
        format!("{input}.{sig}")
    }

    /// A PKCS#7 (CMS) signedData over `content`, DER, with this certificate in it:
    /// `attached` holds the content (Azure's attested document), detached does not
    /// (EC2's `pkcs7` and `rsa2048`, verified with `openssl smime -verify -content`).
    pub fn pkcs7(&self, content: &[u8], attached: bool) -> Result<Vec<u8>, SigningError> {
        let octets = || -> Result<Any, SigningError> {
            let o = OctetString::new(content).map_err(SigningError::Encode)?;
            Any::new(Tag::OctetString, o.as_bytes()).map_err(SigningError::Encode)
        };
        let econtent = if attached { Some(octets()?) } else { None };
        let info = EncapsulatedContentInfo {
            econtent_type: const_oid::db::rfc5911::ID_DATA,
            econtent,
        };
        let digest = Sha256::digest(content);
        let sha256 = AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ID_SHA_256,
            parameters: None,
        };
        let tbs = &self.certificate.tbs_certificate;
        let sid = SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer.clone(),
            serial_number: tbs.serial_number.clone(),
        });
        let signer_info = SignerInfoBuilder::new(
            &self.signer,
            sid,
            sha256.clone(),
            &info,
            (!attached).then_some(&digest[..]),
        )
        .map_err(|e| SigningError::Sign(e.to_string()))?;
        let signed: ContentInfo = SignedDataBuilder::new(&info)
            .add_digest_algorithm(sha256)
            .map_err(|e| SigningError::Sign(e.to_string()))?
            .add_certificate(CertificateChoices::Certificate(self.certificate.clone()))
            .map_err(|e| SigningError::Sign(e.to_string()))?
            .add_signer_info::<_, Signature>(signer_info)
            .map_err(|e| SigningError::Sign(e.to_string()))?
            .build()
            .map_err(|e| SigningError::Sign(e.to_string()))?;
        signed.to_der().map_err(SigningError::Encode)
    }
}

/// `[signing]` of the emulator file: the key the instance signs with, if the file names
/// one (`key_file`, read each time the file is); otherwise one is generated per
/// emulator.
#[derive(Debug, Clone, Default)]
pub struct SigningConfig {
    pub key_file: Option<PathBuf>,
    pub key: Option<std::sync::Arc<InstanceKey>>,
}

/// Two configs are the same when they name the same file holding the same key: a key
/// file replaced at the same path is a change, and a reload puts the new key in force.
impl PartialEq for SigningConfig {
    fn eq(&self, other: &Self) -> bool {
        let key = |c: &Self| c.key.as_ref().map(|k| k.fingerprint());
        self.key_file == other.key_file && key(self) == key(other)
    }
}

impl SigningConfig {
    /// Reads `[signing]`: `key_file` only; the key is loaded now, so a bad file is
    /// refused with the rest of the file's problems.
    pub fn from_value(v: toml::Value) -> Result<Self, Vec<String>> {
        let Some(t) = v.as_table() else {
            return Err(vec!["must be a table".into()]);
        };
        let mut problems: Vec<String> = t
            .keys()
            .filter(|k| k.as_str() != "key_file")
            .map(|k| format!("{k}: unknown key (known: key_file)"))
            .collect();
        let mut out = Self::default();
        match t.get("key_file") {
            None => {}
            Some(toml::Value::String(path)) => match InstanceKey::load(Path::new(path)) {
                Ok(k) => {
                    out.key_file = Some(PathBuf::from(path));
                    out.key = Some(std::sync::Arc::new(k));
                }
                Err(e) => problems.push(format!("key_file: {}", crate::errors::error_chain(&e))),
            },
            Some(_) => problems.push("key_file: must be a path".into()),
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }
}

/// The key in force: the file's, else one generated once per emulator (made in the
/// background at start, so the first signed answer does not wait for it).
#[derive(Debug, Clone, Default)]
pub struct Keys {
    generated: std::sync::Arc<tokio::sync::OnceCell<std::sync::Arc<InstanceKey>>>,
}

impl Keys {
    /// Starts making the generated key (needs a tokio runtime; without one, the first
    /// use makes it).
    pub fn prepare(&self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let keys = self.clone();
            rt.spawn(async move {
                if let Err(e) = keys.generated().await {
                    tracing::warn!(error = %crate::errors::error_chain(&e), "cannot make the emulator's signing key");
                }
            });
        }
    }

    /// The key `cfg` signs with.
    pub async fn get(
        &self,
        cfg: &SigningConfig,
    ) -> Result<std::sync::Arc<InstanceKey>, SigningError> {
        match &cfg.key {
            Some(k) => Ok(k.clone()),
            None => self.generated().await,
        }
    }

    async fn generated(&self) -> Result<std::sync::Arc<InstanceKey>, SigningError> {
        self.generated
            .get_or_try_init(|| async {
                tokio::task::spawn_blocking(InstanceKey::generate)
                    .await
                    .map_err(|e| SigningError::Sign(e.to_string()))?
                    .map(std::sync::Arc::new)
            })
            .await
            .cloned()
    }
}

/// Keys holding one key made once per test binary (making one takes a moment).
#[cfg(test)]
pub fn test_keys() -> Keys {
    static KEY: std::sync::OnceLock<std::sync::Arc<InstanceKey>> = std::sync::OnceLock::new();
    let key = KEY
        .get_or_init(|| std::sync::Arc::new(InstanceKey::generate().expect("an RSA key")))
        .clone();
    Keys {
        generated: std::sync::Arc::new(tokio::sync::OnceCell::new_with(Some(key))),
    }
}

/// Base64 in lines of 64, as EC2 serves `pkcs7` and `rsa2048` (PEM's body).
pub fn base64_lines(der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    text.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sha1_digest(data: &[u8]) -> [u8; 20] {
    use sha1::Digest as _;
    sha1::Sha1::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::OnceLock;

    /// The test binary's one key.
    pub(crate) fn key() -> &'static InstanceKey {
        static KEY: OnceLock<std::sync::Arc<InstanceKey>> = OnceLock::new();
        KEY.get_or_init(|| {
            let keys = test_keys();
            keys.generated.get().expect("made").clone()
        })
    }

    fn pem(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            base64_lines(der)
        )
    }

    /// `openssl smime -verify` as EC2's and Azure's documentation tell a user to run it;
    /// its output (the content) or its error.
    fn openssl_verify(dir: &Path, pkcs7: &str, content: Option<&[u8]>) -> Result<Vec<u8>, String> {
        std::fs::write(dir.join("cert.pem"), key().certificate_pem()).unwrap();
        std::fs::write(dir.join("sig.p7"), pkcs7).unwrap();
        let mut args: Vec<String> = ["smime", "-verify", "-in", "sig.p7", "-inform", "PEM"]
            .map(String::from)
            .to_vec();
        if let Some(c) = content {
            std::fs::write(dir.join("content"), c).unwrap();
            args.extend(["-content".into(), "content".into()]);
        }
        args.extend(
            [
                "-certfile",
                "cert.pem",
                "-CAfile",
                "cert.pem",
                "-purpose",
                "any",
            ]
            .map(String::from),
        );
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    #[test]
    fn a_detached_pkcs7_verifies_with_openssl_against_the_certificate_and_only_its_document() {
        let dir = tempfile::tempdir().unwrap();
        let doc = b"{\n  \"accountId\" : \"123456789012\"\n}";
        let p7 = pem("PKCS7", &key().pkcs7(doc, false).unwrap());
        openssl_verify(dir.path(), &p7, Some(doc)).unwrap();
        let forged = b"{\n  \"accountId\" : \"999999999999\"\n}";
        assert!(openssl_verify(dir.path(), &p7, Some(forged)).is_err());
    }

    #[test]
    fn an_attached_pkcs7_verifies_and_yields_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let doc = br#"{"nonce":"1234567890","vmId":"x"}"#;
        let p7 = pem("PKCS7", &key().pkcs7(doc, true).unwrap());
        assert_eq!(openssl_verify(dir.path(), &p7, None).unwrap(), doc);
    }

    #[test]
    fn a_raw_signature_and_a_jwt_verify_with_the_published_key() {
        use rsa::signature::Verifier;
        let public =
            rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key().signer.as_ref().to_public_key());
        let sig = Signature::try_from(key().sign_raw(b"doc").as_slice()).unwrap();
        public.verify(b"doc", &sig).unwrap();
        assert!(public.verify(b"dog", &sig).is_err());
        let jwt = key().jwt(&json!({"aud": "x"}));
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = Signature::try_from(URL_SAFE_NO_PAD.decode(sig).unwrap().as_slice()).unwrap();
        public.verify(input.as_bytes(), &sig).unwrap();
        let set = key().key_set();
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(jwt.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["kid"], set["keys"][0]["kid"]);
        assert_eq!(header["alg"], "RS256");
    }

    #[test]
    fn a_key_file_in_the_file_is_the_key_and_a_bad_one_is_named() {
        use rsa::pkcs8::EncodePrivateKey;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let pem = key()
            .signer
            .as_ref()
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        std::fs::write(&path, pem.as_bytes()).unwrap();
        let text = format!("[signing]\nkey_file = {:?}\n", path.to_str().unwrap());
        let cfg = crate::emulator::EmulatorConfig::parse(&text, &|_| None).unwrap();
        let loaded = cfg.signing.key.expect("loaded");
        assert_eq!(
            loaded.key_set()["keys"][0]["n"],
            key().key_set()["keys"][0]["n"]
        );
        std::fs::write(&path, "not a key").unwrap();
        let e = crate::emulator::EmulatorConfig::parse(&text, &|_| None).unwrap_err();
        assert!(e[0].starts_with("signing.key_file: "), "{e:?}");
        let e =
            crate::emulator::EmulatorConfig::parse("[signing]\nkey = 1\n", &|_| None).unwrap_err();
        assert!(e[0].starts_with("signing.key: unknown key"), "{e:?}");
    }

    /// `key` as a PKCS#8 PEM file at `path`.
    fn write_key(path: &Path, key: &InstanceKey) {
        use rsa::pkcs8::EncodePrivateKey;
        let pem = key
            .signer
            .as_ref()
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        std::fs::write(path, pem.as_bytes()).unwrap();
    }

    /// A second key, unlike the test binary's one.
    fn other_key() -> &'static InstanceKey {
        static KEY: OnceLock<InstanceKey> = OnceLock::new();
        KEY.get_or_init(|| InstanceKey::generate().expect("an RSA key"))
    }

    fn parse(text: &str) -> Result<crate::emulator::EmulatorConfig, Vec<String>> {
        crate::emulator::EmulatorConfig::parse(text, &|_| None)
    }

    #[test]
    fn one_key_always_makes_the_same_certificate() {
        let again = InstanceKey::from_key(key().signer.as_ref().clone()).unwrap();
        assert_eq!(again.certificate_pem(), key().certificate_pem());
        assert_eq!(again.key_set(), key().key_set());
        assert_ne!(other_key().certificate_pem(), key().certificate_pem());
        assert_ne!(other_key().fingerprint(), key().fingerprint());
    }

    #[test]
    fn a_key_file_replaced_at_the_same_path_is_a_change_and_the_same_key_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let text = format!(
            "[aws]\n[signing]\nkey_file = {:?}\n",
            path.to_str().unwrap()
        );
        write_key(&path, key());
        let first = parse(&text).unwrap();
        let reread = parse(&text).unwrap();
        assert_eq!(first, reread, "an unchanged key file is no change");
        write_key(&path, other_key());
        let replaced = parse(&text).unwrap();
        assert_ne!(first, replaced, "new content at the same path is a change");
        assert_eq!(
            replaced.signing.key.unwrap().certificate_pem(),
            other_key().certificate_pem()
        );
        for (content, why) in [
            (
                "not a key",
                "holds no RSA private key in PKCS#8 (or PKCS#1) PEM",
            ),
            ("", "holds no RSA private key"),
        ] {
            std::fs::write(&path, content).unwrap();
            let e = parse(&text).unwrap_err();
            let want = format!("signing.key_file: {} {why}", path.display());
            assert!(e.len() == 1 && e[0].starts_with(&want), "{e:?}");
        }
        std::fs::remove_file(&path).unwrap();
        let e = parse(&text).unwrap_err();
        let want = format!("signing.key_file: cannot read {}", path.display());
        assert!(e[0].starts_with(&want), "{e:?}");
    }

    /// What the emulator answers `path` with (status, body).
    async fn fetch(emulator: &crate::emulator::Emulator, path: &str) -> (u16, String) {
        use http_body_util::BodyExt;
        let (method, headers, body) = (
            http::Method::GET,
            http::HeaderMap::new(),
            bytes::Bytes::new(),
        );
        let path = crate::request::canonical::CanonicalPath::parse(path).unwrap();
        let identity = crate::providers::identity::Identity::default();
        let req = crate::emulator::EmuRequest {
            method: &method,
            path: &path,
            query: None,
            headers: &headers,
            body: &body,
            identity: &identity,
            deadline: std::time::Instant::now() + Duration::from_secs(5),
        };
        let (parts, body) = emulator.answer(&req).await.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status.as_u16(),
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    /// Whether EC2's `signature` of the served document verifies with `key`.
    async fn ec2_signed_by(emulator: &crate::emulator::Emulator, key: &InstanceKey) -> bool {
        use rsa::signature::Verifier;
        let (_, doc) = fetch(emulator, "/latest/dynamic/instance-identity/document").await;
        let (status, sig) = fetch(emulator, "/latest/dynamic/instance-identity/signature").await;
        assert_eq!(status, 200, "{sig}");
        let sig = STANDARD.decode(sig.replace('\n', "")).unwrap();
        let public =
            rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.signer.as_ref().to_public_key());
        public
            .verify(
                doc.as_bytes(),
                &Signature::try_from(sig.as_slice()).unwrap(),
            )
            .is_ok()
    }

    #[tokio::test]
    async fn a_reload_with_a_new_key_file_publishes_its_certificate_and_signs_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let aws = crate::emulator::EXAMPLE
            .split("\n[aws]\n")
            .nth(1)
            .expect("the example has [aws]");
        let aws = aws.split("\n[signing]").next().unwrap();
        let text = format!(
            "[aws]\n{aws}\n[signing]\nkey_file = {:?}\n",
            path.to_str().unwrap()
        );
        write_key(&path, key());
        let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(parse(&text).unwrap()));
        let emulator = crate::emulator::Emulator::new(rx);
        let cert = |e| async move { fetch(e, CERTIFICATE_PATH).await.1 };
        assert_eq!(cert(&emulator).await, key().certificate_pem());
        assert!(ec2_signed_by(&emulator, key()).await);

        // As a reload does: the file is read again, and a change replaces the old one.
        let reload = || match parse(&text) {
            Ok(new) => Ok(tx.send_if_modified(|cur| {
                let changed = **cur != new;
                if changed {
                    *cur = std::sync::Arc::new(new.clone());
                }
                changed
            })),
            Err(e) => Err(e),
        };
        assert_eq!(reload(), Ok(false), "the same key changes nothing");
        write_key(&path, other_key());
        assert_eq!(reload(), Ok(true));
        assert_eq!(cert(&emulator).await, other_key().certificate_pem());
        assert!(ec2_signed_by(&emulator, other_key()).await);
        assert!(!ec2_signed_by(&emulator, key()).await);

        // An invalid replacement is refused and the key in force keeps signing.
        std::fs::write(&path, "-----BEGIN PRIVATE KEY-----\nbroken\n").unwrap();
        assert!(reload().is_err());
        assert_eq!(cert(&emulator).await, other_key().certificate_pem());
        assert!(ec2_signed_by(&emulator, other_key()).await);
    }

    #[test]
    fn base64_lines_are_64_wide() {
        let text = base64_lines(&[7u8; 100]);
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(
            STANDARD.decode(text.replace('\n', "")).unwrap(),
            vec![7u8; 100]
        );
    }
}
