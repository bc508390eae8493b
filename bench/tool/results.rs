//! A run's results directory: one file per measurement, `key=value` lines (wrk's lines
//! from `bench/wrk-report.lua`, the burst's from `bench burst`, the harness's own for
//! memory and the machine). Other lines (wrk's human summary) are ignored.

use std::collections::BTreeMap;
use std::path::Path;

/// Every measurement of a run, by file stem, then key.
#[derive(Debug, Default)]
pub struct Results(BTreeMap<String, BTreeMap<String, String>>);

impl Results {
    /// Reads every `*.txt` file of `dir`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let mut all = BTreeMap::new();
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
                .path();
            let (Some(stem), Some("txt")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            all.insert(stem.to_owned(), parse(&text));
        }
        Ok(Self(all))
    }

    /// Results from in-memory texts (tests).
    #[cfg(test)]
    pub fn from_texts(files: &[(&str, &str)]) -> Self {
        Self(
            files
                .iter()
                .map(|(name, text)| ((*name).to_owned(), parse(text)))
                .collect(),
        )
    }

    /// The value of `key` in measurement `file`, if it was recorded.
    pub fn text(&self, file: &str, key: &str) -> Option<&str> {
        self.0.get(file)?.get(key).map(String::as_str)
    }

    /// The value of `key` in `file` as a number, if it was recorded and is one.
    pub fn num(&self, file: &str, key: &str) -> Option<f64> {
        self.text(file, key)?
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
    }

    /// Every `key` of `file` that starts with `prefix`, with its value.
    pub fn with_prefix<'a>(&'a self, file: &str, prefix: &'a str) -> Vec<(&'a str, &'a str)> {
        self.0
            .get(file)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `key=value` lines; a key is lower-case letters, digits and `_`; the last one wins.
fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once('=')?;
            let key_ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            key_ok.then(|| (k.to_owned(), v.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_key_value_lines_count() {
        let r = Results::from_texts(&[(
            "w",
            "Running 5s test @ http://x/\n  Latency 1ms\nrps=123.5\np99_us=40\nNon-2xx or 3xx responses: 3\nkernel=6.1.0-1 (x=y)\n",
        )]);
        assert_eq!(r.num("w", "rps"), Some(123.5));
        assert_eq!(r.num("w", "p99_us"), Some(40.0));
        assert_eq!(r.text("w", "kernel"), Some("6.1.0-1 (x=y)"));
        assert_eq!(r.num("w", "kernel"), None);
        assert_eq!(r.num("w", "missing"), None);
        assert_eq!(r.num("other", "rps"), None);
    }

    #[test]
    fn prefixed_keys_are_listed() {
        let r = Results::from_texts(&[("b", "fail_reset=2\nfail_timeout=1\nok=5\n")]);
        assert_eq!(
            r.with_prefix("b", "fail_"),
            vec![("reset", "2"), ("timeout", "1")]
        );
    }
}
