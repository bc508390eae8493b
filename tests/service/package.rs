//! The Debian package `cargo deb` built: its files, conffile and `Depends`, and its
//! maintainer scripts played through install, upgrade, removal and purge (the path is
//! opened again only on purge).

use std::path::PathBuf;

use harness::*;

use super::in_private_mounts;

/// The package `cargo deb` built (scripts/test.sh builds it first).
fn package(test: &str) -> Option<PathBuf> {
    let deb = std::env::var_os("IMDS_PROXY_DEB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            repo().join(format!(
                "target/debian/imds-proxy_{}-1_amd64.deb",
                env!("CARGO_PKG_VERSION")
            ))
        });
    if deb.exists() {
        return Some(deb);
    }
    if std::env::var("IMDS_PROXY_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: no package at {} (cargo deb builds it)",
            deb.display()
        );
    }
    skipped(
        test,
        &format!("no package at {} (cargo deb)", deb.display()),
    );
    None
}

#[test]
fn the_package_holds_the_daemon_its_unit_config_and_docs() {
    let test = "the_package_holds_the_daemon_its_unit_config_and_docs";
    let Some(deb) = package(test) else { return };
    let deb = deb.to_str().unwrap();
    let contents = cmd(&["dpkg-deb", "-c", deb]);
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/imds-proxy"),
        ("-rw-r--r--", "./lib/systemd/system/imds-proxy.service"),
        ("-rw-r--r--", "./etc/imds-proxy/config.toml"),
        (
            "-rw-r--r--",
            "./usr/share/doc/imds-proxy/examples/emulator.toml",
        ),
        ("-rw-r--r--", "./usr/share/doc/imds-proxy/README.md"),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&format!(" {path}"))),
            "{path} ({mode}) not in the package:\n{contents}"
        );
    }
    let unit = repo().join("packaging/imds-proxy.service");
    let shipped = cmd(&[
        "sh",
        "-c",
        &format!("dpkg-deb --fsys-tarfile {deb} | tar -xO ./lib/systemd/system/imds-proxy.service"),
    ]);
    assert_eq!(shipped, std::fs::read_to_string(unit).unwrap());

    let control = cmd(&["dpkg-deb", "-f", deb, "Depends"]);
    for lib in ["libnftnl", "libmnl", "libc6"] {
        assert!(control.contains(lib), "Depends lacks {lib}: {control}");
    }
    let dir = tempfile::tempdir().unwrap();
    cmd(&["dpkg-deb", "-e", deb, dir.path().to_str().unwrap()]);
    let conffiles = std::fs::read_to_string(dir.path().join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/imds-proxy/config.toml");
    // The shipped configuration is the daemon's own defaults: it loads, every key
    // commented out.
    let config = cmd(&[
        "sh",
        "-c",
        &format!("dpkg-deb --fsys-tarfile {deb} | tar -xO ./etc/imds-proxy/config.toml"),
    ]);
    assert!(
        config
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "the default config sets something:\n{config}"
    );
}

#[test]
fn the_maintainer_scripts_open_the_path_only_on_purge() {
    let test = test_name!();
    if !root_or_skip(test) {
        return;
    }
    let Some(deb) = package(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scripts = d.join("control");
    cmd(&[
        "dpkg-deb",
        "-e",
        deb.to_str().unwrap(),
        scripts.to_str().unwrap(),
    ]);
    // Stand-ins that record how they are called: systemd's tools, and the daemon.
    let log = d.join("calls.log");
    let stubs = d.join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    for tool in [
        "deb-systemd-helper",
        "deb-systemd-invoke",
        "systemctl",
        "imds-proxy",
    ] {
        let path = stubs.join(tool);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"{tool} $*\" >> {}\n", log.display()),
        )
        .unwrap();
        cmd(&["chmod", "755", path.to_str().unwrap()]);
    }
    let etc = d.join("etc");
    std::fs::create_dir_all(etc.join("imds-proxy")).unwrap();
    std::fs::write(etc.join("imds-proxy/config.toml"), "# test\n").unwrap();
    // In a private mount namespace: a systemd that "runs" (/run/systemd/system), an
    // empty /var/lib, and the stand-in daemon at /usr/bin/imds-proxy.
    let s = scripts.display();
    let step = |name: &str, script: &str| {
        format!(
            "echo '== {name}' >> {log}; {s}/{script}\n",
            log = log.display()
        )
    };
    let play = [
        step("install", "postinst configure"),
        step("upgrade: old prerm", "prerm upgrade 0.1.0-1"),
        step("upgrade: old postrm", "postrm upgrade 0.1.0-1"),
        step("upgrade: new postinst", "postinst configure 0.1.0-1"),
        step("remove: prerm", "prerm remove"),
        step("remove: postrm", "postrm remove"),
        step("purge", "postrm purge"),
    ]
    .concat();
    let (ok, out, err) = in_private_mounts(&format!(
        "mount -t tmpfs tmpfs /run
         mkdir -p /run/systemd/system
         mount -t tmpfs tmpfs /var/lib
         mount -t overlay overlay -o lowerdir={stubs}:/usr/bin /usr/bin
         mount -t overlay overlay -o lowerdir={etc}:/etc /etc
         export PATH={stubs}:$PATH
         {play}
         test ! -e /var/lib/imds-proxy",
        stubs = stubs.display(),
        etc = etc.display(),
    ));
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ok,
        "maintainer scripts failed:\n{out}{err}\ncalls:\n{calls}"
    );
    let steps: Vec<(&str, Vec<&str>)> = calls
        .split("== ")
        .skip(1)
        .map(|s| {
            let mut lines = s.lines();
            (lines.next().unwrap(), lines.collect())
        })
        .collect();
    let of = |name: &str| -> Vec<&str> {
        steps
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no step {name}:\n{calls}"))
            .1
            .clone()
    };
    let uninstalls = |name: &str| of(name).iter().any(|l| l.contains("uninstall"));
    assert!(of("install").contains(&"deb-systemd-helper enable imds-proxy.service"));
    assert!(of("install").contains(&"deb-systemd-invoke start imds-proxy.service"));
    assert!(
        !of("upgrade: old prerm").iter().any(|l| l.contains("stop")),
        "upgrade stopped the service before the new binary was there:\n{calls}"
    );
    assert!(of("upgrade: new postinst").contains(&"deb-systemd-invoke restart imds-proxy.service"));
    assert!(of("remove: prerm").contains(&"deb-systemd-invoke stop imds-proxy.service"));
    for name in [
        "install",
        "upgrade: old prerm",
        "upgrade: old postrm",
        "upgrade: new postinst",
        "remove: prerm",
        "remove: postrm",
    ] {
        assert!(!uninstalls(name), "{name} ran uninstall:\n{calls}");
    }
    assert_eq!(
        of("purge")
            .iter()
            .filter(|l| l.starts_with("imds-proxy "))
            .collect::<Vec<_>>(),
        [&"imds-proxy uninstall --config /var/lib/imds-proxy/purge/config.toml"],
        "purge must run uninstall once, with the configuration the service had:\n{calls}"
    );
}
