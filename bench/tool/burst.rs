//! The cold burst: N requests at one instant, each on its own connection, spread over
//! several containers' network namespaces.
//!
//! Connections are opened first (a thread per namespace joins it with `setns` and
//! connects; a socket keeps the namespace it was made in), then every request is
//! released by one signal, so the requests overlap as much as one client process can
//! make them. Several namespaces because the daemon admits at most 64 connections per
//! container: a thousand from one container would mostly be refused, not coalesced.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use nix::sched::{setns, CloneFlags};

/// How long one connect may take (everything is on this host).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What to send and from where.
#[derive(clap::Args)]
pub struct Args {
    /// A network namespace to send from (e.g. /proc/<container pid>/ns/net); repeat it
    /// to spread the burst over several.
    #[arg(long, required = true)]
    netns: Vec<PathBuf>,
    /// Where to connect, e.g. 169.254.169.254:80.
    #[arg(long)]
    addr: SocketAddr,
    /// The request target, e.g. /computeMetadata/v1/instance/service-accounts/default/token.
    #[arg(long)]
    path: String,
    /// A request header "Name: value"; repeatable.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Requests in all, shared as evenly as possible between the namespaces.
    #[arg(long, default_value_t = 1)]
    total: usize,
    /// A request counts as answered only if its body contains this.
    #[arg(long)]
    expect: Option<String>,
    /// How long one request may take before it counts as failed.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// What one request is sent as.
struct Spec {
    path: String,
    host: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    expect: Option<String>,
    timeout: Duration,
}

/// One answered request: when it was sent and how long the whole answer took.
struct Sample {
    sent: Instant,
    micros: u64,
}

/// Runs the burst and prints its key=value results; fails only if the burst could not
/// be set up (a failed request is a result, counted by reason).
pub fn run(a: Args) -> Result<(), String> {
    if a.total == 0 {
        return Err("--total must be at least 1".into());
    }
    let headers = a
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let host = if a.addr.port() == 80 {
        a.addr.ip().to_string()
    } else {
        a.addr.to_string()
    };
    let spec = Arc::new(Spec {
        path: a.path,
        host,
        headers,
        expect: a.expect,
        timeout: Duration::from_millis(a.timeout_ms),
    });
    let streams = open_all(&a.netns, &shares(a.total, a.netns.len()), a.addr)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let (samples, failures) = runtime.block_on(fire(streams, spec));
    print!("{}", summary(a.total, &samples, &failures));
    Ok(())
}

/// "Name: value" as a header.
fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| format!("header {h:?} is not \"Name: value\""))?;
    let name = HeaderName::try_from(name.trim()).map_err(|e| format!("header {h:?}: {e}"))?;
    let value = HeaderValue::try_from(value.trim()).map_err(|e| format!("header {h:?}: {e}"))?;
    Ok((name, value))
}

/// `total` split over `parts` namespaces, the first ones taking one more.
fn shares(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

/// Opens every connection, each namespace from its own thread.
fn open_all(
    netns: &[PathBuf],
    shares: &[usize],
    addr: SocketAddr,
) -> Result<Vec<io::Result<TcpStream>>, String> {
    thread::scope(|s| {
        let threads: Vec<_> = netns
            .iter()
            .zip(shares)
            .map(|(ns, &n)| s.spawn(move || open_in(ns, n, addr)))
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().map_err(|_| "a connecting thread panicked")??);
        }
        Ok(all)
    })
}

/// Joins `ns` (this thread only; it ends right after) and opens `n` connections there.
fn open_in(ns: &Path, n: usize, addr: SocketAddr) -> Result<Vec<io::Result<TcpStream>>, String> {
    let file = File::open(ns).map_err(|e| format!("cannot open {}: {e}", ns.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("cannot join the network namespace {}: {e}", ns.display()))?;
    Ok((0..n)
        .map(|_| {
            let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect())
}

/// Sends one request on each connection, all released at once; the answered requests
/// and the failures by reason.
async fn fire(
    streams: Vec<io::Result<TcpStream>>,
    spec: Arc<Spec>,
) -> (Vec<Sample>, BTreeMap<String, usize>) {
    let mut failures = BTreeMap::new();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        let stream = match stream.and_then(tokio::net::TcpStream::from_std) {
            Ok(s) => s,
            Err(_) => {
                *failures.entry("connect".to_owned()).or_default() += 1;
                continue;
            }
        };
        let (sender, conn) = match http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(_) => {
                *failures.entry("handshake".to_owned()).or_default() += 1;
                continue;
            }
        };
        tokio::spawn(conn);
        let mut go = go_rx.clone();
        let spec = spec.clone();
        tasks.spawn(async move {
            let _ = go.wait_for(|go| *go).await;
            one(sender, &spec).await
        });
    }
    let _ = go_tx.send(true);
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(s)) => samples.push(s),
            Ok(Err(reason)) => *failures.entry(reason).or_default() += 1,
            Err(_) => *failures.entry("panic".to_owned()).or_default() += 1,
        }
    }
    (samples, failures)
}

