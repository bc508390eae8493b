//! The daemon as a child process, and waiting on what it or anything else does.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{append_to_env_file, bin, Answer, Netns};

/// Every line a daemon logged, with when it arrived (since it was spawned).
type Lines = Vec<(Duration, String)>;

/// The daemon as a child process (inside a namespace, or in the test's own); its log is
/// collected. Killed on drop.
pub struct Daemon {
    child: Mutex<Child>,
    pub started: Instant,
    log: Arc<(Mutex<Lines>, Condvar)>,
}

impl Daemon {
    /// Runs the daemon inside `ns`.
    pub fn spawn(ns: &Netns, args: &[&str]) -> Self {
        Self::spawn_env(ns, args, &[])
    }

    /// Runs the daemon inside `ns` with these environment variables added (the ones a
    /// service manager sets, say).
    pub fn spawn_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_wrapped(ns, &[], args, env)
    }

    /// Runs the daemon inside `ns` through `wrapper` (a command that execs its
    /// arguments, such as `setpriv ... --`), so the daemon keeps the child's pid.
    pub fn spawn_wrapped(
        ns: &Netns,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns.name.as_str()])
            .args(wrapper)
            .arg(bin())
            .args(args);
        c.envs(env.iter().copied());
        Self::spawn_command(c)
    }

    /// Runs the daemon in the test process's own (root) network namespace: for the
    /// end-to-end test with the real Docker engine, whose bridges live there.
    pub fn spawn_root(args: &[&str]) -> Self {
        Self::spawn_root_env(args, &[])
    }

    /// [`Daemon::spawn_root`] with these environment variables added.
    pub fn spawn_root_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut c = Command::new(bin());
        c.args(args);
        c.envs(env.iter().copied());
        Self::spawn_command(c)
    }

    fn spawn_command(mut c: Command) -> Self {
        let started = Instant::now();
        let mut child = c
            .env("IMDS_PROXY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[daemon] {line}");
                append_to_env_file("IMDS_PROXY_DAEMON_LOG_FILE", &line);
                l.0.lock()
                    .unwrap()
                    .push((started.elapsed(), strip_ansi(&line)));
                l.1.notify_all();
            }
        });
        Self {
            child: Mutex::new(child),
            started,
            log,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.lock().unwrap().id() as i32)
    }

    pub fn log(&self) -> Vec<String> {
        self.log
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until a log line contains `needle`; returns the time since spawn.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Duration {
        self.wait_for_nth(needle, 1, timeout)
    }

    pub fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.0.lock().unwrap();
        loop {
            // When the nth such line arrived, not when the caller looked.
            if let Some((at, _)) = lines.iter().filter(|(_, l)| l.contains(needle)).nth(n - 1) {
                return *at;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "daemon did not log {needle:?} (x{n}) within {timeout:?}; log:\n{}",
                    lines
                        .iter()
                        .map(|(_, l)| l.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            lines = self.log.1.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal daemon");
    }

    /// Waits for the process to exit.
    pub fn wait(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.lock().unwrap().try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait(Duration::from_secs(5));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `f` every 10 ms until it returns true; returns the time it took.
pub fn until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// The error kind of a refused request, or a panic if it was answered.
pub fn refused(r: &(Result<Answer, std::io::Error>, Duration)) -> std::io::ErrorKind {
    match &r.0 {
        Ok(a) => panic!("expected a refusal, got HTTP {} {:?}", a.status, a.body),
        Err(e) => e.kind(),
    }
}
