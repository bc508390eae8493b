//! End-to-end test with the real Docker engine.
//!
//! Unlike tests/netns.rs this runs in the ROOT network namespace, because Docker's
//! bridges live there. The root namespace's own route to 169.254.169.254 leads to a real
//! outside network, so the order is strict: no container sends to the metadata address
//! before the daemon's table is installed (daemon live, or killed with its table left
//! behind), and `imds-proxy uninstall` runs only after the last container is gone.
//!
//! The upstream is a fake metadata service in a "cloud" namespace reached over a veth
//! pair with link-local /30 addresses; nothing in the root namespace routes
//! 169.254.169.254 anywhere new.
//!
//! Environment:
//! - IMDS_PROXY_REQUIRE_ROOT_TESTS=1: no root, no Docker engine or no dockerd the test
//!   may restart fails instead of skipping.
//! - IMDS_PROXY_SKIP_FILE: every skip is also appended there (see `common::skipped`).
//! - IMDS_PROXY_TEST_DOCKERD_PIDFILE / IMDS_PROXY_TEST_DOCKERD_LOG: the dockerd the test
//!   may restart (started as `dockerd --pidfile <pidfile>`); without them the test
//!   restarts an active systemd docker.service with `systemctl restart docker`, else the
//!   dockerd of /var/run/docker.pid only if it can do so faithfully.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A `FROM scratch` image holding only busybox-static; built locally, never pulled.
const IMAGE: &str = "imds-proxy-test-busybox:1";
/// A refusal must come at once, not after a timeout.
const FAST: Duration = Duration::from_secs(3);
/// Headers that would mark a request as relayed.
const RELAY_HEADERS: [&str; 4] = ["x-forwarded-for", "forwarded", "via", "x-real-ip"];
/// Docker's default bridge network and its addresses.
const DEFAULT_NET: &str = "bridge";
const DOCKER0_PREFIX: &str = "172.17.";
/// Every container and network the test creates carries this label (scripts/test.sh
/// removes any left over by it).
const LABEL: &str = "imds-proxy-test";

/// The scenario uses the root namespace: only one Docker test may run at a time.
static ROOT_NS: Mutex<()> = Mutex::new(());

