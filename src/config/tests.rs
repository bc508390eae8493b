use super::keys::Described;
use super::*;
use crate::policy::Verdict;

fn raw(toml: &str) -> RawConfig {
    RawConfig::from_toml(toml).expect("valid toml")
}

fn errors(r: &RawConfig, require_upstream: bool) -> Vec<KeyError> {
    match r.validate(require_upstream) {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("expected invalid config, got {other:?}"),
    }
}

#[test]
fn defaults_with_only_an_upstream() {
    let c = raw("upstream = \"http://169.254.169.254\"")
        .validate(true)
        .unwrap();
    assert_eq!(c.upstream.unwrap().to_string(), "http://169.254.169.254/");
    assert_eq!(c.listen.to_string(), "169.254.93.254:80");
    assert_eq!(c.listen6.to_string(), "[fdf3:6f62:ab7c::254]:80");
    assert_eq!(c.link_name, "imdsproxy0");
    assert_eq!(
        c.bridges,
        [
            BridgePattern::Exact("docker0".into()),
            BridgePattern::Prefix("br-".into())
        ]
    );
    assert_eq!(c.docker_socket, "/var/run/docker.sock");
    assert_eq!(c.request_timeout, Duration::from_secs(10));
    assert!(!c.remove_on_exit);
    assert!(
        c.gce_dns,
        "answering the GCE metadata name is on by default"
    );
}

#[test]
fn gce_dns_can_be_switched_off_and_takes_only_true_or_false() {
    let mut r = RawConfig::default();
    r.set_text("gce_dns", Some("false".into()));
    assert!(!r.validate(false).unwrap().gce_dns);
    assert!(!raw("gce_dns = false").validate(false).unwrap().gce_dns);
    let e = errors(&raw("gce_dns = \"sometimes\""), false);
    assert_eq!(e[0].key, "gce_dns");
}

