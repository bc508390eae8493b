//! What a request is, before anyone decides about it: its path in the one canonical
//! form everything reads ([`canonical`]) and the provider whose protocol it speaks. A
//! leaf: it imports nothing of ours.

pub mod canonical;

use canonical::CanonicalPath;

/// Which metadata protocol a request speaks, judged from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Azure,
    Gce,
    Aws,
    /// `/` and anything else: no provider's tree.
    Other,
}

impl Provider {
    /// Lower case, as logs and metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Azure => "azure",
            Provider::Gce => "gce",
            Provider::Aws => "aws",
            Provider::Other => "other",
        }
    }

    /// Azure under `/metadata`, GCE under `/computeMetadata`, AWS under `/latest` or a
    /// dated version (`/2021-07-15/...`).
    pub fn of(path: &CanonicalPath) -> Self {
        match path.lower().first().map(String::as_str) {
            Some("metadata") => Provider::Azure,
            Some("computemetadata") => Provider::Gce,
            Some("latest") => Provider::Aws,
            Some(s) if is_dated_version(s) => Provider::Aws,
            _ => Provider::Other,
        }
    }
}

fn is_dated_version(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_are_told_apart_by_path() {
        let p = |raw: &str| Provider::of(&CanonicalPath::parse(raw).unwrap());
        assert_eq!(p("/metadata/instance"), Provider::Azure);
        assert_eq!(p("/computeMetadata/v1/"), Provider::Gce);
        assert_eq!(p("/latest/meta-data/"), Provider::Aws);
        assert_eq!(p("/2009-04-04/meta-data/"), Provider::Aws);
        assert_eq!(p("/2009-04-4x/meta-data/"), Provider::Other);
        assert_eq!(p("/"), Provider::Other);
    }
}
