//! The metadata tree one caller sees, built from the config, and its three renderings:
//! a directory listing, the recursive JSON (camelCase keys) and the recursive text
//! (`path value` lines). Pure.
//!
//! A caller pinned to a service account (label `imds-proxy.gce.service-account`) sees
//! that account only, as `default` and by its email; an account the file does not
//! list means no account at all. Everyone else sees the instance's default account as
//! `default` and every account by its email.

use serde_json::{json, Map, Value};

use super::config::{GceConfig, ServiceAccount};
use crate::providers::identity::Identity;

/// One node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Leaf(Leaf),
    Dir(Dir),
    /// Answered per request: listed, never part of a recursive answer.
    Dynamic(Dynamic),
}

/// A value and how its text form is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf {
    Str(String),
    Num(u64),
    /// Newline-separated in text (`scopes`, `aliases`), an array in JSON.
    Lines(Vec<String>),
    /// A JSON array in text too (`tags`).
    JsonList(Vec<String>),
}

/// The per-request endpoints of a service account, by its index in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dynamic {
    Token(usize),
    Identity(usize),
    /// `instance/guest-attributes/`: written by the guest, held by the service.
    GuestAttributes,
}

/// A directory: named entries in listing order; `array` ones render as JSON arrays.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dir {
    pub array: bool,
    pub entries: Vec<Entry>,
}

/// One entry: its path segment, its JSON key and its node.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub key: String,
    pub node: Node,
}

impl Dir {
    fn object() -> Self {
        Self::default()
    }

    /// A fixed name: kebab-case in paths, camelCase in JSON.
    fn with(mut self, name: &str, node: Node) -> Self {
        self.entries.push(Entry {
            name: name.to_owned(),
            key: camel(name),
            node,
        });
        self
    }

    fn with_opt(self, name: &str, node: Option<Node>) -> Self {
        match node {
            Some(n) => self.with(name, n),
            None => self,
        }
    }

    /// A user's key (attributes, accounts): the same in paths and JSON.
    fn keyed(mut self, name: &str, node: Node) -> Self {
        self.entries.push(Entry {
            name: name.to_owned(),
            key: name.to_owned(),
            node,
        });
        self
    }

    fn array(items: impl IntoIterator<Item = Node>) -> Self {
        Self {
            array: true,
            entries: items
                .into_iter()
                .enumerate()
                .map(|(i, node)| Entry {
                    name: i.to_string(),
                    key: i.to_string(),
                    node,
                })
                .collect(),
        }
    }

    /// Listing order: names sorted (arrays keep index order).
    fn sorted(mut self) -> Self {
        if !self.array {
            self.entries.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self
    }

    fn node(self) -> Node {
        Node::Dir(self.sorted())
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.node)
    }
}

fn s(v: impl Into<String>) -> Node {
    Node::Leaf(Leaf::Str(v.into()))
}

fn n(v: u64) -> Node {
    Node::Leaf(Leaf::Num(v))
}

