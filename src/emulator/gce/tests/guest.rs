//! Guest attributes as cloud-init and Google's guest agent write and read them.

use super::*;

const GA: &str = "/computeMetadata/v1/instance/guest-attributes";

async fn put(s: &Scene, target: &str, value: &str) -> Got {
    let who = Identity::default();
    let body = bytes::Bytes::from(value.to_owned());
    s.send(Method::PUT, target, &who, Duration::from_secs(5), body)
        .await
}

async fn delete(s: &Scene, target: &str) -> Got {
    s.call(
        Method::DELETE,
        target,
        &Identity::default(),
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn a_written_host_key_is_read_back_listed_and_deleted() {
    let s = Scene::example();
    assert_eq!(s.get(&format!("{GA}/")).await.body, "");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey";
    let w = put(&s, &format!("{GA}/hostkeys/ssh-ed25519"), key).await;
    assert_eq!(w.status, StatusCode::OK, "{}", w.body);
    assert_eq!(w.header("metadata-flavor"), "Google");
    put(&s, &format!("{GA}/hostkeys/ssh-rsa"), "ssh-rsa AAAAB3").await;
    for (target, body) in [
        (format!("{GA}/"), "hostkeys/\n"),
        (format!("{GA}/hostkeys/"), "ssh-ed25519\nssh-rsa\n"),
        (format!("{GA}/hostkeys/ssh-ed25519"), key),
    ] {
        let g = s.get(&target).await;
        assert_eq!(g.status, StatusCode::OK, "{target}");
        assert_eq!(g.body, body, "{target}");
    }
    // A new value replaces the old one.
    put(&s, &format!("{GA}/hostkeys/ssh-rsa"), "ssh-rsa BBBB").await;
    assert_eq!(
        s.get(&format!("{GA}/hostkeys/ssh-rsa")).await.body,
        "ssh-rsa BBBB"
    );
    assert_eq!(
        delete(&s, &format!("{GA}/hostkeys/ssh-rsa")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.get(&format!("{GA}/hostkeys/ssh-rsa")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        delete(&s, &format!("{GA}/hostkeys/ssh-rsa")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        delete(&s, &format!("{GA}/hostkeys/ssh-ed25519"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        s.get(&format!("{GA}/hostkeys/")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_writes_and_methods_are_refused_as_gce_refuses_them() {
    let s = Scene::example();
    for target in [
        format!("{GA}/hostkeys"),
        format!("{GA}/"),
        format!("{GA}/a/b/c"),
    ] {
        assert_eq!(
            put(&s, &target, "v").await.status,
            StatusCode::BAD_REQUEST,
            "{target}"
        );
    }
    assert_eq!(
        put(&s, &format!("{GA}/host keys/x"), "v").await.status,
        StatusCode::BAD_REQUEST
    );
    let g = s
        .call(
            Method::POST,
            &format!("{GA}/hostkeys/x"),
            &Identity::default(),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(g.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(g.header("allow"), "GET, HEAD, PUT, DELETE");
    // Elsewhere in the tree a PUT is still 405 with GET, HEAD.
    let g = put(&s, "/computeMetadata/v1/instance/attributes/x", "v").await;
    assert_eq!(g.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(g.header("allow"), "GET, HEAD");
}

#[tokio::test]
async fn without_enable_guest_attributes_the_endpoint_is_forbidden() {
    let s = Scene::new(example_with(
        "enable-guest-attributes = \"TRUE\"",
        "enable-guest-attributes = \"FALSE\"",
    ));
    let g = put(&s, &format!("{GA}/hostkeys/ssh-rsa"), "ssh-rsa AAAA").await;
    assert_eq!(g.status, StatusCode::FORBIDDEN);
    assert_eq!(s.get(&format!("{GA}/")).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_maintenance_event_set_in_the_file_wakes_a_waiting_client() {
    let s = Scene::example();
    let target =
        "/computeMetadata/v1/instance/maintenance-event?wait_for_change=true&timeout_sec=5";
    let waiter = s.get(target);
    let edit = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.tx.send(example_with(
            "maintenance_event = \"NONE\"",
            "maintenance_event = \"TERMINATE_ON_HOST_MAINTENANCE\"",
        ))
        .unwrap();
    };
    let start = Instant::now();
    let (got, ()) = tokio::join!(waiter, edit);
    assert_eq!(got.body, "TERMINATE_ON_HOST_MAINTENANCE");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let p = example_with("preempted = false", "preempted = true");
    s.tx.send(p).unwrap();
    assert_eq!(
        s.get("/computeMetadata/v1/instance/preempted").await.body,
        "TRUE"
    );
}
