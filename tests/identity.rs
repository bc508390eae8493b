//! Container identity with the real Docker engine, in the root namespace (see
//! tests/docker.rs for why and for the safety order): labels and config reload, IP
//! reuse with the start race, forged source addresses and MACs, a container on two
//! networks. The daemon's log is checked for every credential the fake cloud issued.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use harness::docker::*;
use harness::*;

/// Credentials path: what an attacker wants.
const CREDS: &str = "/latest/meta-data/iam/security-credentials/role";
/// IP-reuse cycles (each one also a start race: the entrypoint asks at once).
const REUSE_CYCLES: usize = 50;

#[test]
fn containers_get_their_own_identity_through_ip_reuse_start_races_and_forgery() {
    let Some(_root) = RootNamespace::claim(test_name!()) else {
        return;
    };
    let mut scene = Scene::new();
    let (imds, _root_ip, cloud_ip) = scene.start_cloud();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("imds-proxy.toml");
    let write_config = |ci_default: &str| {
        std::fs::write(
            &config,
            format!(
                "upstream = \"http://{cloud_ip}\"\n\
                 unknown_policy = \"deny\"\n\
                 host_policy = \"metadata-only\"\n\
                 [policies.ci]\n\
                 default = \"{ci_default}\"\n"
            ),
        )
        .unwrap();
    };
    write_config("allow");
    scene.installed = true;
    scene.daemon = Some(Daemon::spawn_root(&[
        "run",
        "--config",
        config.to_str().unwrap(),
    ]));
    scene
        .daemon()
        .wait_for("interception live", Duration::from_secs(15));

    // A user-defined network with a fixed subnet, created after the daemon started.
    let pid = std::process::id();
    let subnet = format!("10.213.{}", pid % 250);
    let net = format!("ipx{pid}-id");
    scene.networks.push(net.clone());
    cmd(&[
        "docker",
        "network",
        "create",
        "--label",
        LABEL,
        "--subnet",
        &format!("{subnet}.0/24"),
        &net,
    ]);

    // 1. Labels side by side, and a config edit changes the answer without a restart.
    let ci = scene.start(
        &net,
        &["imds-proxy.policy=ci", "imds-proxy.aws.role=role"],
        &[],
    );
    let deny = scene.start(&net, &["imds-proxy.policy=deny"], &[]);
    let plain = scene.start(DEFAULT_NET, &[], &[]);
    assert!(get(&ci, CREDS).contains("\"Token\":\"SECRET-"));
    assert!(get(&plain, CREDS).contains("\"Token\":\"SECRET-"));
    assert!(get(&deny, CREDS).contains("403 Forbidden"));
    status_shows_each_container_with_its_identity_policy_and_last_decision(&ci, &deny);
    write_config("deny");
    scene
        .daemon()
        .wait_for("configuration reloaded", Duration::from_secs(5));
    assert!(get(&ci, CREDS).contains("403 Forbidden"));
    assert!(get(&plain, CREDS).contains("\"Token\":\"SECRET-"));
    write_config("allow");
    scene
        .daemon()
        .wait_for_nth("configuration reloaded", 2, Duration::from_secs(5));

    // Host processes (and `--network host` containers) get the host policy.
    let host_creds = root_get(&format!("{PROXY_ADDR}:80"), CREDS);
    assert!(host_creds.starts_with("HTTP/1.1 403"), "{host_creds}");
    let host_meta = root_get(&format!("{PROXY_ADDR}:80"), "/latest/meta-data/instance-id");
    assert!(host_meta.starts_with("HTTP/1.1 200"), "{host_meta}");
    scene
        .daemon()
        .wait_for("container=(host)", Duration::from_secs(2));

    // 2. Forgery. The victim holds a token-worthy identity; the attacker is denied and
    //    may change its own network settings.
    let victim = scene.start(&net, &["imds-proxy.policy=ci"], &[]);
    let victim_ip = inspect(&victim, &net, "IPAddress");
    let victim_mac = inspect(&victim, &net, "MacAddress");
    let gateway = inspect(&victim, &net, "Gateway");
    assert!(
        get(&victim, CREDS).contains("SECRET-"),
        "victim's own request"
    );
    let forged_before = scene
        .daemon()
        .log_count("source address is not the container's");
    for (case, mac) in [("address", None), ("address and MAC", Some(&victim_mac))] {
        for attempt in 0..5 {
            let attacker = scene.start(
                &net,
                &["imds-proxy.policy=deny"],
                &["--cap-add", "NET_ADMIN"],
            );
            let take_mac = match mac {
                Some(m) => format!(
                    "ip link set dev eth0 down && ip link set dev eth0 address {m} && ip link set dev eth0 up && "
                ),
                None => String::new(),
            };
            let out = exec(
                &attacker,
                &format!(
                    "{take_mac}ip addr add {victim_ip}/24 dev eth0 && \
                     ip route add 169.254.169.254/32 via {gateway} dev eth0 src {victim_ip} && \
                     ip route get 169.254.169.254 && \
                     timeout 5 wget -q -O - http://{IMDS}{CREDS}; echo RC=$?"
                ),
            );
            assert!(
                out.contains(&format!("src {victim_ip}")),
                "{case} #{attempt}: the attacker did not send from the victim's address: {out}"
            );
            assert!(
                !out.contains("SECRET-") && !out.contains("RC=0"),
                "{case} #{attempt}: the attacker got an answer meant for the victim: {out}"
            );
            if mac.is_some() {
                // With the victim's MAC too the connection completes, and the proxy
                // refuses it for what it is.
                assert!(out.contains("403 Forbidden"), "{case} #{attempt}: {out}");
            }
            scene.remove(&attacker);
        }
    }
    assert!(
        scene
            .daemon()
            .log_count("source address is not the container's")
            >= forged_before + 5,
        "the proxy never saw the forged requests it should have refused"
    );
    // The victim is still itself.
    assert!(
        get(&victim, CREDS).contains("SECRET-"),
        "victim after the attacks"
    );
    for c in [&ci, &deny, &victim] {
        scene.remove(c);
    }

    // 3. IP reuse with the start race: each container takes the previous one's address
    //    the moment it is gone and asks from its entrypoint, before Docker can have
    //    reported it. Policies alternate, so a stale identity would show.
    let ip = format!("{subnet}.77");
    let mut waits = Vec::new();
    let mut walls = Vec::new();
    for cycle in 0..REUSE_CYCLES {
        let policy = if cycle % 2 == 0 { "ci" } else { "deny" };
        let started = Instant::now();
        let c = scene.start_asking(&net, &ip, policy);
        let out = wait_logs(&c, "RC=", Duration::from_secs(15));
        walls.push(started.elapsed());
        match policy {
            "ci" => assert!(
                out.contains("SECRET-") && out.contains("RC=0"),
                "cycle {cycle}: the allowed container did not get its own answer: {out}"
            ),
            _ => assert!(
                out.contains("403 Forbidden") && !out.contains("SECRET-"),
                "cycle {cycle}: the denied container was not denied by its own policy: {out}"
            ),
        }
        let line = scene
            .daemon()
            .log()
            .into_iter()
            .find(|l| l.contains(AUDIT) && l.contains(&format!(" container={c} ")))
            .unwrap_or_else(|| panic!("cycle {cycle}: no audit event for {c}"));
        waits.push(field(&line, "identify_us"));
        scene.remove(&c);
    }
    waits.sort_unstable();
    let pct = |p: usize| waits[(waits.len() * p / 100).min(waits.len() - 1)];
    measure(
        &format!("identity: container start to identity usable, proxy wait p50/p99 over {REUSE_CYCLES} starts (ms)"),
        format!("{:.1}/{:.1}", pct(50) as f64 / 1000.0, pct(99) as f64 / 1000.0),
    );
    walls.sort_unstable();
    measure(
        "identity: `docker run -d` to the first answer read from the container's log, p50 (ms)",
        walls[walls.len() / 2].as_millis(),
    );

    // 4. One container on two networks: each network's address is the same container.
    let net2 = format!("ipx{pid}-id2");
    scene.networks.push(net2.clone());
    cmd(&["docker", "network", "create", "--label", LABEL, &net2]);
    let multi = scene.start(
        &net,
        &["imds-proxy.policy=metadata-only"],
        &["--cap-add", "NET_ADMIN"],
    );
    cmd(&["docker", "network", "connect", &net2, &multi]);
    let ip2 = inspect(&multi, &net2, "IPAddress");
    let gw2 = inspect(&multi, &net2, "Gateway");
    assert!(get(&multi, "/latest/meta-data/instance-id").contains("fake-imds"));
    let via2 = exec(
        &multi,
        &format!(
            "dev=$(ip -o -4 addr show | awk '$4 ~ /^{ip2}\\// {{print $2}}') && \
             ip route add 169.254.169.254/32 via {gw2} dev $dev && \
             wget -q -O - http://{IMDS}/latest/meta-data/instance-id; echo RC=$?; \
             wget -q -O - http://{IMDS}{CREDS}; echo RC=$?"
        ),
    );
    assert!(
        via2.contains("fake-imds") && via2.contains("403 Forbidden"),
        "{via2}"
    );
    scene.daemon().wait_for(
        &format!("request client={ip2} container_id="),
        Duration::from_secs(2),
    );
    let second = scene
        .daemon()
        .log()
        .into_iter()
        .filter(|l| l.contains(&format!("request client={ip2} ")))
        .collect::<Vec<_>>();
    assert!(
        second
            .iter()
            .all(|l| l.contains(&format!(" container={multi} "))),
        "requests over the second network were not the same container: {second:?}"
    );

    // A restarted container keeps its id but has a new process and a new veth: it is
    // still itself (the unknown-caller policy here would deny).
    cmd(&["docker", "restart", "-t", "0", &multi]);
    let after = get(&multi, "/latest/meta-data/instance-id");
    assert!(
        after.contains("fake-imds"),
        "after `docker restart`: {after}"
    );

    // 5. No credential the cloud issued is in the daemon's log.
    let log = scene.daemon().log().join("\n");
    let issued = imds.issued();
    assert!(
        issued.len() >= REUSE_CYCLES / 2,
        "tokens issued: {}",
        issued.len()
    );
    for t in &issued {
        assert!(
            !log.contains(t.as_str()),
            "credential {t} appears in the daemon log"
        );
    }
}

