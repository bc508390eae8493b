//! Query strings as Azure IMDS reads them. Pure.
//!
//! Names and values are percent-decoded once (`+` is a space, as in any form-encoded
//! query); names match without case; a name given twice — after decoding and case
//! folding — is refused, as IMDS refuses duplicate parameters. Values are taken as
//! sent otherwise, so an unencoded `resource=https://management.azure.com/` and its
//! encoded form read the same.

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("Duplicate query parameter '{0}'")]
    Duplicate(String),
    #[error("The query string is not valid percent-encoded UTF-8")]
    Undecodable,
}

/// A parsed query: names lower-cased, each at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    params: Vec<(String, String)>,
}

impl Query {
    /// Parses the raw query (without `?`).
    pub fn parse(raw: Option<&str>) -> Result<Self, QueryError> {
        let mut params: Vec<(String, String)> = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(name)?.to_lowercase();
            let value = decode(value)?;
            if params.iter().any(|(n, _)| *n == name) {
                return Err(QueryError::Duplicate(name));
            }
            params.push((name, value));
        }
        Ok(Self { params })
    }

    /// The value of `name` (lower case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn decode(s: &str) -> Result<String, QueryError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(QueryError::Undecodable)?;
                let hex = std::str::from_utf8(hex).map_err(|_| QueryError::Undecodable)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| QueryError::Undecodable)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::Undecodable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_and_unencoded_values_read_the_same() {
        for raw in [
            "api-version=2018-02-01&resource=https://management.azure.com/",
            "api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F",
            "API-Version=2018-02-01&&resource=https%3a//management.azure.com/",
        ] {
            let q = Query::parse(Some(raw)).unwrap();
            assert_eq!(q.get("api-version"), Some("2018-02-01"), "{raw}");
            assert_eq!(
                q.get("resource"),
                Some("https://management.azure.com/"),
                "{raw}"
            );
        }
        assert_eq!(Query::parse(None).unwrap().get("resource"), None);
        assert_eq!(Query::parse(Some("a")).unwrap().get("a"), Some(""));
        assert_eq!(Query::parse(Some("a=x=y")).unwrap().get("a"), Some("x=y"));
    }

    #[test]
    fn duplicates_are_found_through_case_and_encoding() {
        for raw in [
            "client_id=a&client_id=b",
            "client_id=a&CLIENT_ID=a",
            "client_id=a&client%5Fid=b",
            "client_id=a&client%5fID",
        ] {
            assert_eq!(
                Query::parse(Some(raw)),
                Err(QueryError::Duplicate("client_id".into())),
                "{raw}"
            );
        }
        for raw in ["a=%zz", "a=%4", "a=%ff"] {
            assert_eq!(
                Query::parse(Some(raw)),
                Err(QueryError::Undecodable),
                "{raw}"
            );
        }
    }
}
