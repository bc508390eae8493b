//! `imds-proxy status` for people: the report in a few aligned lines.

use std::fmt::Write;

use super::status::{ContainerStatus, Report};
use crate::proxy::trail::Last;

/// The report as text; `now` (seconds since the epoch) to say how long ago.
pub fn render(r: &Report, now: u64) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "imds-proxy {} (pid {})", r.version, r.pid);
    let _ = writeln!(w, "answers from: {}", r.source);
    let _ = writeln!(w, "listening on: {}", r.listen.join(", "));
    if r.not_ready.is_empty() {
        let _ = writeln!(w, "ready");
    } else {
        let _ = writeln!(w, "NOT READY:");
        for why in &r.not_ready {
            let _ = writeln!(w, "  - {why}");
        }
    }
    let t = &r.tables;
    let state = match (&t.problem, t.open) {
        (Some(p), _) => format!("NOT IN FORCE ({p})"),
        (None, true) => "in force, open (containers proxied)".to_owned(),
        (None, false) => "in force, closed (containers refused)".to_owned(),
    };
    let _ = writeln!(w, "tables: {state}");
    let _ = writeln!(w, "bridges: {}", list_or_none(&t.bridges));
    let docker = if r.docker_connected {
        "connected"
    } else {
        "NOT ANSWERING (known containers keep their identity; new ones are unknown callers)"
    };
    let _ = writeln!(w, "docker: {docker}");
    let _ = writeln!(w, "containers: {}", r.containers.len());
    for c in &r.containers {
        container(w, c, now);
    }
    if !r.other_callers.is_empty() {
        let _ = writeln!(w, "other callers:");
        for l in &r.other_callers {
            let _ = writeln!(w, "  {} {}: {}", l.client, l.origin, last(l, now));
        }
    }
    match &r.cache {
        None => {
            let _ = writeln!(w, "cache: none (the emulator answers)");
        }
        Some(c) => {
            let parts: Vec<String> = c.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let _ = writeln!(w, "cache: {}", parts.join(", "));
        }
    }
    if !t.events.is_empty() {
        let _ = writeln!(w, "recent table events:");
        for e in &t.events {
            let _ = writeln!(w, "  {} ago: {}: {}", ago(e.at, now), e.kind, e.detail);
        }
    }
    out
}

fn container(w: &mut String, c: &ContainerStatus, now: u64) {
    let port = c.port.map_or("-".to_owned(), |p| p.to_string());
    let v6 = c.ipv6.as_deref().map_or(String::new(), |a| format!(" {a}"));
    let _ = writeln!(
        w,
        "  {} ({}, image {}, network {}, {}{v6}, port {port})",
        c.name, c.id, c.image, c.network, c.ipv4
    );
    let _ = writeln!(w, "    policy: {} ({})", c.policy, c.policy_reason);
    let ids: Vec<String> = c
        .identity
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(w, "    identity: {}", ids.join("; "));
    let seen = c
        .last
        .as_ref()
        .map_or("no request yet".to_owned(), |l| last(l, now));
    let _ = writeln!(w, "    last: {seen}");
}

fn last(l: &Last, now: u64) -> String {
    format!(
        "{} {} -> {} {}, {} ago",
        l.method,
        l.path,
        l.decision,
        l.status,
        ago(l.at, now)
    )
}

fn ago(at: u64, now: u64) -> String {
    let s = now.saturating_sub(at);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}
