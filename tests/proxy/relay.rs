//! The proxy as an HTTP relay: what crosses it intact and what does not, what a
//! container sees when the upstream is down, slow, huge or broken, and the limits that
//! keep one client from holding the proxy.

use std::net::TcpListener;

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn request_crosses_intact_minus_hop_by_hop_and_with_nothing_added() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 2000).await;
    let req = b"POST /metadata/scheduledevents?x=1&y=%2F HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nAccept: a\r\nAccept: b\r\nConnection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=1\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    let (a, _) = raw(p.addr, req).await;
    assert_eq!(a.unwrap().status, 200);
    let s = up.last();
    let head = s.head.to_ascii_lowercase();
    assert!(
        head.starts_with("post /metadata/scheduledevents?x=1&y=%2f http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("host: 169.254.169.254\r\n"), "{head}");
    assert!(head.contains("metadata: true\r\n"), "{head}");
    assert!(
        head.contains("accept: a\r\n") && head.contains("accept: b\r\n"),
        "{head}"
    );
    assert_eq!(s.body, b"hello");
    for gone in [
        "x-secret-hop",
        "keep-alive",
        "te:",
        "proxy-authorization",
        "x-forwarded-for",
        "forwarded",
        "via:",
    ] {
        assert!(!head.contains(gone), "{gone} in {head}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_status_and_headers_reach_the_container_without_hop_by_hop_ones() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 2000).await;
    let a = raw(p.addr, get("/hop")).await.0.unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(a.body, "not found");
    assert_eq!(a.headers.get("server").map(String::as_str), Some("EC2ws"));
    assert_eq!(a.headers.get("x-kept").map(String::as_str), Some("yes"));
    assert!(
        !a.headers.contains_key("x-hop") && !a.headers.contains_key("keep-alive"),
        "{a:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_a_prompt_502_naming_the_cause() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // closed again at once
    let p = start(dead, 5000).await;
    let (a, took) = raw(p.addr, get("/latest/meta-data/")).await;
    let a = a.unwrap();
    assert_eq!(a.status, 502);
    assert_eq!(json_error(&a), "upstream_unreachable");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_a_504_at_the_deadline_not_a_hang() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 400).await;
    let (a, took) = raw(p.addr, get("/slow/3000")).await;
    let a = a.unwrap();
    assert_eq!(a.status, 504);
    assert_eq!(json_error(&a), "upstream_timeout");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_or_oversized_upstream_answers_are_502() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 3000).await;
    let a = raw(p.addr, get("/truncated")).await.0.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (502, "upstream_failed")
    );
    let a = raw(p.addr, get("/big")).await.0.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (502, "upstream_response_too_large")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_are_refused_without_reaching_upstream() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 2000).await;
    let body = vec![b'a'; 4096];
    let mut req = format!(
        "POST /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend(body);
    let a = raw(p.addr, req).await.0.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (413, "request_too_large")
    );

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    )
    .into_bytes();
    let (a, took) = raw(p.addr, huge).await;
    assert_eq!(a.unwrap().status, 431);
    assert!(took < Duration::from_secs(2));

    let a = raw(
        p.addr,
        b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n".to_vec(),
    )
    .await
    .0
    .unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (405, "method_not_allowed")
    );

    let (a, _) = raw(p.addr, b"GARBAGE\r\n\r\n".to_vec()).await;
    assert_eq!(a.unwrap().status, 400);
    assert!(up.count() == 0, "upstream saw a refused request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_client_is_dropped_instead_of_holding_a_connection() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 2000).await;
    let addr = p.addr;
    let took = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").unwrap(); // never finishes the head
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        t.elapsed()
    })
    .await
    .unwrap();
    assert!(
        took < Duration::from_secs(8),
        "stalled client held for {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 2000).await;
    for i in 0..5 {
        assert_eq!(
            raw(p.addr, get(&format!("/n/{i}"))).await.0.unwrap().status,
            200
        );
    }
    let peers: std::collections::HashSet<SocketAddr> = up.seen().iter().map(|s| s.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "5 sequential requests used {} upstream connections",
        peers.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_in_flight_requests_and_accepts_no_new_ones() {
    let up = FakeImds::loopback();
    let mut p = start(up.addr(), 5000).await;
    let addr = p.addr;
    let slow = tokio::spawn(raw(addr, get("/slow/800")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.stop.take().unwrap().send(()).unwrap();
    let (a, took) = slow.await.unwrap();
    assert_eq!(a.unwrap().status, 200, "in-flight request cut");
    assert!(took >= Duration::from_millis(800));
    let report = p.done.await.unwrap();
    assert_eq!(report.abandoned, 0);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_upstream_framing_cannot_desync_the_container_connection() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 2000).await;
    let a = raw(p.addr, get("/smuggle")).await.0.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body, "hello-HTTP/1.1 200 X",
        "the whole decoded body, framed by its real length"
    );
    assert_eq!(
        a.headers.get("content-length").map(String::as_str),
        Some("20")
    );
    assert!(!a.headers.contains_key("transfer-encoding"));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_take_every_connection() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 2000).await;
    let addr = p.addr;
    // One client holds its whole allowance with heads it never finishes...
    let mut held = Vec::new();
    for _ in 0..proxy::MAX_CONNECTIONS_PER_CLIENT {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...its next connection is closed at once...
    let (r, took) = raw(addr, get("/one-too-many")).await;
    assert!(r.is_err(), "over-limit connection was served: {r:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // ...while another container (another source address) is still served.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = other.connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&get("/other-client")).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert_eq!(parse_answer(&buf).unwrap().status, 200);
    // Releasing connections gives the first client its place back.
    held.clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(raw(addr, get("/again")).await.0.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_slow_to_send_its_body_gets_408_not_a_blamed_upstream() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 400).await;
    let addr = p.addr;
    let (a, took) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"PUT /latest/api/token HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        (parse_answer(&buf), t.elapsed())
    })
    .await
    .unwrap();
    let a = a.unwrap();
    assert_eq!(
        (a.status, json_error(&a).as_str()),
        (408, "request_timeout")
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(up.count() == 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_receives_the_canonical_path_and_hostile_paths_go_nowhere() {
    let up = FakeImds::loopback();
    let p = start(up.addr(), 2000).await;
    let a = raw(
        p.addr,
        get("//metadata/identity\\oauth2/./x/../token?resource=a%2Fb"),
    )
    .await
    .0
    .unwrap();
    assert_eq!(a.status, 200);
    let first_line = up.last().request_line().to_owned();
    assert_eq!(
        first_line,
        "GET /metadata/identity/oauth2/token?resource=a%2Fb HTTP/1.1"
    );

    let before = up.count();
    for hostile in [
        "/latest/meta-data/iam%00x",
        "/metadata/identity/oauth2/token.",
        "/a/%zz",
    ] {
        let a = raw(p.addr, get(hostile)).await.0.unwrap();
        assert_eq!(
            (a.status, json_error(&a).as_str()),
            (400, "bad_request_path"),
            "{hostile}"
        );
    }
    assert_eq!(up.count(), before, "a hostile path reached the upstream");
}
