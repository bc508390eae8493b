//! One canonical form of a request path, decided before any policy runs and forwarded
//! upstream as is, so the policy and the metadata service can never read a path two
//! ways.
//!
//! Past bypasses this closes: a backslash path that a filter passed and the service
//! normalised to the token endpoint (CVE-2022-23551, aad-pod-identity), and percent-,
//! dot- or slash-tricks of the same kind. The rules:
//! - percent-escapes are decoded once (invalid escapes are refused); `\` (also `%5C`)
//!   is a separator; repeated separators collapse; `.` and `..` segments are resolved
//!   and can never climb above the root;
//! - control characters, and segments with trailing spaces or dots (which some
//!   servers strip), are refused;
//! - the result is re-encoded so that the upstream's single decode yields exactly the
//!   segments the policy saw; a trailing `/` (a directory listing) is kept.
//!
//! Case is kept (AWS role names are case-sensitive); policies compare without case
//! (Azure paths are not).

use std::fmt;

/// Why a path has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("the path must start with /")]
    NotAbsolute,
    #[error("invalid percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("control character in the path")]
    ControlCharacter,
    #[error("path segment {0:?} ends with a space or dot")]
    TrailingJunk(String),
    #[error("the path is not valid UTF-8 once decoded")]
    NotUtf8,
}

/// A request path in canonical form, with the raw query beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    segments: Vec<String>,
    /// The segments lower-cased, once, where that changes any (the policies, the
    /// provider and the cache all match without case, several times per request).
    lower: Option<Vec<String>>,
    directory: bool,
}

impl CanonicalPath {
    /// Parses the path part of a request target (no query).
    pub fn parse(raw: &str) -> Result<Self, CanonicalError> {
        if !raw.starts_with('/')
            && !raw.starts_with('\\')
            && !raw.starts_with("%5C")
            && !raw.starts_with("%5c")
        {
            return Err(CanonicalError::NotAbsolute);
        }
        let decoded = percent_decode(raw)?;
        if decoded.iter().any(|b| *b < 0x20 || *b == 0x7f) {
            return Err(CanonicalError::ControlCharacter);
        }
        let mut unified = String::from_utf8(decoded).map_err(|_| CanonicalError::NotUtf8)?;
        if unified.contains('\\') {
            unified = unified.replace('\\', "/");
        }
        let mut segments: Vec<String> = Vec::new();
        for seg in unified.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s if s.ends_with(' ') || s.ends_with('.') => {
                    return Err(CanonicalError::TrailingJunk(s.to_owned()))
                }
                s => segments.push(s.to_owned()),
            }
        }
        // `/a/b/` and `/a/b/.` name the directory; `/a/b/..` names `/a/`.
        let last = unified.rsplit('/').next().unwrap_or("");
        let directory = segments.is_empty() || matches!(last, "" | "." | "..");
        Ok(Self::new(segments, directory))
    }

    fn new(segments: Vec<String>, directory: bool) -> Self {
        // Exactly when `str::to_lowercase` would change a segment (titlecase letters
        // included, which are not upper case).
        let changes = |s: &String| s.chars().flat_map(char::to_lowercase).ne(s.chars());
        let lower = segments
            .iter()
            .any(changes)
            .then(|| segments.iter().map(|s| s.to_lowercase()).collect());
        Self {
            segments,
            lower,
            directory,
        }
    }

    /// The segments, decoded.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Lower-case segments, for matching.
    pub fn lower(&self) -> &[String] {
        self.lower.as_deref().unwrap_or(&self.segments)
    }

    /// Whether the path ends with `/` (a directory listing).
    pub fn is_directory(&self) -> bool {
        self.directory
    }

    /// The same path with segment `i` replaced (a proxy rewriting an alias to the name
    /// it stands for). The segment is taken as decoded text.
    pub fn with_segment(&self, i: usize, segment: &str) -> Self {
        let mut segments = self.segments.clone();
        if let Some(s) = segments.get_mut(i) {
            *s = segment.to_owned();
        }
        Self::new(segments, self.directory)
    }
}

