//! Test bed shared by the root tests: network namespaces that stand in for a Docker
//! host, a container and a cloud; a fake metadata service; an HTTP client that runs
//! inside a namespace; and the daemon as a child process.
//!
//! Everything created here is removed on drop, also when a test fails.

#![allow(dead_code)]

pub mod docker;
pub mod rig;
pub mod sdk;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_imds-proxy");
pub const IMDS: &str = "169.254.169.254";
pub const PROXY_ADDR: &str = "169.254.93.254";
/// AWS's IPv6 metadata address, and as an address with the HTTP port.
pub const IMDS6: &str = "fd00:ec2::254";
pub const IMDS6_HTTP: &str = "[fd00:ec2::254]:80";
/// The daemon's default IPv6 listen address.
pub const PROXY_ADDR6: &str = "fdf3:6f62:ab7c::254";
/// What starts the daemon's audit event, one per request answered.
pub const AUDIT: &str = ": request client=";

/// Root tests run only as root; where the suite demands them (CI), not being root fails.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("IMDS_PROXY_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1") {
        panic!("{test}: root tests are required (IMDS_PROXY_REQUIRE_ROOT_TESTS=1) but this is not root");
    }
    skipped(test, "needs root");
    false
}

/// Runs a command, panicking with its output if it fails.
pub fn cmd(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returning (success, stdout, stderr).
pub fn try_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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

/// One request as the fake metadata service saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub peer: SocketAddr,
    pub port: u16,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 metadata service: answers every request with a JSON echo,
/// `/slow/<ms>` after a delay; keeps connections alive; records what it saw.
#[derive(Clone, Default)]
pub struct FakeImds {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Every credential it handed out (`/security-credentials/...`, `/token` paths),
    /// so a test can check that none of them ever reaches a log.
    pub issued: Arc<Mutex<Vec<String>>>,
}

impl FakeImds {
    /// Listens on `addr` (e.g. 169.254.169.254:80) inside `ns`.
    pub fn start(ns: &Netns, addrs: &[&str]) -> Self {
        let fake = Self::default();
        for addr in addrs {
            let a: SocketAddr = addr.parse().unwrap();
            let listener = ns.run(move || TcpListener::bind(a).expect("fake IMDS bind"));
            let f = fake.clone();
            thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let f = f.clone();
                    thread::spawn(move || f.serve(conn, a.port()));
                }
            });
        }
        fake
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Requests other than the proxy's own IMDSv2 session PUTs: what callers caused.
    pub fn relayed_count(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !(s.method == "PUT" && s.target == "/latest/api/token"))
            .count()
    }

    /// The credentials handed out so far.
    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("fake IMDS saw no request")
    }

    fn serve(&self, conn: TcpStream, port: u16) {
        let peer = conn.peer_addr().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut writer = conn;
        loop {
            let Some((method, target, headers, body)) = read_request(&mut reader) else {
                return;
            };
            let close = headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close")
            });
            let seen = Seen {
                peer,
                port,
                method,
                target: target.clone(),
                headers,
                body,
            };
            let n = {
                let mut s = self.seen.lock().unwrap();
                s.push(seen);
                s.len()
            };
            if let Some(ms) = target
                .strip_prefix("/slow/")
                .and_then(|m| m.parse::<u64>().ok())
            {
                thread::sleep(Duration::from_millis(ms));
            }
            let token = if target.contains("security-credentials/") || target.contains("/token") {
                let t = format!(
                    "SECRET-{:x}-{n}",
                    std::process::id() as u64 * 7919 + n as u64
                );
                self.issued.lock().unwrap().push(t.clone());
                append_to_env_file("IMDS_PROXY_ISSUED_FILE", &t);
                t
            } else {
                String::new()
            };
            let body = format!(
                "{{\"served_by\":\"fake-imds\",\"port\":{port},\"target\":{:?},\"n\":{n},\"Token\":{token:?}}}",
                target
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nServer: EC2ws\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if writer.write_all(resp.as_bytes()).is_err() || close {
                return;
            }
        }
    }
}

type Head = (String, String, Vec<(String, String)>, Vec<u8>);

fn read_request(r: &mut impl BufRead) -> Option<Head> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, target, headers, body))
}

/// An HTTP answer as a client sees it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close` from inside `ns`. Returns the answer or
/// the I/O error, and how long it took.
pub fn http(
    ns: &Netns,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (Result<Answer, std::io::Error>, Duration) {
    let addr: SocketAddr = if addr.contains(':') {
        addr.parse().unwrap()
    } else {
        format!("{addr}:80").parse().unwrap()
    };
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    ns.run(move || {
        let start = Instant::now();
        let r = (|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            s.write_all(req.as_bytes())?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            parse_answer(&buf)
        })();
        (r, start.elapsed())
    })
}

pub fn parse_answer(buf: &[u8]) -> Result<Answer, std::io::Error> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("no HTTP head in {text:?}"),
        )
    })?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// The standard test bed: a host namespace with bridge `br0` (10.88.0.1/24) standing in
