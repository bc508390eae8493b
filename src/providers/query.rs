//! Query strings as the metadata services read them. Pure.

/// `a=1&b=%2F` → `[("a","1"),("b","/")]`: names and values percent-decoded once (an
/// escape that is not valid is kept as written). A part without `=` has an empty value.
pub fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The value of the single parameter `name` (`None` if absent).
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Percent-decodes once; invalid escapes and non-UTF-8 results are kept as written.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_once_and_keeps_bad_escapes() {
        assert_eq!(
            pairs(Some("resource=https://x/&client_id=a%2Db&flag&bad=%zz%4")),
            vec![
                ("resource".into(), "https://x/".into()),
                ("client_id".into(), "a-b".into()),
                ("flag".into(), "".into()),
                ("bad".into(), "%zz%4".into()),
            ]
        );
        assert_eq!(decode("%252F"), "%2F");
        assert_eq!(decode("%ff"), "%ff");
        assert_eq!(pairs(None), vec![]);
        assert_eq!(encode("/subscriptions/a b"), "%2Fsubscriptions%2Fa%20b");
    }
}
