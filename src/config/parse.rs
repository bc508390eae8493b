//! Readers of single values: each takes a raw value (TOML from the file, or text from a
//! flag or variable) and gives the typed value or the reason it is refused.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::time::Duration;

use super::{Raw, TableOwner};
use crate::addrs::{IMDS_V4, IMDS_V6};
use crate::ifname::{BridgePattern, IFNAMSIZ};

/// Link-local addresses that clouds use for their own services; the proxy must not take
/// them or the host would lose the service.
const RESERVED_LINK_LOCAL: &[(Ipv4Addr, &str)] = &[
    (IMDS_V4, "the metadata service itself"),
    (Ipv4Addr::new(169, 254, 169, 253), "AWS DNS resolver"),
    (Ipv4Addr::new(169, 254, 169, 123), "AWS time service"),
    (Ipv4Addr::new(169, 254, 170, 2), "ECS task credentials"),
    (Ipv4Addr::new(169, 254, 170, 23), "EKS pod identity"),
    (Ipv4Addr::new(169, 254, 169, 252), "GKE metadata server"),
    (Ipv4Addr::new(169, 254, 20, 10), "node-local DNS"),
];

/// IPv6 service addresses of clouds, likewise.
const RESERVED_UNIQUE_LOCAL: &[(Ipv6Addr, &str)] = &[
    (IMDS_V6, "the AWS metadata service itself"),
    (
        Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
        "the GCE metadata server",
    ),
];

/// AWS puts its IPv6 services (metadata, DNS, time, EKS pod identity at fd00:ec2::23)
/// in this /32.
const AWS_SERVICE_PREFIX: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0), 32);

/// A string, from the file or as given.
pub fn text(r: &Raw) -> Result<String, String> {
    match r {
        Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => Ok(s.clone()),
        Raw::Toml(v) => Err(format!("expected a string, got {}", v.type_str())),
    }
}

/// A list of texts: comma-separated in a flag or variable, a TOML array in the file.
/// `what` names the items for the error.
fn text_list(r: &Raw, what: &str) -> Result<Vec<String>, String> {
    match r {
        Raw::Text(s) => Ok(s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect()),
        Raw::Toml(toml::Value::Array(a)) => a.iter().map(|v| text(&Raw::Toml(v.clone()))).collect(),
        Raw::Toml(v) => Err(format!("expected a list of {what}, got {}", v.type_str())),
    }
}

/// A whole number, from the file or as text.
fn integer(r: &Raw) -> Result<i64, String> {
    match r {
        Raw::Toml(toml::Value::Integer(i)) => Ok(*i),
        Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a whole number")),
        Raw::Toml(v) => Err(format!("expected a whole number, got {}", v.type_str())),
    }
}

/// Milliseconds within `min..=max`.
pub fn millis(r: &Raw, min: i64, max: i64) -> Result<Duration, String> {
    let n = integer(r)?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} ms is outside {min}..={max} ms"));
    }
    Ok(Duration::from_millis(n as u64))
}

/// Bytes within `min..=max`.
pub fn size(r: &Raw, min: i64, max: i64) -> Result<usize, String> {
    let n = integer(r)?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} bytes is outside {min}..={max} bytes"));
    }
    Ok(n as usize)
}

/// The cache's cap on keys: at least one, at most a million (each holds a token of a
/// few KiB, or a document).
pub fn entries(r: &Raw) -> Result<usize, String> {
    let n = integer(r)?;
    if !(1..=1_000_000).contains(&n) {
        return Err(format!("{n} entries is outside 1..=1000000"));
    }
    Ok(n as usize)
}

/// `true` or `false` (and, as text, 1/0, yes/no, on/off).
pub fn bool_value(r: &Raw) -> Result<bool, String> {
    match r {
        Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
        Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => {
            match s.trim().to_ascii_lowercase().as_str() {
                // An empty value (`VAR=` in a unit file, an unset compose variable) must not
                // switch anything on: it is refused rather than guessed.
                "" => Err("empty value; write true or false".into()),
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!("{s:?} is not true or false")),
            }
        }
        Raw::Toml(v) => Err(format!("expected true or false, got {}", v.type_str())),
    }
}

/// The real service's base URL: `http://host[:port]`, nothing more.
pub fn upstream(r: &Raw) -> Result<http::Uri, String> {
    let s = text(r)?;
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "{s:?}: scheme {other:?} is not supported; metadata services speak plain http"
            ))
        }
        None => {
            return Err(format!(
                "{s:?}: missing scheme, e.g. http://169.254.169.254"
            ))
        }
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(format!("{s:?}: missing host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("{s:?}: credentials in the URL are not supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{s:?}: give only scheme, host and port; the container's path is forwarded as is"
        ));
    }
    Ok(uri)
}

/// Where the management listener listens: a loopback address and port, or `off`.
pub fn metrics_listen(r: &Raw) -> Result<Option<std::net::SocketAddr>, String> {
    let s = text(r)?;
    if s.trim() == "off" {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address:port (e.g. 127.0.0.1:9469) or off"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: metrics and health checks are for the host alone"
        ));
    }
    Ok(Some(addr))
}