/// `numeric-project-id` → `numericProjectId`.
pub fn camel(kebab: &str) -> String {
    let mut out = String::with_capacity(kebab.len());
    let mut upper = false;
    for c in kebab.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The accounts `who` sees: (name in the tree, index in the config), each account
/// under its email and the caller's default account also as `default`.
pub fn visible_accounts(cfg: &GceConfig, who: &Identity) -> Vec<(String, usize)> {
    let accounts = &cfg.service_accounts;
    let find = |email: &str| {
        accounts
            .iter()
            .position(|a| a.email.eq_ignore_ascii_case(email))
    };
    match &who.gce_service_account {
        Some(email) => match find(email) {
            Some(i) => vec![("default".into(), i), (accounts[i].email.clone(), i)],
            None => Vec::new(),
        },
        None => {
            let mut v: Vec<(String, usize)> = accounts
                .iter()
                .enumerate()
                .map(|(i, a)| (a.email.clone(), i))
                .collect();
            if let Some(i) = accounts.iter().position(|a| a.default) {
                v.push(("default".into(), i));
            }
            v
        }
    }
}

/// Whether `who` gets account `i` as its `default`.
fn is_callers_default(cfg: &GceConfig, who: &Identity, i: usize) -> bool {
    match &who.gce_service_account {
        Some(email) => cfg.service_accounts[i].email.eq_ignore_ascii_case(email),
        None => cfg.service_accounts[i].default,
    }
}

fn account_dir(cfg: &GceConfig, who: &Identity, i: usize, a: &ServiceAccount) -> Node {
    let aliases = if is_callers_default(cfg, who, i) {
        vec!["default".to_owned()]
    } else {
        Vec::new()
    };
    let mut d = Dir::object()
        .with("aliases", Node::Leaf(Leaf::Lines(aliases)))
        .with("email", s(&a.email))
        .with("scopes", Node::Leaf(Leaf::Lines(a.scopes.clone())))
        .with("token", Node::Dynamic(Dynamic::Token(i)));
    if cfg.identity.is_some() {
        d = d.with("identity", Node::Dynamic(Dynamic::Identity(i)));
    }
    d.node()
}

/// The whole tree `who` sees, from `/` down.
pub fn root(cfg: &GceConfig, who: &Identity) -> Node {
    let num = cfg.numeric_project_id;
    let inst = &cfg.instance;
    let attrs = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .fold(Dir::object(), |d, (k, v)| d.keyed(k, s(v)))
            .node()
    };
    let nics = Dir::array(inst.network_interfaces.iter().map(|nic| {
        let access = Dir::array(nic.external_ips.iter().map(|ip| {
            Dir::object()
                .with("external-ip", s(ip.to_string()))
                .with("type", s("ONE_TO_ONE_NAT"))
                .node()
        }));
        // GCE's resolver is the metadata server; the alias and forwarding lists are
        // empty on an instance that has none.
        Dir::object()
            .with("access-configs", Node::Dir(access))
            .with(
                "dns-servers",
                Node::Leaf(Leaf::Lines(vec!["169.254.169.254".into()])),
            )
            .with("forwarded-ips", Node::Dir(Dir::array([])))
            .with_opt("gateway", nic.gateway.map(|g| s(g.to_string())))
            .with("ip-aliases", Node::Dir(Dir::array([])))
            .with("target-instance-ips", Node::Dir(Dir::array([])))
            .with("ip", s(nic.ip.to_string()))
            .with("mac", s(&nic.mac))
            .with_opt("mtu", nic.mtu.map(|m| n(m.into())))
            .with("network", s(&nic.network))
            .with_opt("subnetmask", nic.subnetmask.map(|m| s(m.to_string())))
            .node()
    }));
    let disks = Dir::array(inst.disks.iter().map(|d| {
        Dir::object()
            .with("device-name", s(&d.device_name))
            .with("index", n(d.index.into()))
            .with("interface", s(&d.interface))
            .with("mode", s(&d.mode))
            .with("type", s(&d.kind))
            .node()
    }));
    let accounts = visible_accounts(cfg, who)
        .into_iter()
        .fold(Dir::object(), |d, (name, i)| {
            d.keyed(&name, account_dir(cfg, who, i, &cfg.service_accounts[i]))
        });
    let upper = |b: bool| s(if b { "TRUE" } else { "FALSE" });
    let scheduling = Dir::object()
        .with("automatic-restart", upper(inst.automatic_restart))
        .with("on-host-maintenance", s(&inst.on_host_maintenance))
        .with("preemptible", upper(inst.preemptible));
    let mut instance = Dir::object()
        .with("attributes", attrs(&inst.attributes))
        .with("description", s(&inst.description))
        .with("guest-attributes", Node::Dynamic(Dynamic::GuestAttributes))
        .with("maintenance-event", s(&inst.maintenance_event))
        .with("preempted", upper(inst.preempted))
        .with("scheduling", scheduling.node())
        .with(
            "virtual-clock",
            Dir::object().with("drift-token", s("0")).node(),
        )
        .with_opt("cpu-platform", inst.cpu_platform.as_ref().map(s))
        .with("disks", Node::Dir(disks))
        .with("hostname", s(&inst.hostname))
        .with("id", n(inst.id))
        .with_opt("image", inst.image.as_ref().map(s))
        .with(
            "machine-type",
            s(format!("projects/{num}/machineTypes/{}", inst.machine_type)),
        )
        .with("name", s(&inst.name))
        .with("network-interfaces", Node::Dir(nics))
        .with("service-accounts", accounts.node())
        .with("tags", Node::Leaf(Leaf::JsonList(inst.tags.clone())))
        .with("zone", s(format!("projects/{num}/zones/{}", inst.zone)));
    if !inst.licenses.is_empty() {
        let licenses = Dir::array(
            inst.licenses
                .iter()
                .map(|l| Dir::object().with("id", s(l)).node()),
        );
        instance = instance.with("licenses", Node::Dir(licenses));
    }
    let project = Dir::object()
        .with("attributes", attrs(&cfg.project_attributes))
        .with("numeric-project-id", n(num))
        .with("project-id", s(&cfg.project_id));
    let v1 = Dir::object()
        .with("instance", instance.node())
        .with("project", project.node())
        .with_opt(
            "universe",
            cfg.universe_domain
                .as_ref()
                .map(|u| Dir::object().with("universe-domain", s(u)).node()),
        );
    Dir::object()
        .with(
            "computeMetadata",
            Dir::object().with("v1", v1.node()).node(),
        )
        .node()
}

