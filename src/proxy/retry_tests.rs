use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn status(code: u16) -> Outcome {
    Outcome::Status(StatusCode::from_u16(code).unwrap())
}

#[test]
fn only_transient_failures_are_tried_again() {
    for (outcome, transient) in [
        (status(200), false),
        (status(204), false),
        (status(304), false),
        (status(400), false),
        (status(401), false),
        (status(403), false),
        (status(404), false),
        (status(405), false),
        (status(408), false),
        (status(410), true),
        (status(429), true),
        (status(500), true),
        (status(501), false),
        (status(502), true),
        (status(503), true),
        (status(504), true),
        (status(505), false),
        (Outcome::ConnectFailed, true),
        (Outcome::TimedOut, true),
        (Outcome::Failed, false),
    ] {
        assert_eq!(outcome.transient(), transient, "{outcome:?}");
    }
}

#[test]
fn only_safe_methods_are_sent_twice() {
    for (m, ok) in [
        (Method::GET, true),
        (Method::HEAD, true),
        (Method::OPTIONS, true),
        (Method::POST, false),
        (Method::PUT, false),
        (Method::DELETE, false),
        (Method::PATCH, false),
    ] {
        assert_eq!(repeatable(&m), ok, "{m}");
    }
}

#[test]
fn the_plan_for_each_case() {
    let t0 = Instant::now();
    let d10 = t0 + Duration::from_secs(10);
    let ra = |s| Some(Duration::from_secs(s));
    // (repeatable, attempts made, outcome, Retry-After, now, deadline, jitter) -> next
    let cases = [
        (
            true,
            1,
            status(200),
            None,
            t0,
            d10,
            0.5,
            Next::Stop(Why::Final),
        ),
        (
            true,
            1,
            status(404),
            None,
            t0,
            d10,
            0.5,
            Next::Stop(Why::Final),
        ),
        (
            true,
            1,
            status(403),
            ra(1),
            t0,
            d10,
            0.5,
            Next::Stop(Why::Final),
        ),
        (
            true,
            1,
            status(503),
            None,
            t0,
            d10,
            0.5,
            Next::Retry(ms(25)),
        ),
        (
            true,
            2,
            status(503),
            None,
            t0,
            d10,
            0.5,
            Next::Retry(ms(50)),
        ),
        (
            true,
            3,
            status(500),
            None,
            t0,
            d10,
            0.5,
            Next::Retry(ms(100)),
        ),
        (
            true,
            4,
            status(503),
            None,
            t0,
            d10,
            0.5,
            Next::Stop(Why::Attempts),
        ),
        (
            false,
            1,
            status(500),
            None,
            t0,
            d10,
            0.5,
            Next::Stop(Why::Once),
        ),
        (
            false,
            1,
            status(200),
            None,
            t0,
            d10,
            0.5,
            Next::Stop(Why::Final),
        ),
        // The service's own wait wins over the backoff, longer or shorter.
        (
            true,
            1,
            status(429),
            ra(1),
            t0,
            d10,
            0.5,
            Next::Retry(ms(1000)),
        ),
        (
            true,
            3,
            status(503),
            ra(0),
            t0,
            d10,
            0.9,
            Next::Retry(ms(0)),
        ),
        (
            true,
            1,
            status(410),
            ra(3),
            t0,
            d10,
            0.0,
            Next::Retry(ms(3000)),
        ),
        // A wait that leaves less than one attempt's time: stop now.
        (
            true,
            1,
            status(429),
            ra(1),
            t0,
            t0 + ms(1049),
            0.5,
            Next::Stop(Why::Deadline),
        ),
        (
            true,
            1,
            status(429),
            ra(1),
            t0,
            t0 + ms(1050),
            0.5,
            Next::Retry(ms(1000)),
        ),
        (
            true,
            1,
            status(429),
            ra(u64::MAX),
            t0,
            d10,
            0.5,
            Next::Stop(Why::Deadline),
        ),
        (
            true,
            1,
            Outcome::ConnectFailed,
            None,
            t0,
            t0 + ms(74),
            0.5,
            Next::Stop(Why::Deadline),
        ),
        (
            true,
            1,
            Outcome::ConnectFailed,
            None,
            t0,
            t0 + ms(75),
            0.5,
            Next::Retry(ms(25)),
        ),
        (
            true,
            2,
            Outcome::TimedOut,
            None,
            t0 + ms(900),
            d10,
            0.0,
            Next::Retry(ms(0)),
        ),
        (
            true,
            1,
            Outcome::TimedOut,
            None,
            t0,
            t0,
            0.0,
            Next::Stop(Why::Deadline),
        ),
        (
            true,
            1,
            Outcome::Failed,
            None,
            t0,
            d10,
            0.5,
            Next::Stop(Why::Final),
        ),
    ];
    for (i, (rep, made, outcome, retry_after, now, deadline, jitter, want)) in
        cases.into_iter().enumerate()
    {
        assert_eq!(
            plan(rep, made, outcome, retry_after, now, deadline, jitter),
            want,
            "case {i}: {outcome:?} after {made}"
        );
    }
}