#[test]
fn docker_containers_reach_the_metadata_service_only_through_the_proxy() {
    const NAME: &str = "docker_containers_reach_the_metadata_service_only_through_the_proxy";
    if !root_or_skip(NAME) || !docker_or_skip(NAME) {
        return;
    }
    let _serial = ROOT_NS.lock().unwrap_or_else(|e| e.into_inner());
    // The guard below runs `imds-proxy uninstall` on failure; it must never remove the
    // table of an imds-proxy this test did not start.
    let (has_table, _, _) = try_cmd(&["nft", "list", "table", "ip", "imds_proxy"]);
    let (has_link, _, _) = try_cmd(&["ip", "link", "show", "imdsproxy0"]);
    assert!(
        !has_table && !has_link,
        "the root namespace already has the table ip imds_proxy or the link imdsproxy0: \
         another imds-proxy is running here, or a previous run left them (`imds-proxy uninstall`)"
    );
    ensure_image();

    let mut scene = Scene::new();

    // 1. The cloud: a fake metadata service behind a veth pair, link-local /30.
    let (root_ip, cloud_ip) = upstream_addrs();
    let cloud = Netns::new("cloud");
    let veth = format!("ipxcl{}", std::process::id());
    scene.veth = Some(veth.clone());
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
    let imds = FakeImds::start(&cloud, &[&format!("{cloud_ip}:80")]);
    scene.cloud = Some(cloud);
    // The root namespace reaches the fake directly (not through the metadata address).
    let sanity = root_get(&format!("{cloud_ip}:80"), "/upstream-sanity");
    assert!(sanity.contains("fake-imds"), "upstream sanity: {sanity:?}");
    assert_eq!(imds.count(), 1);

    // The daemon, in the root namespace, with the default bridge patterns docker0,br-*.
    let upstream = format!("http://{cloud_ip}");
    scene.installed = true; // from here on the guard runs `imds-proxy uninstall`
    scene.daemon = Some(Daemon::spawn_root(&["run", "--upstream", &upstream]));
    let live = scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));
    measure(
        "docker: daemon spawn to interception live, root namespace (ms)",
        live.as_millis(),
    );
    assert!(
        try_cmd(&["nft", "list", "table", "ip", "imds_proxy"]).0,
        "live without a table"
    );
    // Only now may a container send to the metadata address.

    // 2. A container on docker0.
    let r = scene.ask(DEFAULT_NET, "/latest/meta-data/", &imds, &root_ip);
    assert!(
        r.addr.starts_with(DOCKER0_PREFIX),
        "docker0 container address {:?}",
        r.addr
    );
    scene.daemon().wait_for(
        &format!("client.addr={DOCKER0_PREFIX}"),
        Duration::from_secs(2),
    );

    // 3. A user-defined bridge network created after the daemon started.
    let net = format!("ipx{}-net", std::process::id());
    scene.networks.push(net.clone());
    let created = scene.daemon().started.elapsed();
    let id = cmd(&[
        "docker", "network", "create", "--label", LABEL, "--driver", "bridge", &net,
    ]);
    let bridge = format!("br-{}", &id.trim()[..12]);
    assert!(
        try_cmd(&["ip", "link", "show", &bridge]).0,
        "docker network {net} has no bridge {bridge}"
    );
    let seen_bridge = scene
        .daemon()
        .wait_for(&format!("bridge={bridge}"), Duration::from_secs(5));
    measure(
        "docker: `docker network create` to the daemon logging the new bridge (ms)",
        seen_bridge.saturating_sub(created).as_millis(),
    );
    let r = scene.ask(&net, "/latest/meta-data/iam/info", &imds, &root_ip);
    assert!(
        !r.addr.starts_with(DOCKER0_PREFIX),
        "container on {net} got a docker0 address {:?}",
        r.addr
    );

    // 3b. Labels pick each container's policy (unlabelled ones, above, get allow).
    let before = imds.count();
    let denied = scene.run_labelled(
        DEFAULT_NET,
        "/latest/meta-data/instance-id",
        &["imds-proxy.policy=deny"],
    );
    assert!(
        denied.code != Some(0) && denied.stderr.contains("403"),
        "deny label: {denied:?}"
    );
    let creds = scene.run_labelled(
        DEFAULT_NET,
        "/latest/meta-data/iam/security-credentials/role",
        &["imds-proxy.policy=metadata-only"],
    );
    assert!(
        creds.code != Some(0) && creds.stderr.contains("403"),
        "metadata-only credentials: {creds:?}"
    );
    let meta = scene.run_labelled(
        &net,
        "/latest/meta-data/instance-id",
        &["imds-proxy.policy=metadata-only"],
    );
    assert_eq!(meta.code, Some(0), "metadata-only metadata: {meta:?}");
    assert!(meta.body.contains("fake-imds"), "{meta:?}");
    assert_eq!(
        imds.count(),
        before + 1,
        "only the allowed request reached the upstream"
    );
    scene
        .daemon()
        .wait_for("denied by policy deny", Duration::from_secs(2));

    // 4. SIGKILL: the table stays, containers on both networks are refused at once and
    //    never reach the upstream.
    scene.daemon().kill9();
    scene.daemon = None;
    assert!(
        try_cmd(&["nft", "list", "table", "ip", "imds_proxy"]).0,
        "the table must outlive the killed daemon"
    );
    let before = imds.count();
    for net in [DEFAULT_NET, net.as_str()] {
        let r = scene.run(net, "/latest/meta-data/iam/security-credentials/");
        measure(
            &format!("docker: refusal after SIGKILL on network {net}, whole `docker run` (ms)"),
            r.took.as_millis(),
        );
        measure(
            &format!("docker: refusal after SIGKILL on network {net}, wget in the container (s)"),
            r.inner_secs.map_or("?".into(), |s| format!("{s:.2}")),
        );
        r.assert_refused();
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        imds.count(),
        before,
        "a container reached the metadata service after the daemon was killed"
    );

    // 5. The daemon again, then a dockerd restart under it.
    scene.daemon = Some(Daemon::spawn_root(&["run", "--upstream", &upstream]));
    let live = scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));
    measure(
        "docker: daemon spawn to interception live, after SIGKILL (ms)",
        live.as_millis(),
    );
    scene.ask(DEFAULT_NET, "/latest/meta-data/after-kill", &imds, &root_ip);

    match restart_dockerd() {
        Ok((took, how)) => {
            measure(
                &format!("docker: dockerd restart, {how} to `docker version` answering (ms)"),
                took.as_millis(),
            );
            let (ok, out, err) = try_cmd(&["docker", "network", "inspect", "-f", "{{.Id}}", &net]);
            assert!(
                ok && out.trim() == id.trim(),
                "network {net} after the restart: {out} {err}"
            );
        }
        Err(why) => {
            if std::env::var("IMDS_PROXY_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1") {
                panic!("{NAME}: root tests are required (IMDS_PROXY_REQUIRE_ROOT_TESTS=1) but the dockerd restart part cannot run: {why}");
            }
            skipped(
                &format!("dockerd restart part of {NAME}"),
                &format!("no dockerd this test may restart ({why})"),
            );
        }
    }
    assert!(
        alive(scene.daemon().pid().as_raw()),
        "the daemon died during the dockerd restart"
    );
    let r = scene.ask(
        DEFAULT_NET,
        "/latest/meta-data/after-dockerd-restart",
        &imds,
        &root_ip,
    );
    assert!(r.addr.starts_with(DOCKER0_PREFIX), "{:?}", r.addr);
    scene.ask(
        &net,
        "/latest/meta-data/after-dockerd-restart",
        &imds,
        &root_ip,
    );

    // 6. Clean up, checking each step: network, daemon (SIGTERM), uninstall.
    cmd(&["docker", "network", "rm", &net]);
    scene.networks.clear();
    let prefix = format!("name=ipx{}-", std::process::id());
    let left = cmd(&["docker", "ps", "-a", "-q", "--filter", &prefix]);
    assert!(left.trim().is_empty(), "containers left: {left}");
    let d = scene.daemon.take().unwrap();
    d.signal(Signal::SIGTERM);
    let status = d.wait(Duration::from_secs(15));
    assert!(status.success(), "daemon exit after SIGTERM: {status:?}");
    d.wait_for("stopped", Duration::from_secs(2));
    drop(d);
    // Stopped, the table is closed: still refused, still no upstream request.
    let before = imds.count();
    scene.run(DEFAULT_NET, "/after-sigterm").assert_refused();
    assert_eq!(imds.count(), before, "a container passed after SIGTERM");
    let left = cmd(&["docker", "ps", "-a", "-q", "--filter", &prefix]);
    assert!(left.trim().is_empty(), "containers left: {left}");
    cmd(&[BIN, "uninstall"]);
    scene.installed = false;
    assert!(
        !try_cmd(&["nft", "list", "table", "ip", "imds_proxy"]).0,
        "table ip imds_proxy still there after uninstall"
    );
    assert!(
        !try_cmd(&["ip", "link", "show", "imdsproxy0"]).0,
        "link imdsproxy0 still there after uninstall"
    );
    drop(scene);
    assert!(
        !try_cmd(&["ip", "link", "show", &veth]).0,
        "veth {veth} left"
    );
}

