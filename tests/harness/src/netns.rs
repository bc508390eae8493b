//! Named network namespaces, each deleted (with whatever still runs inside) on drop.

use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use crate::{cmd, try_cmd};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
    /// Whether dropping this value deletes the namespace.
    owned: bool,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "ipx{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        cmd(&["ip", "netns", "add", &name]);
        let ns = Self { name, owned: true };
        // No duplicate address detection on the links to come: until it ends (a second
        // or two) a link has no usable link-local address, and the first IPv6 packet
        // forwarded onto it is dropped for want of neighbour discovery.
        ns.sysctl("net.ipv6.conf.all.accept_dad=0");
        ns.sysctl("net.ipv6.conf.default.accept_dad=0");
        ns.ip("link set lo up");
        ns
    }

    /// Another handle on the same namespace, for a thread; dropping it deletes nothing.
    pub fn alias(&self) -> Self {
        Self {
            name: self.name.clone(),
            owned: false,
        }
    }

    /// `ip netns exec <ns> <args...>`, panicking on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        cmd(&full)
    }

    pub fn try_exec(&self, args: &[&str]) -> (bool, String, String) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        try_cmd(&full)
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &str) -> String {
        let mut full = vec!["ip"];
        full.extend(args.split_whitespace());
        self.exec(&full)
    }

    pub fn sysctl(&self, kv: &str) {
        self.exec(&["sysctl", "-qw", kv]);
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it creates live here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let f_ns = File::open(&path).expect("open netns");
            nix::sched::setns(f_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// Loads nft commands from text (test set-up and assertions only; the daemon itself
    /// never runs nft).
    pub fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f failed on {script}");
    }

    /// The daemon's tables (`ip`, `ip6`, then `bridge`) as `nft` lists them, or None if
    /// the `ip` table is missing; without the table flags (`flags owner`, and the
    /// `# progname` comment nft adds to owned tables), which the writer sets and the
    /// plan does not render.
    pub fn nft_table(&self) -> Option<String> {
        let (ok, ip, _) = self.try_exec(&["nft", "list", "table", "ip", "imds_proxy"]);
        if !ok {
            return None;
        }
        let (_, ip6, _) = self.try_exec(&["nft", "list", "table", "ip6", "imds_proxy"]);
        let (_, bridge, _) = self.try_exec(&["nft", "list", "table", "bridge", "imds_proxy"]);
        // The macvlan guard's table, where there is one.
        let (_, netdev, _) = self.try_exec(&["nft", "list", "table", "netdev", "imds_proxy"]);
        Some(without_table_flags(&(ip + &ip6 + &bridge + &netdev)))
    }

    pub fn nft_table_count(&self) -> usize {
        self.exec(&["nft", "list", "tables"])
            .lines()
            .filter(|l| l.trim() == "table ip imds_proxy")
            .count()
    }
}

/// A listing without the table flags line (and the blank line after it) and the
/// `# progname` comment.
pub fn without_table_flags(listing: &str) -> String {
    let mut out = String::new();
    let mut lines = listing.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("\tflags") {
            if lines.peek() == Some(&"") {
                lines.next();
            }
            continue;
        }
        let line = match line.find(" { # progname ") {
            Some(i) => &line[..i + 2],
            None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Kill anything still running inside (the daemon, if a test panicked).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
