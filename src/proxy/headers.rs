//! Which headers cross the proxy. Pure.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and are dropped, with any
//! header the `Connection` header names. Everything else passes unchanged, and nothing is
//! added: the metadata services refuse requests that carry `X-Forwarded-For`,
//! `Forwarded` or `Via`, because those mark a request as relayed (an SSRF signature).

use http::header::{HeaderMap, HeaderName, CONNECTION};

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The headers of `headers` that may be forwarded to the next hop.
pub fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) || named_by_connection.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn provider_headers_pass_unchanged() {
        let h = map(&[
            ("metadata", "true"),
            ("metadata-flavor", "Google"),
            ("x-aws-ec2-metadata-token", "AQAE-secret"),
            ("x-aws-ec2-metadata-token-ttl-seconds", "21600"),
            ("host", "169.254.169.254"),
            ("user-agent", "boto3/1.35"),
        ]);
        assert_eq!(end_to_end(&h), h);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("metadata", "true"),
        ]);
        let out = end_to_end(&h);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out["metadata"], "true");
    }

    #[test]
    fn headers_named_by_connection_are_dropped() {
        let h = map(&[
            ("connection", "close, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("accept", "*/*"),
        ]);
        let out = end_to_end(&h);
        assert!(out.get("x-secret-hop").is_none());
        assert_eq!(out["accept"], "*/*");
    }

    #[test]
    fn repeated_headers_keep_every_value_in_order() {
        let h = map(&[("accept", "a"), ("accept", "b")]);
        let out = end_to_end(&h);
        let vals: Vec<_> = out.get_all("accept").iter().collect();
        assert_eq!(vals, ["a", "b"]);
    }

    #[test]
    fn nothing_marks_the_request_as_relayed() {
        let out = end_to_end(&map(&[("metadata", "true")]));
        for h in ["x-forwarded-for", "forwarded", "via", "x-real-ip"] {
            assert!(out.get(h).is_none(), "{h} added");
        }
    }
}
