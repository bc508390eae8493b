//! Which node the Node.js SDKs run on: the first on PATH, 20 or newer, and
//! scripts/install-deps.sh refusing an older one.

use super::*;

/// cloud-init for Debian's Python, the SDKs' directory and node (the one on PATH, as
/// scripts/test.sh keys the SDKs' cache by its version); `None` (a skip) when missing,
/// unless the suite demands every test. A node older than the SDKs need fails.
pub(super) fn prerequisites(test: &str) -> Option<(PathBuf, PathBuf)> {
    let fail_or_skip = |why: String| {
        harness::suite::unable(test, &why);
        None
    };
    let (ok, _, err) = try_cmd(&[PYTHON, "-c", "import cloudinit.sources.DataSourceAzure"]);
    if !ok {
        return fail_or_skip(format!("{PYTHON} cannot import cloud-init: {err}"));
    }
    let Ok(dir) = std::env::var(NODE_MODULES_VAR) else {
        return fail_or_skip(format!(
            "{NODE_MODULES_VAR} is not set (scripts/test.sh installs the Node.js SDKs and sets it)"
        ));
    };
    let dir = PathBuf::from(dir);
    for sdk in [
        "@aws-sdk/credential-providers",
        "@azure/identity",
        "google-auth-library",
        "gcp-metadata",
    ] {
        if !dir.join(sdk).join("package.json").exists() {
            return fail_or_skip(format!("{} lacks {sdk}", dir.display()));
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    match find_node(&path) {
        Ok((node, _)) => Some((dir, node)),
        Err(NodeProblem::Missing) => fail_or_skip(format!(
            "no node on PATH ({}): the Node.js SDKs need node {NODE_MAJOR} or newer",
            path.to_string_lossy()
        )),
        Err(NodeProblem::Unusable(why)) => panic!("{test}: {why}"),
    }
}

enum NodeProblem {
    Missing,
    Unusable(String),
}

/// The first `node` on `path` (as `command -v node` finds it), canonical, and its major
/// version, which must be NODE_MAJOR or newer.
fn find_node(path: &std::ffi::OsStr) -> Result<(PathBuf, u32), NodeProblem> {
    use std::os::unix::fs::PermissionsExt;
    let node = std::env::split_paths(path)
        .map(|d| d.join("node"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(NodeProblem::Missing)?;
    let node = node.canonicalize().unwrap_or(node);
    let out = Command::new(&node)
        .arg("--version")
        .output()
        .map_err(|e| NodeProblem::Unusable(format!("{} --version: {e}", node.display())))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = version
        .strip_prefix('v')
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .ok_or_else(|| {
            NodeProblem::Unusable(format!(
                "{} --version printed {version:?}, not a version",
                node.display()
            ))
        })?;
    if major < NODE_MAJOR {
        return Err(NodeProblem::Unusable(format!(
            "{} is node {version}; the Node.js SDKs (@aws-sdk/credential-providers, \
             @azure/identity) need node {NODE_MAJOR} or newer on PATH",
            node.display()
        )));
    }
    Ok((node, major))
}

#[test]
fn node_is_the_first_on_path_and_must_be_20_or_newer() {
    let dir = tempfile::tempdir().unwrap();
    let fake = |sub: &str, version: &str| -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("node");
        std::fs::write(&f, format!("#!/bin/sh\necho {version}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    };
    let new = fake("new", "v22.1.0");
    let old = fake("old", "v18.19.0");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let path = |dirs: &[&Path]| std::env::join_paths(dirs).unwrap();

    match find_node(&path(&[&empty, &new, &old])) {
        Ok((node, 22)) => assert_eq!(node, new.join("node").canonicalize().unwrap()),
        Ok((node, major)) => panic!("{} as {major}", node.display()),
        Err(_) => panic!("the node on PATH was not found"),
    }
    match find_node(&path(&[&old, &new])) {
        Err(NodeProblem::Unusable(why)) => {
            assert!(
                why.contains("v18.19.0") && why.contains("node 20 or newer"),
                "{why}"
            )
        }
        _ => panic!("node 18 was taken"),
    }
    assert!(matches!(
        find_node(&path(&[&empty])),
        Err(NodeProblem::Missing)
    ));
}

#[test]
fn install_deps_refuses_a_node_older_than_20() {
    // Debian's nodejs (18 on bookworm) first on PATH: scripts/install-deps.sh must say
    // it is too old and which packages need more, not take it (it exits before any
    // package is looked at, so this changes nothing on the machine).
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node");
    std::fs::write(&node, "#!/bin/sh\necho v18.19.0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(std::iter::once(dir.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/install-deps.sh"
    ))
    .arg("test")
    .env("PATH", path)
    .stdin(Stdio::null())
    .output()
    .expect("run install-deps.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "node 18 was accepted: {err}");
    for want in [
        "node is too old",
        "v18.19.0",
        "node 20 or newer",
        "@aws-sdk/credential-providers",
        "@azure/identity",
        "18 on bookworm",
    ] {
        assert!(
            err.contains(want),
            "install-deps.sh does not say {want:?}: {err}"
        );
    }
}
