//! Command line: subcommands and the flags that feed [`crate::config`].

use std::path::PathBuf;

use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand};

use crate::config::keys::{self, Described, Form};
use crate::config::{Config, ConfigError, RawConfig};

/// Gives bridge-network Docker containers the cloud metadata service (169.254.169.254)
/// through an embedded proxy, intercepted by one nftables table that fails closed.
#[derive(Debug, Parser)]
#[command(
    name = "imds-proxy",
    version,
    after_help = after_help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written: `text` (key=value after the message) or `json` (one
    /// object per line: timestamp, level, message and the event's fields, each once).
    #[arg(
        long,
        global = true,
        env = "IMDS_PROXY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// The log's line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How flags, variables and the file relate, and the keys only the file holds.
fn after_help() -> String {
    let tables: Vec<&str> = keys::KEYS
        .iter()
        .filter(|k| k.form() == Form::FileOnly)
        .map(|k| k.name())
        .collect();
    format!(
        "Every flag can also be set as IMDS_PROXY_<FLAG> (e.g. IMDS_PROXY_UPSTREAM) or as a key in the --config TOML file (e.g. upstream = \"http://169.254.169.254\"); flags win over variables, variables over the file, which alone holds the tables {}.\nLogging: IMDS_PROXY_LOG (e.g. debug, or imds_proxy=debug).",
        tables.join(", ")
    )
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: install the interception and serve the proxy.
    Run(ConfigArgs),
    /// Print, in nft syntax, exactly the table `run` would install now.
    Rules(ConfigArgs),
    /// Remove the table and the link: containers reach the metadata address directly again.
    Uninstall(ConfigArgs),
    /// Ask the daemon of this network namespace what it sees: where answers come from,
    /// tables and bridges, each container's identity, policy and latest decision, the
    /// cache, recent drift (root only).
    Status(StatusArgs),
    /// Serve the emulator on a plain address, without interception (local development,
    /// or a stand-in cloud): every provider's checks apply, every caller is the host.
    Emulate(EmulateArgs),
}

/// `imds-proxy status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The report as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `imds-proxy emulate`.
#[derive(Debug, Clone, Args)]
pub struct EmulateArgs {
    /// The emulator file [default: the built-in example].
    #[arg(long, env = keys::variable(keys::EMULATOR.name))]
    pub emulator: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: std::net::SocketAddr,
}

/// Settings shared by every subcommand: the config file, and a flag and a variable for
/// every key of the file but its tables.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML config file.
    #[arg(long, env = "IMDS_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    keys: KeyFlags,
}

impl ConfigArgs {
    /// File, then environment and flags, validated into one [`Config`].
    pub fn load(&self, require_upstream: bool) -> Result<Config, ConfigError> {
        let mut raw = match &self.config {
            Some(p) => RawConfig::from_file(p)?,
            None => RawConfig::default(),
        };
        // Flags and variables win over the file.
        for (key, value) in &self.keys.given {
            raw.set_text(key, Some(value.clone()));
        }
        // The AWS tools' own variable for STS's endpoint, where ours is not given.
        raw.set_fallback(
            keys::AWS_STS_ENDPOINT.name,
            "AWS_ENDPOINT_URL_STS",
            std::env::var("AWS_ENDPOINT_URL_STS").ok(),
        );
        let mut cfg = raw.validate(require_upstream)?;
        cfg.config_file = self.config.clone();
        Ok(cfg)
    }
}

/// The keys given as flags or variables, each as its text; the arguments are built
/// from [`keys::KEYS`], so a key added there has its flag, variable and help.
#[derive(Debug, Clone)]
struct KeyFlags {
    given: Vec<(&'static str, String)>,
}

/// The keys a flag can set: all but the file's tables.
fn flagged() -> impl Iterator<Item = &'static dyn Described> {
    keys::KEYS
        .iter()
        .copied()
        .filter(|k| k.form() != Form::FileOnly)
}

/// `--<key>` and `IMDS_PROXY_<KEY>`, with the key's help and default.
fn flag(key: &dyn Described) -> Arg {
    let arg = Arg::new(key.name())
        .long(keys::long_flag(key.name()))
        .env(keys::variable(key.name()))
        .value_name(key.name().to_uppercase())
        .help(format!("{} [default: {}]", key.help(), key.default_text()));
    match key.form() {
        Form::Switch => arg.num_args(0..=1).default_missing_value("true"),
        Form::Flag | Form::FileOnly => arg,
    }
}

impl Args for KeyFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        flagged().fold(cmd, |cmd, key| cmd.arg(flag(key)))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for KeyFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = flagged()
            .filter_map(|k| Some((k.name(), matches.get_one::<String>(k.name())?.clone())))
            .collect();
        Ok(Self { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_key_but_the_tables_has_its_flag_and_variable() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let run = cli.find_subcommand("run").expect("run");
        for key in keys::KEYS {
            let arg = run.get_arguments().find(|a| a.get_id() == key.name());
            let Some(arg) = arg else {
                assert_eq!(key.form(), Form::FileOnly, "{} has no flag", key.name());
                continue;
            };
            assert_ne!(key.form(), Form::FileOnly, "{}", key.name());
            let long = keys::long_flag(key.name());
            assert_eq!(arg.get_long(), Some(long.as_str()));
            let variable = keys::variable(key.name());
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(&variable)));
        }
    }

    #[test]
    fn flags_set_their_keys_and_a_switch_alone_is_true() {
        let cli = Cli::try_parse_from([
            "imds-proxy",
            "rules",
            "--remove-on-exit",
            "--gce-dns",
            "false",
            "--listen",
            "169.254.1.1",
        ])
        .expect("valid flags");
        let Command::Rules(args) = cli.command else {
            panic!("not rules")
        };
        let cfg = args.load(false).expect("valid settings");
        assert!(cfg.remove_on_exit);
        assert!(!cfg.gce_dns);
        assert_eq!(cfg.listen.to_string(), "169.254.1.1:80");
        assert_eq!(cfg.drain_timeout, Config::defaults().drain_timeout);
    }
}
