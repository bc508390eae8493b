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
//! - IMDS_PROXY_SKIP_FILE: every skip is also appended there (see `harness::suite`).
//! - IMDS_PROXY_TEST_DOCKERD_PIDFILE / IMDS_PROXY_TEST_DOCKERD_LOG: the dockerd the test
//!   may restart (started as `dockerd --pidfile <pidfile>`); without them the test
//!   restarts an active systemd docker.service with `systemctl restart docker`, else the
//!   dockerd of /var/run/docker.pid only if it can do so faithfully.

use std::thread;
use std::time::Duration;

use harness::docker::*;
use harness::*;
use nix::sys::signal::Signal;

#[test]
fn docker_containers_reach_the_metadata_service_only_through_the_proxy() {
    let Some(_root) = RootNamespace::claim(test_name!()) else {
        return;
    };
    let mut scene = Scene::new();

    // 1. The cloud: a fake metadata service behind a veth pair, link-local /30.
    let (imds, root_ip, cloud_ip) = scene.start_cloud();
    let veth = scene.veth.clone().unwrap();

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
    scene
        .daemon()
        .wait_for(&format!("client={DOCKER0_PREFIX}"), Duration::from_secs(2));

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
    let before = imds.relayed_count();
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
        imds.relayed_count(),
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
            let part = format!("the dockerd restart part of {}", test_name!());
            harness::suite::unable(&part, &format!("no dockerd this test may restart ({why})"));
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
    cmd(&[bin(), "uninstall"]);
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
