//! One markdown table of a run: each measurement, its ratio against its baseline, and
//! pass or miss against the project's targets. A miss is reported, never an error: the
//! numbers of a noisy machine are still worth keeping.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::results::Results;

/// Where the run's results are.
#[derive(clap::Args)]
pub struct Args {
    /// The results directory bench/run.sh filled.
    dir: PathBuf,
}

/// Prints the report of the results in `a.dir`.
pub fn run(a: Args) -> Result<(), String> {
    print!("{}", render(&Results::load(&a.dir)?));
    Ok(())
}

/// Targets (see README, "Benchmarks").
const CACHED_RPS_MIN: f64 = 0.9;
const CACHED_P99_MAX: f64 = 1.2;
const PASS_RPS_MIN: f64 = 1.0;
const PASS_ADDED_P50_MAX_US: f64 = 100.0;
const RSS_MAX_KIB: f64 = 30.0 * 1024.0;

/// One steady-state measurement (a wrk run).
#[derive(Debug, Clone, Copy)]
struct Steady {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: f64,
}

impl Steady {
    fn get(r: &Results, name: &str) -> Option<Self> {
        Some(Self {
            rps: r.num(name, "rps")?,
            p50: r.num(name, "p50_us")?,
            p99: r.num(name, "p99_us")?,
            errors: r.num(name, "errors").unwrap_or(0.0) + r.num(name, "non2xx").unwrap_or(0.0),
        })
    }
}

