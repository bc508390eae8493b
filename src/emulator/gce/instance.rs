//! `[gce.instance]`: the VM's own values, its network interfaces and disks, checked as
//! Compute Engine names them.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use std::collections::BTreeMap;

use super::fields::{attributes, is_hostname, parse_digits, Fields, Problems};

/// `[gce.instance]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: u64,
    pub name: String,
    pub hostname: String,
    /// The bare zone (`us-central1-a`); served as `projects/<num>/zones/<zone>`.
    pub zone: String,
    /// The bare type (`e2-medium`); served as `projects/<num>/machineTypes/<type>`.
    pub machine_type: String,
    pub cpu_platform: Option<String>,
    pub image: Option<String>,
    pub tags: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub network_interfaces: Vec<NetworkInterface>,
    pub disks: Vec<Disk>,
    /// Unix seconds; the full ID token's `instance_creation_timestamp`.
    pub creation_timestamp: Option<u64>,
    /// License ids: `instance/licenses/<n>/id` and the ID token's `license_id`.
    pub licenses: Vec<String>,
    pub description: String,
    /// `instance/maintenance-event`: `NONE`, or the event under way
    /// (`MIGRATE_ON_HOST_MAINTENANCE`, `TERMINATE_ON_HOST_MAINTENANCE`); an edit wakes
    /// a `wait_for_change` on it.
    pub maintenance_event: String,
    /// `instance/preempted`: `TRUE` once a preemptible VM is being stopped.
    pub preempted: bool,
    /// `instance/scheduling/`.
    pub preemptible: bool,
    pub on_host_maintenance: String,
    pub automatic_restart: bool,
}

/// `[[gce.instance.network_interfaces]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkInterface {
    pub ip: Ipv4Addr,
    pub mac: String,
    pub network: String,
    pub gateway: Option<Ipv4Addr>,
    pub subnetmask: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    /// One `ONE_TO_ONE_NAT` access config each.
    pub external_ips: Vec<Ipv4Addr>,
}

/// `[[gce.instance.disks]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    pub device_name: String,
    pub index: u32,
    /// `SCSI` or `NVME`: how the guest sees the disk.
    pub interface: String,
    pub mode: String,
    pub kind: String,
}

/// Reads `[gce.instance]`; every problem is recorded under `instance.`.
pub(super) fn instance(f: &Fields, p: &mut Problems) -> Option<Instance> {
    f.refuse_unknown(
        p,
        &[
            "id",
            "name",
            "hostname",
            "zone",
            "machine_type",
            "cpu_platform",
            "image",
            "tags",
            "attributes",
            "network_interfaces",
            "disks",
            "creation_timestamp",
            "licenses",
            "description",
            "maintenance_event",
            "preempted",
            "preemptible",
            "on_host_maintenance",
            "automatic_restart",
        ],
    );
    let id = f.number(p, "id");
    if f.get("id").is_none() {
        f.problem(p, "id", "missing");
    }
    let name = f.required_string(p, "name");
    if let Some(n) = &name {
        if !is_rfc1035(n) {
            f.problem(p, "name", format!("{n:?} is not an instance name (RFC 1035: lower-case letters, digits, '-', at most 63)"));
        }
    }
    let hostname = f.required_string(p, "hostname");
    if let Some(h) = &hostname {
        if !is_hostname(h) {
            f.problem(p, "hostname", format!("{h:?} is not a host name"));
        }
    }
    let zone = f.required_string(p, "zone");
    if let Some(z) = &zone {
        if !is_zone(z) {
            f.problem(
                p,
                "zone",
                format!("{z:?} is not a zone name like us-central1-a"),
            );
        }
    }
    let machine_type = f.required_string(p, "machine_type");
    if let Some(m) = &machine_type {
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            f.problem(
                p,
                "machine_type",
                format!("{m:?} is not a machine type like e2-medium"),
            );
        }
    }
    let one_line = |key: &str, p: &mut Problems| {
        let v = f.string(p, key)?;
        if v.contains('\n') || v.is_empty() {
            f.problem(p, key, "must be one non-empty line");
        }
        Some(v)
    };
    let cpu_platform = one_line("cpu_platform", p);
    let image = one_line("image", p);
    let tags = f.strings(p, "tags");
    for (i, t) in tags.iter().enumerate() {
        if !is_rfc1035(t) {
            p.push(format!(
                "{}[{i}]: {t:?} is not a network tag (RFC 1035)",
                f.path("tags")
            ));
        }
    }
    let attributes = attributes(f, p, "attributes");
    let network_interfaces = f
        .tables(p, "network_interfaces")
        .iter()
        .filter_map(|t| network_interface(t, p))
        .collect();
    let disks: Vec<Disk> = f
        .tables(p, "disks")
        .iter()
        .filter_map(|t| disk(t, p))
        .collect();
    let mut indexes = HashSet::new();
    for (i, d) in disks.iter().enumerate() {
        if !indexes.insert(d.index) {
            p.push(format!(
                "{}[{i}].index: {} is used by another disk",
                f.path("disks"),
                d.index
            ));
        }
    }
    let creation_timestamp = f
        .integer(p, "creation_timestamp", 0..=i64::MAX)
        .map(|t| t as u64);
    let licenses = f.strings(p, "licenses");
    for (i, l) in licenses.iter().enumerate() {
        if parse_digits(l).is_none() {
            p.push(format!(
                "{}[{i}]: {l:?} is not a license id (digits)",
                f.path("licenses")
            ));
        }
    }
    let choice = |key: &str, allowed: &[&str], default: &str, p: &mut Problems| {
        let v = f.string(p, key).unwrap_or_else(|| default.to_owned());
        if !allowed.contains(&v.as_str()) {
            f.problem(
                p,
                key,
                format!("{v:?} is not one of {}", allowed.join(", ")),
            );
        }
        v
    };
    let maintenance_event = choice(
        "maintenance_event",
        &[
            "NONE",
            "MIGRATE_ON_HOST_MAINTENANCE",
            "TERMINATE_ON_HOST_MAINTENANCE",
        ],
        "NONE",
        p,
    );
    let on_host_maintenance = choice(
        "on_host_maintenance",
        &["MIGRATE", "TERMINATE"],
        "MIGRATE",
        p,
    );
    let description = f.string(p, "description").unwrap_or_default();
    let preempted = f.boolean(p, "preempted").unwrap_or(false);
    let preemptible = f.boolean(p, "preemptible").unwrap_or(false);
    let automatic_restart = f.boolean(p, "automatic_restart").unwrap_or(!preemptible);
    Some(Instance {
        description,
        maintenance_event,
        preempted,
        preemptible,
        on_host_maintenance,
        automatic_restart,
        id: id?,
        name: name?,
        hostname: hostname?,
        zone: zone?,
        machine_type: machine_type?,
        cpu_platform,
        image,
        tags,
        attributes,
        network_interfaces,
        disks,
        creation_timestamp,
        licenses,
    })
}