/// for docker0, a container on it (10.88.0.2), and a cloud namespace holding
/// 169.254.169.254 behind a /32 route from the host, serving a fake metadata service on
/// ports 80 and 8080.
pub struct Testbed {
    pub host: Netns,
    pub container: Netns,
    pub cloud: Netns,
    pub imds: FakeImds,
}

impl Testbed {
    pub fn new() -> Self {
        let host = Netns::new("host");
        let container = Netns::new("ctr");
        let cloud = Netns::new("cloud");
        host.sysctl("net.ipv4.ip_forward=1");
        host.ip("link add br0 type bridge");
        host.ip("addr add 10.88.0.1/24 dev br0");
        host.ip("link set br0 up");
        attach_container(&host, &container, "br0", "vc0", "10.88.0.2/24", "10.88.0.1");

        host.ip(&format!(
            "link add vcloud type veth peer name eth0 netns {}",
            cloud.name
        ));
        host.ip("addr add 10.99.0.1/30 dev vcloud");
        host.ip("link set vcloud up");
        host.ip("route add 169.254.169.254/32 via 10.99.0.2");
        cloud.ip("addr add 10.99.0.2/30 dev eth0");
        cloud.ip("addr add 169.254.169.254/32 dev lo");
        cloud.ip("link set eth0 up");
        cloud.ip("route add default via 10.99.0.1");
        let imds = FakeImds::start(&cloud, &["169.254.169.254:80", "169.254.169.254:8080"]);
        Self {
            host,
            container,
            cloud,
            imds,
        }
    }

    /// Starts the daemon in the host namespace with the test bed's bridge names and
    /// waits until interception is live.
    pub fn daemon(&self, extra: &[&str]) -> Daemon {
        let d = self.daemon_unready(extra);
        d.wait_for("interception live", Duration::from_secs(10));
        d
    }

    /// The status of the container's GET of `path` at the metadata address (panics
    /// if the request is not answered at all).
    pub fn status(&self, path: &str) -> u16 {
        http(&self.container, IMDS, "GET", path, &[])
            .0
            .expect("request answered")
            .status
    }

    /// Starts a container request that the fake service answers after `ms`, and
    /// returns once the service has received it: a request in flight.
    pub fn in_flight(
        &self,
        ms: u64,
    ) -> thread::JoinHandle<(Result<Answer, std::io::Error>, Duration)> {
        let before = self.imds.count();
        let ctr = self.container.alias();
        let h = thread::spawn(move || http(&ctr, IMDS, "GET", &format!("/slow/{ms}"), &[]));
        until(
            Duration::from_secs(5),
            "the slow request to reach upstream",
            || self.imds.count() > before,
        );
        h
    }

    /// Gives the test bed IPv6 (addresses without duplicate address detection, so they
    /// work at once): the bridge fd00:dead:beef::1/64, the container fd00:dead:beef::2
    /// with its default route over the bridge, and the cloud holding AWS's IPv6
    /// metadata address fd00:ec2::254 behind a /128 route from the host, with a fake
    /// metadata service on it (returned).
    pub fn enable_ipv6(&self) -> FakeImds {
        self.host.sysctl("net.ipv6.conf.all.forwarding=1");
        self.host.ip("addr add fd00:dead:beef::1/64 dev br0 nodad");
        self.container
            .ip("addr add fd00:dead:beef::2/64 dev eth0 nodad");
        self.container
            .ip("-6 route add default via fd00:dead:beef::1");
        self.host.ip("addr add fd99:0:0:1::1/64 dev vcloud nodad");
        self.host
            .ip(&format!("-6 route add {IMDS6}/128 via fd99:0:0:1::2"));
        self.cloud.ip("addr add fd99:0:0:1::2/64 dev eth0 nodad");
        self.cloud.ip(&format!("addr add {IMDS6}/128 dev lo nodad"));
        self.cloud.ip("-6 route add default via fd99:0:0:1::1");
        FakeImds::start(&self.cloud, &[IMDS6_HTTP, &format!("[{IMDS6}]:8080")])
    }

    pub fn daemon_unready(&self, extra: &[&str]) -> Daemon {
        self.daemon_unready_env(extra, &[])
    }

    /// [`Testbed::daemon_unready`] with these environment variables added.
    pub fn daemon_unready_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        // No Docker here: the namespace tests must not see the host's engine.
        let mut args = vec![
            "run",
            "--upstream",
            "http://169.254.169.254",
            "--bridges",
            "br0,br-*",
            "--docker-socket",
            "/nonexistent/docker.sock",
        ];
        // Without Docker every caller is unknown; unknown callers are denied unless a
        // test says otherwise (by flag or in its config file).
        if !extra.contains(&"--unknown-policy") && !extra.contains(&"--config") {
            args.extend(["--unknown-policy", "allow"]);
        }
        args.extend_from_slice(extra);
        Daemon::spawn_env(&self.host, &args, env)
    }
}

