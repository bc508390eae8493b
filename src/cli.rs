//! Command line: subcommands and the flags that feed [`crate::config`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, RawConfig};

/// Gives bridge-network Docker containers the cloud metadata service (169.254.169.254)
/// through an embedded proxy, intercepted by one nftables table that fails closed.
#[derive(Debug, Parser)]
#[command(
    name = "imds-proxy",
    version,
    after_help = "Every flag can also be set as IMDS_PROXY_<FLAG> (e.g. IMDS_PROXY_UPSTREAM) or as a key in the --config TOML file (e.g. upstream = \"http://169.254.169.254\"); flags win over variables, variables over the file.\nLogging: IMDS_PROXY_LOG (e.g. debug, or imds_proxy=debug)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: install the interception and serve the proxy.
    Run(ConfigArgs),
    /// Print, in nft syntax, exactly the table `run` would install now.
    Rules(ConfigArgs),
    /// Remove the table and the link: containers reach the metadata address directly again.
    Uninstall(ConfigArgs),
    /// Serve the emulator on a plain address, without interception (local development,
    /// or a stand-in cloud): every provider's checks apply, every caller is the host.
    Emulate(EmulateArgs),
}

/// `imds-proxy emulate`.
#[derive(Debug, Clone, Args)]
pub struct EmulateArgs {
    /// The emulator file [default: the built-in example].
    #[arg(long, env = "IMDS_PROXY_EMULATOR")]
    pub emulator: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: std::net::SocketAddr,
}

/// Settings shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML config file.
    #[arg(long, env = "IMDS_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The metadata service to forward to, e.g. http://169.254.169.254.
    #[arg(long, env = "IMDS_PROXY_UPSTREAM")]
    pub upstream: Option<String>,
    /// Serve this emulator file (GCE, Azure and AWS from one TOML file; see
    /// examples/emulator.toml) instead of forwarding. Without --upstream or --emulator,
    /// `run` looks for a real metadata service and, finding none, serves the built-in
    /// example.
    #[arg(long, env = "IMDS_PROXY_EMULATOR")]
    pub emulator: Option<String>,
    /// Proxy address (link-local IPv4[:port]) on the daemon's own link [default: 169.254.93.254:80].
    #[arg(long, env = "IMDS_PROXY_LISTEN")]
    pub listen: Option<String>,
    /// IPv6 proxy address (unique-local, [address]:port) on the daemon's own link, for
    /// containers calling [fd00:ec2::254] [default: [fdf3:6f62:ab7c::254]:80].
    #[arg(long, env = "IMDS_PROXY_LISTEN6")]
    pub listen6: Option<String>,
    /// Name of the daemon's own link [default: imdsproxy0].
    #[arg(long, env = "IMDS_PROXY_LINK_NAME")]
    pub link_name: Option<String>,
    /// Container bridges: comma-separated names or prefix patterns [default: docker0,br-*].
    #[arg(long, env = "IMDS_PROXY_BRIDGES")]
    pub bridges: Option<String>,
    /// Interfaces (comma-separated exact names) whose forwarded or bridged packets to the
    /// metadata addresses are let through on purpose; every other interface's are
    /// refused [default: none].
    #[arg(long, env = "IMDS_PROXY_DIRECT_INTERFACES")]
    pub direct_interfaces: Option<String>,
    /// Interfaces (comma-separated exact names) whose macvlan children are refused the
    /// metadata address; "" guards none [default: the interfaces the host's routes to
    /// the metadata addresses use].
    #[arg(long, env = "IMDS_PROXY_MACVLAN_PARENTS")]
    pub macvlan_parents: Option<String>,
    /// `auto`: the tables are owned by the daemon where the kernel can (Linux 6.9+), so no
    /// other process can change them, and outlive it; `off`: plain tables, restored on
    /// drift (for tests of that path, or a kernel that misbehaves) [default: auto].
    #[arg(long, env = "IMDS_PROXY_TABLE_OWNER")]
    pub table_owner: Option<String>,
    /// Deadline for one proxied request, in milliseconds [default: 10000].
    #[arg(long, env = "IMDS_PROXY_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<String>,
    /// Deadline for one AWS request forwarded to a real service, in milliseconds: under
    /// the SDKs' own 1 s [default: 900].
    #[arg(long, env = "IMDS_PROXY_AWS_REQUEST_TIMEOUT_MS")]
    pub aws_request_timeout_ms: Option<String>,
    /// Hold the real service's tokens and credentials in front of it, and make concurrent
    /// requests for the same one a single request [default: true].
    #[arg(long, env = "IMDS_PROXY_TOKEN_CACHE", num_args = 0..=1, default_missing_value = "true")]
    pub token_cache: Option<String>,
    /// How long the real service's unchanging metadata documents are held, in
    /// milliseconds; 0 holds none [default: 0].
    #[arg(long, env = "IMDS_PROXY_METADATA_CACHE_TTL_MS")]
    pub metadata_cache_ttl_ms: Option<String>,
    /// How long a failure of the real service (5xx, 429, no answer) is remembered per
    /// request, in milliseconds; 0 remembers none [default: 1000].
    #[arg(long, env = "IMDS_PROXY_ERROR_CACHE_MS")]
    pub error_cache_ms: Option<String>,
    /// Most answers held at once [default: 4096].
    #[arg(long, env = "IMDS_PROXY_CACHE_MAX_ENTRIES")]
    pub cache_max_entries: Option<String>,
    /// How long shutdown waits for in-flight requests, in milliseconds [default: 5000].
    #[arg(long, env = "IMDS_PROXY_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<String>,
    /// Largest request body accepted, in bytes [default: 65536].
    #[arg(long, env = "IMDS_PROXY_MAX_REQUEST_BODY_BYTES")]
    pub max_request_body_bytes: Option<String>,
    /// Largest request head accepted, in bytes [default: 16384].
    #[arg(long, env = "IMDS_PROXY_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<String>,
    /// On exit, remove table and link (containers then reach the metadata address directly)
    /// instead of leaving them refused.
    #[arg(long, env = "IMDS_PROXY_REMOVE_ON_EXIT", num_args = 0..=1, default_missing_value = "true")]
    pub remove_on_exit: Option<String>,
    /// Answer containers' DNS queries for metadata.google.internal (and metadata) with
    /// 169.254.169.254, as on GCE; no other query is touched [default: true].
    #[arg(long, env = "IMDS_PROXY_GCE_DNS", num_args = 0..=1, default_missing_value = "true")]
    pub gce_dns: Option<String>,
    /// Docker Engine API socket, to name the container behind each request [default: /var/run/docker.sock].
    #[arg(long, env = "IMDS_PROXY_DOCKER_SOCKET")]
    pub docker_socket: Option<String>,
    /// Policy for containers without an imds-proxy.policy label: allow, metadata-only or deny [default: allow].
    #[arg(long, env = "IMDS_PROXY_UNLABELLED_POLICY")]
    pub unlabelled_policy: Option<String>,
    /// Policy for callers no known container holds [default: deny].
    #[arg(long, env = "IMDS_PROXY_UNKNOWN_POLICY")]
    pub unknown_policy: Option<String>,
    /// Policy for host processes and `--network host` containers calling the proxy's own
    /// address (their direct path is not intercepted) [default: allow].
    #[arg(long, env = "IMDS_PROXY_HOST_POLICY")]
    pub host_policy: Option<String>,
    /// How long a request from a container Docker has not reported yet waits for it
    /// before a 503 with Retry-After, in milliseconds [default: 1000].
    #[arg(long, env = "IMDS_PROXY_IDENTIFY_WAIT_MS")]
    pub identify_wait_ms: Option<String>,
}