/// A target's outcome: which parts missed.
#[derive(Debug, PartialEq)]
enum Verdict {
    Pass,
    Miss(Vec<&'static str>),
    /// A number it needs was not measured.
    Unknown,
    /// The row has no target.
    None,
}

impl Verdict {
    /// Pass if every check holds; each failed check is named.
    fn of(checks: &[(&'static str, Option<bool>)]) -> Self {
        if checks.iter().any(|(_, ok)| ok.is_none()) {
            return Self::Unknown;
        }
        let missed: Vec<_> = checks
            .iter()
            .filter(|(_, ok)| *ok == Some(false))
            .map(|(what, _)| *what)
            .collect();
        if missed.is_empty() {
            Self::Pass
        } else {
            Self::Miss(missed)
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Pass => "pass".into(),
            Self::Miss(what) => format!("**miss** ({})", what.join(", ")),
            Self::Unknown => "n/a (not measured)".into(),
            Self::None => String::new(),
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Cached tokens at 64 connections: throughput and tail against nginx serving the same
/// bytes statically.
fn cached_verdict(daemon: Option<Steady>, nginx: Option<Steady>) -> Verdict {
    let rps = ratio(daemon.map(|d| d.rps), nginx.map(|n| n.rps));
    let p99 = ratio(daemon.map(|d| d.p99), nginx.map(|n| n.p99));
    Verdict::of(&[
        ("req/s", rps.map(|r| r >= CACHED_RPS_MIN)),
        ("p99", p99.map(|r| r <= CACHED_P99_MAX)),
    ])
}

/// Pass-through: at least nginx's throughput as a keep-alive proxy; at one connection,
/// also at most 100 µs added to the median over asking the upstream directly.
fn pass_verdict(
    daemon: Option<Steady>,
    proxy: Option<Steady>,
    direct: Option<Steady>,
    with_p50: bool,
) -> Verdict {
    let rps = ratio(daemon.map(|d| d.rps), proxy.map(|p| p.rps));
    let mut checks = vec![("req/s", rps.map(|r| r >= PASS_RPS_MIN))];
    if with_p50 {
        let added = added_p50(daemon, direct);
        checks.push(("added p50", added.map(|a| a <= PASS_ADDED_P50_MAX_US)));
    }
    Verdict::of(&checks)
}

fn added_p50(a: Option<Steady>, direct: Option<Steady>) -> Option<f64> {
    Some(a?.p50 - direct?.p50)
}

/// The burst's upstream requests: exactly one once the daemon coalesces.
fn burst_verdict(upstream: Option<f64>, answered: Option<f64>, requests: Option<f64>) -> Verdict {
    Verdict::of(&[
        ("upstream requests", upstream.map(|u| u == 1.0)),
        (
            "unanswered requests",
            answered.zip(requests).map(|(a, n)| a == n),
        ),
    ])
}

fn memory_verdict(peak_kib: Option<f64>) -> Verdict {
    Verdict::of(&[("RSS", peak_kib.map(|k| k < RSS_MAX_KIB))])
}

/// A table row.
struct Row {
    scenario: &'static str,
    server: &'static str,
    conns: String,
    rps: String,
    p50: String,
    p99: String,
    errors: String,
    against: String,
    target: &'static str,
    verdict: Verdict,
}

fn int(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0}"))
}

fn times(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2}×"))
}

fn signed_us(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:+.0} µs"))
}

fn mib(kib: Option<f64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k / 1024.0))
}

fn steady_row(
    scenario: &'static str,
    server: &'static str,
    conns: u32,
    m: Option<Steady>,
    against: String,
    target: &'static str,
    verdict: Verdict,
) -> Row {
    Row {
        scenario,
        server,
        conns: conns.to_string(),
        rps: int(m.map(|m| m.rps)),
        p50: int(m.map(|m| m.p50)),
        p99: int(m.map(|m| m.p99)),
        errors: int(m.map(|m| m.errors)),
        against,
        target,
        verdict,
    }
}

fn rows(r: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    for conns in [1, 64] {
        let daemon = Steady::get(r, &format!("cached-daemon-c{conns}"));
        let nginx = Steady::get(r, &format!("cached-static-c{conns}"));
        let against = format!(
            "{} nginx-static req/s; p99 {} nginx's",
            times(ratio(daemon.map(|d| d.rps), nginx.map(|n| n.rps))),
            times(ratio(daemon.map(|d| d.p99), nginx.map(|n| n.p99))),
        );
        let (target, verdict) = if conns == 64 {
            ("≥ 0.9× req/s, p99 ≤ 1.2×", cached_verdict(daemon, nginx))
        } else {
            ("", Verdict::None)
        };
        rows.push(steady_row(
            "cached token",
            "imds-proxy",
            conns,
            daemon,
            against,
            target,
            verdict,
        ));
        rows.push(steady_row(
            "cached token",
            "nginx-static",
            conns,
            nginx,
            "baseline".into(),
            "",
            Verdict::None,
        ));
    }
    for conns in [1, 64] {
        let daemon = Steady::get(r, &format!("pass-daemon-c{conns}"));
        let proxy = Steady::get(r, &format!("pass-proxy-c{conns}"));
        let direct = Steady::get(r, &format!("pass-direct-c{conns}"));
        let against = format!(
            "{} nginx-proxy req/s; p50 {} over direct",
            times(ratio(daemon.map(|d| d.rps), proxy.map(|p| p.rps))),
            signed_us(added_p50(daemon, direct)),
        );
        let (target, verdict) = if conns == 1 {
            (
                "≥ 1.0× nginx-proxy req/s, added p50 ≤ 100 µs",
                pass_verdict(daemon, proxy, direct, true),
            )
        } else {
            (
                "≥ 1.0× nginx-proxy req/s",
                pass_verdict(daemon, proxy, direct, false),
            )
        };
        rows.push(steady_row(
            "pass-through",
            "imds-proxy",
            conns,
            daemon,
            against,
            target,
            verdict,
        ));
        let proxy_against = format!("p50 {} over direct", signed_us(added_p50(proxy, direct)));
        rows.push(steady_row(
            "pass-through",
            "nginx-proxy",
            conns,
            proxy,
            proxy_against,
            "",
            Verdict::None,
        ));
        rows.push(steady_row(
            "pass-through",
            "direct",
            conns,
            direct,
            "baseline".into(),
            "",
            Verdict::None,
        ));
    }
    for conns in [1, 64] {
        let daemon = Steady::get(r, &format!("aws-daemon-c{conns}"));
        let peer = Steady::get(r, &format!("aws-mp-c{conns}"));
        let against = format!(
            "{} metadataproxy req/s; p99 {} metadataproxy's",
            times(ratio(daemon.map(|d| d.rps), peer.map(|p| p.rps))),
            times(ratio(daemon.map(|d| d.p99), peer.map(|p| p.p99))),
        );
        rows.push(steady_row(
            "assumed role, cached",
            "imds-proxy",
            conns,
            daemon,
            against,
            "",
            Verdict::None,
        ));
        rows.push(steady_row(
            "assumed role, cached",
            "metadataproxy",
            conns,
            peer,
            "peer".into(),
            "",
            Verdict::None,
        ));
    }
    rows.push(burst_row(r));
    rows.push(memory_row(r));
    rows
}

fn burst_row(r: &Results) -> Row {
    let requests = r.num("burst", "requests");
    let ok = r.num("burst", "ok");
    let upstream = r.num("burst", "upstream");
    let mut against = format!(
        "upstream saw {} token requests; {} of {} answered",
        int(upstream),
        int(ok),
        int(requests)
    );
    let failures = r.with_prefix("burst", "fail_");
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = write!(against, " (failed: {})", list.join(", "));
    }
    Row {
        scenario: "cold burst",
        server: "imds-proxy",
        conns: match r.num("burst", "containers") {
            Some(1.0) => format!("{} at once (1 container)", int(requests)),
            n => format!("{} at once ({} containers)", int(requests), int(n)),
        },
        rps: "—".into(),
        p50: int(r.num("burst", "p50_us")),
        p99: int(r.num("burst", "p99_us")),
        errors: int(r.num("burst", "failed")),
        against,
        target: "exactly 1 upstream request",
        verdict: burst_verdict(upstream, ok, requests),
    }
}

