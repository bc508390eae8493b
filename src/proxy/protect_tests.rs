use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn rate(text: &str) -> RateLimit {
    text.parse().unwrap()
}

#[test]
fn intervals_round_up_so_the_rate_is_never_exceeded() {
    for (text, ns) in [
        ("5/s", 200_000_000),
        ("20/s", 50_000_000),
        ("3/s", 333_333_334),
        ("7/min", 8_571_428_572),
        ("1/h", 3_600_000_000_000),
        ("1000000/s", 1_000),
    ] {
        assert_eq!(interval(rate(text)), Duration::from_nanos(ns), "{text}");
    }
}

#[test]
fn a_burst_goes_at_once_then_one_per_interval_in_arrival_order() {
    let t0 = Instant::now();
    let far = t0 + Duration::from_secs(3600);
    let mut p = Pacer::default();
    let l = rate("5/s burst 3");
    let sends: Vec<Duration> = (0..7)
        .map(|_| p.reserve(l, t0, far).unwrap() - t0)
        .collect();
    assert_eq!(
        sends,
        [ms(0), ms(0), ms(0), ms(200), ms(400), ms(600), ms(800)]
    );
    // A quiet spell refills the bucket, never beyond the burst.
    let later = t0 + Duration::from_secs(60);
    let sends: Vec<Duration> = (0..4)
        .map(|_| p.reserve(l, later, far).unwrap() - later)
        .collect();
    assert_eq!(sends, [ms(0), ms(0), ms(0), ms(200)]);
    // Half-refilled: one at once, the next when the interval is up.
    let mut p = Pacer::default();
    let one = rate("5/s burst 1");
    assert_eq!(p.reserve(one, t0, far), Ok(t0));
    assert_eq!(p.reserve(one, t0 + ms(100), far), Ok(t0 + ms(200)));
    assert_eq!(p.reserve(one, t0 + ms(500), far), Ok(t0 + ms(500)));
}

#[test]
fn a_send_too_late_for_the_deadline_is_refused_and_reserves_nothing() {
    let t0 = Instant::now();
    let mut p = Pacer::default();
    let l = rate("5/s burst 1");
    assert_eq!(p.reserve(l, t0, t0), Ok(t0));
    // The next send would be at 200 ms: too late for 150, and nothing is taken...
    assert_eq!(p.reserve(l, t0, t0 + ms(150)), Err(ms(200)));
    assert_eq!(p.reserve(l, t0 + ms(50), t0 + ms(199)), Err(ms(150)));
    // ...so a caller with more time gets that same slot.
    assert_eq!(p.reserve(l, t0, t0 + ms(200)), Ok(t0 + ms(200)));
    assert_eq!(p.reserve(l, t0, t0 + ms(10_000)), Ok(t0 + ms(400)));
    let mut p = Pacer::default();
    let slow = rate("1/min burst 1");
    assert_eq!(p.reserve(slow, t0, t0), Ok(t0));
    assert_eq!(
        p.reserve(slow, t0, t0 + Duration::from_secs(59)),
        Err(Duration::from_secs(60))
    );
}

