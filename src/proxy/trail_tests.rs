use std::time::Duration;

use http::{Method, StatusCode};

use super::*;
use crate::ports::BridgePort;
use crate::proxy::admit::Decision;
use crate::proxy::audit::{Audit, Timing};
use crate::proxy::cache::How;

fn hit(path: &str) -> Audit {
    Audit {
        path: Some(path.to_owned()),
        decision: Decision::Allow,
        cache: Some(How::Hit),
        upstream_status: Some(200),
        ..Audit::default()
    }
}

fn t() -> Timing {
    Timing {
        identify_us: 1,
        elapsed_ms: 0,
    }
}

fn from(trail: &Trail, port: u32, audit: Audit, status: StatusCode) {
    let client = ClientAddr(format!("10.0.0.{port}").parse().unwrap());
    let origin = Origin::Port(BridgePort(port));
    trail.record(
        audit,
        &Caller::Unknown,
        client,
        origin,
        &Method::GET,
        status,
        t(),
    );
}

fn entries(trail: &Trail) -> Vec<(String, u64)> {
    let w = trail.window.lock().unwrap();
    let mut v: Vec<_> = w
        .seen
        .iter()
        .map(|(k, s)| {
            (
                format!(
                    "{}:{}",
                    match k.caller.0 {
                        Origin::Port(p) => p.0,
                        _ => 0,
                    },
                    k.path
                ),
                s.repeats,
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn repeats_of_a_routine_request_are_counted_and_others_are_not() {
    let trail = Trail::new(Duration::from_secs(60));
    for _ in 0..1000 {
        from(&trail, 2, hit("/token"), StatusCode::OK);
    }
    // Not routine: a miss, a denial, an error, a 5xx.
    let miss = Audit {
        cache: Some(How::Miss),
        ..hit("/token")
    };
    from(&trail, 2, miss, StatusCode::OK);
    let denied = Audit {
        decision: Decision::Deny,
        ..hit("/secret")
    };
    from(&trail, 3, denied, StatusCode::FORBIDDEN);
    from(&trail, 2, hit("/token"), StatusCode::BAD_GATEWAY);
    let emulated = Audit {
        cache: None,
        upstream_status: None,
        ..hit("/emulated")
    };
    from(&trail, 3, emulated, StatusCode::OK);
    let passed = Audit {
        cache: None,
        ..hit("/passed")
    };
    from(&trail, 3, passed, StatusCode::OK);
    // Each written in full: seen, but nothing counted. The miss is not a repeat of the
    // hits on its path.
    assert_eq!(
        entries(&trail),
        [
            ("2:/token".to_owned(), 0),
            ("2:/token".to_owned(), 0),
            ("2:/token".to_owned(), 999),
            ("3:/emulated".to_owned(), 0),
            ("3:/passed".to_owned(), 0),
            ("3:/secret".to_owned(), 0)
        ]
    );
    // A summary writes the count and starts again; an entry without repeats goes.
    trail.summarise(Duration::from_secs(60));
    assert_eq!(entries(&trail), [("2:/token".to_owned(), 0)]);
    trail.summarise(Duration::from_secs(60));
    assert!(entries(&trail).is_empty());
}

#[test]
fn a_caller_walking_many_paths_is_counted_under_one_entry_past_its_share() {
    let trail = Trail::new(Duration::from_secs(60));
    for i in 0..(DISTINCT_PER_CALLER + 500) {
        from(&trail, 2, hit(&format!("/p{i}")), StatusCode::OK);
    }
    // Another caller still has its own share.
    from(&trail, 3, hit("/p0"), StatusCode::OK);
    let e = entries(&trail);
    assert_eq!(e.len(), DISTINCT_PER_CALLER + 2);
    assert!(e.contains(&("2:(other paths)".to_owned(), 500)), "{e:?}");
    assert!(e.contains(&("3:/p0".to_owned(), 0)), "{e:?}");
}

#[test]
fn without_an_interval_nothing_is_counted_and_the_latest_decision_is_kept() {
    let trail = Trail::new(Duration::ZERO);
    from(&trail, 2, hit("/a"), StatusCode::OK);
    from(&trail, 2, hit("/b"), StatusCode::OK);
    assert!(entries(&trail).is_empty());
    let last = trail.last_decisions();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].path, "/b");
    assert_eq!(last[0].decision, "allow");
    assert_eq!(last[0].client, "10.0.0.2");
}

#[test]
fn a_denial_hammered_is_written_the_first_times_then_counted() {
    let trail = Trail::new(Duration::from_secs(60));
    let denied = || Audit {
        decision: Decision::Deny,
        ..hit("/token")
    };
    for _ in 0..1000 {
        from(&trail, 2, denied(), StatusCode::FORBIDDEN);
    }
    let written = trail
        .window
        .lock()
        .unwrap()
        .seen
        .values()
        .next()
        .unwrap()
        .written;
    assert_eq!(written, IN_FULL_NOT_ROUTINE);
    let counted = 1000 - u64::from(IN_FULL_NOT_ROUTINE);
    assert_eq!(entries(&trail), [("2:/token".to_owned(), counted)]);
    // Another caller's first denial is its own, written in full.
    from(&trail, 3, denied(), StatusCode::FORBIDDEN);
    assert!(entries(&trail).contains(&("3:/token".to_owned(), 0)));
    // Once the hammering pauses for an interval, the next one is written again.
    trail.summarise(Duration::from_secs(60));
    trail.summarise(Duration::from_secs(60));
    assert!(entries(&trail).is_empty());
    from(&trail, 2, denied(), StatusCode::FORBIDDEN);
    assert_eq!(entries(&trail), [("2:/token".to_owned(), 0)]);
}

#[test]
fn routine_requests_cannot_push_a_denial_out_of_its_own_line() {
    let trail = Trail::new(Duration::from_secs(60));
    // A caller uses up its share of distinct routine requests, and more.
    for i in 0..(DISTINCT_PER_CALLER + 10) {
        from(&trail, 2, hit(&format!("/p{i}")), StatusCode::OK);
    }
    let denied = Audit {
        decision: Decision::Deny,
        ..hit("/token")
    };
    from(&trail, 2, denied, StatusCode::FORBIDDEN);
    let e = entries(&trail);
    assert!(e.contains(&("2:/token".to_owned(), 0)), "{e:?}");
    assert!(e.contains(&("2:(other paths)".to_owned(), 10)), "{e:?}");
}

#[test]
fn forgetting_the_other_paths_entry_gives_a_caller_no_new_share() {
    let trail = Trail::new(Duration::from_secs(60));
    let share = |trail: &Trail| {
        for i in 0..DISTINCT_PER_CALLER {
            from(trail, 2, hit(&format!("/p{i}")), StatusCode::OK);
        }
    };
    share(&trail);
    share(&trail);
    from(&trail, 2, hit("/new"), StatusCode::OK);
    trail.summarise(Duration::from_secs(60));
    // The share keeps repeating; `(other paths)` does not, and is forgotten.
    share(&trail);
    trail.summarise(Duration::from_secs(60));
    assert!(!entries(&trail).iter().any(|(k, _)| k == "2:(other paths)"));
    from(&trail, 2, hit("/newer"), StatusCode::OK);
    let e = entries(&trail);
    assert!(e.contains(&("2:(other paths)".to_owned(), 1)), "{e:?}");
    assert!(!e.iter().any(|(k, _)| k == "2:/newer"), "{e:?}");
}