/// Everything the test creates, removed in a safe order on drop (also on panic):
/// containers, networks, the daemon, its table and link, the cloud.
struct Scene {
    containers: Vec<String>,
    networks: Vec<String>,
    daemon: Option<Daemon>,
    /// Whether the daemon may have left its table and link in the root namespace.
    installed: bool,
    veth: Option<String>,
    cloud: Option<Netns>,
}

impl Scene {
    fn new() -> Self {
        Self {
            containers: Vec::new(),
            networks: Vec::new(),
            daemon: None,
            installed: false,
            veth: None,
            cloud: None,
        }
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// Runs a container on `network` that asks the metadata address for `path`.
    fn run(&mut self, network: &str, path: &str) -> Run {
        self.run_labelled(network, path, &[])
    }

    /// Like [`Scene::run`], with extra `key=value` labels on the container.
    fn run_labelled(&mut self, network: &str, path: &str, labels: &[&str]) -> Run {
        assert!(
            path.starts_with('/')
                && path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c)),
            "unsafe path {path:?}"
        );
        // Safety: the root namespace routes the metadata address to a real network; a
        // container may only send there while the daemon's table intercepts it.
        assert!(
            self.installed && try_cmd(&["nft", "list", "table", "ip", "imds_proxy"]).0,
            "refusing to run a container: table ip imds_proxy is not installed"
        );
        let name = format!("ipx{}-c{}", std::process::id(), self.containers.len());
        self.containers.push(name.clone());
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
    fn ask(&mut self, network: &str, path: &str, imds: &FakeImds, proxy_side: &str) -> Run {
        const FORWARDED: &str = "forwarded client=";
        let before = imds.count();
        let logged_before = self.daemon().log_count(FORWARDED);
        let r = self.run(network, path);
        assert_eq!(r.code, Some(0), "request from {network} failed: {r:?}");
        assert!(r.body.contains("fake-imds"), "{r:?}");
        assert!(!r.addr.is_empty(), "no container address: {r:?}");
        assert_eq!(imds.count(), before + 1, "upstream requests: {r:?}");
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
            format!("client.addr={} ", r.addr),
            format!("{FORWARDED}{} status=200", r.addr),
            // ...and which container that is, from the Docker inventory.
            format!("container={}/", r.name),
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
            let _ = quiet(&[BIN, "uninstall"]);
        }
        if let Some(v) = &self.veth {
            let _ = quiet(&["ip", "link", "del", v]);
        }
        drop(self.cloud.take());
    }
}