/// The canonical path, encoded for the request line.
impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            f.write_str("/")?;
            // Runs of path characters (ASCII, so the run is a whole `str`) at once; each
            // other byte escaped.
            let mut rest = s.as_str();
            while !rest.is_empty() {
                let run = rest.bytes().take_while(|b| is_pchar(*b)).count();
                f.write_str(&rest[..run])?;
                let Some(&b) = rest.as_bytes().get(run) else {
                    break;
                };
                write!(f, "%{b:02X}")?;
                // A byte that is no path character may start a multi-byte character:
                // escape the whole character, byte by byte.
                let width = rest[run..].chars().next().map_or(1, char::len_utf8);
                for b in &rest.as_bytes()[run + 1..run + width] {
                    write!(f, "%{b:02X}")?;
                }
                rest = &rest[run + width..];
            }
        }
        if self.directory {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// Bytes that stand for themselves in a path segment (RFC 3986 pchar, minus `%`).
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

fn percent_decode(raw: &str) -> Result<Vec<u8>, CanonicalError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(CanonicalError::BadEscape(i))?;
            let hex = std::str::from_utf8(hex).map_err(|_| CanonicalError::BadEscape(i))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| CanonicalError::BadEscape(i))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> String {
        CanonicalPath::parse(raw)
            .unwrap_or_else(|e| panic!("{raw}: {e}"))
            .to_string()
    }

    #[test]
    fn tricks_that_reach_the_token_endpoint_all_read_as_the_token_endpoint() {
        let token = "/metadata/identity/oauth2/token";
        for raw in [
            "/metadata/identity/oauth2/token",
            "/metadata/identity\\oauth2\\token", // CVE-2022-23551
            "/metadata/identity%5Coauth2%5ctoken",
            "/metadata/identity%2Foauth2%2ftoken",
            "//metadata///identity//oauth2/token",
            "/metadata/./identity/x/../oauth2/token",
            "/metadata/identity/oauth2/%74oken",
            "/../../metadata/identity/oauth2/token",
            "\\metadata\\identity\\oauth2\\token",
        ] {
            assert_eq!(canon(raw), token, "{raw}");
        }
    }

    #[test]
    fn directories_keep_their_trailing_slash() {
        assert_eq!(canon("/latest/meta-data/"), "/latest/meta-data/");
        assert_eq!(canon("/latest/meta-data"), "/latest/meta-data");
        assert_eq!(canon("/latest/meta-data/iam/.."), "/latest/meta-data/");
        assert_eq!(canon("/"), "/");
        assert_eq!(canon("//"), "/");
        assert_eq!(canon("/.."), "/");
    }

    #[test]
    fn case_is_kept_for_forwarding_and_folded_for_matching() {
        let p = CanonicalPath::parse("/latest/meta-data/iam/security-credentials/MyRole").unwrap();
        assert_eq!(
            p.to_string(),
            "/latest/meta-data/iam/security-credentials/MyRole"
        );
        assert_eq!(p.lower().last().unwrap(), "myrole");
        // Titlecase is not upper case, and still folds; a lower-case path is its own.
        let t = CanonicalPath::parse("/a/\u{1c5}x").unwrap();
        assert_eq!(t.lower(), ["a", "\u{1c6}x"]);
        let l = CanonicalPath::parse("/latest/meta-data").unwrap();
        assert_eq!(l.lower(), l.segments());
    }

    #[test]
    fn the_forwarded_form_decodes_to_what_the_policy_saw() {
        // A literal `%2F` (sent as %252F) stays one segment, and is sent so that the
        // upstream's one decode gives the same literal.
        let p = CanonicalPath::parse("/a/b%252Fc/d%20e").unwrap();
        assert_eq!(p.segments(), ["a", "b%2Fc", "d e"]);
        assert_eq!(p.to_string(), "/a/b%252Fc/d%20e");
        assert_eq!(CanonicalPath::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for (raw, why) in [
            (
                "/metadata/identity/oauth2/token%00",
                CanonicalError::ControlCharacter,
            ),
            (
                "/metadata/identity/oauth2/token%0d%0aX: y",
                CanonicalError::ControlCharacter,
            ),
            ("/a/%zz", CanonicalError::BadEscape(3)),
            ("/a/%4", CanonicalError::BadEscape(3)),
            (
                "/metadata/identity/oauth2/token.",
                CanonicalError::TrailingJunk("token.".into()),
            ),
            (
                "/metadata/identity/oauth2/token%20",
                CanonicalError::TrailingJunk("token ".into()),
            ),
            ("/a/%ff%fe", CanonicalError::NotUtf8),
            ("metadata/identity", CanonicalError::NotAbsolute),
        ] {
            assert_eq!(CanonicalPath::parse(raw), Err(why), "{raw}");
        }
    }
}
