//! Raw values into one [`Config`]: every key read through its entry in [`keys`], then
//! the checks that involve more than one key. Every problem is gathered; none stops
//! the others from being found.

use super::keys::{self, Key};
use super::{
    policies, AwsRoleSettings, CacheSettings, Config, ConfigError, KeyError, Limits, RawConfig,
    Source,
};
use crate::policy::select::Policies;

impl RawConfig {
    /// Validates every key; returns all problems at once, in the order of the keys
    /// below (unknown keys first).
    pub fn validate(&self, require_upstream: bool) -> Result<Config, ConfigError> {
        let mut r = Reader::new(self);
        let (upstream, emulator) = r.answers(require_upstream);
        let config = Config {
            upstream,
            emulator,
            listen: r.read(&keys::LISTEN),
            listen6: r.read(&keys::LISTEN6),
            link_name: r.read(&keys::LINK_NAME),
            bridges: r.read(&keys::BRIDGES),
            direct_interfaces: r.read(&keys::DIRECT_INTERFACES),
            macvlan_parents: r.read(&keys::MACVLAN_PARENTS),
            table_owner: r.read(&keys::TABLE_OWNER),
            request_timeout: r.read(&keys::REQUEST_TIMEOUT),
            aws_request_timeout: r.read(&keys::AWS_REQUEST_TIMEOUT),
            upstream_limits: r.upstream_limits(),
            cache: r.cache(),
            drain_timeout: r.read(&keys::DRAIN_TIMEOUT),
            max_body_bytes: r.read(&keys::MAX_REQUEST_BODY),
            max_header_bytes: r.read(&keys::MAX_HEADER),
            remove_on_exit: r.read(&keys::REMOVE_ON_EXIT),
            gce_dns: r.read(&keys::GCE_DNS),
            docker_socket: r.read(&keys::DOCKER_SOCKET),
            policies: r.policies(),
            identify_wait: r.read(&keys::IDENTIFY_WAIT),
            audit_summary: r.read(&keys::AUDIT_SUMMARY),
            aws_roles: AwsRoleSettings {
                base_role_arn: r.read(&keys::AWS_BASE_ROLE_ARN),
                sts_endpoint: r.read(&keys::AWS_STS_ENDPOINT),
                session: r.read(&keys::AWS_SESSION_SECONDS),
                session_tags: r.read(&keys::AWS_SESSION_TAGS),
                source_identity: r.read(&keys::AWS_SOURCE_IDENTITY),
            },
            gce_iam_credentials_url: r.read(&keys::GCE_IAM_CREDENTIALS_URL),
            metrics_listen: r.read(&keys::METRICS_LISTEN),
            config_file: None,
        };
        r.own_link_is_no_bridge(&config);
        if r.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(r.errors))
        }
    }
}

/// Reads keys from raw values, gathering every problem.
struct Reader<'a> {
    raw: &'a RawConfig,
    errors: Vec<KeyError>,
}

impl<'a> Reader<'a> {
    /// Starts with the file's unknown keys, each a problem.
    fn new(raw: &'a RawConfig) -> Self {
        let known: Vec<&str> = keys::KEYS.iter().map(|k| k.name()).collect();
        let errors = raw
            .unknown
            .iter()
            .map(|k| KeyError {
                key: k.clone(),
                source: Some(Source::File),
                reason: format!("unknown key (known keys: {})", known.join(", ")),
            })
            .collect();
        Self { raw, errors }
    }

    /// The key's value; its default where it is not given, or (reported) invalid.
    fn read<T>(&mut self, key: &Key<T>) -> T {
        debug_assert!(keys::known(key.name), "{} is missing from KEYS", key.name);
        let Some((source, raw)) = self.raw.get(key.name) else {
            return key.default_value();
        };
        match (key.parse)(raw) {
            Ok(value) => value,
            Err(reason) => {
                self.errors.push(KeyError {
                    key: key.name.to_owned(),
                    source: Some(source.clone()),
                    reason,
                });
                key.default_value()
            }
        }
    }

    /// Refuses a key's value (or its absence) for a reason that involves other keys.
    fn refuse(&mut self, key: &str, reason: String) {
        self.errors.push(KeyError {
            key: key.to_owned(),
            source: self.raw.get(key).map(|(s, _)| s.clone()),
            reason,
        });
    }

    /// `upstream` and `emulator`: not both, and the upstream where the caller needs one.
    fn answers(
        &mut self,
        require_upstream: bool,
    ) -> (Option<http::Uri>, Option<std::path::PathBuf>) {
        let upstream = self.read(&keys::UPSTREAM);
        if require_upstream && self.raw.get(keys::UPSTREAM.name).is_none() {
            self.refuse(
                keys::UPSTREAM.name,
                "required: the metadata service to forward to, e.g. --upstream http://169.254.169.254".into(),
            );
        }
        let emulator = self.read(&keys::EMULATOR);
        if upstream.is_some() && emulator.is_some() {
            self.refuse(
                keys::EMULATOR.name,
                "cannot be used with upstream: serve either the real service or the emulator"
                    .into(),
            );
        }
        (upstream, emulator)
    }

    /// The quotas' defaults with the file's classes replaced.
    fn upstream_limits(&mut self) -> Limits {
        let mut limits = Limits::default();
        for (class, rate) in self.read(&keys::UPSTREAM_LIMITS) {
            limits.set_rate(class, rate);
        }
        for (class, n) in self.read(&keys::UPSTREAM_CONCURRENCY) {
            limits.set_concurrency(class, n);
        }
        limits
    }

    fn cache(&mut self) -> CacheSettings {
        CacheSettings {
            tokens: self.read(&keys::TOKEN_CACHE),
            metadata_ttl: self.read(&keys::METADATA_CACHE_TTL),
            errors: self.read(&keys::ERROR_CACHE),
            max_entries: self.read(&keys::CACHE_MAX_ENTRIES),
        }
    }

    /// The file's named policies, and the policy each kind of caller gets, which may
    /// be one of them.
    fn policies(&mut self) -> Policies {
        let named = self.read(&keys::POLICIES);
        let mut pick = |key: &Key<String>| {
            let name = self.read(key);
            policies::resolve(&name, &named).unwrap_or_else(|reason| {
                self.refuse(key.name, reason);
                policies::resolve(&key.default_value(), &named).expect("a built-in policy")
            })
        };
        let unlabelled = pick(&keys::UNLABELLED_POLICY);
        let unknown = pick(&keys::UNKNOWN_POLICY);
        let host = pick(&keys::HOST_POLICY);
        Policies {
            named,
            unlabelled,
            unknown,
            host,
        }
    }

    /// The daemon's own link must not count as a container bridge.
    fn own_link_is_no_bridge(&mut self, config: &Config) {
        let name = &config.link_name;
        if let Some(p) = config.bridges.iter().find(|p| p.matches(name)) {
            self.refuse(
                keys::LINK_NAME.name,
                format!("{name:?} matches bridge pattern {:?}; the daemon's own link must not count as a container bridge", p.to_string()),
            );
        }
    }
}