/// One container's attempt.
#[derive(Debug)]
struct Run {
    /// The container's name.
    name: String,
    #[allow(dead_code)] // shown in failure messages
    network: String,
    code: Option<i32>,
    #[allow(dead_code)] // shown in failure messages
    stdout: String,
    stderr: String,
    took: Duration,
    /// The container's IPv4 address on its network.
    addr: String,
    body: String,
    /// wget's run time as busybox `time` measured it inside the container.
    inner_secs: Option<f64>,
}

impl Run {
    fn assert_refused(&self) {
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
fn parse_busybox_time(s: &str) -> Option<f64> {
    let s = s.trim();
    let (m, rest) = s.split_once('m')?;
    let secs = rest.trim().strip_suffix('s')?;
    Some(m.trim().parse::<f64>().ok()? * 60.0 + secs.parse::<f64>().ok()?)
}

fn quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker_answers() -> bool {
    quiet(&["docker", "version"])
}

/// Like `root_or_skip`: no Docker engine skips, unless the suite demands the root tests.
fn docker_or_skip(test: &str) -> bool {
    if docker_answers() {
        return true;
    }
    if std::env::var("IMDS_PROXY_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1") {
        panic!("{test}: root tests are required (IMDS_PROXY_REQUIRE_ROOT_TESTS=1) but no Docker engine answers `docker version`");
    }
    skipped(test, "no Docker engine answers `docker version`");
    false
}

/// Builds the busybox image from the host's busybox-static unless it exists.
fn ensure_image() {
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
fn upstream_addrs() -> (String, String) {
    let i = std::process::id() % 1024;
    let (c, d) = (240 + i / 64, (i % 64) * 4);
    (
        format!("169.254.{c}.{}", d + 1),
        format!("169.254.{c}.{}", d + 2),
    )
}

/// A plain GET from the root namespace (only ever to the test's own cloud address).
fn root_get(addr: &str, path: &str) -> String {
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
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
    }
}

fn comm(pid: i32) -> String {
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
fn restart_dockerd() -> Result<(Duration, &'static str), String> {
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !docker_answers() {
        assert!(
            Instant::now() < deadline,
            "restarted dockerd (pid {new_pid}, log {log}) did not answer within 30 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
    Ok((start.elapsed(), "SIGTERM"))
}

/// `systemctl restart docker`, then polls `docker version` for up to 30 s; returns the
/// time from the restart command to the engine answering.
fn restart_docker_service() -> Duration {
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !docker_answers() {
        assert!(
            Instant::now() < deadline,
            "docker.service did not answer `docker version` within 30 s of `systemctl restart docker`"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    let after = main_pid();
    assert_ne!(
        before, after,
        "docker.service kept its main pid across `systemctl restart docker`"
    );
    took
}

fn read_pid(path: &str) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
