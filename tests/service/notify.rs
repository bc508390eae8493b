//! The daemon under a service manager's protocol, with a notify socket the test owns:
//! READY=1 once the interception is live, WATCHDOG=1 while it keeps its tables (and none
//! while it hangs); without a notify socket, nothing changes.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use harness::*;
use nix::sys::signal::Signal;

/// A datagram socket standing in for systemd's notify socket: what the daemon sends.
struct NotifySocket {
    path: PathBuf,
    rx: mpsc::Receiver<(Instant, String)>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if tx.send((Instant::now(), msg)).is_err() {
                            return;
                        }
                    }
                    // Timeouts let the thread notice that the test is over.
                    Err(_) => {
                        if tx.send((Instant::now(), String::new())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            path,
            rx,
            _dir: dir,
        }
    }

    /// The next message within `timeout`, if any.
    fn next(&self, timeout: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok((_, m)) if m.is_empty() => continue,
                Ok(m) => return Some(m),
                Err(_) => return None,
            }
        }
    }
}

#[test]
fn ready_comes_once_the_interception_is_live_and_the_watchdog_keeps_being_fed() {
    require_root!();
    let tb = Testbed::new();
    let sock = NotifySocket::new();
    let watchdog = Duration::from_millis(1500);
    let usec = watchdog.as_micros().to_string();
    let d = tb.daemon_unready_env(
        &[],
        &[
            ("NOTIFY_SOCKET", sock.path.to_str().unwrap()),
            ("WATCHDOG_USEC", &usec),
        ],
    );
    let (_, first) = sock
        .next(Duration::from_secs(15))
        .expect("no READY=1 within 15 s");
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "the first message is not READY=1: {first:?}"
    );
    // At READY=1 the interception is already live: the table is there and a
    // container's request goes through the proxy (the fake service sees the host's
    // address, not the container's).
    assert!(tb.host.nft_table().is_some(), "READY=1 before the table");
    assert_eq!(tb.status("/latest/meta-data/"), 200);
    assert_eq!(tb.imds.last().peer.ip().to_string(), "10.99.0.1");
    d.wait_for("interception live", Duration::from_secs(2));

    // WATCHDOG=1 keeps arriving, well within WATCHDOG_USEC.
    let mut last = Instant::now();
    let mut fed = 0;
    let mut longest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let (at, msg) = sock
            .next(watchdog)
            .unwrap_or_else(|| panic!("no message within WATCHDOG_USEC ({watchdog:?})"));
        assert_eq!(msg.trim(), "WATCHDOG=1", "unexpected message");
        longest = longest.max(at - last);
        last = at;
        fed += 1;
    }
    assert!(fed >= 4, "only {fed} WATCHDOG=1 in 4 s");
    measure(
        "longest gap between WATCHDOG=1 (ms), WATCHDOG_USEC 1500 ms",
        longest.as_millis(),
    );

    // A stopped (hung) daemon feeds nothing: systemd would restart it, and the table
    // keeps refusing containers meanwhile.
    d.signal(Signal::SIGSTOP);
    while sock.rx.try_recv().is_ok() {}
    assert!(
        sock.next(watchdog).is_none(),
        "a stopped daemon fed the watchdog"
    );
    let r = http(&tb.container, IMDS, "GET", "/latest/meta-data/", &[]);
    assert!(
        r.0.is_err(),
        "a container was answered while the daemon hung"
    );
    assert!(tb.host.nft_table().is_some());
    d.signal(Signal::SIGCONT);

    // SIGTERM: STOPPING=1, then a clean exit.
    d.signal(Signal::SIGTERM);
    let mut stopping = false;
    while let Some((_, m)) = sock.next(Duration::from_secs(5)) {
        if m.lines().any(|l| l == "STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    assert!(d.wait(Duration::from_secs(10)).success());
}

#[test]
fn without_a_notify_socket_the_daemon_runs_as_before() {
    require_root!();
    let tb = Testbed::new();
    // A watchdog interval alone (no socket to send to) changes nothing.
    let d = tb.daemon_unready_env(&[], &[("WATCHDOG_USEC", "1500000")]);
    d.wait_for("interception live", Duration::from_secs(15));
    assert_eq!(tb.status("/latest/meta-data/"), 200);
    thread::sleep(Duration::from_millis(1200));
    d.signal(Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    let log = d.log().join("\n");
    assert!(
        !log.contains("service manager"),
        "the daemon talked about a service manager:\n{log}"
    );
}
