//! `wait_for_change`: when it answers, and with what.

use super::*;

#[tokio::test]
async fn wait_for_change_answers_at_once_when_the_etag_already_differs() {
    let s = Scene::example();
    let target = "/computeMetadata/v1/project/project-id";
    let started = Instant::now();
    let got = s
        .get(&format!("{target}?wait_for_change=true&last_etag=0000"))
        .await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(
        (got.status, got.body.as_str()),
        (StatusCode::OK, "demo-project")
    );
}

#[tokio::test]
async fn wait_for_change_wakes_on_a_config_change_of_its_value_only() {
    let s = Scene::example();
    let target = "/computeMetadata/v1/project/project-id";
    let etag = s.get(target).await.header("etag").to_owned();
    let tx = s.tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Another value changes: the waiter keeps waiting.
        tx.send(example_with("name = \"demo-vm\"", "name = \"renamed-vm\""))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(example_with(
            "project_id = \"demo-project\"",
            "project_id = \"other-project\"",
        ))
        .unwrap();
    });
    let started = Instant::now();
    let got = s
        .get(&format!(
            "{target}?wait_for_change=true&last_etag={etag}&timeout_sec=5"
        ))
        .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(got.body, "other-project");
    assert_ne!(got.header("etag"), etag);
    assert_eq!(got.header("etag"), sha_etag("other-project"));

    // Without last_etag: waits for a change from the value as it is now.
    let tx = s.tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(parse(EXAMPLE)).unwrap();
    });
    let got = s.get(&format!("{target}?wait_for_change=true")).await;
    assert_eq!(got.body, "demo-project");
}

#[tokio::test]
async fn wait_for_change_gives_the_current_value_at_timeout_and_before_the_deadline() {
    let s = Scene::example();
    let target = "/computeMetadata/v1/instance/?recursive=true";
    let first = s.get(target).await;
    let etag = first.header("etag").to_owned();
    let started = Instant::now();
    let got = s
        .get(&format!(
            "{target}&wait_for_change=true&last_etag={etag}&timeout_sec=1"
        ))
        .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    assert_eq!(
        (got.status, got.header("etag")),
        (StatusCode::OK, etag.as_str())
    );
    assert_eq!(got.body, first.body);

    // The request's deadline comes first: answered just before it, never after.
    for query in [
        "?wait_for_change=true",
        "?wait_for_change=true&timeout_sec=3600",
    ] {
        let started = Instant::now();
        let got = s
            .call(
                Method::GET,
                &format!("/computeMetadata/v1/instance/id{query}"),
                &Identity::default(),
                Duration::from_millis(300),
            )
            .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(300),
            "{waited:?}"
        );
        assert_eq!(
            (got.status, got.body.as_str()),
            (StatusCode::OK, "4520031799277581759")
        );
    }
}

#[tokio::test]
async fn bad_wait_for_change_values_are_400() {
    let s = Scene::example();
    for query in [
        "wait_for_change=yes",
        "wait_for_change=true&timeout_sec=soon",
        "wait_for_change=true&timeout_sec=0",
        "wait_for_change=true&timeout_sec=-5",
        "wait_for_change=true&last_etag=",
    ] {
        let started = Instant::now();
        let got = s
            .get(&format!("/computeMetadata/v1/instance/id?{query}"))
            .await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