fn ipv4(f: &Fields, p: &mut Problems, key: &str) -> Option<Ipv4Addr> {
    let s = f.string(p, key)?;
    s.parse()
        .map_err(|_| f.problem(p, key, format!("{s:?} is not an IPv4 address")))
        .ok()
}

fn network_interface(f: &Fields, p: &mut Problems) -> Option<NetworkInterface> {
    f.refuse_unknown(
        p,
        &[
            "ip",
            "mac",
            "network",
            "gateway",
            "subnetmask",
            "mtu",
            "external_ips",
        ],
    );
    for key in ["ip", "mac", "network"] {
        if f.get(key).is_none() {
            f.problem(p, key, "missing");
        }
    }
    let ip = ipv4(f, p, "ip");
    let mac = f.string(p, "mac");
    if let Some(m) = &mac {
        let octets: Vec<&str> = m.split(':').collect();
        if octets.len() != 6
            || !octets
                .iter()
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            f.problem(
                p,
                "mac",
                format!("{m:?} is not a MAC address like 42:01:0a:80:00:02"),
            );
        }
    }
    let network = f.string(p, "network");
    if let Some(n) = &network {
        if n.is_empty() || n.contains(char::is_whitespace) {
            f.problem(p, "network", "must be a network path without spaces");
        }
    }
    let gateway = ipv4(f, p, "gateway");
    let subnetmask = ipv4(f, p, "subnetmask");
    let mtu = f.integer(p, "mtu", 1300..=8896).map(|m| m as u32);
    let external_ips = f
        .strings(p, "external_ips")
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.parse()
                .map_err(|_| {
                    p.push(format!(
                        "{}[{i}]: {s:?} is not an IPv4 address",
                        f.path("external_ips")
                    ))
                })
                .ok()
        })
        .collect();
    Some(NetworkInterface {
        ip: ip?,
        mac: mac?,
        network: network?,
        gateway,
        subnetmask,
        mtu,
        external_ips,
    })
}

fn disk(f: &Fields, p: &mut Problems) -> Option<Disk> {
    f.refuse_unknown(p, &["device_name", "index", "mode", "type", "interface"]);
    let device_name = f.required_string(p, "device_name");
    if let Some(d) = &device_name {
        if d.is_empty() || !d.chars().all(|c| c.is_ascii_graphic() && c != '/') {
            f.problem(p, "device_name", format!("{d:?} is not a device name"));
        }
    }
    if f.get("index").is_none() {
        f.problem(p, "index", "missing");
    }
    let index = f.integer(p, "index", 0..=127).map(|i| i as u32);
    let choice = |key: &str, allowed: &[&str], p: &mut Problems| {
        let v = f.required_string(p, key)?;
        if !allowed.contains(&v.as_str()) {
            f.problem(
                p,
                key,
                format!("{v:?} is not one of {}", allowed.join(", ")),
            );
        }
        Some(v)
    };
    let mode = choice("mode", &["READ_WRITE", "READ_ONLY"], p);
    let kind = choice("type", &["PERSISTENT", "SCRATCH"], p);
    let interface = f.string(p, "interface").unwrap_or_else(|| "SCSI".into());
    if !["SCSI", "NVME"].contains(&interface.as_str()) {
        f.problem(
            p,
            "interface",
            format!("{interface:?} is not one of SCSI, NVME"),
        );
    }
    Some(Disk {
        device_name: device_name?,
        index: index?,
        interface,
        mode: mode?,
        kind: kind?,
    })
}

/// RFC 1035 label: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63.
fn is_rfc1035(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `<area>-<location><n>-<letter>`, as every Compute Engine zone is named.
fn is_zone(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [area, location, letter] = parts.as_slice() else {
        return false;
    };
    let digits = location.trim_start_matches(|c: char| c.is_ascii_lowercase());
    !area.is_empty()
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && digits.len() < location.len()
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && letter.len() == 1
        && letter.bytes().all(|b| b.is_ascii_lowercase())
}
