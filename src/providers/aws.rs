//! AWS IMDS: IMDSv2 session tokens are issued and checked here on the host, bound to
//! the calling container, so containers work with the instance's hop limit left at 1
//! (the token's answer never crosses the bridge as a forwarded packet), and a token
//! one container obtained is refused for every other.

use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use sha2::Sha256;

use crate::request::canonical::CanonicalPath;

/// Request header carrying the session token on GETs.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Request header of the token PUT, echoed in its answer.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Longest session IMDS grants (six hours).
pub const MAX_TTL_SECS: u64 = 21_600;

const MAC_LEN: usize = 16;
const TOKEN_BYTES: usize = 8 + 8 + MAC_LEN;

/// A plain-text answer, as IMDS gives every answer.
pub fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts are valid")
}

/// A plain-text answer of text made at run time.
pub fn text_owned(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = text(status, "");
    *r.body_mut() = Full::new(Bytes::from(body.to_owned()));
    r
}

/// AWS's answer for something that does not exist.
pub fn not_found() -> Response<Full<Bytes>> {
    let body = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n <head>\n  <title>404 - Not Found</title>\n </head>\n <body>\n  <h1>404 - Not Found</h1>\n </body>\n</html>\n";
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(http::header::CONTENT_TYPE, "text/html")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts are valid")
}

/// `/latest/api/token`: the only place a session token is issued.
pub fn is_token_path(path: &CanonicalPath) -> bool {
    let l = path.lower();
    l.len() == 3 && l[0] == "latest" && l[1] == "api" && l[2] == "token"
}

/// Issues and checks session tokens. A token is the expiry, a nonce and a MAC over both
/// and the caller it was issued to, under a key that lives only in this process: no
/// state per token, and a restart invalidates every token (the SDKs fetch a new one on
/// 401).
pub struct TokenMint {
    key: [u8; 32],
}

/// What a GET's token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// No token header.
    None,
    Valid,
    /// Malformed, expired, or issued to another caller.
    Invalid,
}

impl Default for TokenMint {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenMint {
    pub fn new() -> Self {
        Self {
            key: rand::random(),
        }
    }