/// `wget` from inside a running container: the body, or wget's error.
/// `imds-proxy status`, as JSON and as text, names the labelled containers with their
/// policy, pinned identity and latest decision.
fn status_shows_each_container_with_its_identity_policy_and_last_decision(ci: &str, deny: &str) {
    let out = Command::new(bin())
        .args(["status", "--json"])
        .output()
        .expect("imds-proxy status");
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let find = |name: &str| {
        report["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in the status report: {report:#}"))
            .clone()
    };
    let c = find(ci);
    assert_eq!(c["policy"], "ci", "{c:#}");
    assert_eq!(c["policy_reason"], "label imds-proxy.policy=ci");
    assert_eq!(c["identity"]["aws"], "instance role role", "{c:#}");
    assert_eq!(c["identity"]["gce"], "instance");
    assert_eq!(c["last"]["path"], CREDS, "{c:#}");
    assert_eq!(c["last"]["decision"], "allow");
    assert_eq!(c["last"]["status"], 200);
    let d = find(deny);
    assert_eq!(d["policy"], "deny");
    assert_eq!(
        (d["last"]["decision"].as_str(), d["last"]["status"].as_u64()),
        (Some("deny"), Some(403)),
        "{d:#}"
    );
    assert_eq!(report["not_ready"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["tables"]["open"], true);
    assert!(report["source"]
        .as_str()
        .unwrap()
        .starts_with("upstream http://"));
    let text = Command::new(bin())
        .arg("status")
        .output()
        .expect("imds-proxy status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("\nready\n"), "{text}");
    assert!(
        text.contains("policy: ci (label imds-proxy.policy=ci)"),
        "{text}"
    );
    assert!(text.contains(&format!("{CREDS} -> allow 200")), "{text}");
}

fn get(container: &str, path: &str) -> String {
    exec(
        container,
        &format!("wget -q -O - http://{IMDS}{path} 2>&1; echo RC=$?"),
    )
}

/// Runs a shell script in a running container; stdout and stderr together.
fn exec(container: &str, script: &str) -> String {
    let out = Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("docker exec");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// One field of a container's endpoint on `network`.
fn inspect(container: &str, network: &str, field: &str) -> String {
    cmd(&[
        "docker",
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").{field}}}}}"),
        container,
    ])
    .trim()
    .to_owned()
}

/// Polls `docker logs` until `needle` shows up.
fn wait_logs(container: &str, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = Command::new("docker")
            .args(["logs", container])
            .output()
            .expect("docker logs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{container} did not log {needle:?} within {within:?}: {text}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A numeric `key=value` field of a log line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}