/// The node at `segments` below `node`.
pub fn resolve<'a>(node: &'a Node, segments: &[String]) -> Option<&'a Node> {
    segments.iter().try_fold(node, |node, seg| match node {
        Node::Dir(d) => d.get(seg),
        _ => None,
    })
}

impl Leaf {
    /// What a plain GET of the leaf returns.
    pub fn text(&self) -> String {
        match self {
            Leaf::Str(v) => v.clone(),
            Leaf::Num(v) => v.to_string(),
            Leaf::Lines(v) => v.iter().map(|l| format!("{l}\n")).collect(),
            Leaf::JsonList(v) => json!(v).to_string(),
        }
    }

    pub fn json(&self) -> Value {
        match self {
            Leaf::Str(v) => json!(v),
            Leaf::Num(v) => json!(v),
            Leaf::Lines(v) | Leaf::JsonList(v) => json!(v),
        }
    }

    /// The values a recursive text answer prints, one line each.
    fn values(&self) -> Vec<String> {
        match self {
            Leaf::Str(v) => vec![v.clone()],
            Leaf::Num(v) => vec![v.to_string()],
            Leaf::Lines(v) | Leaf::JsonList(v) => v.clone(),
        }
    }
}

/// A directory listing: one name a line, sub-directories with a trailing `/`.
pub fn listing(dir: &Dir) -> String {
    dir.entries
        .iter()
        .map(|e| match e.node {
            Node::Dir(_) | Node::Dynamic(Dynamic::GuestAttributes) => format!("{}/\n", e.name),
            _ => format!("{}\n", e.name),
        })
        .collect()
}

/// The listing as a JSON array of the same names (`alt=json` without `recursive`).
pub fn listing_json(dir: &Dir) -> Value {
    Value::Array(
        listing(dir)
            .lines()
            .map(|l| Value::String(l.to_owned()))
            .collect(),
    )
}

/// The subtree as JSON, with camelCase keys; per-request endpoints left out.
pub fn to_json(node: &Node) -> Value {
    match node {
        Node::Leaf(l) => l.json(),
        Node::Dynamic(_) => Value::Null,
        Node::Dir(d) if d.array => {
            Value::Array(d.entries.iter().map(|e| to_json(&e.node)).collect())
        }
        Node::Dir(d) => Value::Object(
            d.entries
                .iter()
                .filter(|e| !matches!(e.node, Node::Dynamic(_)))
                .map(|e| (e.key.clone(), to_json(&e.node)))
                .collect::<Map<String, Value>>(),
        ),
    }
}

/// The subtree as text: a `path value` line per value, paths relative to the node and
/// kebab-case; a list prints one line per item under the same path.
pub fn to_text(node: &Node) -> String {
    fn walk(node: &Node, path: &str, out: &mut String) {
        match node {
            Node::Leaf(l) => {
                for v in l.values() {
                    out.push_str(path);
                    out.push(' ');
                    out.push_str(&v);
                    out.push('\n');
                }
            }
            Node::Dynamic(_) => {}
            Node::Dir(d) => {
                for e in &d.entries {
                    let sub = if path.is_empty() {
                        e.name.clone()
                    } else {
                        format!("{path}/{}", e.name)
                    };
                    walk(&e.node, &sub, out);
                }
            }
        }
    }
    match node {
        Node::Leaf(l) => l.text(),
        _ => {
            let mut out = String::new();
            walk(node, "", &mut out);
            out
        }
    }
}