/// One request on its own connection; the failure reason is a short key.
async fn one(mut sender: http1::SendRequest<Empty<Bytes>>, spec: &Spec) -> Result<Sample, String> {
    sender.ready().await.map_err(|_| "closed".to_owned())?;
    let mut req = Request::get(spec.path.as_str()).header(HOST, spec.host.as_str());
    for (name, value) in &spec.headers {
        req = req.header(name, value);
    }
    let req = req
        .body(Empty::new())
        .map_err(|_| "bad_request".to_owned())?;
    let sent = Instant::now();
    let answer = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|_| "reset".to_owned())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| "body_cut".to_owned())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(spec.timeout, answer)
        .await
        .map_err(|_| "timeout".to_owned())??;
    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
    if status != http::StatusCode::OK {
        return Err(format!("status_{}", status.as_u16()));
    }
    if let Some(expect) = &spec.expect {
        if !String::from_utf8_lossy(&body).contains(expect.as_str()) {
            return Err("unexpected_body".into());
        }
    }
    Ok(Sample { sent, micros })
}

/// The key=value lines `report` reads.
fn summary(total: usize, samples: &[Sample], failures: &BTreeMap<String, usize>) -> String {
    let mut micros: Vec<u64> = samples.iter().map(|s| s.micros).collect();
    micros.sort_unstable();
    let spread = match (
        samples.iter().map(|s| s.sent).min(),
        samples.iter().map(|s| s.sent).max(),
    ) {
        (Some(first), Some(last)) => last.duration_since(first).as_micros(),
        _ => 0,
    };
    let mut out = format!(
        "requests={total}\nok={}\nfailed={}\n",
        samples.len(),
        failures.values().sum::<usize>()
    );
    for (reason, n) in failures {
        out.push_str(&format!("fail_{reason}={n}\n"));
    }
    if let (Some(p50), Some(p99), Some(max)) = (
        percentile(&micros, 50.0),
        percentile(&micros, 99.0),
        micros.last(),
    ) {
        out.push_str(&format!(
            "p50_us={p50}\np99_us={p99}\nmax_us={max}\nsend_spread_us={spread}\n"
        ));
    }
    out
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p`% of
/// the values at or below it.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), Some(500));
        assert_eq!(percentile(&v, 99.0), Some(990));
        assert_eq!(percentile(&v, 100.0), Some(1000));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
        assert_eq!(percentile(&[1, 2], 99.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn shares_cover_the_total_within_one() {
        assert_eq!(shares(1000, 16).iter().sum::<usize>(), 1000);
        assert_eq!(*shares(1000, 16).iter().max().unwrap(), 63);
        assert_eq!(shares(16, 16), vec![1; 16]);
        assert_eq!(shares(3, 5), vec![1, 1, 1, 0, 0]);
    }

    #[test]
    fn headers_need_a_name_and_a_colon() {
        let (n, v) = parse_header("Metadata-Flavor: Google").unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("metadata-flavor", "Google")
        );
        assert!(parse_header("Metadata-Flavor Google").is_err());
        assert!(parse_header("Bad Name: x").is_err());
    }

    #[test]
    fn failures_are_counted_by_reason() {
        let failures = BTreeMap::from([("reset".to_owned(), 2), ("status_503".to_owned(), 1)]);
        let s = summary(3, &[], &failures);
        assert_eq!(
            s,
            "requests=3\nok=0\nfailed=3\nfail_reset=2\nfail_status_503=1\n"
        );
    }
}
