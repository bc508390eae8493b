//! Which container a network namespace belongs to, from the kernel's own facts.
//!
//! A container's processes live in its network namespace and in its cgroup, whose
//! path carries the container id (`/docker/<id>` with Docker's cgroupfs driver,
//! `/system.slice/docker-<id>.scope` with the systemd driver; cgroup v1 and v2 alike).
//! So the namespace behind a bridge port leads to a process in it, and that process's
//! cgroup to the container: no list of containers from Docker is needed, whatever the
//! number of containers on the host.

use std::fs::File;
use std::path::Path;

/// A container id as the kernel's cgroup paths carry it: 64 lowercase hex digits.
pub fn container_id_in_cgroup(cgroup: &str) -> Option<String> {
    // A cgroup v2 line (`0::/path`) is the authoritative one where it exists; on a v1 or
    // hybrid host every controller line names the same container, so the first
    // container id found in any line will do.
    let mut lines: Vec<&str> = cgroup.lines().collect();
    lines.sort_by_key(|l| !l.starts_with("0::"));
    lines
        .into_iter()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(container_id_in_path)
}

/// The innermost Docker container a cgroup path names (Docker in Docker nests them).
fn container_id_in_path(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').collect();
    parts.iter().enumerate().rev().find_map(|(i, part)| {
        if let Some(id) = part
            .strip_prefix("docker-")
            .and_then(|p| p.strip_suffix(".scope"))
        {
            return is_container_id(id).then(|| id.to_owned());
        }
        let under_docker = i > 0 && parts[i - 1] == "docker";
        (under_docker && is_container_id(part)).then(|| (*part).to_owned())
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The network namespace inode of a process (`net:[4026532281]` → 4026532281).
pub fn netns_inode(pid: i64) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every process of the host, newest (highest pid) first.
pub fn pids_newest_first() -> Vec<i64> {
    let mut pids: Vec<i64> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable_by(|a, b| b.cmp(a));
    pids
}

/// The container a process belongs to, if its network namespace is still `inode` once
/// its cgroup has been read (so a pid that died and was reused in between names no
/// one).
pub fn container_of_process(pid: i64, inode: u64) -> Option<String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let id = container_id_in_cgroup(&cgroup)?;
    (netns_inode(pid) == Some(inode)).then_some(id)
}

/// Opens a process's network namespace, to ask the kernel which id the host gives it.
pub fn open_netns(pid: i64) -> Option<File> {
    File::open(Path::new("/proc").join(pid.to_string()).join("ns/net")).ok()
}

/// Opens a process's network namespace only if it is still the namespace `inode` (the
/// process may have died and its pid gone to another process since it was listed).
pub fn open_netns_of(pid: i64, inode: u64) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let f = open_netns(pid)?;
    (f.metadata().ok()?.ino() == inode).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e8a0b9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f";
    const OUTER: &str = "0000000000000000000000000000000000000000000000000000000000000abc";

    #[test]
    fn every_cgroup_layout_docker_uses_names_the_container() {
        let cases = [
            // cgroup v2, cgroupfs driver
            format!("0::/docker/{ID}\n"),
            // cgroup v2, systemd driver
            format!("0::/system.slice/docker-{ID}.scope\n"),
            // cgroup v1, cgroupfs driver (every controller)
            format!("12:memory:/docker/{ID}\n11:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"),
            // cgroup v1, systemd driver
            format!("4:memory:/system.slice/docker-{ID}.scope\n1:name=systemd:/system.slice/docker-{ID}.scope\n"),
            // hybrid: v1 controllers and an empty v2 line
            format!("4:memory:/docker/{ID}\n0::/\n"),
            // Docker in Docker: the innermost container
            format!("0::/docker/{OUTER}/docker/{ID}\n"),
            // a process in a sub-cgroup of the container
            format!("0::/system.slice/docker-{ID}.scope/init\n"),
        ];
        for c in cases {
            assert_eq!(container_id_in_cgroup(&c).as_deref(), Some(ID), "{c}");
        }
    }

    #[test]
    fn host_processes_and_look_alikes_name_no_container() {
        let cases = [
            "0::/\n".to_owned(),
            "0::/system.slice/docker.service\n".to_owned(),
            "4:memory:/process_api/4265f0fb838cb3800e9bb0ca95058ef4\n0::/\n".to_owned(),
            // 63 digits, upper case, not under docker, another runtime's scope
            format!("0::/docker/{}\n", &ID[..63]),
            format!("0::/docker/{}\n", ID.to_uppercase()),
            format!("0::/machine/{ID}\n"),
            format!("0::/system.slice/libpod-{ID}.scope\n"),
            String::new(),
        ];
        for c in cases {
            assert_eq!(container_id_in_cgroup(&c), None, "{c}");
        }
    }

    #[test]
    fn a_v2_line_wins_over_v1_lines() {
        let c = format!("4:memory:/docker/{OUTER}\n0::/docker/{ID}\n");
        assert_eq!(container_id_in_cgroup(&c).as_deref(), Some(ID));
    }

    #[test]
    fn a_namespace_opens_only_as_the_one_listed() {
        let me = std::process::id() as i64;
        let inode = netns_inode(me).expect("own namespace");
        assert!(open_netns_of(me, inode).is_some());
        assert!(open_netns_of(me, inode + 1).is_none());
    }
}
