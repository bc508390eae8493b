//! Docker scenes for the root-namespace tests: the namespace claimed, containers and
//! networks the tests create, the fake cloud behind a veth, the daemon, and their
//! removal in a safe order.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::suite::unable;
use crate::{bin, cmd, quiet, root_or_skip, try_cmd, Daemon, FakeImds, Netns, AUDIT, IMDS};

/// A `FROM scratch` image holding only busybox-static; built locally, never pulled.
pub const IMAGE: &str = "imds-proxy-test-busybox:1";
/// A refusal must come at once, not after a timeout.
pub const FAST: Duration = Duration::from_secs(3);
/// Headers that would mark a request as relayed.
pub const RELAY_HEADERS: [&str; 4] = ["x-forwarded-for", "forwarded", "via", "x-real-ip"];
/// Docker's default bridge network and its addresses.
pub const DEFAULT_NET: &str = "bridge";
pub const DOCKER0_PREFIX: &str = "172.17.";
/// Every container and network the test creates carries this label (scripts/test.sh
/// removes any left over by it).
pub const LABEL: &str = "imds-proxy-test";

/// The root network namespace, claimed by one test at a time: the prelude of every test
/// that uses it (Docker's bridges live there).
///
/// Other processes are kept out by the suite's caller (scripts/test.sh runs under one
/// lock with anything else that uses the root namespace); a claim checks that no other
/// imds-proxy has its table or link there, since a scene's clean-up runs
/// `imds-proxy uninstall`.
pub struct RootNamespace {
    _serial: MutexGuard<'static, ()>,
}

/// Only one test of this process in the root namespace at a time.
static ROOT_NS: Mutex<()> = Mutex::new(());

impl RootNamespace {
    /// Root, a Docker engine answering, the root namespace to this test alone and free
    /// of any other imds-proxy, and the test image built; `None` (a skip, recorded)
    /// when root or Docker is missing, unless the suite demands every test.
    pub fn claim(test: &str) -> Option<Self> {
        if !root_or_skip(test) || !docker_or_skip(test) {
            return None;
        }
        // A test that failed while holding it left nothing that matters behind: its
        // scene cleaned up on the way out.
        let serial = ROOT_NS.lock().unwrap_or_else(|e| e.into_inner());
        let (has_table, _, _) = try_cmd(&["nft", "list", "table", "ip", "imds_proxy"]);
        let (has_link, _, _) = try_cmd(&["ip", "link", "show", "imdsproxy0"]);
        assert!(
            !has_table && !has_link,
            "{test}: the root namespace already has the table ip imds_proxy or the link \
             imdsproxy0: another imds-proxy is running here, or a previous run left them \
             (`imds-proxy uninstall`)"
        );
        ensure_image();
        Some(Self { _serial: serial })
    }
}

/// Everything the test creates, removed in a safe order on drop (also on panic):
/// containers, networks, the daemon, its table and link, the cloud.
#[derive(Default)]
pub struct Scene {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub daemon: Option<Daemon>,
    /// Whether the daemon may have left its table and link in the root namespace.
    pub installed: bool,
    pub veth: Option<String>,
    pub cloud: Option<Netns>,
    /// Interfaces whose traffic to the metadata address is routed to the cloud (see
    /// [`Scene::catch_direct`]).
    pub direct_from: Vec<String>,
}

/// The routing table that sends containers' uncaught metadata traffic to the cloud.
const DIRECT_TABLE: &str = "7301";

impl Scene {
    pub fn new() -> Self {
        Self::default()
    }

    /// Catches what containers behind `interfaces` send to 169.254.169.254 and the daemon
    /// does not intercept: policy routing by incoming interface sends it to a counting
    /// stand-in at 169.254.169.254 in the cloud namespace, instead of the root
    /// namespace's own route (a real network). Host processes keep their route (their
    /// packets have no incoming interface). Returns the stand-in: every request it sees
    /// is a direct one.
    pub fn catch_direct(&mut self, interfaces: &[&str]) -> FakeImds {
        let root_ip = self.root_ip();
        let veth = self.veth.clone().expect("cloud linked");
        let cloud = self.cloud.as_ref().expect("cloud linked");
        cloud.ip(&format!("addr add {IMDS}/32 dev eth0"));
        cloud.ip(&format!("route add default via {root_ip} dev eth0"));
        let direct = FakeImds::start(cloud, &[&format!("{IMDS}:80")]);
        cmd(&[
            "ip",
            "route",
            "replace",
            &format!("{IMDS}/32"),
            "dev",
            &veth,
            "table",
            DIRECT_TABLE,
        ]);
        for i in interfaces {
            cmd(&[
                "ip",
                "rule",
                "add",
                "iif",
                i,
                "to",
                &format!("{IMDS}/32"),
                "lookup",
                DIRECT_TABLE,
                "priority",
                DIRECT_TABLE,
            ]);
            self.direct_from.push(i.to_string());
        }
        direct
    }

