//! The real metadata service's quotas as the configuration states them
//! (`upstream_limits`, `upstream_concurrency`): which quota a request uses, and each
//! quota's rate and cap on requests in flight. The proxy's protection applies them.

use super::Raw;
use crate::policy::ratelimit::Per;
use crate::policy::RateLimit;
use crate::request::canonical::CanonicalPath;
use crate::request::Provider;

/// Which of the service's quotas a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Azure IMDS under `/metadata/`, managed identity excepted.
    Azure,
    /// Azure managed identity, `/metadata/identity/...`: a quota of its own.
    AzureIdentity,
    /// GCE, and paths of no provider's tree (`/`, which Google's libraries probe).
    Gce,
    /// AWS, the proxy's own session PUT included.
    Aws,
}

impl Class {
    /// Every class, in the order of the configuration keys.
    pub const ALL: [Class; 4] = [Class::Azure, Class::AzureIdentity, Class::Gce, Class::Aws];

    /// The class of a request path.
    pub fn of(path: &CanonicalPath) -> Self {
        match Provider::of(path) {
            Provider::Azure if path.lower().get(1).is_some_and(|s| s == "identity") => {
                Class::AzureIdentity
            }
            Provider::Azure => Class::Azure,
            Provider::Aws => Class::Aws,
            Provider::Gce | Provider::Other => Class::Gce,
        }
    }

    /// Its name in the configuration (`upstream_limits.<key>`) and in logs.
    pub fn key(self) -> &'static str {
        match self {
            Class::Azure => "azure",
            Class::AzureIdentity => "azure_identity",
            Class::Gce => "gce",
            Class::Aws => "aws",
        }
    }

    /// The class a configuration key names.
    pub fn from_key(key: &str) -> Option<Self> {
        Class::ALL.into_iter().find(|c| c.key() == key)
    }

    /// Its place in a per-class array.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// The most requests in flight a class may be allowed: more is no cap.
pub const MAX_CONCURRENCY: u32 = 1024;

/// One class's rate and cap on requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassLimits {
    pub rate: RateLimit,
    /// Requests in flight at most, 1..=[`MAX_CONCURRENCY`]. GCE `wait_for_change` long
    /// polls do not count: they hang by design, and would starve every other request.
    pub concurrency: u32,
}

/// The limits of every class (`upstream_limits` and `upstream_concurrency`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    classes: [ClassLimits; 4],
}

impl Limits {
    pub fn get(&self, class: Class) -> ClassLimits {
        self.classes[class.index()]
    }

    pub fn set_rate(&mut self, class: Class, rate: RateLimit) {
        self.classes[class.index()].rate = rate;
    }

    pub fn set_concurrency(&mut self, class: Class, concurrency: u32) {
        self.classes[class.index()].concurrency = concurrency.clamp(1, MAX_CONCURRENCY);
    }
}

fn limit(requests: u64, burst: u64) -> RateLimit {
    RateLimit::new(requests, Per::Second, Some(burst)).expect("valid built-in limit")
}

/// The defaults, and why.
///
/// - **Azure, `5/s burst 1`; identity `20/s burst 1`, 5 at once**: Azure's published
///   per-VM limits. A token bucket lets `burst` requests through at once and then one
///   per interval, so a second that starts with a full bucket carries `burst - 1` more
///   than the rate; a burst of 1 keeps every second, from whatever instant it is
///   counted, at Azure's number.
/// - **GCE, `50/s burst 20`**: Google publishes no number. The libraries cache tokens
///   and read a handful of values at start, so a healthy host asks far less; 50 a
///   second stops a runaway loop in one container from hammering the server for all.
/// - **AWS, `50/s burst 20`**: link-local traffic (metadata, the DNS resolver at
///   169.254.169.253, the time service) shares about 1024 packets a second per network
///   interface. A metadata request on a kept-alive connection is about 4 packets, on a
///   new one about 10: 50 a second uses at most half the budget, and leaves DNS, which
///   every container needs, the rest.
/// - **16 in flight** for all but Azure identity: never reached while the service
///   answers in milliseconds (50 a second × 5 ms is a quarter of a request in flight);
///   it bounds what a stalled service holds, instead of piling every caller onto it.
impl Default for Limits {
    fn default() -> Self {
        Self {
            classes: [
                ClassLimits {
                    rate: limit(5, 1),
                    concurrency: 16,
                },
                ClassLimits {
                    rate: limit(20, 1),
                    concurrency: 5,
                },
                ClassLimits {
                    rate: limit(50, 20),
                    concurrency: 16,
                },
                ClassLimits {
                    rate: limit(50, 20),
                    concurrency: 16,
                },
            ],
        }
    }
}

