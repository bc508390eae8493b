//! The real Google, Azure and AWS SDKs as judges of the daemon: Python judges
//! (tests/sdk/*_judge.py) run inside unmodified busybox containers through read-only
//! mounts of the host's Python and a virtualenv holding the SDKs, and ask for
//! credentials the way the SDKs do by default, at 169.254.169.254.
//!
//! What each container must get is read from the emulator file the daemon (or the
//! stand-in cloud) serves: see [`plan`].

pub mod plan;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::docker::*;
use crate::suite::unable;
use crate::{cmd, quiet, repo_path, Daemon, IMDS};
pub use plan::*;

/// Where the judges' directory (tests/sdk) appears inside a container.
const JUDGES_MOUNT: &str = "/imds-proxy-judges";
/// The virtualenv with the SDKs (scripts/test.sh creates it and sets this).
pub const VENV_VAR: &str = "IMDS_PROXY_SDK_VENV";
/// How long one container's judges may take before the test gives up on it.
const JUDGE_TIMEOUT: Duration = Duration::from_secs(120);
/// The one variable a container gets: boto3 must not fall back to IMDSv1, so its
/// credentials prove the IMDSv2 session tokens the proxy issues.
pub const CONTAINER_ENV: &str = "AWS_EC2_METADATA_V1_DISABLED=true";

/// The host's Python and the virtualenv, as containers mount them.
pub struct Sdk {
    pub venv: PathBuf,
    /// The interpreter's installation (`sys.base_prefix`), which the venv links into.
    base_prefix: String,
}

impl Sdk {
    /// The virtualenv of $IMDS_PROXY_SDK_VENV, checked on the host: `None` (a skip) when
    /// it is missing, unless the suite demands the root tests.
    pub fn from_env_or_skip(test: &str) -> Option<Self> {
        let fail_or_skip = |why: String| {
            unable(test, &why);
            None
        };
        let Ok(venv) = std::env::var(VENV_VAR) else {
            return fail_or_skip(format!(
                "{VENV_VAR} is not set (scripts/test.sh creates the SDK virtualenv and sets it)"
            ));
        };
        let venv = PathBuf::from(venv);
        let python = venv.join("bin/python");
        let out = Command::new(&python)
            .args([
                "-c",
                "import sys, google.auth, azure.identity, boto3; print(sys.base_prefix)",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                base_prefix: String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                venv,
            }),
            Ok(o) => fail_or_skip(format!(
                "{} cannot import the SDKs: {}",
                python.display(),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => fail_or_skip(format!("{}: {e}", python.display())),
        }
    }

    /// `docker run` options that bring Python, the SDKs and the judges into a busybox
    /// container, read-only, at the host's paths.
    fn mounts(&self) -> Vec<String> {
        let venv = self.venv.to_str().expect("UTF-8 venv path").to_owned();
        let mut dirs = vec!["/usr".to_owned(), "/lib".to_owned(), "/lib64".to_owned()];
        for extra in [&self.base_prefix, &venv] {
            if !dirs.iter().any(|d| Path::new(extra).starts_with(d)) {
                dirs.push(extra.clone());
            }
        }
        let mut args: Vec<String> = dirs
            .into_iter()
            .filter(|d| Path::new(d).exists())
            .flat_map(|d| ["-v".to_owned(), format!("{d}:{d}:ro")])
            .collect();
        let judges = repo_path("tests/sdk");
        args.extend(["-v".to_owned(), format!("{judges}:{JUDGES_MOUNT}:ro")]);
        args
    }

    fn python(&self) -> String {
        self.venv.join("bin/python").to_str().unwrap().to_owned()
    }
}

/// One container of judges, ready to run.
pub struct JudgeRun {
    pub name: String,
    what: String,
    has_aws_role: bool,
    args: Vec<String>,
    steps: usize,
}

/// What a container of judges reported.
#[derive(Debug)]
pub struct Verdict {
    pub name: String,
    /// What the container is (unlabelled, pinned to ...).
    pub what: String,
    pub has_aws_role: bool,
    pub code: Option<i32>,
    /// One JSON object per judge.
    pub lines: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
    steps: usize,
}

impl Verdict {
    /// Every judge ran and passed; otherwise panics with every verdict and the output.
    pub fn assert_passed(&self, mode: Mode) {
        let failed: Vec<&Value> = self.lines.iter().filter(|l| l["ok"] != true).collect();
        assert!(
            self.code == Some(0) && failed.is_empty() && self.lines.len() == self.steps,
            "{} mode: {} ({}): exit {:?}, {} of {} judges reported, failed: {}\nstdout:\n{}\nstderr:\n{}",
            mode.name(),
            self.what,
            self.name,
            self.code,
            self.lines.len(),
            self.steps,
            serde_json::to_string_pretty(&failed).unwrap(),
            self.stdout,
            self.stderr
        );
    }

