//! The retry loop against scripted attempts, on tokio's paused clock: every wait
//! (the service's `Retry-After`, backoff, the budget, an attempt that hangs) is exact
//! and takes no time.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::time::Duration;

use super::*;
use crate::proxy::protect::Limits;

/// What one attempt meets.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The service answers with this status (and this `Retry-After`, in seconds).
    Answers(u16, Option<u64>),
    /// The service never answers.
    Hangs,
}

/// The service as a script of attempts (the last step repeats), and when each
/// attempt started.
struct Service {
    steps: Mutex<VecDeque<Step>>,
    started: Mutex<Vec<Duration>>,
    t0: Instant,
}

impl Service {
    fn new(steps: &[Step]) -> Self {
        Self {
            steps: Mutex::new(steps.iter().copied().collect()),
            started: Mutex::default(),
            t0: Instant::now(),
        }
    }

    /// One attempt, as `retrying` makes it.
    fn attempt(&self) -> impl std::future::Future<Output = Result<Answer, ProxyError>> {
        self.started.lock().unwrap().push(self.t0.elapsed());
        let step = {
            let mut steps = self.steps.lock().unwrap();
            match steps.len() {
                1 => steps[0],
                _ => steps.pop_front().expect("a scripted step"),
            }
        };
        async move {
            match step {
                Step::Answers(status, retry_after) => {
                    let mut answer = http::Response::builder().status(status);
                    if let Some(secs) = retry_after {
                        answer = answer.header(http::header::RETRY_AFTER, secs);
                    }
                    let parts = answer.body(()).unwrap().into_parts().0;
                    Ok(Answer {
                        parts,
                        body: Bytes::new(),
                    })
                }
                Step::Hangs => std::future::pending().await,
            }
        }
    }

    fn started(&self) -> Vec<Duration> {
        self.started.lock().unwrap().clone()
    }
}

/// A GCE request (safe to repeat) with `method`.
fn exchange(method: &http::Method) -> Exchange<'_> {
    static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
    Exchange {
        method,
        path_and_query: "/computeMetadata/v1/instance/id",
        headers: &NO_HEADERS,
        body: Bytes::new(),
        token: None,
        provider: Provider::Gce,
        class: Class::Gce,
        repeatable: retry::repeatable(method),
        long_poll: false,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Sends a GET by the script `steps` with `budget` ms to spare: the answer's status (or
/// the error), and when each attempt started.
async fn send(steps: &[Step], budget: u64) -> (Result<u16, ProxyError>, Vec<Duration>) {
    let service = Service::new(steps);
    let protect = Protection::new(&Limits::default());
    let deadline = service.t0 + ms(budget);
    let answer = retrying(&protect, &exchange(&http::Method::GET), deadline, || {
        service.attempt()
    })
    .await;
    (answer.map(|a| a.parts.status.as_u16()), service.started())
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_as_long_as_the_services_retry_after_says() {
    let (answer, started) = send(
        &[Step::Answers(429, Some(1)), Step::Answers(200, None)],
        3000,
    )
    .await;
    assert_eq!(answer.unwrap(), 200);
    assert_eq!(started, [ms(0), ms(1000)]);
}

#[tokio::test(start_paused = true)]
async fn no_attempt_is_started_that_the_deadline_cannot_fit() {
    // The service asks for more time than the caller has: its answer is the answer, at
    // once.
    for (status, secs) in [(503, 5), (429, 1)] {
        let t0 = Instant::now();
        let (answer, started) = send(&[Step::Answers(status, Some(secs))], 800).await;
        assert_eq!(answer.unwrap(), status);
        assert_eq!(started, [ms(0)]);
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
    // A hung attempt is given half the time left and tried again on a fresh connection
    // while time allows; the last attempt gets all that is left, so the caller's
    // timeout comes at its deadline, not before.
    let t0 = Instant::now();
    let (answer, started) = send(&[Step::Hangs], 800).await;
    assert!(
        matches!(answer, Err(ProxyError::UpstreamTimeout(_))),
        "{answer:?}"
    );
    assert!((2..=4).contains(&started.len()), "{started:?}");
    // The first gets 400 ms; the retry follows after a backoff under 50 ms, which the
    // timer, firing on whole milliseconds, may round up to 50.
    assert!(
        started[1] >= ms(400) && started[1] <= ms(450),
        "{started:?}"
    );
    // (Timers fire on whole milliseconds.)
    let took = t0.elapsed();
    assert!(took >= ms(800) && took < ms(801), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_and_refusals_are_not() {
    use Step::Answers;
    // (script, status the caller gets, attempts)
    let cases: [(&[Step], u16, usize); 7] = [
        (
            &[Answers(503, None), Answers(503, None), Answers(200, None)],
            200,
            3,
        ),
        (
            &[
                Answers(500, None),
                Answers(502, None),
                Answers(504, None),
                Answers(200, None),
            ],
            200,
            4,
        ),
        (&[Answers(503, None)], 503, 4),
        (&[Answers(410, None), Answers(200, None)], 200, 2),
        (&[Answers(404, None), Answers(200, None)], 404, 1),
        (&[Answers(403, None), Answers(200, None)], 403, 1),
        (&[Answers(400, None), Answers(200, None)], 400, 1),
    ];
    for (steps, status, attempts) in cases {
        let (answer, started) = send(steps, 3000).await;
        assert_eq!(answer.unwrap(), status, "{steps:?}");
        assert_eq!(started.len(), attempts, "{steps:?}");
    }
    // A request that may act is sent once, whatever the service answers.
    let service = Service::new(&[Answers(500, None), Answers(200, None)]);
    let protect = Protection::new(&Limits::default());
    let post = exchange(&http::Method::POST);
    let answer = retrying(&protect, &post, service.t0 + ms(3000), || service.attempt()).await;
    assert_eq!(answer.unwrap().parts.status, 500);
    assert_eq!(service.started().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_refuses_a_request_at_once_and_leaves_a_retry_the_last_answer() {
    let mut limits = Limits::default();
    limits.set_rate(Class::Gce, "1/min burst 1".parse().unwrap());
    let protect = Protection::new(&limits);
    let get = exchange(&http::Method::GET);
    // The one send of this minute goes; its 503 is not retried, since no retry fits
    // in the budget before the deadline: the 503 is the answer.
    let service = Service::new(&[Step::Answers(503, None), Step::Answers(200, None)]);
    let deadline = service.t0 + ms(3000);
    let answer = retrying(&protect, &get, deadline, || service.attempt()).await;
    assert_eq!(answer.unwrap().parts.status, 503);
    assert_eq!(service.started(), [ms(0)]);
    // The next request is refused at once, told when the budget has room again.
    let t0 = Instant::now();
    let answer = retrying(&protect, &get, t0 + ms(3000), || service.attempt()).await;
    match answer {
        Err(ProxyError::UpstreamBusy { retry_after, .. }) => {
            assert_eq!(
                retry_after,
                Duration::from_secs(60) - t0.duration_since(service.t0)
            );
        }
        Err(other) => panic!("{other:?}"),
        Ok(a) => panic!("answered {}", a.parts.status),
    }
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(service.started().len(), 1);
}