    #[cfg(test)]
    fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, caller: &str, expiry: u64, nonce: u64) -> [u8; MAC_LEN] {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        m.update(caller.as_bytes());
        m.update(&[0]);
        m.update(&expiry.to_be_bytes());
        m.update(&nonce.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// The answer to `PUT /latest/api/token` from `caller` (a stable name of the
    /// container, or of the host). As IMDS: a relayed PUT is refused; the TTL header
    /// is required, 1..=21600; the answer echoes it.
    pub fn issue(
        &self,
        caller: &str,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Response<Full<Bytes>> {
        if headers.contains_key("x-forwarded-for") {
            return text(StatusCode::FORBIDDEN, "Forbidden\n");
        }
        let ttl = headers
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|t| (1..=MAX_TTL_SECS).contains(t));
        let Some(ttl) = ttl else {
            return text(StatusCode::BAD_REQUEST, "Missing or Invalid Parameters\n");
        };
        let expiry = unix(now) + ttl;
        let nonce: u64 = rand::random();
        let mut raw = Vec::with_capacity(TOKEN_BYTES);
        raw.extend_from_slice(&expiry.to_be_bytes());
        raw.extend_from_slice(&nonce.to_be_bytes());
        raw.extend_from_slice(&self.mac(caller, expiry, nonce));
        let token = base64::engine::general_purpose::STANDARD.encode(raw);
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .header(TTL_HEADER, ttl)
            .body(Full::new(Bytes::from(token)))
            .expect("static response parts are valid")
    }

    /// Whether the GET's token was issued to `caller` and is still valid at `now`.
    pub fn check(&self, caller: &str, headers: &HeaderMap, now: SystemTime) -> Session {
        let Some(v) = headers.get(TOKEN_HEADER) else {
            return Session::None;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(v.as_bytes()) else {
            return Session::Invalid;
        };
        if raw.len() != TOKEN_BYTES {
            return Session::Invalid;
        }
        let expiry = u64::from_be_bytes(raw[0..8].try_into().expect("8 bytes"));
        let nonce = u64::from_be_bytes(raw[8..16].try_into().expect("8 bytes"));
        let want = self.mac(caller, expiry, nonce);
        // Constant time: the comparison must not tell how much of a guess was right.
        let diff = want
            .iter()
            .zip(&raw[16..])
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 || expiry <= unix(now) {
            return Session::Invalid;
        }
        Session::Valid
    }

    /// The answer to a request for `caller`, if the token rules decide it here: the
    /// token PUT is answered; a GET with a bad token, or without one where tokens are
    /// required, gets 401. `None`: serve it.
    pub fn gate(
        &self,
        caller: &str,
        method: &Method,
        path: &CanonicalPath,
        headers: &HeaderMap,
        tokens_required: bool,
        now: SystemTime,
    ) -> Option<Response<Full<Bytes>>> {
        if is_token_path(path) {
            return Some(if method == Method::PUT {
                self.issue(caller, headers, now)
            } else {
                text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
            });
        }
        match self.check(caller, headers, now) {
            Session::Valid => None,
            Session::None if !tokens_required => None,
            _ => Some(text(StatusCode::UNAUTHORIZED, "Unauthorized\n")),
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Which role names under `iam/security-credentials/` a caller pinned to `role` may
/// see: only its own. Applied to a real instance's listing.
pub fn visible_roles(listing: &str, role: &str) -> String {
    listing
        .lines()
        .filter(|l| l.trim() == role)
        .map(|l| format!("{}\n", l.trim()))
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// For a caller pinned to `role`: `Some(true)` if `path` reads that role's credentials,
/// `Some(false)` if it reads another role's (refused as absent), `None` if it is not a
/// per-role path.
pub fn reads_role(path: &CanonicalPath, role: &str) -> Option<bool> {
    let segs = path.segments();
    let l = path.lower();
    // /<version>/meta-data/iam/security-credentials/<role>
    if l.len() >= 5 && l[1] == "meta-data" && l[2] == "iam" && l[3] == "security-credentials" {
        return Some(segs[4] == role);
    }
    None
}

/// A path of `/<version>/meta-data/iam/` that an assumed role answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IamPath {
    /// `iam/security-credentials/`: the role names.
    Listing,
    /// `iam/security-credentials/<name>`: whether `<name>` is the caller's role.
    Credentials { own: bool },
    /// `iam/info`.
    Info,
}

/// Which of the role's paths `path` is, for a caller whose role is `role`.
pub fn iam_path(path: &CanonicalPath, role: &str) -> Option<IamPath> {
    let l = path.lower();
    if l.len() < 4 || l[1] != "meta-data" || l[2] != "iam" {
        return None;
    }
    match (l[3].as_str(), l.len()) {
        ("info", 4) => Some(IamPath::Info),
        ("security-credentials", 4) => Some(IamPath::Listing),
        ("security-credentials", 5) => Some(IamPath::Credentials {
            own: path.segments()[4] == role,
        }),
        // Deeper than a role: nothing there.
        ("security-credentials", _) => Some(IamPath::Credentials { own: false }),
        _ => None,
    }
}

/// Whether `path` is the role listing `/<version>/meta-data/iam/security-credentials/`.
pub fn is_role_listing(path: &CanonicalPath) -> bool {
    let l = path.lower();
    l.len() == 4 && l[1] == "meta-data" && l[2] == "iam" && l[3] == "security-credentials"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn body(r: Response<Full<Bytes>>) -> String {
        let b = futures::executor::block_on(http_body_util::BodyExt::collect(r.into_body()))
            .unwrap()
            .to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn the_put_validates_the_ttl_and_echoes_it() {
        let mint = TokenMint::with_key([7; 32]);
        let now = SystemTime::now();
        for (ttl, status) in [
            ("21600", 200),
            ("1", 200),
            ("0", 400),
            ("21601", 400),
            ("x", 400),
            ("", 400),
        ] {
            let r = mint.issue("c:a", &h(&[(TTL_HEADER, ttl)]), now);
            assert_eq!(r.status(), status, "ttl {ttl:?}");
            if status == 200 {
                assert_eq!(r.headers()[TTL_HEADER], ttl);
            }
        }
        assert_eq!(mint.issue("c:a", &HeaderMap::new(), now).status(), 400);
        let relayed = h(&[(TTL_HEADER, "60"), ("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(mint.issue("c:a", &relayed, now).status(), 403);
    }

    #[test]
    fn a_token_is_good_only_for_its_caller_and_its_lifetime() {
        let mint = TokenMint::with_key([7; 32]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tok = body(mint.issue("c:a", &h(&[(TTL_HEADER, "60")]), now));
        let with = h(&[(TOKEN_HEADER, &tok)]);
        assert_eq!(mint.check("c:a", &with, now), Session::Valid);
        assert_eq!(
            mint.check("c:a", &with, now + Duration::from_secs(59)),
            Session::Valid
        );
        assert_eq!(
            mint.check("c:a", &with, now + Duration::from_secs(60)),
            Session::Invalid
        );
        assert_eq!(
            mint.check("c:b", &with, now),
            Session::Invalid,
            "another container"
        );
        assert_eq!(mint.check("host", &with, now), Session::Invalid);
        let other_daemon = TokenMint::with_key([8; 32]);
        assert_eq!(other_daemon.check("c:a", &with, now), Session::Invalid);
        let mut forged = tok.clone().into_bytes();
        forged[3] ^= 1;
        let forged = h(&[(TOKEN_HEADER, std::str::from_utf8(&forged).unwrap())]);
        assert_eq!(mint.check("c:a", &forged, now), Session::Invalid);
        assert_eq!(
            mint.check("c:a", &h(&[(TOKEN_HEADER, "AQAE")]), now),
            Session::Invalid
        );
        assert_eq!(mint.check("c:a", &HeaderMap::new(), now), Session::None);
    }

    #[test]
    fn the_gate_answers_puts_and_refuses_bad_gets() {
        let mint = TokenMint::with_key([1; 32]);
        let now = SystemTime::now();
        let get = |p: &str, hd: &HeaderMap, req: bool| {
            let p = CanonicalPath::parse(p).unwrap();
            mint.gate("c:a", &Method::GET, &p, hd, req, now)
                .map(|r| r.status().as_u16())
        };
        let md = "/latest/meta-data/instance-id";
        assert_eq!(
            get(md, &HeaderMap::new(), false),
            None,
            "IMDSv1 where allowed"
        );
        assert_eq!(get(md, &HeaderMap::new(), true), Some(401));
        assert_eq!(get(md, &h(&[(TOKEN_HEADER, "junk")]), false), Some(401));
        assert_eq!(
            get("/latest/api/token", &HeaderMap::new(), false),
            Some(405)
        );
        let p = CanonicalPath::parse("/latest/api/token").unwrap();
        let r = mint
            .gate("c:a", &Method::PUT, &p, &h(&[(TTL_HEADER, "5")]), true, now)
            .unwrap();
        let tok = body(r);
        assert_eq!(get(md, &h(&[(TOKEN_HEADER, &tok)]), true), None);
    }

    #[test]
    fn an_assumed_role_answers_its_own_iam_paths() {
        let p = |s: &str| iam_path(&CanonicalPath::parse(s).unwrap(), "reader");
        let creds = "/latest/meta-data/iam/security-credentials";
        assert_eq!(p(&format!("{creds}/")), Some(IamPath::Listing));
        assert_eq!(p(creds), Some(IamPath::Listing));
        assert_eq!(
            p(&format!("{creds}/reader")),
            Some(IamPath::Credentials { own: true })
        );
        assert_eq!(
            p(&format!("{creds}/Reader")),
            Some(IamPath::Credentials { own: false })
        );
        assert_eq!(
            p(&format!("{creds}/admin")),
            Some(IamPath::Credentials { own: false })
        );
        assert_eq!(
            p(&format!("{creds}/reader/x")),
            Some(IamPath::Credentials { own: false })
        );
        assert_eq!(p("/2016-09-02/meta-data/iam/info"), Some(IamPath::Info));
        assert_eq!(
            p("/latest/meta-data/iam/"),
            None,
            "the iam/ listing is the instance's"
        );
        assert_eq!(p("/latest/meta-data/instance-id"), None);
        assert_eq!(p("/latest/meta-data/identity-credentials/ec2/info"), None);
    }

    #[test]
    fn a_pinned_caller_sees_only_its_role() {
        assert_eq!(visible_roles("demo-role\nreader\n", "reader"), "reader");
        assert_eq!(visible_roles("demo-role", "reader"), "");
        let p = |s: &str| CanonicalPath::parse(s).unwrap();
        assert_eq!(
            reads_role(
                &p("/latest/meta-data/iam/security-credentials/reader"),
                "reader"
            ),
            Some(true)
        );
        assert_eq!(
            reads_role(
                &p("/latest/meta-data/iam/security-credentials/demo-role"),
                "reader"
            ),
            Some(false)
        );
        assert_eq!(
            reads_role(&p("/latest/meta-data/instance-id"), "reader"),
            None
        );
        assert!(is_role_listing(&p(
            "/latest/meta-data/iam/security-credentials/"
        )));
    }
}