/// The entries of an `upstream_limits` / `upstream_concurrency` table, each checked
/// by `value`; every bad entry is reported.
fn class_table<T>(
    r: &Raw,
    example: &str,
    value: impl Fn(&toml::Value) -> Result<T, String>,
) -> Result<Vec<(Class, T)>, String> {
    let Raw::Toml(toml::Value::Table(t)) = r else {
        return Err(format!("expected a table like {example}"));
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (key, v) in t {
        let Some(class) = Class::from_key(key) else {
            let known: Vec<&str> = Class::ALL.iter().map(|c| c.key()).collect();
            errors.push(format!(
                "{key}: unknown class (known: {})",
                known.join(", ")
            ));
            continue;
        };
        match value(v) {
            Ok(x) => out.push((class, x)),
            Err(e) => errors.push(format!("{key}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

/// `[upstream_limits]`: `<class> = "<rate>"` in the syntax of a policy's `rate_limit`
/// (see [`RateLimit`]), for the classes of [`Class`].
pub fn parse_rates(r: &Raw) -> Result<Vec<(Class, RateLimit)>, String> {
    class_table(
        r,
        "[upstream_limits] azure = \"5/s burst 1\"",
        |v| match v {
            // A rate of 0 is refused with advice for policies (deny them instead), which
            // does not apply here: only the reason is kept.
            toml::Value::String(text) => text
                .parse::<RateLimit>()
                .map_err(|e| e.split("; to refuse").next().unwrap_or_default().to_owned()),
            v => Err(format!(
                "expected a string like \"5/s\" or \"20/s burst 1\", got {}",
                v.type_str()
            )),
        },
    )
}

/// `[upstream_concurrency]`: `<class> = <requests in flight>`, 1..=1024.
pub fn parse_concurrency(r: &Raw) -> Result<Vec<(Class, u32)>, String> {
    class_table(
        r,
        "[upstream_concurrency] azure_identity = 5",
        |v| match v {
            toml::Value::Integer(n) if (1..=i64::from(MAX_CONCURRENCY)).contains(n) => {
                Ok(*n as u32)
            }
            toml::Value::Integer(n) => Err(format!(
                "{n} requests in flight is outside 1..={MAX_CONCURRENCY}"
            )),
            v => Err(format!("expected a whole number, got {}", v.type_str())),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_uses_its_providers_quota() {
        for (path, class) in [
            ("/metadata/instance", Class::Azure),
            ("/metadata/instance/compute/vmId", Class::Azure),
            ("/metadata/scheduledevents", Class::Azure),
            ("/metadata/identity/oauth2/token", Class::AzureIdentity),
            ("/metadata/identity/info", Class::AzureIdentity),
            ("/METADATA/Identity/oauth2/token", Class::AzureIdentity),
            ("/metadata/identityx", Class::Azure),
            ("/computeMetadata/v1/instance/id", Class::Gce),
            ("/", Class::Gce),
            ("/latest/meta-data/", Class::Aws),
            ("/latest/api/token", Class::Aws),
            ("/2021-07-15/meta-data/instance-id", Class::Aws),
        ] {
            let p = CanonicalPath::parse(path).unwrap();
            assert_eq!(Class::of(&p), class, "{path}");
        }
        for c in Class::ALL {
            assert_eq!(Class::from_key(c.key()), Some(c));
        }
        assert_eq!(Class::from_key("azure-identity"), None);
    }

    #[test]
    fn the_defaults_never_let_a_second_exceed_azures_published_limits() {
        let d = Limits::default();
        for (class, published, at_once) in [(Class::Azure, 5, 16), (Class::AzureIdentity, 20, 5)] {
            let l = d.get(class);
            // A bucket sends `burst` at once, then one per interval: a second from any
            // instant carries at most burst - 1 + rate.
            assert_eq!(l.rate.per(), Per::Second);
            assert!(
                l.rate.burst() - 1 + l.rate.requests() <= published,
                "{class}: {}",
                l.rate
            );
            assert_eq!(l.concurrency, at_once, "{class}");
        }
        assert_eq!(d.get(Class::Gce).rate.to_string(), "50/s burst 20");
        assert_eq!(d.get(Class::Aws).rate.to_string(), "50/s burst 20");
        let mut l = Limits::default();
        l.set_concurrency(Class::Gce, 0);
        assert_eq!(l.get(Class::Gce).concurrency, 1);
        l.set_concurrency(Class::Gce, 1 << 20);
        assert_eq!(l.get(Class::Gce).concurrency, MAX_CONCURRENCY);
    }
}
