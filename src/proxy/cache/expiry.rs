//! When a token answer expires, read from the answer itself, and the answer rewritten
//! so that its relative lifetimes count from the moment it is served. Pure.
//!
//! - Azure: `expires_on` (Unix seconds) and `expires_in` (seconds), both usually JSON
//!   strings; the earlier of the two counts.
//! - GCE access token: `expires_in` (seconds, a number).
//! - GCE ID token: the JWT's `exp` claim (the payload is decoded, not verified: the
//!   cache only needs to know how long to hold it).
//! - AWS: `Expiration`, `YYYY-MM-DDTHH:MM:SSZ`.
//!
//! `expires_in` (and Azure's `ext_expires_in`) are relative: a cached answer served
//! later says how much is *left*, never the lifetime it had when fetched. Absolute
//! times (`expires_on`, `Expiration`, `exp`) stay as they are.

use std::ops::Range;

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use super::key::Kind;

/// When an answer expires, as it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expiry {
    /// Seconds after the answer was made (`expires_in`).
    pub relative: Option<u64>,
    /// Unix seconds (`expires_on`, `Expiration`, `exp`).
    pub absolute: Option<u64>,
}

impl Expiry {
    /// Seconds left at `now_unix`, by the earlier of the two; `None` if it gives none.
    pub fn seconds_left(&self, now_unix: u64) -> Option<u64> {
        let absolute = self.absolute.map(|a| a.saturating_sub(now_unix));
        match (self.relative, absolute) {
            (Some(r), Some(a)) => Some(r.min(a)),
            (r, a) => r.or(a),
        }
    }
}

/// A relative field of the answer: where its value is and what it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relative {
    /// The value's bytes in the body (quotes included when it is a string).
    pub span: Range<usize>,
    /// Written as a JSON string (Azure) rather than a number (GCE).
    pub quoted: bool,
    pub field: Field,
}

/// Which relative field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The token's own lifetime: served as the seconds it has left.
    ExpiresIn,
    /// Azure's extended lifetime (this many seconds from when it was fetched): served
    /// less the answer's age.
    ExtExpiresIn(u64),
}

/// What the cache learnt from a token answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub expiry: Expiry,
    /// Fields to rewrite when the answer is served, in body order.
    pub relative: Vec<Relative>,
}

/// The expiry of a `200` answer of `kind`, or `None` if the answer is not a token the
/// cache can hold (no expiry it can read, or a relative field it could not rewrite).
pub fn parse(kind: Kind, body: &[u8]) -> Option<Parsed> {
    match kind {
        Kind::AzureToken | Kind::GceToken => {
            let v: Value = serde_json::from_slice(body).ok()?;
            let o = v.as_object()?;
            o.get("access_token")?.as_str().filter(|t| !t.is_empty())?;
            let members = members(body)?;
            let mut relative = Vec::new();
            let expires_in = match o.get("expires_in") {
                None => None,
                Some(v) => {
                    let secs = number(v)?;
                    let span = find(body, &members, "expires_in")?;
                    relative.push(Relative {
                        quoted: body[span.start] == b'"',
                        span,
                        field: Field::ExpiresIn,
                    });
                    Some(secs)
                }
            };
            let mut expiry = Expiry {
                relative: expires_in,
                absolute: None,
            };
            if kind == Kind::AzureToken {
                expiry.absolute = match o.get("expires_on") {
                    None => None,
                    Some(v) => Some(number(v)?),
                };
                if let (Some(secs), Some(span)) = (
                    o.get("ext_expires_in").and_then(number),
                    find(body, &members, "ext_expires_in"),
                ) {
                    relative.push(Relative {
                        quoted: body[span.start] == b'"',
                        span,
                        field: Field::ExtExpiresIn(secs),
                    });
                }
            }
            if expiry.relative.is_none() && expiry.absolute.is_none() {
                return None;
            }
            relative.sort_by_key(|r| r.span.start);
            Some(Parsed { expiry, relative })
        }
        Kind::GceIdToken => Some(Parsed {
            expiry: Expiry {
                relative: None,
                absolute: Some(jwt_exp(body)?),
            },
            relative: Vec::new(),
        }),
        Kind::AwsCredentials => {
            let v: Value = serde_json::from_slice(body).ok()?;
            if v.get("Code").is_some_and(|c| c != "Success") {
                return None;
            }
            v.get("AccessKeyId")?.as_str().filter(|k| !k.is_empty())?;
            Some(Parsed {
                expiry: Expiry {
                    relative: None,
                    absolute: Some(parse_utc(v.get("Expiration")?.as_str()?)?),
                },
                relative: Vec::new(),
            })
        }
        Kind::Document => None,
    }
}