#[test]
fn direct_interfaces_default_to_none_and_take_exact_names_only() {
    let c = RawConfig::default().validate(false).unwrap();
    assert!(
        c.direct_interfaces.is_empty(),
        "nothing is opened by default"
    );
    assert_eq!(c.table_owner, TableOwner::Auto);
    let c = raw(r#"direct_interfaces = ["virbr0", "eth1", "virbr0"]"#)
        .validate(false)
        .unwrap();
    assert_eq!(c.direct_interfaces, ["virbr0", "eth1"]);
    let mut r = RawConfig::default();
    r.set_text("direct_interfaces", Some(" lxdbr0 , cni0 ".into()));
    assert_eq!(
        r.validate(false).unwrap().direct_interfaces,
        ["lxdbr0", "cni0"]
    );
    for bad in [
        r#"direct_interfaces = ["br-*"]"#,
        r#"direct_interfaces = ["a b"]"#,
        r#"direct_interfaces = ["sixteen-chars-xx"]"#,
        r#"direct_interfaces = "eth1""#,
    ] {
        let e = errors(&raw(bad), false);
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert_eq!(e[0].key, "direct_interfaces", "{bad}");
    }
    let e = errors(&raw(r#"direct_interfaces = ["br-*"]"#), false);
    assert!(e[0].reason.contains("not patterns"), "{}", e[0].reason);
}

#[test]
fn macvlan_parents_default_to_the_routes_an_empty_list_is_off_and_names_are_exact() {
    // Unset: the interfaces the host's routes to the metadata addresses leave by.
    assert_eq!(
        RawConfig::default()
            .validate(false)
            .unwrap()
            .macvlan_parents,
        None
    );
    let mut r = RawConfig::default();
    r.set_text("macvlan_parents", Some("eth0,ens5".into()));
    assert_eq!(
        r.validate(false).unwrap().macvlan_parents,
        Some(vec!["eth0".to_string(), "ens5".to_string()])
    );
    // An empty list, in the file or as a flag, turns the guard off.
    r.set_text("macvlan_parents", Some("".into()));
    assert_eq!(r.validate(false).unwrap().macvlan_parents, Some(vec![]));
    let c = raw("macvlan_parents = []").validate(false).unwrap();
    assert_eq!(c.macvlan_parents, Some(vec![]));
    let e = errors(&raw(r#"macvlan_parents = ["eth*"]"#), false);
    assert_eq!((e[0].key.as_str(), e.len()), ("macvlan_parents", 1));
}

#[test]
fn table_owner_is_auto_or_off() {
    let mut r = RawConfig::default();
    r.set_text("table_owner", Some("off".into()));
    assert_eq!(r.validate(false).unwrap().table_owner, TableOwner::Off);
    let c = raw(r#"table_owner = "auto""#).validate(false).unwrap();
    assert_eq!(c.table_owner, TableOwner::Auto);
    let e = errors(&raw(r#"table_owner = "yes""#), false);
    assert_eq!((e[0].key.as_str(), e.len()), ("table_owner", 1));
    assert!(e[0].reason.contains("auto or off"), "{}", e[0].reason);
}

#[test]
fn every_setting_from_the_file() {
    let c = raw(r#"
        upstream = "http://10.0.0.1:8080"
        listen = "169.254.77.1:8080"
        link_name = "meta0"
        bridges = ["docker0", "cni*"]
        request_timeout_ms = 2500
        drain_timeout_ms = 0
        max_request_body_bytes = 1024
        max_header_bytes = 8192
        remove_on_exit = true
    "#)
    .validate(true)
    .unwrap();
    assert_eq!(c.listen, "169.254.77.1:8080".parse().unwrap());
    assert_eq!(c.link_name, "meta0");
    assert_eq!(
        c.bridges,
        vec![
            BridgePattern::Exact("docker0".into()),
            BridgePattern::Prefix("cni".into())
        ]
    );
    assert_eq!(c.request_timeout, Duration::from_millis(2500));
    assert_eq!(c.drain_timeout, Duration::ZERO);
    assert_eq!((c.max_body_bytes, c.max_header_bytes), (1024, 8192));
    assert!(c.remove_on_exit);
}

#[test]
fn flags_and_variables_override_the_file() {
    let mut r =
        raw("upstream = \"http://10.0.0.1\"\nbridges = [\"docker0\"]\nremove_on_exit = true");
    r.set_text("upstream", Some("http://10.0.0.2:81".into()));
    r.set_text("bridges", Some("br0, br-*".into()));
    r.set_text("remove_on_exit", Some("false".into()));
    r.set_text("listen", None);
    let c = r.validate(true).unwrap();
    assert_eq!(
        c.upstream.unwrap().authority().unwrap().as_str(),
        "10.0.0.2:81"
    );
    assert_eq!(
        c.bridges,
        vec![
            BridgePattern::Exact("br0".into()),
            BridgePattern::Prefix("br-".into())
        ]
    );
    assert!(!c.remove_on_exit);
    assert_eq!(
        c.listen,
        Config::defaults().listen,
        "an unset flag does not override"
    );
}

#[test]
fn every_invalid_key_is_reported_at_once_with_its_reason() {
    let r = raw(r#"
        upstream = "https://169.254.169.254"
        listen = "10.0.0.1:80"
        bridges = []
        request_timeout_ms = "soon"
        max_header_bytes = 100
        remove_on_exit = "maybe"
        colour = "blue"
    "#);
    let e = errors(&r, true);
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "colour",
            "upstream",
            "listen",
            "bridges",
            "request_timeout_ms",
            "max_header_bytes",
            "remove_on_exit"
        ]
    );
    let msg = ConfigError::Invalid(e).to_string();
    assert!(
        msg.contains("colour (from config file): unknown key"),
        "{msg}"
    );
    assert!(msg.contains("scheme \"https\" is not supported"), "{msg}");
    assert!(msg.contains("10.0.0.1 is not link-local"), "{msg}");
    assert!(msg.contains("\"soon\" is not a whole number"), "{msg}");
    assert!(msg.contains("100 bytes is outside 8192"), "{msg}");
}

#[test]
fn upstream_is_required_only_for_run() {
    let e = errors(&RawConfig::default(), true);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key, "upstream");
    assert!(e[0].reason.contains("required"));
    assert!(RawConfig::default().validate(false).is_ok());
}

#[test]
fn upstream_urls_that_cannot_be_a_metadata_service_are_rejected() {
    for bad in [
        "169.254.169.254",
        "http://",
        "http://u:p@10.0.0.1",
        "http://10.0.0.1/base",
        "http://10.0.0.1/?x=1",
        "not a url",
    ] {
        let mut r = RawConfig::default();
        r.set_text("upstream", Some(bad.into()));
        let e = errors(&r, true);
        assert_eq!(e[0].key, "upstream", "{bad}");
        assert_eq!(e[0].source, Some(Source::Flag("upstream")), "{bad}");
    }
}

#[test]
fn listen_addresses_clouds_use_are_refused() {
    for taken in [
        "169.254.169.254",
        "169.254.169.253",
        "169.254.169.123",
        "169.254.170.2",
        "169.254.170.23",
        "169.254.169.252",
        "169.254.20.10",
    ] {
        let mut r = RawConfig::default();
        r.set_text("listen", Some(taken.into()));
        let e = errors(&r, false);
        assert!(e[0].reason.contains("is used by"), "{taken}: {:?}", e[0]);
    }
    let mut r = RawConfig::default();
    r.set_text("listen", Some("169.254.5.5".into()));
    assert_eq!(
        r.validate(false).unwrap().listen,
        "169.254.5.5:80".parse().unwrap()
    );
}

#[test]
fn ipv6_listen_addresses_must_be_unique_local_and_no_clouds() {
    let check = |value: &str| {
        let mut r = RawConfig::default();
        r.set_text("listen6", Some(value.into()));
        r.validate(false).map(|c| c.listen6)
    };
    let reason = |value: &str| match check(value) {
        Err(ConfigError::Invalid(e)) => {
            assert_eq!(e[0].key, "listen6", "{value}");
            e[0].reason.clone()
        }
        other => panic!("{value}: expected a refusal, got {other:?}"),
    };
    assert_eq!(
        check("fd12:3456:789a::1").unwrap().to_string(),
        "[fd12:3456:789a::1]:80"
    );
    assert_eq!(check("[fd12:3456:789a::1]:8080").unwrap().port(), 8080);
    assert!(reason("fd00:ec2::254").contains("AWS metadata service"));
    assert!(reason("fd20:ce::254").contains("GCE metadata server"));
    // EKS pod identity, AWS DNS: anything in AWS's service /32.
    for aws in ["fd00:ec2::23", "fd00:ec2::253", "[fd00:ec2::1]:80"] {
        assert!(reason(aws).contains("AWS puts its IPv6 services"), "{aws}");
    }
    assert!(reason("2001:db8::1").contains("not unique-local"));
    assert!(reason("fe80::1").contains("not unique-local"));
    assert!(reason("169.254.93.254").contains("not an IPv6 address"));
    assert!(reason("[fd12::1%2]:80").contains("needs no scope"));
    assert!(reason("[fd12::1]:0").contains("port 0"));
}

#[test]
fn the_own_link_must_not_look_like_a_container_bridge() {
    let mut r = RawConfig::default();
    r.set_text("link_name", Some("br-meta".into()));
    let e = errors(&r, false);
    assert_eq!(e[0].key, "link_name");
    assert!(e[0].reason.contains("matches bridge pattern"), "{:?}", e[0]);
}

#[test]
fn wrong_toml_types_name_the_expected_type() {
    let e = errors(
        &raw("upstream = 5\nbridges = \"docker0\"\nremove_on_exit = 1"),
        false,
    );
    let reasons: Vec<&str> = e.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "expected a string, got integer",
            "expected a list of interface names or patterns, got string",
            "expected true or false, got integer"
        ]
    );
}

#[test]
fn a_broken_file_is_a_syntax_error_not_a_panic() {
    assert!(RawConfig::from_toml("upstream = ").is_err());
    let err = RawConfig::from_file(Path::new("/nonexistent/imds-proxy.toml")).unwrap_err();
    assert!(err
        .to_string()
        .contains("failed to read config file /nonexistent/imds-proxy.toml"));
}

#[test]
fn an_empty_variable_does_not_switch_remove_on_exit_on() {
    let mut r = RawConfig::default();
    r.set_text("remove_on_exit", Some(String::new()));
    let e = errors(&r, false);
    assert_eq!(e[0].key, "remove_on_exit");
    assert!(e[0].reason.contains("empty value"), "{:?}", e[0]);
}

#[test]
fn named_policies_from_the_file_can_be_picked_as_defaults() {
    let c = raw(r#"
        unlabelled_policy = "readonly"
        [policies.readonly]
        default = "deny"
        allow = ["/latest/meta-data/**", "/computeMetadata/v1/project/**"]
        deny = ["/latest/meta-data/iam/**"]
    "#)
    .validate(false)
    .unwrap();
    let p = &c.policies.unlabelled;
    assert_eq!(p.name, "readonly");
    assert_eq!(p.default, Verdict::Deny);
    // Deny rules come first, whatever the order in the file.
    assert_eq!(p.rules[0].verdict, Verdict::Deny);
    assert_eq!(p.rules.len(), 3);
    assert_eq!(c.policies.unknown.name, "deny");
}

#[test]
fn every_problem_in_named_policies_is_reported() {
    let e = errors(
        &raw(r#"
            unknown_policy = "nope"
            [policies.allow]
            default = "deny"
            [policies.bad]
            default = "maybe"
            allow = ["no-slash", 5]
            extra = 1
        "#),
        false,
    );
    let text = ConfigError::Invalid(e).to_string();
    for needle in [
        "allow: the built-in policies cannot be redefined",
        "bad.default: expected \"allow\" or \"deny\"",
        "bad.allow[0]: \"no-slash\": a path pattern starts with /",
        "bad.allow[1]: expected a path pattern string",
        "bad.extra: unknown key",
        "unknown_policy (from config file): \"nope\" is not a policy (known: allow, metadata-only, deny)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
}

#[test]
fn a_named_policy_can_set_a_rate_limit() {
    let c = raw(r#"
        unlabelled_policy = "fast"
        unknown_policy = "slow"
        [policies.fast]
        default = "allow"
        rate_limit = "20/s"
        [policies.slow]
        rate_limit = "300/min"
        [policies.bursty]
        rate_limit = " 5/s  burst 10 "
        [policies.unlimited]
        default = "allow"
    "#)
    .validate(false)
    .unwrap();
    let shown = |name: &str| {
        c.policies
            .get(name)
            .unwrap()
            .rate_limit
            .map(|l| l.to_string())
    };
    assert_eq!(shown("fast").as_deref(), Some("20/s burst 20"));
    assert_eq!(shown("slow").as_deref(), Some("300/min burst 5"));
    assert_eq!(shown("bursty").as_deref(), Some("5/s burst 10"));
    assert_eq!(shown("unlimited"), None);
    for builtin in ["allow", "metadata-only", "deny"] {
        assert_eq!(shown(builtin), None, "{builtin}");
    }
    assert_eq!(c.policies.unlabelled.rate_limit, "20/s".parse().ok());
    assert_eq!(c.policies.unknown.rate_limit, "300/min".parse().ok());
}

#[test]
fn every_bad_rate_limit_is_reported_with_its_policy_and_value() {
    let e = errors(
        &raw(r#"
            [policies.zero]
            rate_limit = "0/s"
            [policies.negative]
            rate_limit = "-5/min"
            [policies.junk]
            rate_limit = "fast"
            [policies.unit]
            rate_limit = "20/sec"
            [policies.noburst]
            rate_limit = "5/s burst 0"
            [policies.absurd]
            rate_limit = "1000001/s"
            [policies.absurdmin]
            rate_limit = "60000001/min"
            [policies.number]
            rate_limit = 20
            [policies.typo]
            ratelimit = "20/s"
        "#),
        false,
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].key, "policies");
    let text = ConfigError::Invalid(e).to_string();
    for needle in [
        "zero.rate_limit: \"0/s\": a rate of 0/s lets no request through",
        "negative.rate_limit: \"-5/min\": the rate -5 is negative",
        "junk.rate_limit: \"fast\": \"fast\" is not a rate",
        "unit.rate_limit: \"20/sec\": unit \"sec\" is not one of s, min, h",
        "noburst.rate_limit: \"5/s burst 0\": a burst of 0 lets no request through",
        "absurd.rate_limit: \"1000001/s\": 1000001/s is more than 1000000 requests per second",
        "absurdmin.rate_limit: \"60000001/min\": 60000001/min is more than 1000000 requests per second",
        "number.rate_limit: expected a string like \"20/s\", \"300/min\" or \"5/s burst 10\", got integer",
        "typo.ratelimit: unknown key (default, deny, allow, rate_limit, aws_tokens, aws_roles, gce_service_accounts)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
}

#[test]
fn upstream_protection_defaults_and_overrides() {
    let c = RawConfig::default().validate(false).unwrap();
    assert_eq!(c.aws_request_timeout, Duration::from_millis(900));
    assert_eq!(c.upstream_limits, Limits::default());
    let mut r = raw(r#"
        aws_request_timeout_ms = 700
        [upstream_limits]
        azure = "4/s"
        aws = "100/s burst 10"
        [upstream_concurrency]
        azure_identity = 3
        gce = 1024
    "#);
    let c = r.clone().validate(false).unwrap();
    assert_eq!(c.aws_request_timeout, Duration::from_millis(700));
    let l = &c.upstream_limits;
    assert_eq!(l.get(Class::Azure).rate.to_string(), "4/s burst 4");
    assert_eq!(l.get(Class::Aws).rate.to_string(), "100/s burst 10");
    // Classes the file leaves out keep their defaults.
    let d = Limits::default();
    assert_eq!(
        l.get(Class::AzureIdentity).rate,
        d.get(Class::AzureIdentity).rate
    );
    assert_eq!(l.get(Class::Gce).rate, d.get(Class::Gce).rate);
    assert_eq!(l.get(Class::AzureIdentity).concurrency, 3);
    assert_eq!(l.get(Class::Gce).concurrency, 1024);
    assert_eq!(
        l.get(Class::Azure).concurrency,
        d.get(Class::Azure).concurrency
    );
    r.set_text("aws_request_timeout_ms", Some("850".into()));
    assert_eq!(
        r.validate(false).unwrap().aws_request_timeout,
        Duration::from_millis(850)
    );
}

#[test]
fn bad_upstream_protection_settings_name_the_class_and_the_reason() {
    let e = errors(
        &raw(r#"
            aws_request_timeout_ms = 0
            [upstream_limits]
            azure = "5/sec"
            azur = "5/s"
            gce = 5
            aws = "0/s"
            [upstream_concurrency]
            azure_identity = 0
            aws = "many"
            gce = 1025
        "#),
        false,
    );
    let got: Vec<(&str, &str)> = e
        .iter()
        .map(|e| (e.key.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[0],
        ("aws_request_timeout_ms", "0 ms is outside 1..=600000 ms")
    );
    let (key, why) = got[1];
    assert_eq!(key, "upstream_limits");
    for part in [
        "azure: \"5/sec\": unit \"sec\" is not one of s, min, h",
        "azur: unknown class (known: azure, azure_identity, gce, aws)",
        "gce: expected a string like \"5/s\" or \"20/s burst 1\", got integer",
        "aws: \"0/s\": a rate of 0/s lets no request through",
    ] {
        assert!(why.contains(part), "{part} not in {why}");
    }
    let (key, why) = got[2];
    assert_eq!(key, "upstream_concurrency");
    for part in [
        "azure_identity: 0 requests in flight is outside 1..=1024",
        "aws: expected a whole number, got string",
        "gce: 1025 requests in flight is outside 1..=1024",
    ] {
        assert!(why.contains(part), "{part} not in {why}");
    }
    let e = errors(&raw("upstream_limits = \"5/s\""), false);
    assert_eq!(e[0].key, "upstream_limits");
    assert!(e[0]
        .reason
        .starts_with("expected a table like [upstream_limits]"));
}

#[test]
fn cache_settings_default_override_and_reject_what_makes_no_sense() {
    let c = RawConfig::default().validate(false).unwrap();
    assert_eq!(c.cache, CacheSettings::default());
    assert!(c.cache.tokens && c.cache.metadata_ttl.is_zero());
    let mut r = raw(r#"
        token_cache = false
        metadata_cache_ttl_ms = 30000
        error_cache_ms = 0
        cache_max_entries = 10
    "#);
    let c = r.clone().validate(false).unwrap().cache;
    assert_eq!(
        c,
        CacheSettings {
            tokens: false,
            metadata_ttl: Duration::from_secs(30),
            errors: Duration::ZERO,
            max_entries: 10,
        }
    );
    r.set_text("token_cache", Some("true".into()));
    assert!(r.validate(false).unwrap().cache.tokens);
    let e = errors(
        &raw(r#"
            token_cache = "maybe"
            metadata_cache_ttl_ms = -1
            error_cache_ms = 60001
            cache_max_entries = 0
        "#),
        false,
    );
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "token_cache",
            "metadata_cache_ttl_ms",
            "error_cache_ms",
            "cache_max_entries"
        ],
        "{e:?}"
    );
    assert_eq!(e[3].reason, "0 entries is outside 1..=1000000");
}

#[test]
fn every_key_of_the_table_is_validated() {
    for key in keys::KEYS {
        let e = errors(&raw(&format!("{} = 1979-05-27", key.name())), false);
        let got: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(got, [key.name()], "{e:?}");
    }
}

#[test]
fn the_quotas_shown_as_defaults_are_the_defaults() {
    let d = Config::defaults();
    // Shown as code in the README: `gce = 16`.
    let limits = keys::UPSTREAM_LIMITS.default_text().replace('`', "");
    let concurrency = keys::UPSTREAM_CONCURRENCY.default_text().replace('`', "");
    for class in Class::ALL {
        let named = format!("{} = ", class.key());
        assert!(limits.starts_with(&named) || limits.contains(&format!(", {named}")));
        assert!(concurrency.starts_with(&named) || concurrency.contains(&format!(", {named}")));
    }
    let shown = raw(&format!(
        "upstream_limits = {{ {limits} }}\nupstream_concurrency = {{ {concurrency} }}"
    ))
    .validate(false)
    .unwrap();
    assert_eq!(shown.upstream_limits, d.upstream_limits);
}

/// The README's table of keys, as the key table gives it.
fn markdown_table() -> String {
    let mut out = String::from(
        "| key (file) | flag / variable | default | what it sets |\n|---|---|---|---|\n",
    );
    for key in keys::KEYS {
        let name = key.name();
        let flag = match key.form() {
            keys::Form::FileOnly => "file only".to_owned(),
            _ => format!("`--{}` / `{}`", keys::long_flag(name), keys::variable(name)),
        };
        let default = if key.default_is_value() {
            format!("`{}`", key.default_text())
        } else {
            key.default_text().to_owned()
        };
        out += &format!("| `{name}` | {flag} | {default} | {} |\n", key.help());
    }
    out
}

#[test]
fn the_readme_lists_the_keys_of_the_key_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("| key (file) |")
        .expect("README.md has a table of keys");
    let table: String = readme[start..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    let want = markdown_table();
    assert!(
        table == want,
        "README.md's table of keys is not config::keys'; it should read:\n\n{want}"
    );
}

#[test]
fn the_packaged_config_file_shows_the_defaults() {
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/config.toml"
    ))
    .expect("packaging/config.toml");
    // Its commented settings, but the two that show where answers could come from.
    let shown: Vec<&str> = file
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.split_once(" = ")
                .is_some_and(|(k, _)| keys::known(k) && k != "upstream" && k != "emulator")
        })
        .collect();
    assert!(shown.len() >= 5, "{shown:?}");
    let c = raw(&shown.join("\n")).validate(false).unwrap();
    assert_eq!(c, Config::defaults());
}

#[test]
fn the_aws_tools_sts_variable_is_a_fallback_and_is_validated() {
    let mut r = RawConfig::default();
    r.set_fallback(
        "aws_sts_endpoint",
        "AWS_ENDPOINT_URL_STS",
        Some("http://127.0.0.1:5000".into()),
    );
    let c = r.validate(false).unwrap();
    assert_eq!(
        c.aws_roles.sts_endpoint.unwrap().to_string(),
        "http://127.0.0.1:5000/"
    );
    // Our own key wins.
    let mut r = raw("aws_sts_endpoint = \"https://sts.vpce.example\"");
    r.set_fallback(
        "aws_sts_endpoint",
        "AWS_ENDPOINT_URL_STS",
        Some("http://127.0.0.1:5000".into()),
    );
    let c = r.validate(false).unwrap();
    assert_eq!(
        c.aws_roles.sts_endpoint.unwrap().host(),
        Some("sts.vpce.example")
    );
    // A bad value names the variable it came from.
    let mut r = RawConfig::default();
    r.set_fallback(
        "aws_sts_endpoint",
        "AWS_ENDPOINT_URL_STS",
        Some("ftp://x".into()),
    );
    let e = r.validate(false).unwrap_err().to_string();
    assert!(
        e.contains("variable AWS_ENDPOINT_URL_STS") && e.contains("http"),
        "{e}"
    );
    for bad in [
        "aws_session_seconds = 899",
        "aws_session_seconds = 3601",
        "aws_base_role_arn = \"arn:aws:iam::123:role/\"",
        "aws_base_role_arn = \"reader\"",
    ] {
        assert!(raw(bad).validate(false).is_err(), "{bad}");
    }
    let ok = raw(
        "aws_base_role_arn = \"arn:aws:iam::123456789012:role/team/\"\naws_session_seconds = 900",
    )
    .validate(false)
    .unwrap();
    assert_eq!(ok.aws_roles.session, std::time::Duration::from_secs(900));
}

#[test]
fn the_management_listener_is_loopback_only_or_off() {
    let d = Config::defaults();
    assert_eq!(d.metrics_listen, Some("127.0.0.1:9469".parse().unwrap()));
    let off = raw("metrics_listen = \"off\"").validate(false).unwrap();
    assert_eq!(off.metrics_listen, None);
    let v6 = raw("metrics_listen = \"[::1]:9000\"")
        .validate(false)
        .unwrap();
    assert_eq!(v6.metrics_listen, Some("[::1]:9000".parse().unwrap()));
    for bad in [
        "0.0.0.0:9469",
        "169.254.170.2:80",
        "10.0.0.1:9469",
        "localhost",
        "9469",
    ] {
        let e = raw(&format!("metrics_listen = \"{bad}\""))
            .validate(false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics_listen"), "{bad}: {e}");
    }
    let e = raw("metrics_listen = \"0.0.0.0:9469\"")
        .validate(false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a loopback address"), "{e}");
}