/// Adds a container namespace on `bridge` in `host`: veth `hostif` in the host, `eth0`
/// with `addr` in the container, default route via `gw`.
pub fn attach_container(
    host: &Netns,
    ctr: &Netns,
    bridge: &str,
    hostif: &str,
    addr: &str,
    gw: &str,
) {
    host.ip(&format!(
        "link add {hostif} type veth peer name eth0 netns {}",
        ctr.name
    ));
    host.ip(&format!("link set {hostif} master {bridge}"));
    host.ip(&format!("link set {hostif} up"));
    ctr.ip(&format!("addr add {addr} dev eth0"));
    ctr.ip("link set eth0 up");
    ctr.ip(&format!("route add default via {gw}"));
}

/// The daemon as a child process inside a namespace; its log is collected.
/// Every line a daemon logged, with when it arrived (since it was spawned).
type Lines = Vec<(Duration, String)>;

pub struct Daemon {
    child: Mutex<Child>,
    pub started: Instant,
    log: Arc<(Mutex<Lines>, Condvar)>,
}

impl Daemon {
    /// Runs the daemon inside `ns`.
    pub fn spawn(ns: &Netns, args: &[&str]) -> Self {
        Self::spawn_env(ns, args, &[])
    }

    /// Runs the daemon inside `ns` with these environment variables added (the ones a
    /// service manager sets, say).
    pub fn spawn_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_wrapped(ns, &[], args, env)
    }

    /// Runs the daemon inside `ns` through `wrapper` (a command that execs its
    /// arguments, such as `setpriv ... --`), so the daemon keeps the child's pid.
    pub fn spawn_wrapped(
        ns: &Netns,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns.name.as_str()])
            .args(wrapper)
            .arg(BIN)
            .args(args);
        c.envs(env.iter().copied());
        Self::spawn_command(c)
    }

    /// Runs the daemon in the test process's own (root) network namespace: for the
    /// end-to-end test with the real Docker engine, whose bridges live there.
    pub fn spawn_root(args: &[&str]) -> Self {
        let mut c = Command::new(BIN);
        c.args(args);
        Self::spawn_command(c)
    }

    fn spawn_command(mut c: Command) -> Self {
        let started = Instant::now();
        let mut child = c
            .env("IMDS_PROXY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[daemon] {line}");
                append_to_env_file("IMDS_PROXY_DAEMON_LOG_FILE", &line);
                l.0.lock()
                    .unwrap()
                    .push((started.elapsed(), strip_ansi(&line)));
                l.1.notify_all();
            }
        });
        Self {
            child: Mutex::new(child),
            started,
            log,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.lock().unwrap().id() as i32)
    }

    pub fn log(&self) -> Vec<String> {
        self.log
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until a log line contains `needle`; returns the time since spawn.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Duration {
        self.wait_for_nth(needle, 1, timeout)
    }

    pub fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.0.lock().unwrap();
        loop {
            // When the nth such line arrived, not when the caller looked.
            if let Some((at, _)) = lines.iter().filter(|(_, l)| l.contains(needle)).nth(n - 1) {
                return *at;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "daemon did not log {needle:?} (x{n}) within {timeout:?}; log:\n{}",
                    lines
                        .iter()
                        .map(|(_, l)| l.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            lines = self.log.1.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal daemon");
    }

    /// Waits for the process to exit.
    pub fn wait(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.lock().unwrap().try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait(Duration::from_secs(5));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `f` every 10 ms until it returns true; returns the time it took.
pub fn until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// The error kind of a refused request, or a panic if it was answered.
pub fn refused(r: &(Result<Answer, std::io::Error>, Duration)) -> std::io::ErrorKind {
    match &r.0 {
        Ok(a) => panic!("expected a refusal, got HTTP {} {:?}", a.status, a.body),
        Err(e) => e.kind(),
    }
}

/// Reports a measurement: printed, and appended to $IMDS_PROXY_MEASURE_FILE so the test
/// command can show every number at the end.
pub fn measure(what: &str, value: impl std::fmt::Display) {
    let line = format!("{what}: {value}");
    eprintln!("MEASURE {line}");
    append_to_env_file("IMDS_PROXY_MEASURE_FILE", &line);
}

/// Appends a line to the file named by environment variable `var`, if it is set (the
/// test command collects measurements, daemon logs and issued credentials this way).
pub fn append_to_env_file(var: &str, line: &str) {
    if let Ok(path) = std::env::var(var) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Reports a skipped test (or part of one): printed (libtest shows it only on failure),
/// and appended to $IMDS_PROXY_SKIP_FILE so the test command can list every skip and fail.
pub fn skipped(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}\n");
    eprint!("{line}");
    if let Ok(path) = std::env::var("IMDS_PROXY_SKIP_FILE") {
        // One write per line: tests run in parallel and append to the same file.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("{test}: cannot record the skip in {path}: {e}"));
    }
}