fn memory_row(r: &Results) -> Row {
    let kib = |k| r.num("memory", k);
    let (steady, burst, cached, assumed, hwm) = (
        kib("steady_rss_kib"),
        kib("burst_rss_kib"),
        kib("cached_rss_kib"),
        kib("assumed_rss_kib"),
        kib("hwm_kib"),
    );
    // The peak under any load: VmHWM also holds peaks between two samples.
    let peak = [steady, burst, cached, assumed, hwm]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    Row {
        scenario: "memory",
        server: "imds-proxy",
        conns: "—".into(),
        rps: "—".into(),
        p50: "—".into(),
        p99: "—".into(),
        errors: "—".into(),
        against: format!(
            "VmRSS idle {}; largest sample {} in pass-through, {} in the burst, {} with tokens after it, {} with assumed roles; VmHWM {}",
            mib(kib("idle_rss_kib")),
            mib(steady),
            mib(burst),
            mib(cached),
            mib(assumed),
            mib(hwm)
        ),
        target: "< 30 MiB under load",
        verdict: memory_verdict(peak),
    }
}

/// The whole report: what ran where, the table, and what the names mean.
fn render(r: &Results) -> String {
    let m = |k| r.text("meta", k).unwrap_or("?");
    let mut out = String::new();
    let _ = writeln!(out, "# imds-proxy benchmark\n");
    let _ = writeln!(
        out,
        "{}, `nproc` {}, kernel {}, {}; imds-proxy {}; {}, nginx {}, Docker {}. \
         Each measurement {} s after a {} s warm-up; the daemon has {} worker threads and \
         each nginx as many worker processes; metadataproxy {} under gunicorn {} has as \
         many sync workers; STS is moto {}.\n",
        m("date"),
        m("nproc"),
        m("kernel"),
        m("cpu"),
        m("commit"),
        m("wrk"),
        m("nginx"),
        m("docker"),
        m("seconds"),
        m("warmup"),
        m("workers"),
        m("metadataproxy"),
        m("gunicorn"),
        m("moto"),
    );
    out.push_str(
        "| scenario | served by | connections | req/s | p50 µs | p99 µs | errors | against the baseline | target | result |\n\
         |---|---|---|---:|---:|---:|---:|---|---|---|\n",
    );
    for row in rows(r) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.server,
            row.conns,
            row.rps,
            row.p50,
            row.p99,
            row.errors,
            row.against,
            row.target,
            row.verdict.text()
        );
    }
    out.push_str(
        "\nAll load comes from inside one container's network namespace (wrk; the burst \
         from `bench burst`). imds-proxy: `http://169.254.169.254`, DNAT by the daemon's \
         table to its proxy, which forwards to the origin (or answers from a cache, where \
         it has one). nginx-static and direct: the \
         origin nginx itself (the same bytes). nginx-proxy: a second nginx, a keep-alive \
         reverse proxy to the origin. Cached token: \
         `GET /computeMetadata/v1/instance/service-accounts/default/token` with \
         `Metadata-Flavor: Google`; pass-through: `GET /computeMetadata/v1/instance/id`. \
         Errors: failed connections and non-2xx answers.\n",
    );
    out.push_str(
        "\nAssumed role, cached: `GET /latest/meta-data/iam/security-credentials/reader` \
         (IMDSv1, which both serve; metadataproxy has no IMDSv2), each from its own \
         container, after that container's first answer: the role's credentials from \
         AssumeRole on moto, signed with the instance's keys, are held and served again. \
         imds-proxy: a container labelled with the role, through the daemon's DNAT as \
         above. metadataproxy (lyft's, bench/peers/): a container with `IAM_ROLE=reader`, \
         sending to metadataproxy's own address on the host (the network's gateway); \
         there is no DNAT to it, because the bench adds no iptables rules of its own, \
         where a deployment of metadataproxy would add one. It finds the caller's \
         container through the Docker socket on every request.",
    );
    let daemon_assume = r.num("aws", "daemon_assume");
    let sts_calls = r.num("aws", "sts_calls");
    let _ = writeln!(
        out,
        " STS calls after moto's setup: {} in all, {} of them imds-proxy's AssumeRole.",
        int(sts_calls),
        int(daemon_assume),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(rps: f64, p50: f64, p99: f64) -> Option<Steady> {
        Some(Steady {
            rps,
            p50,
            p99,
            errors: 0.0,
        })
    }

    #[test]
    fn cached_targets_compare_with_nginx_static() {
        let nginx = steady(10_000.0, 100.0, 1000.0);
        for (daemon, want) in [
            (steady(9_000.0, 1.0, 1200.0), Verdict::Pass),
            (steady(8_999.0, 1.0, 1200.0), Verdict::Miss(vec!["req/s"])),
            (steady(9_500.0, 1.0, 1201.0), Verdict::Miss(vec!["p99"])),
            (
                steady(5_000.0, 1.0, 3000.0),
                Verdict::Miss(vec!["req/s", "p99"]),
            ),
            (None, Verdict::Unknown),
        ] {
            assert_eq!(cached_verdict(daemon, nginx), want, "{daemon:?}");
        }
        assert_eq!(
            cached_verdict(steady(1.0, 1.0, 1.0), steady(0.0, 1.0, 1.0)),
            Verdict::Unknown,
            "no ratio against a baseline that served nothing"
        );
    }

    #[test]
    fn pass_through_targets_compare_with_nginx_proxy_and_direct() {
        let proxy = steady(5_000.0, 200.0, 400.0);
        let direct = steady(9_000.0, 100.0, 150.0);
        for (daemon, with_p50, want) in [
            (steady(5_000.0, 200.0, 1.0), true, Verdict::Pass),
            (
                steady(5_000.0, 201.0, 1.0),
                true,
                Verdict::Miss(vec!["added p50"]),
            ),
            (steady(5_000.0, 900.0, 1.0), false, Verdict::Pass),
            (
                steady(4_999.0, 150.0, 1.0),
                false,
                Verdict::Miss(vec!["req/s"]),
            ),
            (
                steady(4_000.0, 300.0, 1.0),
                true,
                Verdict::Miss(vec!["req/s", "added p50"]),
            ),
        ] {
            assert_eq!(
                pass_verdict(daemon, proxy, direct, with_p50),
                want,
                "{daemon:?}"
            );
        }
        assert_eq!(
            pass_verdict(steady(5_000.0, 1.0, 1.0), proxy, None, true),
            Verdict::Unknown
        );
    }

    #[test]
    fn burst_passes_only_with_one_upstream_request_and_every_answer() {
        assert_eq!(
            burst_verdict(Some(1.0), Some(1000.0), Some(1000.0)),
            Verdict::Pass
        );
        assert_eq!(
            burst_verdict(Some(1000.0), Some(1000.0), Some(1000.0)),
            Verdict::Miss(vec!["upstream requests"])
        );
        assert_eq!(
            burst_verdict(Some(1.0), Some(936.0), Some(1000.0)),
            Verdict::Miss(vec!["unanswered requests"])
        );
        assert_eq!(
            burst_verdict(Some(0.0), Some(1000.0), Some(1000.0)),
            Verdict::Miss(vec!["upstream requests"]),
            "an upstream that saw nothing means the count is wrong, not a pass"
        );
        assert_eq!(burst_verdict(None, Some(1.0), Some(1.0)), Verdict::Unknown);
    }

    #[test]
    fn memory_target_is_below_30_mib() {
        assert_eq!(memory_verdict(Some(30.0 * 1024.0 - 1.0)), Verdict::Pass);
        assert_eq!(
            memory_verdict(Some(30.0 * 1024.0)),
            Verdict::Miss(vec!["RSS"])
        );
        assert_eq!(memory_verdict(None), Verdict::Unknown);
    }

    #[test]
    fn the_report_is_one_table_with_every_row() {
        let wrk = |rps: u32, p50: u32, p99: u32| {
            format!("rps={rps}\np50_us={p50}\np99_us={p99}\nerrors=0\nnon2xx=0\n")
        };
        let texts: Vec<(String, String)> = vec![
            ("meta".into(), "date=2026-01-01\nnproc=2\nkernel=6.1\n".into()),
            ("cached-daemon-c64".into(), wrk(9_000, 50, 120)),
            ("cached-static-c64".into(), wrk(10_000, 40, 100)),
            ("pass-daemon-c1".into(), wrk(4_000, 250, 300)),
            ("pass-proxy-c1".into(), wrk(3_000, 300, 400)),
            ("pass-direct-c1".into(), wrk(8_000, 120, 150)),
            ("aws-daemon-c64".into(), wrk(20_000, 2000, 4000)),
            ("aws-mp-c64".into(), wrk(200, 300_000, 800_000)),
            (
                "burst".into(),
                "requests=1000\nok=1000\nfailed=0\nupstream=1000\ncontainers=16\np50_us=900\np99_us=4000\n".into(),
            ),
            (
                "memory".into(),
                "idle_rss_kib=8192\nsteady_rss_kib=10240\nburst_rss_kib=12288\ncached_rss_kib=11264\nhwm_kib=13312\n".into(),
            ),
        ];
        let files: Vec<(&str, &str)> = texts
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let out = render(&Results::from_texts(&files));
        let table: Vec<&str> = out.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(table.len(), 2 + 4 + 6 + 4 + 2, "{out}");
        let row = |scenario: &str, server: &str, conns: &str| {
            table
                .iter()
                .find(|l| l.starts_with(&format!("| {scenario} | {server} | {conns} |")))
                .unwrap_or_else(|| panic!("no row {scenario} {server} {conns}:\n{out}"))
                .to_string()
        };
        assert!(row("cached token", "imds-proxy", "64")
            .contains("0.90× nginx-static req/s; p99 1.20× nginx's"));
        assert!(row("cached token", "imds-proxy", "64").ends_with("| pass |"));
        assert!(row("cached token", "imds-proxy", "1").contains("n/a"));
        let pass1 = row("pass-through", "imds-proxy", "1");
        assert!(
            pass1.contains("1.33× nginx-proxy req/s; p50 +130 µs over direct"),
            "{pass1}"
        );
        assert!(pass1.ends_with("| **miss** (added p50) |"), "{pass1}");
        let burst = row("cold burst", "imds-proxy", "1000 at once (16 containers)");
        assert!(
            burst.contains("upstream saw 1000 token requests"),
            "{burst}"
        );
        assert!(
            burst.ends_with("| **miss** (upstream requests) |"),
            "{burst}"
        );
        assert!(row("assumed role, cached", "imds-proxy", "64")
            .contains("100.00× metadataproxy req/s; p99 0.01× metadataproxy's"));
        assert!(row("assumed role, cached", "metadataproxy", "64").contains("| 200 |"));
        assert!(row("assumed role, cached", "imds-proxy", "1").contains("n/a"));
        assert!(row("memory", "imds-proxy", "—")
            .contains(
            "VmRSS idle 8.0 MiB; largest sample 10.0 MiB in pass-through, 12.0 MiB in the burst, 11.0 MiB with tokens after it, n/a with assumed roles; VmHWM 13.0 MiB"
        ));
        assert!(out.contains("`nproc` 2, kernel 6.1"), "{out}");
        assert!(
            out.contains("STS calls after moto's setup: n/a in all"),
            "{out}"
        );
    }
}