    /// The line of judge `judge` in `mode`.
    pub fn line(&self, judge: &str, mode: &str) -> &Value {
        self.lines
            .iter()
            .find(|l| l["judge"] == judge && l["mode"] == mode)
            .unwrap_or_else(|| panic!("{}: no {judge} {mode} verdict: {:?}", self.name, self.lines))
    }
}

/// Prepares `c` as a container on `network`, running its judges. Only the daemon's
/// table may be in the way of what it asks; nothing tells the container where the
/// metadata service is (google-auth finds `metadata.google.internal` through the
/// container's own DNS).
pub fn judge_container(scene: &mut Scene, sdk: &Sdk, c: &Container, network: &str) -> JudgeRun {
    judge_container_env(scene, sdk, c, network, &[CONTAINER_ENV])
}

/// [`judge_container`] with `env` (`NAME=value`) as the container's whole environment
/// instead of [`CONTAINER_ENV`]: for a peer the container must be pointed at, which
/// the judges accept only when told so (tests/sdk/common.py).
pub fn judge_container_env(
    scene: &mut Scene,
    sdk: &Sdk,
    c: &Container,
    network: &str,
    env: &[&str],
) -> JudgeRun {
    scene.assert_intercepted();
    let name = scene.next_name();
    let mut args: Vec<String> = ["run", "--rm", "--label", LABEL, "--name", &name]
        .into_iter()
        .chain(["--network", network])
        .map(str::to_owned)
        .collect();
    for e in env {
        args.extend(["--env".to_owned(), (*e).to_owned()]);
    }
    for l in &c.labels {
        args.extend(["--label".to_owned(), l.clone()]);
    }
    args.extend(sdk.mounts());
    args.extend([
        IMAGE.to_owned(),
        sdk.python(),
        format!("{JUDGES_MOUNT}/judge.py"),
        c.plan.to_string(),
    ]);
    JudgeRun {
        name,
        what: c.what.clone(),
        has_aws_role: c.has_aws_role,
        args,
        steps: c.plan.as_array().map_or(0, Vec::len),
    }
}

impl JudgeRun {
    /// Names the container `name` (a judge that expects to see its own name).
    pub fn rename(&mut self, name: &str) {
        for a in self.args.iter_mut() {
            if *a == self.name {
                *a = name.to_owned();
            }
        }
        self.name = name.to_owned();
    }

    /// Runs the container to its end (removing it if it outlives [`JUDGE_TIMEOUT`]).
    pub fn run(self) -> Verdict {
        let start = Instant::now();
        let mut child = Command::new("docker")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker run");
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for docker run") {
                break Some(s);
            }
            if start.elapsed() > JUDGE_TIMEOUT {
                let _ = quiet(&["docker", "rm", "-f", &self.name]);
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let stdout = out.join().unwrap();
        let mut stderr = err.join().unwrap();
        if status.is_none() {
            stderr.push_str(&format!("\n(killed after {JUDGE_TIMEOUT:?})"));
        }
        let lines = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("judge").is_some())
            .collect();
        Verdict {
            name: self.name,
            what: self.what,
            has_aws_role: self.has_aws_role,
            code: status.and_then(|s| s.code()),
            lines,
            stdout,
            stderr,
            took: start.elapsed(),
            steps: self.steps,
        }
    }
}

/// Runs the containers at once; their verdicts in the same order.
pub fn run_all(runs: Vec<JudgeRun>) -> Vec<Verdict> {
    let handles: Vec<_> = runs
        .into_iter()
        .map(|r| thread::spawn(move || r.run()))
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("judge thread"))
        .collect()
}

/// The stand-in cloud for proxy mode: `imds-proxy emulate` serving the emulator file on
/// 169.254.169.254:80 in the scene's cloud namespace, which the root namespace reaches
/// by a /32 route over the cloud's veth (gone with it). Returns the emulating process.
pub fn start_emulated_cloud(scene: &mut Scene) -> Daemon {
    start_emulated_cloud_serving(scene, EMULATOR_FILE)
}

/// [`start_emulated_cloud`] serving `file`.
pub fn start_emulated_cloud_serving(scene: &mut Scene, file: &str) -> Daemon {
    start_emulated_cloud_until(scene, file, |head| {
        head.starts_with("HTTP/1.1 200")
            && head
                .to_ascii_lowercase()
                .contains("metadata-flavor: google")
    })
}

/// [`start_emulated_cloud`] serving `file`, ready once the answer to a GCE-flavoured
/// `GET /` has a head `ready` accepts (a file without GCE answers otherwise).
pub fn start_emulated_cloud_until(
    scene: &mut Scene,
    file: &str,
    ready: fn(&str) -> bool,
) -> Daemon {
    let (root_ip, cloud_ip) = scene.link_cloud();
    let veth = scene.veth.clone().expect("linked");
    let cloud = scene.cloud.as_ref().expect("linked");
    cloud.ip(&format!("addr add {IMDS}/32 dev lo"));
    cloud.ip(&format!("route add default via {root_ip}"));
    let listen = format!("{IMDS}:80");
    let emulate = Daemon::spawn(cloud, &["emulate", "--emulator", file, "--listen", &listen]);
    let route = format!("{IMDS}/32");
    cmd(&["ip", "route", "add", &route, "via", &cloud_ip, "dev", &veth]);
    // From the root namespace the metadata address now leads to the stand-in cloud;
    // wait until it answers as GCE's service does.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match flavored_get(&listen, "/") {
            Ok(head) if ready(&head) => break,
            other => assert!(
                Instant::now() < deadline,
                "`imds-proxy emulate` did not answer GET / as expected within 15 s: {other:?}; log:\n{}",
                emulate.log().join("\n")
            ),
        }
        thread::sleep(Duration::from_millis(100));
    }
    emulate
}

/// `GET path` with `Metadata-Flavor: Google` from the root namespace (only ever to the
/// stand-in cloud); the answer's head.
fn flavored_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {IMDS}\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").next().unwrap_or_default().to_owned())
}