/// A service endpoint: `http://` or `https://`, host and optional port (and path).
pub fn endpoint(r: &Raw) -> Result<http::Uri, String> {
    let s = text(r)?;
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{s:?}: give an http:// or https:// URL"));
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(format!("{s:?}: missing host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("{s:?}: credentials in the URL are not supported"));
    }
    if uri.query().is_some() {
        return Err(format!("{s:?}: no query"));
    }
    Ok(uri)
}

/// `arn:<partition>:iam::<12-digit account>:role/` with an optional path.
pub fn base_role_arn(r: &Raw) -> Result<String, String> {
    let s = text(r)?;
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let ok = match parts[..] {
        ["arn", partition, "iam", "", account, resource] => {
            partition.starts_with("aws")
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && (resource == "role" || resource.starts_with("role/"))
                && !resource.contains(char::is_whitespace)
        }
        _ => false,
    };
    if !ok {
        return Err(format!(
            "{s:?} is not a role ARN prefix like arn:aws:iam::123456789012:role/"
        ));
    }
    Ok(s)
}

/// Whole seconds within `min..=max`.
pub fn seconds(r: &Raw, min: i64, max: i64) -> Result<Duration, String> {
    let n = integer(r)?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} s is outside {min}..={max} s"));
    }
    Ok(Duration::from_secs(n as u64))
}

/// The path of an emulator file.
pub fn emulator_file(r: &Raw) -> Result<Option<PathBuf>, String> {
    match r {
        Raw::Text(t) | Raw::Toml(toml::Value::String(t)) if !t.trim().is_empty() => {
            Ok(Some(PathBuf::from(t.trim())))
        }
        _ => Err("expected the path of an emulator file".to_string()),
    }
}

/// The proxy's IPv4 address (port 80 unless given): link-local, and no cloud's.
pub fn listen(r: &Raw) -> Result<SocketAddrV4, String> {
    let s = text(r)?;
    let addr: SocketAddrV4 = match s.parse() {
        Ok(a) => a,
        Err(_) => s
            .parse::<Ipv4Addr>()
            .map(|ip| SocketAddrV4::new(ip, 80))
            .map_err(|_| format!("{s:?} is not an IPv4 address or address:port"))?,
    };
    let ip = *addr.ip();
    if !ip.is_link_local() {
        return Err(format!("{ip} is not link-local (169.254.0.0/16); the proxy address must not be reachable from other hosts"));
    }
    if let Some((_, what)) = RESERVED_LINK_LOCAL.iter().find(|(a, _)| *a == ip) {
        return Err(format!(
            "{ip} is used by {what}; pick an address no cloud uses"
        ));
    }
    if addr.port() == 0 {
        return Err("port 0 is not a fixed port".into());
    }
    Ok(addr)
}

/// The proxy's IPv6 address (port 80 unless given): unique-local, and no cloud's.
pub fn listen6(r: &Raw) -> Result<SocketAddrV6, String> {
    let s = text(r)?;
    let addr: SocketAddrV6 = match s.parse() {
        Ok(a) => a,
        Err(_) => s
            .parse::<Ipv6Addr>()
            .map(|ip| SocketAddrV6::new(ip, 80, 0, 0))
            .map_err(|_| {
                format!("{s:?} is not an IPv6 address or [address]:port (e.g. [fdf3:6f62:ab7c::254]:80)")
            })?,
    };
    let ip = *addr.ip();
    if !ip.is_unique_local() {
        return Err(format!("{ip} is not unique-local (fc00::/7); the proxy address must not be reachable from other networks"));
    }
    if addr.scope_id() != 0 {
        return Err(format!(
            "{s:?}: a unique-local address needs no scope (%interface)"
        ));
    }
    if let Some((_, what)) = RESERVED_UNIQUE_LOCAL.iter().find(|(a, _)| *a == ip) {
        return Err(format!(
            "{ip} is used by {what}; pick an address no cloud uses"
        ));
    }
    let (prefix, len) = AWS_SERVICE_PREFIX;
    if u128::from(ip) >> (128 - len) == u128::from(prefix) >> (128 - len) {
        return Err(format!(
            "{ip} is in {prefix}/{len}, where AWS puts its IPv6 services; pick an address no cloud uses"
        ));
    }
    if addr.port() == 0 {
        return Err("port 0 is not a fixed port".into());
    }
    Ok(addr)
}

/// One exact interface name.
pub fn ifname(r: &Raw) -> Result<String, String> {
    let s = text(r)?;
    match BridgePattern::parse(&s)? {
        BridgePattern::Exact(n) if n.len() < IFNAMSIZ => Ok(n),
        _ => Err(format!("{s:?} is not a plain interface name")),
    }
}

/// A list of exact interface names (comma-separated as text); empty is fine.
pub fn ifnames(r: &Raw) -> Result<Vec<String>, String> {
    let items = text_list(r, "interface names")?;
    let mut names = Vec::new();
    for item in items {
        match BridgePattern::parse(&item)? {
            BridgePattern::Exact(n) => {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            BridgePattern::Prefix(_) => {
                return Err(format!(
                    "{item:?}: exact interface names only, not patterns"
                ))
            }
        }
    }
    Ok(names)
}

/// Bridge names and patterns: at least one.
pub fn bridges(r: &Raw) -> Result<Vec<BridgePattern>, String> {
    let items = text_list(r, "interface names or patterns")?;
    if items.is_empty() {
        return Err("at least one bridge name or pattern is needed".into());
    }
    items.iter().map(|p| BridgePattern::parse(p)).collect()
}

/// `auto` or `off`.
pub fn table_owner(r: &Raw) -> Result<TableOwner, String> {
    let s = text(r)?;
    match s.trim() {
        "auto" => Ok(TableOwner::Auto),
        "off" => Ok(TableOwner::Off),
        other => Err(format!("{other:?} is not auto or off")),
    }
}

/// The Docker socket: an absolute path, `unix://` optional.
pub fn socket_path(r: &Raw) -> Result<String, String> {
    let s = text(r)?;
    let path = s.strip_prefix("unix://").unwrap_or(&s);
    if !path.starts_with('/') {
        return Err(format!(
            "{s:?}: give an absolute path to the Docker socket (e.g. /var/run/docker.sock)"
        ));
    }
    Ok(path.to_owned())
}
