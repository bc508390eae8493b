//! `/metadata/instance`: the document from the file, served as IMDS does — every
//! primitive a string, sub-paths walking keys and list indexes, leaves only with
//! `format=text`. Pure.

use serde_json::{Map, Value as Json};
use toml::{Table, Value};

/// String fields of the real `compute` object (the 2023-07-01 schema). IMDS serves a
/// field it has no value for as `""`, so a file that leaves one out gets `""` too.
const COMPUTE_STRINGS: &[&str] = &[
    "azEnvironment",
    "evictionPolicy",
    "isHostCompatibilityLayerVm",
    "licenseType",
    "location",
    "name",
    "offer",
    "osType",
    "placementGroupId",
    "platformFaultDomain",
    "platformUpdateDomain",
    "priority",
    "provider",
    "publisher",
    "resourceGroupName",
    "resourceId",
    "sku",
    "subscriptionId",
    "tags",
    "userData",
    "version",
    "vmId",
    "vmScaleSetName",
    "vmSize",
    "zone",
];
/// List fields of the real `compute` object, served as `[]` when the file has none.
const COMPUTE_LISTS: &[&str] = &["publicKeys", "tagsList"];

/// The served document for the `[azure.instance]` table: primitives as strings, and
/// the `compute` fields and `network.interface` list a real VM always has.
pub fn document(file: &Table) -> Json {
    let mut doc = match stringified(&Value::Table(file.clone())) {
        Json::Object(m) => m,
        _ => Map::new(),
    };
    let compute = doc
        .entry("compute")
        .or_insert_with(|| Json::Object(Map::new()));
    if let Json::Object(c) = compute {
        for k in COMPUTE_STRINGS {
            c.entry(*k).or_insert_with(|| Json::String(String::new()));
        }
        for k in COMPUTE_LISTS {
            c.entry(*k).or_insert_with(|| Json::Array(Vec::new()));
        }
    }
    let network = doc
        .entry("network")
        .or_insert_with(|| Json::Object(Map::new()));
    if let Json::Object(n) = network {
        n.entry("interface")
            .or_insert_with(|| Json::Array(Vec::new()));
    }
    Json::Object(doc)
}

/// A TOML value as JSON with every primitive a string (IMDS's "data format").
pub fn stringified(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.clone()),
        Value::Integer(n) => Json::String(n.to_string()),
        Value::Float(f) => Json::String(f.to_string()),
        Value::Boolean(b) => Json::String(b.to_string()),
        Value::Datetime(d) => Json::String(d.to_string()),
        Value::Array(a) => Json::Array(a.iter().map(stringified).collect()),
        Value::Table(t) => {
            Json::Object(t.iter().map(|(k, v)| (k.clone(), stringified(v))).collect())
        }
    }
}

/// A TOML value as JSON, keeping its types (scheduled events mix numbers and strings).
pub fn typed_json(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.clone()),
        Value::Integer(n) => Json::from(*n),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::Boolean(b) => Json::Bool(*b),
        Value::Datetime(d) => Json::String(d.to_string()),
        Value::Array(a) => Json::Array(a.iter().map(typed_json).collect()),
        Value::Table(t) => {
            Json::Object(t.iter().map(|(k, v)| (k.clone(), typed_json(v))).collect())
        }
    }
}

/// The node a sub-path names: keys match without case (Azure paths are
/// case-insensitive; an exact match wins), list items by decimal index.
pub fn walk<'a>(doc: &'a Json, path: &[String]) -> Option<&'a Json> {
    path.iter().try_fold(doc, |node, seg| match node {
        Json::Object(m) => m.get(seg.as_str()).or_else(|| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(seg))
                .map(|(_, v)| v)
        }),
        Json::Array(a) => {
            if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            seg.parse::<usize>().ok().and_then(|i| a.get(i))
        }
        _ => None,
    })
}

/// How the caller asked for the answer (`format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

impl Format {
    /// `json` (the default) or `text`, without case; anything else is refused.
    pub fn parse(v: Option<&str>) -> Option<Self> {
        match v {
            None => Some(Format::Json),
            Some(v) if v.eq_ignore_ascii_case("json") => Some(Format::Json),
            Some(v) if v.eq_ignore_ascii_case("text") => Some(Format::Text),
            Some(_) => None,
        }
    }
}