    fn root_ip(&self) -> String {
        let veth = self.veth.as_ref().expect("cloud linked");
        let out = cmd(&["ip", "-4", "-o", "addr", "show", "dev", veth]);
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .expect("veth address")
            .to_owned()
    }

    /// The cloud: a fake metadata service in its own namespace behind a veth pair with
    /// link-local /30 addresses. Returns it with the root side's and the cloud side's
    /// addresses.
    pub fn start_cloud(&mut self) -> (FakeImds, String, String) {
        let (root_ip, cloud_ip) = self.link_cloud();
        let cloud = self.cloud.as_ref().expect("linked");
        let imds = FakeImds::start(cloud, &[&format!("{cloud_ip}:80")]);
        // The root namespace reaches the fake directly (not through the metadata address).
        let sanity = root_get(&format!("{cloud_ip}:80"), "/upstream-sanity");
        assert!(sanity.contains("fake-imds"), "upstream sanity: {sanity:?}");
        assert_eq!(imds.count(), 1);

        (imds, root_ip, cloud_ip)
    }

    /// A "cloud" namespace behind a veth pair with link-local /30 addresses, kept in the
    /// scene (the veth goes with it, and with the veth any route over it). Returns the
    /// root side's and the cloud side's addresses.
    pub fn link_cloud(&mut self) -> (String, String) {
        let (root_ip, cloud_ip) = upstream_addrs();
        let cloud = Netns::new("cloud");
        let veth = format!("ipxcl{}", std::process::id());
        self.veth = Some(veth.clone());
        cmd(&[
            "ip",
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &cloud.name,
        ]);
        cmd(&["ip", "addr", "add", &format!("{root_ip}/30"), "dev", &veth]);
        cmd(&["ip", "link", "set", &veth, "up"]);
        cloud.ip(&format!("addr add {cloud_ip}/30 dev eth0"));
        cloud.ip("link set eth0 up");
        self.cloud = Some(cloud);
        (root_ip, cloud_ip)
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// Refuses to let a container start unless the daemon's table intercepts it (the
    /// root namespace routes the metadata address to a real network).
    pub fn assert_intercepted(&self) {
        assert!(
            self.installed && try_cmd(&["nft", "list", "table", "ip", "imds_proxy"]).0,
            "refusing to run a container: table ip imds_proxy is not installed"
        );
    }

    /// Creates a labelled bridge network of the scene (removed with it) named
    /// `ipx<pid>-<suffix>`; its name and its gateway, the host's own address on it,
    /// which containers and host processes both reach.
    pub fn bridge_network(&mut self, suffix: &str) -> (String, String) {
        let net = format!("ipx{}-{suffix}", std::process::id());
        self.networks.push(net.clone());
        cmd(&[
            "docker", "network", "create", "--label", LABEL, "--driver", "bridge", &net,
        ]);
        let gateway = cmd(&[
            "docker",
            "network",
            "inspect",
            &net,
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .trim()
        .to_owned();
        (net, gateway)
    }

    pub fn next_name(&mut self) -> String {
        let name = format!("ipx{}-c{}", std::process::id(), self.containers.len());
        self.containers.push(name.clone());
        name
    }

    /// Starts a long-running container (for `docker exec`); returns its name.
    pub fn start(&mut self, network: &str, labels: &[&str], extra: &[&str]) -> String {
        self.start_running(network, labels, extra, &["sleep", "600"])
    }

    /// Starts a container at address `ip` whose entrypoint asks for credentials at
    /// once, logs the answer and `RC=<wget's exit code>`, then stays up.
    pub fn start_asking(&mut self, network: &str, ip: &str, policy: &str) -> String {
        let label = format!("imds-proxy.policy={policy}");
        let script = format!(
            "wget -q -O - http://{IMDS}/latest/meta-data/iam/security-credentials/role 2>&1; rc=$?; echo; echo RC=$rc; sleep 600"
        );
        self.start_running(network, &[&label], &["--ip", ip], &["sh", "-c", &script])
    }

    /// `docker run -d` with the test's label, `labels`, `extra` options and `command`.
    fn start_running(
        &mut self,
        network: &str,
        labels: &[&str],
        extra: &[&str],
        command: &[&str],
    ) -> String {
        self.assert_intercepted();
        let name = self.next_name();
        let labels: Vec<&str> = labels.iter().flat_map(|l| ["--label", *l]).collect();
        let mut args = vec![
            "docker",
            "run",
            "-d",
            "--label",
            LABEL,
            "--name",
            &name,
            "--network",
            network,
        ];
        args.extend(labels);
        args.extend(extra);
        args.push(IMAGE);
        args.extend(command);
        cmd(&args);
        name
    }

    /// Removes a container now (it stays on the clean-up list; removing twice is harmless).
    pub fn remove(&mut self, name: &str) {
        cmd(&["docker", "rm", "-f", name]);
    }

    /// Runs a container on `network` that asks the metadata address for `path`.
    pub fn run(&mut self, network: &str, path: &str) -> Run {
        self.run_labelled(network, path, &[])
    }

    /// Like [`Scene::run`], with extra `key=value` labels on the container.
    pub fn run_labelled(&mut self, network: &str, path: &str, labels: &[&str]) -> Run {
        assert!(
            path.starts_with('/')
                && path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c)),
            "unsafe path {path:?}"
        );
        // Safety: the root namespace routes the metadata address to a real network; a
        // container may only send there while the daemon's table intercepts it.
        self.assert_intercepted();
        let name = self.next_name();
        let script = format!(
            "ip -4 -o addr show dev eth0 | awk '{{print \"ADDR=\" $4}}'\n\
             echo BODY-BEGIN\n\
             time timeout 8 wget -q -O - http://{IMDS}{path}\n\
             rc=$?\n\
             echo\n\
             echo BODY-END\n\
             exit $rc\n"
        );
        let start = Instant::now();
        let extra_labels: Vec<&str> = labels.iter().flat_map(|l| ["--label", *l]).collect();
        let out = Command::new("docker")
            .args(["run", "--rm"])
            .args(&extra_labels)
            .args([
                "--label",
                LABEL,
                "--name",
                &name,
                "--network",
                network,
                IMAGE,
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("docker run");
        let took = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let addr = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ADDR="))
            .map(|a| a.split('/').next().unwrap().to_owned())
            .unwrap_or_default();
        let body = stdout
            .split_once("BODY-BEGIN\n")
            .and_then(|(_, b)| b.split_once("\nBODY-END"))
            .map(|(b, _)| b.to_owned())
            .unwrap_or_default();
        let inner_secs = stderr
            .lines()
            .find_map(|l| l.strip_prefix("real"))
            .and_then(parse_busybox_time);
        Run {
            name: name.clone(),
            network: network.to_owned(),
            code: out.status.code(),
            stdout,
            stderr,
            took,
            addr,
            body,
            inner_secs,
        }
    }

    /// A container on `network` asks for `path` and is answered by the fake upstream
    /// through the proxy: exactly one new upstream request, from the proxy's side of the
    /// veth, unmarked; the daemon logs the container's own address.
    pub fn ask(&mut self, network: &str, path: &str, imds: &FakeImds, proxy_side: &str) -> Run {
        const FORWARDED: &str = AUDIT;
        let before = imds.relayed_count();
        let logged_before = self.daemon().log_count(FORWARDED);
        let r = self.run(network, path);
        assert_eq!(r.code, Some(0), "request from {network} failed: {r:?}");
        assert!(r.body.contains("fake-imds"), "{r:?}");
        assert!(!r.addr.is_empty(), "no container address: {r:?}");
        assert_eq!(imds.relayed_count(), before + 1, "upstream requests: {r:?}");
        let seen = imds.last();
        assert_eq!(
            seen.peer.ip().to_string(),
            proxy_side,
            "not via the proxy: {seen:?}"
        );
        assert_eq!(seen.target, path);
        assert_eq!(seen.header("host"), Some(IMDS));
        for h in RELAY_HEADERS {
            assert_eq!(seen.header(h), None, "{h} was added: {seen:?}");
        }
        // The proxy knew who asked: the container's address survives DNAT.
        let d = self.daemon();
        d.wait_for_nth(FORWARDED, logged_before + 1, Duration::from_secs(2));
        let line = d
            .log()
            .into_iter()
            .filter(|l| l.contains(FORWARDED))
            .nth(logged_before)
            .unwrap();
        for needle in [
            format!("client={} ", r.addr),
            format!("{FORWARDED}{} ", r.addr),
            " status=200 ".to_string(),
            " decision=allow ".to_string(),
            // ...and which container that is, from the Docker inventory.
            format!(" container={} ", r.name),
            format!("path={path}"),
        ] {
            assert!(
                line.contains(&needle),
                "daemon log line lacks {needle:?}: {line}"
            );
        }
        r
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = quiet(&["docker", "rm", "-f", c]);
        }
        for n in &self.networks {
            let _ = quiet(&["docker", "network", "rm", n]);
        }
        // SIGKILL; the table (closed or open) stays until the uninstall below.
        drop(self.daemon.take());
        if self.installed {
            let _ = quiet(&[bin(), "uninstall"]);
        }
        for i in &self.direct_from {
            let to = format!("{IMDS}/32");
            let _ = quiet(&[
                "ip",
                "rule",
                "del",
                "iif",
                i,
                "to",
                &to,
                "lookup",
                DIRECT_TABLE,
            ]);
        }
        let _ = quiet(&["ip", "route", "flush", "table", DIRECT_TABLE]);
        if let Some(v) = &self.veth {
            let _ = quiet(&["ip", "link", "del", v]);
        }
        drop(self.cloud.take());
    }
}

/// One container's attempt.
#[derive(Debug)]
pub struct Run {
    /// The container's name.
    pub name: String,
    #[allow(dead_code)] // shown in failure messages
    pub network: String,
    pub code: Option<i32>,
    #[allow(dead_code)] // shown in failure messages
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
    /// The container's IPv4 address on its network.
    pub addr: String,
    pub body: String,
    /// wget's run time as busybox `time` measured it inside the container.
    pub inner_secs: Option<f64>,
}

impl Run {
    pub fn assert_refused(&self) {
        assert_eq!(self.code, Some(1), "expected wget to fail: {self:?}");
        assert!(
            self.stderr.contains("Connection refused"),
            "expected a refusal: {self:?}"
        );
        assert!(!self.body.contains("fake-imds"), "{self:?}");
        assert!(
            self.took < FAST,
            "refusal took {:?} (docker run): {self:?}",
            self.took
        );
        let inner = self.inner_secs.expect("busybox time output");
        assert!(
            inner < FAST.as_secs_f64(),
            "refusal took {inner} s in the container"
        );
    }
}

/// `0m 0.01s` → 0.01
pub fn parse_busybox_time(s: &str) -> Option<f64> {
    let s = s.trim();
    let (m, rest) = s.split_once('m')?;
    let secs = rest.trim().strip_suffix('s')?;
    Some(m.trim().parse::<f64>().ok()? * 60.0 + secs.parse::<f64>().ok()?)
}

pub fn docker_answers() -> bool {
    quiet(&["docker", "version"])
}

/// Like `root_or_skip`: no Docker engine skips, unless the suite demands every test.
pub fn docker_or_skip(test: &str) -> bool {
    docker_answers() || unable(test, "no Docker engine answers `docker version`")
}

/// Builds the busybox image from the host's busybox-static unless it exists.
pub fn ensure_image() {
    if quiet(&["docker", "image", "inspect", IMAGE]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/usr/bin/busybox", dir.path().join("busybox"))
        .expect("copy /usr/bin/busybox (package busybox-static) into the image context");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n",
    )
    .unwrap();
    cmd(&[
        "docker",
        "build",
        "-q",
        "-t",
        IMAGE,
        dir.path().to_str().unwrap(),
    ]);
}

/// A link-local /30 for the veth to the cloud, chosen by pid (root side, cloud side);
/// far from 169.254.169.254 and from the proxy's 169.254.93.254.
pub fn upstream_addrs() -> (String, String) {
    let i = std::process::id() % 1024;
    let (c, d) = (240 + i / 64, (i % 64) * 4);
    (
        format!("169.254.{c}.{}", d + 1),
        format!("169.254.{c}.{}", d + 2),
    )
}

/// A plain GET from the root namespace (only ever to the test's own cloud address).
pub fn root_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Whether a process exists and is not a zombie (an exited dockerd whose parent has not
/// reaped it yet counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
    }
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Restarts dockerd; returns how long until `docker version` answered again and how it was
/// restarted, or why there is no dockerd this test may restart. In order of preference:
/// the dockerd of $IMDS_PROXY_TEST_DOCKERD_PIDFILE (SIGTERM, then started again, detached,
/// with the same pidfile); an active systemd docker.service (`systemctl restart docker`);
/// the dockerd of /var/run/docker.pid if no service manager owns it (like the first).
pub fn restart_dockerd() -> Result<(Duration, &'static str), String> {
    let (pidfile, log, args) = match std::env::var("IMDS_PROXY_TEST_DOCKERD_PIDFILE") {
        Ok(pidfile) => {
            let log = std::env::var("IMDS_PROXY_TEST_DOCKERD_LOG")
                .unwrap_or_else(|_| "/tmp/imds-proxy-test-dockerd.log".into());
            let args = vec!["--pidfile".to_owned(), pidfile.clone()];
            (pidfile, log, args)
        }
        Err(_) => {
            // A fresh systemd machine: installing docker.io started docker.service.
            if std::path::Path::new("/run/systemd/system").exists()
                && quiet(&["systemctl", "is-active", "--quiet", "docker"])
            {
                return Ok((restart_docker_service(), "`systemctl restart docker`"));
            }
            let pidfile = "/var/run/docker.pid".to_owned();
            let Some(pid) = read_pid(&pidfile) else {
                return Err(format!(
                    "no IMDS_PROXY_TEST_DOCKERD_PIDFILE, no active systemd docker.service, no readable {pidfile}"
                ));
            };
            if comm(pid) != "dockerd" {
                return Err(format!("{pidfile} names pid {pid}, which is not dockerd"));
            }
            // Restart it with the arguments it was started with, unless a service manager
            // owns it (socket activation, a systemd unit would restart it on its own).
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .skip(1)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if args.iter().any(|a| a.contains("fd://")) || cgroup.contains(".service") {
                return Err(format!(
                    "dockerd {pid} is managed by a service manager other than an active systemd docker.service ({args:?})"
                ));
            }
            (pidfile, "/tmp/imds-proxy-test-dockerd.log".to_owned(), args)
        }
    };
    let pid = read_pid(&pidfile).unwrap_or_else(|| panic!("no pid in {pidfile}"));
    assert_eq!(
        comm(pid),
        "dockerd",
        "{pidfile} names pid {pid}, which is not dockerd"
    );

    let start = Instant::now();
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM dockerd");
    let deadline = start + Duration::from_secs(60);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "dockerd {pid} did not exit within 60 s of SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "dockerd {pid} exited after {} ms",
        start.elapsed().as_millis()
    );

    let logf = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap_or_else(|e| panic!("open {log}: {e}"));
    // Detached in its own process group and never waited for: it outlives the test.
    let child = Command::new("dockerd")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .process_group(0)
        .spawn()
        .expect("start dockerd");
    let new_pid = child.id();
    drop(child);
    wait_for_docker(&format!("restarted dockerd (pid {new_pid}, log {log})"));
    Ok((start.elapsed(), "SIGTERM"))
}

/// Polls `docker version` until the engine answers; fails after 30 s naming `what`.
fn wait_for_docker(what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !docker_answers() {
        assert!(
            Instant::now() < deadline,
            "{what} did not answer `docker version` within 30 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `systemctl restart docker`, then polls `docker version` for up to 30 s; returns the
/// time from the restart command to the engine answering.
pub fn restart_docker_service() -> Duration {
    let main_pid = || {
        cmd(&[
            "systemctl",
            "show",
            "--property=MainPID",
            "--value",
            "docker",
        ])
        .trim()
        .to_owned()
    };
    let before = main_pid();
    let start = Instant::now();
    cmd(&["systemctl", "restart", "docker"]);
    wait_for_docker("docker.service after `systemctl restart docker`");
    let took = start.elapsed();
    let after = main_pid();
    assert_ne!(
        before, after,
        "docker.service kept its main pid across `systemctl restart docker`"
    );
    took
}

pub fn read_pid(path: &str) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