/// The body with each relative field rewritten: `ExpiresIn` to `left` seconds,
/// `ExtExpiresIn` less `age` seconds. One allocation; the body as it is when there is
/// nothing to rewrite.
pub fn rewrite(body: &Bytes, relative: &[Relative], left: u64, age: u64) -> Bytes {
    if relative.is_empty() {
        return body.clone();
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut at = 0;
    for r in relative {
        out.extend_from_slice(&body[at..r.span.start]);
        let secs = match r.field {
            Field::ExpiresIn => left,
            Field::ExtExpiresIn(orig) => orig.saturating_sub(age),
        };
        if r.quoted {
            out.push(b'"');
        }
        out.extend_from_slice(secs.to_string().as_bytes());
        if r.quoted {
            out.push(b'"');
        }
        at = r.span.end;
    }
    out.extend_from_slice(&body[at..]);
    Bytes::from(out)
}

/// A whole number of seconds, as a JSON number or a string of digits.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The `exp` claim of a JWT (`header.payload.signature`, base64url).
fn jwt_exp(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let mut parts = text.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let claims: Value = serde_json::from_slice(&engine.decode(payload).ok()?).ok()?;
    claims.get("exp")?.as_u64()
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` as Unix seconds.
pub fn parse_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let fraction = &s[19..s.len() - 1];
    if !(fraction.is_empty()
        || fraction.starts_with('.')
            && fraction.len() > 1
            && fraction[1..].bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let n = |r: Range<usize>| -> Option<u64> {
        let t = &s[r];
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, sec) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let month_days = [
        31,
        28 + u64::from(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || d == 0
        || d > month_days[mo as usize - 1]
    {
        return None;
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_since_epoch(y as i64, mo as i64, d as i64);
    Some(days as u64 * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_since_epoch(y: i64, m: i64, d: i64) -> i64 {
    // Count years from March, so that the leap day ends the year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// One member of the top-level JSON object: its key (raw, between the quotes) and its
/// value's span.
type Member = (Range<usize>, Range<usize>);

/// The members of a top-level JSON object, found by scanning (serde_json does not
/// say where a value is); `None` if the text is not such an object.
fn members(body: &[u8]) -> Option<Vec<Member>> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(body, i + 1);
    let mut out = Vec::new();
    if body.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let key = i..string_end(body, i)?;
        i = skip_ws(body, key.end);
        if body.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(body, i + 1);
        let end = value_end(body, start)?;
        out.push((key, start..end));
        i = skip_ws(body, end);
        match body.get(i) {
            Some(b',') => i = skip_ws(body, i + 1),
            Some(b'}') => return Some(out),
            _ => return None,
        }
    }
}

/// The span of the value whose key is exactly `name` (written without escapes).
fn find(body: &[u8], members: &[Member], name: &str) -> Option<Range<usize>> {
    members
        .iter()
        .find(|(k, _)| &body[k.start + 1..k.end - 1] == name.as_bytes())
        .map(|(_, v)| v.clone())
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while body
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// One past the closing quote of the string starting at `i`.
fn string_end(body: &[u8], i: usize) -> Option<usize> {
    if body.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match body.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// One past the end of the JSON value starting at `i`.
fn value_end(body: &[u8], i: usize) -> Option<usize> {
    match body.get(i)? {
        b'"' => string_end(body, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match body.get(j)? {
                    b'"' => {
                        j = string_end(body, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while body
                .get(j)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
#[path = "expiry_tests.rs"]
mod tests;
