//! Azure IMDS: answers in its shape, and the managed identity a container may use.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::identity::AzureIdentity;
use super::query;
use crate::request::canonical::CanonicalPath;

/// The query parameters that name a user-assigned identity (`mi_res_id` is the older
/// spelling of `msi_res_id`).
const IDENTITY_PARAMS: &[&str] = &["client_id", "object_id", "msi_res_id", "mi_res_id"];

/// An error in IMDS's own shape: `{"error": ..., "error_description": ...}`.
pub fn error(status: StatusCode, code: &str, description: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": code, "error_description": description });
    Response::builder()
        .status(status)
        .header(
            http::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

/// Whether `path` is the managed identity token endpoint.
pub fn is_token_path(path: &CanonicalPath) -> bool {
    let l = path.lower();
    l.len() == 4 && l[0] == "metadata" && l[1] == "identity" && l[2] == "oauth2" && l[3] == "token"
}

/// The token request's query with the caller's identity applied: a container pinned to
/// an identity gets it added when it names none, and IMDS's "Identity not found" when
/// it names another. Unpinned callers pass unchanged. Pure.
pub fn select_identity(
    pinned: Option<&AzureIdentity>,
    query: Option<&str>,
) -> Result<Option<String>, Box<Response<Full<Bytes>>>> {
    let Some(pinned) = pinned else {
        return Ok(query.map(str::to_owned));
    };
    let pairs = query::pairs(query);
    let named: Vec<&(String, String)> = pairs
        .iter()
        // Names compare without case: `CLIENT_ID=` must not slip past as "no identity".
        .filter(|(k, _)| IDENTITY_PARAMS.contains(&k.to_ascii_lowercase().as_str()))
        .collect();
    let not_found = || {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Identity not found",
        )
    };
    match named.as_slice() {
        [] => {
            let (param, value) = if let Some(v) = &pinned.client_id {
                ("client_id", v)
            } else if let Some(v) = &pinned.object_id {
                ("object_id", v)
            } else if let Some(v) = &pinned.msi_res_id {
                ("msi_res_id", v)
            } else {
                return Ok(query.map(str::to_owned));
            };
            let added = format!("{param}={}", query::encode(value));
            Ok(Some(match query {
                Some(q) if !q.is_empty() => format!("{q}&{added}"),
                _ => added,
            }))
        }
        [(k, v)] => {
            let mut asked = AzureIdentity::default();
            let v = Some(v.clone());
            match k.to_ascii_lowercase().as_str() {
                "client_id" => asked.client_id = v,
                "object_id" => asked.object_id = v,
                _ => asked.msi_res_id = v,
            }
            if pinned.is_named_by(&asked) {
                Ok(query.map(str::to_owned))
            } else {
                Err(Box::new(not_found()))
            }
        }
        // Several: IMDS refuses that itself; never let one of them slip past the check.
        _ => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Only one of client_id, object_id or msi_res_id may be specified",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned() -> AzureIdentity {
        AzureIdentity {
            client_id: Some("AAA-1".into()),
            object_id: None,
            msi_res_id: Some("/subscriptions/s/id/reader".into()),
        }
    }

    fn status(
        r: Result<Option<String>, Box<Response<Full<Bytes>>>>,
    ) -> Result<Option<String>, u16> {
        r.map_err(|e| e.status().as_u16())
    }

    #[test]
    fn a_pinned_container_gets_its_identity_and_only_it() {
        let p = pinned();
        let base = "api-version=2018-02-01&resource=https://management.azure.com";
        assert_eq!(
            status(select_identity(Some(&p), Some(base))),
            Ok(Some(format!("{base}&client_id=AAA-1")))
        );
        for ok in [
            "&client_id=aaa-1",
            "&mi_res_id=%2Fsubscriptions%2Fs%2Fid%2Freader",
            "&msi_res_id=/subscriptions/s/id/reader",
        ] {
            let q = format!("{base}{ok}");
            assert_eq!(
                status(select_identity(Some(&p), Some(&q))),
                Ok(Some(q.clone())),
                "{ok}"
            );
        }
        for refused in [
            "&client_id=BBB",
            "&object_id=AAA-1",
            "&msi_res_id=/other",
            "&client_id=AAA-1&client_id=BBB",
        ] {
            let q = format!("{base}{refused}");
            assert_eq!(
                status(select_identity(Some(&p), Some(&q))),
                Err(400),
                "{refused}"
            );
        }
        let only_res = AzureIdentity {
            msi_res_id: Some("/x/y".into()),
            ..Default::default()
        };
        assert_eq!(
            status(select_identity(Some(&only_res), None)),
            Ok(Some("msi_res_id=%2Fx%2Fy".into()))
        );
    }

    #[test]
    fn unpinned_callers_pass_unchanged() {
        let q = "api-version=2018-02-01&resource=r&client_id=BBB";
        assert_eq!(status(select_identity(None, Some(q))), Ok(Some(q.into())));
        assert_eq!(status(select_identity(None, None)), Ok(None));
    }
}