#[test]
fn no_span_of_time_carries_more_than_burst_plus_rate() {
    // Requests arrive at uneven times with uneven deadlines; whatever is sent obeys
    // the bound in every window between two sends.
    let t0 = Instant::now();
    for text in [
        "5/s burst 1",
        "20/s burst 1",
        "5/s burst 5",
        "50/s burst 20",
        "3/s burst 2",
    ] {
        let l = rate(text);
        let mut p = Pacer::default();
        let mut sends = Vec::new();
        let mut refused = 0;
        let mut seed = 0x2545_f491_u64;
        let mut now = t0;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += Duration::from_micros(seed % 40_000);
            let patience = ms(seed % 3000);
            match p.reserve(l, now, now + patience) {
                Ok(at) => {
                    assert!(at >= now && at <= now + patience, "{text}");
                    sends.push(at);
                }
                Err(wait) => {
                    assert!(wait > patience, "{text}");
                    refused += 1;
                }
            }
        }
        assert!(
            refused > 0 && sends.len() > 100,
            "{text}: {refused} refused"
        );
        // Reservations are handed out in order.
        assert!(sends.windows(2).all(|w| w[0] <= w[1]), "{text}");
        let step = interval(l);
        for i in 0..sends.len() {
            for j in i..sends.len().min(i + 200) {
                let span = sends[j] - sends[i];
                let count = (j - i + 1) as u128;
                let allowed = u128::from(l.burst()) + span.as_nanos() / step.as_nanos();
                assert!(count <= allowed, "{text}: {count} sends in {span:?}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_class_refuses_at_once_when_the_deadline_cannot_be_met() {
    let mut limits = Limits::default();
    limits.set_rate(Class::Aws, rate("1/min burst 1"));
    limits.set_concurrency(Class::AzureIdentity, 1);
    let p = Protection::new(&limits);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The bucket: one now, the next in a minute, beyond any deadline here.
    let first = p.admit(Class::Aws, deadline, false).await;
    assert!(first.is_ok());
    let wait = p.admit(Class::Aws, deadline, false).await.err().unwrap();
    assert!(wait > Duration::from_secs(55), "{wait:?}");
    // Other classes have their own budgets.
    assert!(p.admit(Class::Gce, deadline, false).await.is_ok());
    // The cap: one in flight; a second waits, and is refused when its time is up...
    let held = p
        .admit(Class::AzureIdentity, deadline, false)
        .await
        .unwrap();
    let asked = Instant::now();
    let soon = asked + ms(120);
    assert_eq!(
        p.admit(Class::AzureIdentity, soon, false).await.err(),
        Some(BUSY_RETRY_AFTER)
    );
    // Refused at the last moment an attempt still fits, not at the deadline.
    assert_eq!(asked.elapsed(), ms(120) - MIN_ATTEMPT);
    // ...and goes once the first is done.
    drop(held);
    assert!(p.admit(Class::AzureIdentity, deadline, false).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_takes_no_place_in_flight() {
    let mut limits = Limits::default();
    limits.set_concurrency(Class::Gce, 1);
    limits.set_rate(Class::Gce, rate("1000/s"));
    let p = Protection::new(&limits);
    let deadline = Instant::now() + Duration::from_secs(5);
    let _polls: Vec<_> =
        futures::future::join_all((0..3).map(|_| p.admit(Class::Gce, deadline, true)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert!(p.admit(Class::Gce, deadline, false).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn callers_are_sent_at_the_rate_in_arrival_order_while_their_deadlines_allow() {
    let mut limits = Limits::default();
    limits.set_rate(Class::AzureIdentity, rate("5/s burst 1"));
    let p = Protection::new(&limits);
    let t0 = Instant::now();
    // Ten callers at once with a second to spare: five fit (0, 200, ..., 800 ms), the
    // rest are refused at once, each told to come back when the next send is free (a
    // refusal reserves nothing).
    let admits = (0..10).map(|_| async {
        let a = p.admit(Class::AzureIdentity, t0 + ms(1000), false).await;
        a.map(|_admitted| t0.elapsed())
    });
    let outcomes = futures::future::join_all(admits).await;
    let sent: Vec<Duration> = outcomes.iter().filter_map(|o| o.ok()).collect();
    assert_eq!(sent, [ms(0), ms(200), ms(400), ms(600), ms(800)]);
    let refused: Vec<Duration> = outcomes.iter().filter_map(|o| o.err()).collect();
    assert_eq!(refused, [ms(1000); 5]);
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_never_exceed_the_cap_and_fill_it() {
    let mut limits = Limits::default();
    limits.set_rate(Class::AzureIdentity, rate("1000/s burst 1000"));
    let p = Protection::new(&limits);
    let cap = limits.get(Class::AzureIdentity).concurrency as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let t0 = Instant::now();
    // Forty requests the service takes 150 ms each to answer.
    let requests = (0..40).map(|_| async {
        let _admitted = p
            .admit(Class::AzureIdentity, deadline, false)
            .await
            .unwrap();
        most.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
        tokio::time::sleep(ms(150)).await;
        now.fetch_sub(1, SeqCst);
    });
    futures::future::join_all(requests).await;
    // As many at once as the cap allows, and never more: eight rounds of five.
    assert_eq!(most.load(SeqCst), cap);
    assert_eq!(t0.elapsed(), ms(150) * (40 / cap as u32));
}