#[test]
fn backoff_grows_to_its_cap_and_never_beyond() {
    for (retry, ceiling) in [
        (0, 50),
        (1, 100),
        (2, 200),
        (3, 400),
        (4, 800),
        (5, 1000),
        (31, 1000),
        (32, 1000),
        (u32::MAX, 1000),
    ] {
        assert_eq!(backoff(retry, 0.0), Duration::ZERO, "{retry}");
        let top = backoff(retry, 0.999_999_999);
        assert!(
            top <= ms(ceiling) && top > ms(ceiling) - ms(1),
            "{retry}: {top:?}"
        );
        assert_eq!(backoff(retry, 0.5), ms(ceiling) / 2, "{retry}");
        // Out-of-range jitter is clamped, never a longer wait.
        assert!(backoff(retry, 7.0) <= ms(ceiling));
        assert_eq!(backoff(retry, -1.0), Duration::ZERO);
    }
}

#[test]
fn every_planned_schedule_ends_before_the_deadline() {
    // Whatever the jitter, the waits and the least attempt time of the retries fit
    // between the first failure and the deadline.
    let t0 = Instant::now();
    for budget in [0u64, 49, 50, 60, 100, 300, 900, 10_000] {
        for jitter in [0.0, 0.3, 0.999] {
            let deadline = t0 + ms(budget);
            let mut now = t0;
            let mut made = 1;
            while let Next::Retry(wait) = plan(
                true,
                made,
                Outcome::ConnectFailed,
                None,
                now,
                deadline,
                jitter,
            ) {
                now += wait;
                assert!(now + MIN_ATTEMPT <= deadline, "{budget} ms, {jitter}");
                made += 1;
            }
            assert!(made <= MAX_ATTEMPTS);
        }
    }
}

#[test]
fn an_attempt_gets_half_the_time_left_unless_no_retry_could_follow() {
    // (remaining, attempts made before, repeatable) -> this attempt's time
    for (remaining, made, rep, want) in [
        (900, 0, true, 450),
        (900, 0, false, 900),
        (450, 1, true, 225),
        (200, 2, true, 200),
        (900, 3, true, 900),
        (400, 0, true, 200),
        (190, 1, true, 190),
        (250, 1, true, 250),
        (300, 1, true, 150),
        (200, 0, true, 100),
        (199, 0, true, 199),
        (150, 0, true, 150),
        (30, 0, true, 30),
        (0, 0, true, 0),
        (10_000, 0, true, 5000),
    ] {
        assert_eq!(
            attempt_timeout(ms(remaining), made, rep),
            ms(want),
            "{remaining} ms after {made}, {rep}"
        );
    }
}

#[test]
fn an_attempt_that_times_out_early_always_leaves_room_for_the_next() {
    // Whatever the jitter, an attempt cut short by its own timeout is followed by a
    // retry; the last attempt runs to the deadline.
    let t0 = Instant::now();
    for budget in [60u64, 100, 149, 150, 400, 900, 2000, 10_000] {
        for jitter in [0.0, 0.5, 0.999] {
            let deadline = t0 + ms(budget);
            let mut now = t0;
            let mut made = 0;
            loop {
                let limit = attempt_timeout(deadline - now, made, true);
                now += limit;
                made += 1;
                match plan(true, made, Outcome::TimedOut, None, now, deadline, jitter) {
                    Next::Retry(wait) => now += wait,
                    Next::Stop(why) => {
                        assert_eq!(
                            now, deadline,
                            "{budget} ms, {jitter}: stopped early ({why:?})"
                        );
                        break;
                    }
                }
            }
            assert!(made <= MAX_ATTEMPTS);
        }
    }
}

#[test]
fn retry_after_reads_seconds_and_all_three_date_forms() {
    // 1994-11-06 08:49:37 UTC
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
    let before = at - Duration::from_secs(30);
    for text in [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        " Sun, 06 Nov 1994 08:49:37 GMT ",
    ] {
        assert_eq!(http_date(text.trim()), Some(at), "{text}");
        assert_eq!(
            parse_retry_after(text, before),
            Some(Duration::from_secs(30)),
            "{text}"
        );
    }
    // A date already past is no wait.
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at + Duration::from_secs(5)),
        Some(Duration::ZERO)
    );
    for (text, secs) in [("0", 0), ("1", 1), ("120", 120), (" 7 ", 7), ("007", 7)] {
        assert_eq!(
            parse_retry_after(text, at),
            Some(Duration::from_secs(secs)),
            "{text}"
        );
    }
    assert_eq!(
        parse_retry_after("99999999999999999999999", at),
        Some(Duration::MAX)
    );
    // Dates across leap years and month ends.
    for (text, secs) in [
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
        ("Thu, 29 Feb 2024 23:59:59 GMT", 1_709_251_199),
        ("Fri, 01 Mar 2024 00:00:00 GMT", 1_709_251_200),
        ("Fri, 31 Dec 2100 12:00:00 GMT", 4_133_937_600),
        ("Wednesday, 09-Jun-21 10:18:14 GMT", 1_623_233_894),
    ] {
        assert_eq!(
            http_date(text),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            "{text}"
        );
    }
}

#[test]
fn garbage_retry_after_is_ignored() {
    let now = SystemTime::now();
    for text in [
        "",
        " ",
        "-1",
        "1.5",
        "+3",
        "soon",
        "1s",
        "0x10",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Sun, 29 Feb 2023 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Sun, 06 Nov 1969 08:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sunday, 06-Nov 08:49:37 GMT",
        "Sun Nov  6 08:49:37",
        "Sun Nov 32 08:49:37 1994",
        "Sun, 06 Nov 1994 08:49:37 GMT extra",
        "\u{1F600}",
    ] {
        assert_eq!(parse_retry_after(text, now), None, "{text:?}");
    }
}
