//! Docker networks whose bridges no name pattern of the daemon's matches, end to end in
//! the ROOT network namespace (see tests/docker.rs for why and for the order that keeps
//! it safe): a bridge network created with a bridge name of its own, and a single-node
//! Docker Swarm made by the test, with a service and an attachable overlay network
//! (their containers leave the host through `docker_gwbridge`). Their containers must be
//! intercepted because Docker's network list names those bridges, identified as their
//! own container with their own labels, and never reach the cloud directly — for the
//! swarm also after the daemon is killed and after it is stopped.

use std::time::{Duration, Instant};

use harness::docker::*;
use harness::*;
use nix::sys::signal::Signal;

const GWBRIDGE: &str = "docker_gwbridge";
const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const CREDS: &str = "/latest/meta-data/iam/security-credentials/role";

/// A swarm this test made, left (and `docker_gwbridge` removed, if the swarm made it)
/// on drop, also on failure. Refuses to touch a node that is already in a swarm.
struct Swarm {
    services: Vec<String>,
    made_gwbridge: bool,
}

impl Swarm {
    fn init() -> Self {
        let state = cmd(&["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]);
        assert_eq!(
            state.trim(),
            "inactive",
            "this Docker engine is already part of a swarm; the test makes and leaves its own"
        );
        let had_gwbridge = quiet(&["docker", "network", "inspect", GWBRIDGE]);
        cmd(&["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"]);
        Self {
            services: Vec::new(),
            made_gwbridge: !had_gwbridge,
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for s in &self.services {
            let _ = quiet(&["docker", "service", "rm", s]);
        }
        let _ = quiet(&["docker", "swarm", "leave", "--force"]);
        if self.made_gwbridge {
            // Its last endpoints (the ingress sandbox) go with the swarm, a moment later.
            let _ = until(Duration::from_secs(10), "docker_gwbridge removed", || {
                quiet(&["docker", "network", "rm", GWBRIDGE])
                    || !quiet(&["docker", "network", "inspect", GWBRIDGE])
            });
        }
    }
}

/// The audit line the daemon wrote for container `name`.
fn audit_line(d: &Daemon, name: &str) -> String {
    let needle = format!(" container={name} ");
    d.wait_for(&needle, Duration::from_secs(5));
    d.log()
        .into_iter()
        .find(|l| l.contains(&needle) && l.contains(AUDIT))
        .unwrap_or_else(|| panic!("no audit line for {name}"))
}

/// A container on `net` labelled `metadata-only` gets metadata through the proxy (one
/// request upstream, from the proxy's side), is named in the audit line with its policy,
/// and is refused credentials. Returns its audit line and its address on `net`.
fn served_by_its_label(
    scene: &mut Scene,
    imds: &FakeImds,
    root_ip: &str,
    net: &str,
) -> (String, String) {
    let label = "imds-proxy.policy=metadata-only";
    let before = imds.relayed_count();
    let meta = scene.run_labelled(net, INSTANCE_ID, &[label]);
    assert_eq!(meta.code, Some(0), "metadata from {net}: {meta:?}");
    assert!(meta.body.contains("fake-imds"), "{meta:?}");
    assert_eq!(imds.relayed_count(), before + 1);
    assert_eq!(
        imds.last().peer.ip().to_string(),
        root_ip,
        "not via the proxy"
    );
    let line = audit_line(scene.daemon(), &meta.name);
    for needle in [" decision=allow ", "metadata-only"] {
        assert!(line.contains(needle), "{needle:?} not in {line}");
    }
    let creds = scene.run_labelled(net, CREDS, &[label]);
    assert!(
        creds.code != Some(0) && creds.stderr.contains("403"),
        "its policy denies credentials: {creds:?}"
    );
    assert!(audit_line(scene.daemon(), &creds.name).contains(" decision=deny "));
    (line, meta.addr)
}

#[test]
fn swarm_containers_go_through_the_proxy_as_themselves_and_never_directly() {
    let Some(_root) = RootNamespace::claim(test_name!()) else {
        return;
    };

    let mut scene = Scene::new();
    let (imds, root_ip, cloud_ip) = scene.start_cloud();
    // Whatever a container on these bridges sends to the metadata address and the daemon
    // does not intercept lands here.
    let direct = scene.catch_direct(&[GWBRIDGE, "docker0"]);
    scene.installed = true;
    scene.daemon = Some(Daemon::spawn_root(&[
        "run",
        "--upstream",
        &format!("http://{cloud_ip}"),
    ]));
    scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));

    let mut swarm = Swarm::init();
    let ov = format!("ipx{}-ov", std::process::id());
    cmd(&[
        "docker",
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "--label",
        LABEL,
        &ov,
    ]);
    scene.networks.push(ov.clone());
    // Docker's network list names docker_gwbridge (it exists once the swarm's ingress
    // sandbox does); the daemon intercepts it by that, not by any name pattern.
    let seen = Instant::now();
    scene
        .daemon()
        .wait_for(&format!("bridge={GWBRIDGE}"), Duration::from_secs(15));
    measure(
        "swarm: docker_gwbridge intercepted after the overlay network was created (ms)",
        seen.elapsed().as_millis(),
    );

    // 1. A plain container on the attachable overlay network, with a policy label: its
    //    metadata traffic leaves by docker_gwbridge and reaches the proxy.
    // (Its request leaves by docker_gwbridge, from its address there, not the overlay's.)
    served_by_its_label(&mut scene, &imds, &root_ip, &ov);

    // 2. A service's container: its container labels pick its policy.
    let label = "imds-proxy.policy=metadata-only";
    let svc = format!("ipx{}-svc", std::process::id());
    swarm.services.push(svc.clone());
    let script = format!(
        "wget -q -O - http://{IMDS}{INSTANCE_ID}; echo; echo RC=$?; \
         wget -q -O - http://{IMDS}{CREDS}; echo RC2=$?; sleep 600"
    );
    cmd(&[
        "docker",
        "service",
        "create",
        "--detach",
        "--quiet",
        "--no-resolve-image",
        "--name",
        &svc,
        "--label",
        LABEL,
        "--container-label",
        LABEL,
        "--container-label",
        label,
        "--network",
        &ov,
        "--restart-condition",
        "none",
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    let mut task = String::new();
    until(
        Duration::from_secs(60),
        "the service's container to ask",
        || {
            task = cmd(&[
                "docker",
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.swarm.service.name={svc}"),
            ])
            .trim()
            .to_owned();
            !task.is_empty() && cmd(&["docker", "logs", &task]).contains("RC2=")
        },
    );
    let logs = cmd(&["docker", "logs", &task]);
    assert!(
        logs.contains("fake-imds") && logs.contains("RC=0"),
        "{logs}"
    );
    assert!(
        !logs.contains("RC2=0"),
        "the service's policy denies credentials: {logs}"
    );
    let task_name = cmd(&["docker", "inspect", "--format", "{{.Name}}", &task])
        .trim()
        .trim_start_matches('/')
        .to_owned();
    let line = audit_line(scene.daemon(), &task_name);
    assert!(line.contains("metadata-only"), "{line}");
    assert_eq!(direct.count(), 0, "direct requests while the daemon runs");

    // 3. Killed, then stopped: containers on the overlay are refused at once, never
    //    passed to the cloud.
    scene.daemon().kill9();
    let r = scene.run(&ov, INSTANCE_ID);
    r.assert_refused();
    assert_eq!(direct.count(), 0, "direct requests after SIGKILL");
    scene.daemon = Some(Daemon::spawn_root(&[
        "run",
        "--upstream",
        &format!("http://{cloud_ip}"),
    ]));
    scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));
    scene
        .daemon()
        .wait_for(&format!("bridge={GWBRIDGE}"), Duration::from_secs(15));
    let again = scene.run(&ov, INSTANCE_ID);
    assert_eq!(
        again.code,
        Some(0),
        "served again after a restart: {again:?}"
    );
    scene.daemon().signal(Signal::SIGTERM);
    scene.daemon().wait(Duration::from_secs(10));
    let r = scene.run(&ov, INSTANCE_ID);
    r.assert_refused();
    assert_eq!(direct.count(), 0, "direct requests after SIGTERM");
    measure(
        "swarm: direct requests seen by the stand-in cloud",
        direct.count(),
    );
}

#[test]
fn a_network_with_a_bridge_name_of_its_own_is_intercepted_and_its_containers_identified() {
    let Some(_root) = RootNamespace::claim(test_name!()) else {
        return;
    };

    let mut scene = Scene::new();
    let (imds, root_ip, cloud_ip) = scene.start_cloud();
    let bridge = format!("ipxcb{}", std::process::id() % 100_000);
    let direct = scene.catch_direct(&[&bridge]);
    scene.installed = true;
    scene.daemon = Some(Daemon::spawn_root(&[
        "run",
        "--upstream",
        &format!("http://{cloud_ip}"),
    ]));
    scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));

    let net = format!("ipx{}-named", std::process::id());
    let opt = format!("com.docker.network.bridge.name={bridge}");
    cmd(&[
        "docker", "network", "create", "--label", LABEL, "-o", &opt, &net,
    ]);
    scene.networks.push(net.clone());
    assert!(
        try_cmd(&["ip", "link", "show", &bridge]).0,
        "no bridge {bridge}"
    );
    scene
        .daemon()
        .wait_for(&format!("bridge={bridge}"), Duration::from_secs(10));

    let (line, addr) = served_by_its_label(&mut scene, &imds, &root_ip, &net);
    assert!(line.contains(&format!("client={addr} ")), "{line}");
    assert_eq!(direct.count(), 0, "direct requests from {bridge}");
}
