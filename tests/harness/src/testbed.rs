//! The standard test bed of the namespace tests: a host with a bridge, a container on
//! it and a cloud with the fake metadata service.

use std::thread;
use std::time::Duration;

use crate::{http, until, Answer, Daemon, FakeImds, Netns, IMDS, IMDS6, IMDS6_HTTP};

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
    /// Creates the namespaces, links and routes, and starts the fake service: kernel
    /// state, not a default value.
    #[allow(clippy::new_without_default)]
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

    /// The daemon where no cloud answers (the route to the fake service removed), so it
    /// serves the built-in emulator; no Docker; `extra` arguments added. Waits until
    /// the interception is live.
    pub fn emulator_daemon(&self, extra: &[&str]) -> Daemon {
        self.host.ip("route del 169.254.169.254/32");
        let mut args = vec![
            "run",
            "--bridges",
            "br0,br-*",
            "--docker-socket",
            "/nonexistent/docker.sock",
        ];
        args.extend_from_slice(extra);
        let d = Daemon::spawn(&self.host, &args);
        d.wait_for("interception live", std::time::Duration::from_secs(10));
        d
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
