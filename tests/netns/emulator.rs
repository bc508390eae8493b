//! The built-in emulator: served without a cloud, chosen when what answers at the
//! metadata address is no cloud's service, and reloaded when its file changes; with a
//! real service the address goes back to it.

use std::io::{Read, Write};
use std::time::Duration;

use harness::*;
use nix::sys::signal::Signal;

/// The emulator's project id as a caller in `ns` reads it at the metadata address.
fn project_id(ns: &Netns) -> Result<Answer, std::io::Error> {
    http(
        ns,
        IMDS,
        "GET",
        "/computeMetadata/v1/project/project-id",
        &[("Metadata-Flavor", "Google")],
    )
    .0
}

#[test]
fn without_a_cloud_run_serves_the_built_in_emulator_to_containers_and_the_host() {
    require_root!();
    let tb = Testbed::new();
    // No cloud: nothing answers at 169.254.169.254.
    let d = tb.emulator_daemon(&["--unknown-policy", "allow"]);
    assert_eq!(
        d.log_count("serving the built-in emulator"),
        1,
        "{:#?}",
        d.log()
    );
    let a = project_id(&tb.container).unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "demo-project"), "{a:?}");
    assert_eq!(
        a.headers.get("metadata-flavor").map(String::as_str),
        Some("Google")
    );
    // Host processes reach it at the usual address, as on a cloud VM.
    let a = project_id(&tb.host).unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "demo-project"), "{a:?}");
    assert_eq!(tb.imds.count(), 0);
}

#[test]
fn run_forwards_only_to_a_service_that_answers_like_a_cloud() {
    require_root!();
    let tb = Testbed::new();
    let args = [
        "run",
        "--bridges",
        "br0,br-*",
        "--docker-socket",
        "/nonexistent/docker.sock",
        "--unknown-policy",
        "allow",
    ];
    // The fake service answers as EC2's does (`Server: EC2ws`): forwarded to.
    let d = Daemon::spawn(&tb.host, &args);
    d.wait_for("interception live", Duration::from_secs(10));
    assert_eq!(
        d.log_count("a metadata service answers"),
        1,
        "{:#?}",
        d.log()
    );
    assert!(
        d.log().iter().any(|l| l.contains("cloud=AWS")),
        "{:#?}",
        d.log()
    );
    let before = tb.imds.count();
    assert_eq!(tb.status("/latest/meta-data/instance-id"), 200);
    assert!(tb.imds.count() > before, "the container was not forwarded");
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());

    // A web filter that answers every address with 403 (as some networks do) is no
    // metadata service: the emulator serves, and says what it found.
    let web = Netns::new("web");
    tb.host.ip(&format!(
        "link add vweb type veth peer name eth0 netns {}",
        web.name
    ));
    tb.host.ip("addr add 10.98.0.1/30 dev vweb");
    tb.host.ip("link set vweb up");
    tb.host.ip("route replace 169.254.169.254/32 via 10.98.0.2");
    web.ip("addr add 10.98.0.2/30 dev eth0");
    web.ip("addr add 169.254.169.254/32 dev lo");
    web.ip("link set eth0 up");
    web.ip("route add default via 10.98.0.1");
    let listener = web.run(|| std::net::TcpListener::bind("169.254.169.254:80").unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 403 Forbidden\r\nServer: filter\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforbidden",
            );
        }
    });
    let a = http(&tb.host, IMDS, "GET", "/", &[]).0.unwrap();
    assert_eq!(a.status, 403, "the filter stands in the way: {a:?}");
    let d = Daemon::spawn(&tb.host, &args);
    d.wait_for("interception live", Duration::from_secs(10));
    assert_eq!(
        d.log_count("serving the built-in emulator"),
        1,
        "{:#?}",
        d.log()
    );
    assert!(
        d.log()
            .iter()
            .any(|l| l.contains("without any cloud's metadata marks")),
        "{:#?}",
        d.log()
    );
    let a = project_id(&tb.container).unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "demo-project"), "{a:?}");
}

#[test]
fn an_emulator_file_edit_is_served_without_a_restart_and_a_real_upstream_gets_the_address_back() {
    require_root!();
    let tb = Testbed::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("emulator.toml");
    let example = include_str!("../../examples/emulator.toml");
    let write = |project: &str| {
        std::fs::write(
            &file,
            example.replace(
                "project_id = \"demo-project\"",
                &format!("project_id = \"{project}\""),
            ),
        )
        .unwrap()
    };
    write("first-project");
    let emu = [
        "run",
        "--emulator",
        file.to_str().unwrap(),
        "--bridges",
        "br0,br-*",
        "--docker-socket",
        "/nonexistent/docker.sock",
        "--unknown-policy",
        "allow",
    ];
    let d = Daemon::spawn(&tb.host, &emu);
    d.wait_for("interception live", Duration::from_secs(10));
    assert_eq!(project_id(&tb.container).unwrap().body, "first-project");
    // The emulator's own address wins over the route to the cloud: the host is served
    // by the emulator too.
    assert_eq!(project_id(&tb.host).unwrap().body, "first-project");

    write("second-project");
    d.wait_for("emulator file reloaded", Duration::from_secs(3));
    assert_eq!(project_id(&tb.container).unwrap().body, "second-project");
    std::fs::write(&file, "[gce]\nproject_id = 7\n").unwrap();
    d.wait_for("emulator file reload refused", Duration::from_secs(3));
    assert!(
        d.log()
            .iter()
            .any(|l| l.contains("gce.") && l.contains("emulator file reload refused")),
        "the reason names the key: {:#?}",
        d.log()
    );
    assert_eq!(project_id(&tb.container).unwrap().body, "second-project");

    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    // With a real service upstream the daemon gives the address back to it.
    let _d = tb.daemon(&[]);
    let before = tb.imds.count();
    let a = http(&tb.host, IMDS, "GET", "/latest/meta-data/instance-id", &[])
        .0
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        tb.imds.count() > before,
        "the host reached the real service directly"
    );
}