/// What a node is served as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    Json(String),
    Text(String),
    /// A leaf asked for as JSON: IMDS answers 400.
    LeafNeedsText,
}

/// Renders `node` in `format`. A leaf needs `format=text`; `format=text` on a
/// list or object lists its children one a line, those with children of their own
/// suffixed `/` (how IMDS lets a caller drill down, e.g. `tagsList` → `0/`).
pub fn render(node: &Json, format: Format) -> Rendered {
    let is_leaf = |v: &Json| !matches!(v, Json::Object(_) | Json::Array(_));
    let child = |name: String, v: &Json| {
        if is_leaf(v) {
            name
        } else {
            format!("{name}/")
        }
    };
    match (node, format) {
        (Json::String(s), Format::Text) => Rendered::Text(s.clone()),
        (Json::Object(_) | Json::Array(_), Format::Json) => Rendered::Json(node.to_string()),
        (_, Format::Json) => Rendered::LeafNeedsText,
        (Json::Object(m), Format::Text) => Rendered::Text(
            m.iter()
                .map(|(k, v)| child(k.clone(), v))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        (Json::Array(a), Format::Text) => Rendered::Text(
            a.iter()
                .enumerate()
                .map(|(i, v)| child(i.to_string(), v))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        // The document holds no other primitives (all are strings).
        (n, Format::Text) => Rendered::Text(n.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Json {
        let t: Table = toml::from_str(
            r#"
            [compute]
            vmId = "abc"
            platformFaultDomain = 0
            spot = true
            tagsList = [{ name = "env", value = "demo" }]
            [[network.interface]]
            macAddress = "000D3AF806EC"
            ipv4 = { ipAddress = [{ privateIpAddress = "10.0.0.4", publicIpAddress = "203.0.113.20" }] }
            "#,
        )
        .unwrap();
        document(&t)
    }

    fn path(p: &str) -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn primitives_are_strings_and_missing_fields_are_empty() {
        let d = doc();
        assert_eq!(d["compute"]["platformFaultDomain"], "0");
        assert_eq!(d["compute"]["spot"], "true");
        assert_eq!(d["compute"]["location"], "", "missing fields are \"\"");
        assert_eq!(d["compute"]["publicKeys"], Json::Array(vec![]));
        assert_eq!(d["compute"]["tagsList"][0]["name"], "env");
        let empty = document(&Table::new());
        assert_eq!(empty["network"]["interface"], Json::Array(vec![]));
    }

    #[test]
    fn sub_paths_walk_keys_without_case_and_list_indexes() {
        let d = doc();
        for (p, want) in [
            ("compute/vmId", Some("abc")),
            ("COMPUTE/VMID", Some("abc")),
            (
                "network/interface/0/ipv4/ipAddress/0/publicIpAddress",
                Some("203.0.113.20"),
            ),
            ("network/interface/1/macAddress", None),
            ("network/interface/+0/macAddress", None),
            ("compute/vmId/x", None),
            ("compute/nope", None),
        ] {
            assert_eq!(walk(&d, &path(p)).and_then(Json::as_str), want, "{p}");
        }
    }

    #[test]
    fn leaves_need_text_and_text_lists_children() {
        let d = doc();
        let r = |p: &str, f| render(walk(&d, &path(p)).unwrap(), f);
        assert_eq!(
            r("compute/vmId", Format::Text),
            Rendered::Text("abc".into())
        );
        assert_eq!(r("compute/vmId", Format::Json), Rendered::LeafNeedsText);
        assert_eq!(
            r("compute/tagsList", Format::Text),
            Rendered::Text("0/".into())
        );
        assert_eq!(
            r("network/interface/0/ipv4/ipAddress/0", Format::Text),
            Rendered::Text("privateIpAddress\npublicIpAddress".into())
        );
        assert_eq!(
            r("", Format::Text),
            Rendered::Text("compute/\nnetwork/".into())
        );
        let Rendered::Json(j) = r("network", Format::Json) else {
            panic!("json")
        };
        assert!(j.starts_with("{\"interface\":[{"), "{j}");
        assert_eq!(Format::parse(Some("TEXT")), Some(Format::Text));
        assert_eq!(Format::parse(Some("xml")), None);
    }
}