impl ConfigArgs {
    /// File, then environment and flags, validated into one [`Config`].
    pub fn load(&self, require_upstream: bool) -> Result<Config, ConfigError> {
        let mut raw = match &self.config {
            Some(p) => RawConfig::from_file(p)?,
            None => RawConfig::default(),
        };
        // Flags and variables win over the file; each flag is named after its key.
        let given: [(&'static str, &Option<String>); 25] = [
            ("upstream", &self.upstream),
            ("emulator", &self.emulator),
            ("listen", &self.listen),
            ("listen6", &self.listen6),
            ("link_name", &self.link_name),
            ("bridges", &self.bridges),
            ("direct_interfaces", &self.direct_interfaces),
            ("macvlan_parents", &self.macvlan_parents),
            ("table_owner", &self.table_owner),
            ("request_timeout_ms", &self.request_timeout_ms),
            ("aws_request_timeout_ms", &self.aws_request_timeout_ms),
            ("token_cache", &self.token_cache),
            ("metadata_cache_ttl_ms", &self.metadata_cache_ttl_ms),
            ("error_cache_ms", &self.error_cache_ms),
            ("cache_max_entries", &self.cache_max_entries),
            ("drain_timeout_ms", &self.drain_timeout_ms),
            ("max_request_body_bytes", &self.max_request_body_bytes),
            ("max_header_bytes", &self.max_header_bytes),
            ("remove_on_exit", &self.remove_on_exit),
            ("gce_dns", &self.gce_dns),
            ("docker_socket", &self.docker_socket),
            ("unlabelled_policy", &self.unlabelled_policy),
            ("unknown_policy", &self.unknown_policy),
            ("host_policy", &self.host_policy),
            ("identify_wait_ms", &self.identify_wait_ms),
        ];
        for (key, value) in given {
            raw.set_text(key, value.clone());
        }
        let mut cfg = raw.validate(require_upstream)?;
        cfg.config_file = self.config.clone();
        Ok(cfg)
    }
}
