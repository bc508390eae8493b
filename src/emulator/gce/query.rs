//! The query options of a metadata request, read and checked once. Pure.

use std::time::Duration;

use super::idtoken::{Format, IdRequest};

/// `alt=`: the form of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alt {
    Json,
    Text,
}

/// `wait_for_change=true` with its companions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    /// Answer at once if the current ETag differs from this one.
    pub last_etag: Option<String>,
    /// Answer with the current value when this has passed.
    pub timeout: Option<Duration>,
}

/// The options that apply to every path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
    pub recursive: bool,
    pub alt: Option<Alt>,
    pub wait: Option<Wait>,
}

/// A query value the service refuses (400), naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {reason}")]
pub struct QueryError {
    pub param: &'static str,
    pub reason: String,
}

fn bad(param: &'static str, reason: impl Into<String>) -> QueryError {
    QueryError {
        param,
        reason: reason.into(),
    }
}

impl Query {
    /// Reads the raw query (`None`: no `?`).
    pub fn parse(raw: Option<&str>) -> Result<Self, QueryError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = decode(k).ok_or_else(|| bad("query", "invalid percent-escape"))?;
            let v = decode(v).ok_or_else(|| bad("query", "invalid percent-escape"))?;
            pairs.push((k, v));
        }
        let mut q = Query {
            pairs,
            ..Default::default()
        };
        q.recursive = q.flag("recursive")?.unwrap_or(false);
        q.alt = match q.get("alt") {
            None => None,
            Some(v) if v.eq_ignore_ascii_case("json") => Some(Alt::Json),
            Some(v) if v.eq_ignore_ascii_case("text") => Some(Alt::Text),
            Some(v) => return Err(bad("alt", format!("{v:?} is neither json nor text"))),
        };
        if q.flag("wait_for_change")?.unwrap_or(false) {
            let last_etag = q.get("last_etag").map(str::to_owned);
            if last_etag.as_deref() == Some("") {
                return Err(bad("last_etag", "is empty"));
            }
            let timeout = match q.get("timeout_sec") {
                None => None,
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n >= 1 => Some(Duration::from_secs(n)),
                    _ => {
                        return Err(bad(
                            "timeout_sec",
                            format!("{v:?} is not a positive number of seconds"),
                        ))
                    }
                },
            };
            q.wait = Some(Wait { last_etag, timeout });
        }
        Ok(q)
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `true`/`false` in any case; anything else is refused.
    fn flag(&self, key: &'static str) -> Result<Option<bool>, QueryError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(bad(key, format!("{v:?} is neither true nor false"))),
        }
    }

    /// `?scopes=a,b` of a token request: the scopes asked for, sorted and without
    /// repeats (so that the same set always finds the same cached token).
    pub fn scopes(&self) -> Result<Option<Vec<String>>, QueryError> {
        let Some(raw) = self.get("scopes") else {
            return Ok(None);
        };
        let mut scopes: Vec<String> = raw
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if scopes.is_empty() {
            return Err(bad("scopes", "names no scope"));
        }
        if let Some(s) = scopes
            .iter()
            .find(|s| !s.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(bad("scopes", format!("{s:?} is not a scope")));
        }
        scopes.sort();
        scopes.dedup();
        Ok(Some(scopes))
    }

    /// `?audience=...&format=...&licenses=...` of an identity request.
    pub fn id_request(&self) -> Result<IdRequest, QueryError> {
        let audience = match self.get("audience") {
            Some(a) if !a.is_empty() => a.to_owned(),
            _ => return Err(bad("audience", "a non-empty audience is required")),
        };
        let format = match self.get("format") {
            None => Format::Standard,
            Some(v) if v.eq_ignore_ascii_case("standard") => Format::Standard,
            Some(v) if v.eq_ignore_ascii_case("full") => Format::Full,
            Some(v) => return Err(bad("format", format!("{v:?} is neither standard nor full"))),
        };
        let licenses = match self.get("licenses") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => return Err(bad("licenses", format!("{v:?} is neither TRUE nor FALSE"))),
        };
        Ok(IdRequest {
            audience,
            format,
            licenses,
        })
    }
}

/// Form decoding of one query component: `+` is a space, `%XX` a byte.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
