//! Reading one TOML table key by key, so that a config file gets every problem at once,
//! each under its full key path (`instance.network_interfaces[0].mtu: ...`), instead of
//! the first one serde would stop at.

use std::collections::BTreeMap;
use std::fmt::Display;

/// One table being read: where it sits in the file, and the problems found so far.
pub(super) struct Fields<'a> {
    table: &'a toml::Table,
    prefix: String,
}

/// Every problem found in a section, each starting with its key path.
pub(super) type Problems = Vec<String>;

impl<'a> Fields<'a> {
    pub(super) fn new(table: &'a toml::Table, prefix: impl Into<String>) -> Self {
        Self {
            table,
            prefix: prefix.into(),
        }
    }

    /// The full path of `key` in this table.
    pub(super) fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// Records a problem with `key`.
    pub(super) fn problem(&self, p: &mut Problems, key: &str, msg: impl Display) {
        p.push(format!("{}: {msg}", self.path(key)));
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.table.get(key)
    }

    /// Every key that is not in `known` is a problem (a typo must not pass silently).
    pub(super) fn refuse_unknown(&self, p: &mut Problems, known: &[&str]) {
        for k in self.table.keys() {
            if !known.contains(&k.as_str()) {
                self.problem(p, k, "unknown key");
            }
        }
    }

    /// A string, or `None` (absent, or not a string: then a problem).
    pub(super) fn string(&self, p: &mut Problems, key: &str) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(s) => Some(s.clone()),
            other => {
                self.problem(
                    p,
                    key,
                    format!("must be a string, not {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A string that must be there.
    pub(super) fn required_string(&self, p: &mut Problems, key: &str) -> Option<String> {
        if self.get(key).is_none() {
            self.problem(p, key, "missing");
            return None;
        }
        self.string(p, key)
    }

    /// A whole number in `range`.
    pub(super) fn integer(
        &self,
        p: &mut Problems,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        match self.get(key)? {
            toml::Value::Integer(i) if range.contains(i) => Some(*i),
            toml::Value::Integer(i) => {
                self.problem(
                    p,
                    key,
                    format!("{i} is out of range {}..={}", range.start(), range.end()),
                );
                None
            }
            other => {
                self.problem(
                    p,
                    key,
                    format!("must be an integer, not {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A non-negative 64-bit number, written as an integer or as a string of digits
    /// (TOML integers stop at 2^63, GCE ids do not).
    pub(super) fn number(&self, p: &mut Problems, key: &str) -> Option<u64> {
        match self.get(key)? {
            toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
            toml::Value::String(s) => match parse_digits(s) {
                Some(n) => Some(n),
                None => {
                    self.problem(p, key, format!("{s:?} is not a number"));
                    None
                }
            },
            other => {
                self.problem(
                    p,
                    key,
                    format!("must be a non-negative number, not {other}"),
                );
                None
            }
        }
    }

    pub(super) fn boolean(&self, p: &mut Problems, key: &str) -> Option<bool> {
        match self.get(key)? {
            toml::Value::Boolean(b) => Some(*b),
            other => {
                self.problem(p, key, format!("must be true or false, not {other}"));
                None
            }
        }
    }

    /// A list of strings; absent is empty.
    pub(super) fn strings(&self, p: &mut Problems, key: &str) -> Vec<String> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let Some(items) = v.as_array() else {
            self.problem(p, key, "must be a list of strings");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => p.push(format!("{}[{i}]: must be a string", self.path(key))),
            }
        }
        out
    }

    /// A table of string values (metadata attributes); absent is empty.
    pub(super) fn string_map(&self, p: &mut Problems, key: &str) -> BTreeMap<String, String> {
        let Some(v) = self.get(key) else {
            return BTreeMap::new();
        };
        let Some(t) = v.as_table() else {
            self.problem(p, key, "must be a table of strings");
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (k, v) in t {
            match v.as_str() {
                Some(s) => {
                    out.insert(k.clone(), s.to_owned());
                }
                None => p.push(format!("{}.{k}: must be a string", self.path(key))),
            }
        }
        out
    }

    /// A sub-table, read as its own `Fields`.
    pub(super) fn table(&self, p: &mut Problems, key: &str) -> Option<Fields<'a>> {
        match self.get(key)? {
            toml::Value::Table(t) => Some(Fields::new(t, self.path(key))),
            _ => {
                self.problem(p, key, "must be a table");
                None
            }
        }
    }

    /// An array of tables (`[[x]]`), each read as its own `Fields`; absent is empty.
    pub(super) fn tables(&self, p: &mut Problems, key: &str) -> Vec<Fields<'a>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let Some(items) = v.as_array() else {
            self.problem(p, key, "must be a list of tables");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.path(key));
            match item.as_table() {
                Some(t) => out.push(Fields::new(t, path)),
                None => p.push(format!("{path}: must be a table")),
            }
        }
        out
    }
}

/// `"123"` → 123; anything but plain ASCII digits is `None`.
pub(super) fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Metadata keys as Compute Engine accepts them: `[a-zA-Z0-9-_]{1,127}`, values up to
/// 256 KiB.
pub fn attributes(f: &Fields, p: &mut Problems, key: &str) -> BTreeMap<String, String> {
    let map = f.string_map(p, key);
    for (k, v) in &map {
        let path = format!("{}.{k}", f.path(key));
        if k.len() >= 128
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            p.push(format!(
                "{path}: a metadata key is 1-127 letters, digits, '-' or '_'"
            ));
        }
        if v.len() > 256 * 1024 {
            p.push(format!("{path}: a metadata value is at most 256 KiB"));
        }
    }
    map
}

pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
