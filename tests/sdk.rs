//! The real SDKs judge the daemon: google-auth, azure-identity and boto3 run inside
//! unmodified Docker containers (busybox, with the host's Python mounted read-only) and
//! ask 169.254.169.254 for credentials as they do on a cloud VM, without any variable
//! pointing them elsewhere. If an SDK fails against the daemon, the daemon is wrong.
//!
//! Two modes, each with the same three containers side by side: an unlabelled one gets
//! the instance's identities of all three clouds; two labelled ones, pinned to different
//! identities, each get exactly their own, and are refused the other's.
//! - emulator: `imds-proxy run --emulator tests/sdk/emulator.toml`;
//! - proxy: `imds-proxy run --upstream http://169.254.169.254`, the upstream being
//!   `imds-proxy emulate` with the same file in a "cloud" namespace. The upstream sees
//!   every caller as the host, so each container's identity comes from the proxy's
//!   pinning alone. (An EC2 instance has one role: there the second pinned container
//!   names a role the instance lacks, and must get no AWS credentials at all.)
//!
//! The emulator mode's containers are on Docker's default bridge, the proxy mode's on a
//! user-defined network; on both google-auth reaches `metadata.google.internal` by the
//! container's own DNS, which the daemon answers for that name.
//!
//! Like tests/docker.rs this runs in the root namespace, in the same safety order: no
//! container starts before the daemon's table intercepts it, and `imds-proxy uninstall`
//! runs only after the last container is gone. Needs $IMDS_PROXY_SDK_VENV (scripts/test.sh
//! creates the virtualenv).

use std::time::{Duration, Instant};

use harness::docker::*;
use harness::sdk::*;
use harness::*;

/// Fewest requests through the proxy that one container's judges make (GCE alone makes
/// seven): fewer means some went elsewhere.
const MIN_REQUESTS_PER_CONTAINER: usize = 12;

#[test]
fn sdks_get_each_containers_own_identity_from_the_emulator() {
    let Some((sdk, _root)) = prelude(test_name!()) else {
        return;
    };
    let instance = Instance::load();
    let mut scene = Scene::new();
    scene.installed = true; // from here on the scene runs `imds-proxy uninstall`
    scene.daemon = Some(Daemon::spawn_root(&["run", "--emulator", EMULATOR_FILE]));
    scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));
    judge(&mut scene, &sdk, &instance, Mode::Emulator, &[]);
}

#[test]
fn sdks_get_each_containers_own_identity_through_the_proxy() {
    let Some((sdk, _root)) = prelude(test_name!()) else {
        return;
    };
    let instance = Instance::load();
    let mut scene = Scene::new();
    let cloud = start_emulated_cloud(&mut scene);
    scene.installed = true;
    scene.daemon = Some(Daemon::spawn_root(&[
        "run",
        "--upstream",
        &format!("http://{IMDS}"),
    ]));
    scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));
    judge(&mut scene, &sdk, &instance, Mode::Proxy, &[&cloud]);
}

/// The root namespace to this test alone (see [`RootNamespace`]) and the SDKs, or a
/// skip.
fn prelude(test: &str) -> Option<(Sdk, RootNamespace)> {
    let root = RootNamespace::claim(test)?;
    Some((Sdk::from_env_or_skip(test)?, root))
}

/// The three containers of judges, side by side, and what the daemon's log must and
/// must not hold. `others`: further daemons whose logs must not hold a credential either.
fn judge(scene: &mut Scene, sdk: &Sdk, instance: &Instance, mode: Mode, others: &[&Daemon]) {
    let mode_name = mode.name();
    // Docker's default bridge for one mode, a user-defined network (whose containers
    // resolve names through Docker's embedded resolver) for the other.
    let network = match mode {
        Mode::Emulator => DEFAULT_NET.to_owned(),
        Mode::Proxy => {
            let net = format!("ipx{}-sdk", std::process::id());
            scene.networks.push(net.clone());
            cmd(&[
                "docker", "network", "create", "--label", LABEL, "--driver", "bridge", &net,
            ]);
            net
        }
    };
    let start = Instant::now();
    let runs = instance
        .containers(mode)
        .iter()
        .map(|c| judge_container(scene, sdk, c, &network))
        .collect();
    let verdicts = run_all(runs);
    let took = start.elapsed();
    for v in &verdicts {
        eprintln!("{mode_name} mode, {} ({}, {:?}):", v.what, v.name, v.took);
        for l in &v.lines {
            eprintln!("  {l}");
        }
    }
    for v in &verdicts {
        v.assert_passed(mode);
    }

    // The answers came through the proxy, which knew each container; boto3 got its
    // credentials with an IMDSv2 session token the proxy issued to that container.
    let daemon = scene.daemon();
    for v in &verdicts {
        let mine: Vec<String> = daemon
            .log()
            .into_iter()
            .filter(|l| l.contains(AUDIT) && l.contains(&format!(" container={} ", v.name)))
            .collect();
        assert!(
            mine.len() >= MIN_REQUESTS_PER_CONTAINER,
            "{mode_name} mode: the daemon logged {} requests of {} (at least {MIN_REQUESTS_PER_CONTAINER} expected)",
            mine.len(),
            v.name
        );
        let sessions = mine
            .iter()
            .filter(|l| {
                l.contains(" method=PUT path=/latest/api/token ") && l.contains(" status=200 ")
            })
            .count();
        let credentials = mine
            .iter()
            .filter(|l| l.contains("/iam/security-credentials/") && l.contains(" status=200 "))
            .count();
        if v.has_aws_role {
            assert!(
                sessions >= 1 && credentials >= 1,
                "{mode_name} mode: {}: {sessions} IMDSv2 session tokens issued and {credentials} credential reads served",
                v.name
            );
        }
    }

    // No credential in any log: the file's fixed ones, and the ID tokens the judges got.
    let mut secrets = instance.secrets.clone();
    for v in &verdicts {
        let tail = v.line("gce", "serve")["id_token_tail"]
            .as_str()
            .expect("the GCE judge reports its ID token's tail")
            .to_owned();
        append_to_env_file("IMDS_PROXY_ISSUED_FILE", &tail);
        secrets.push(tail);
    }
    assert!(secrets.len() >= 12, "credentials to look for: {secrets:?}");
    for (who, log) in std::iter::once(("daemon", daemon.log()))
        .chain(others.iter().map(|d| ("stand-in cloud", d.log())))
    {
        let log = log.join("\n");
        for s in &secrets {
            assert!(
                !log.contains(s.as_str()),
                "{mode_name} mode: a credential ending {:?} appears in the {who}'s log",
                &s[s.len().saturating_sub(6)..]
            );
        }
    }

    measure(
        &format!("sdk: {mode_name} mode, three containers of judges side by side, wall (ms)"),
        took.as_millis(),
    );
}
