//! Command-line arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Valkyrie: an L7 router for HTTP/1.1 and HTTP/2 traffic.
#[derive(Debug, Parser)]
#[command(name = "valkyrie-routing", version, about)]
pub struct Cli {
    /// Configuration file to run with. When the default file is missing,
    /// built-in defaults are used. `demo` and `bench engine` build their
    /// own configuration and do not read it.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "config/valkyrie.toml",
        global = true
    )]
    pub config: PathBuf,

    /// Parse and validate FILE, print `configuration OK` or every error, and
    /// exit with 0 or 1 without starting anything.
    #[arg(long, value_name = "FILE")]
    pub validate_config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the router on an embedded config with two small upstream servers
    /// on loopback, and print curl commands to try.
    Demo(DemoArgs),
    /// Run a benchmark and print its figures.
    Bench(BenchArgs),
    /// Change a key table kept in Redis: write the hash and publish the
    /// changed keys, so that every router applies them.
    Keys(KeysArgs),
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Redis URL to write to, instead of the config's `[redis] url`.
    #[arg(long, value_name = "URL", global = true)]
    pub redis_url: Option<String>,
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Point KEY at TARGET ("upstream" or "upstream,endpoint").
    Set {
        /// Name of a `[[key_tables]]` entry whose source is a Redis hash.
        table: String,
        key: String,
        target: String,
    },
    /// Remove keys, so that their requests take the table's default.
    Delete {
        /// Name of a `[[key_tables]]` entry whose source is a Redis hash.
        table: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Write every `key,upstream[,endpoint]` line of FILE.
    Import {
        /// Name of a `[[key_tables]]` entry whose source is a Redis hash.
        table: String,
        file: PathBuf,
        /// Also delete the keys of the hash that FILE does not list.
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// Measure the routing engine (FIT, CRA, key tables, RCU publisher) on
    /// a generated route set, and matchit and hashbrown on the same lookups.
    /// The route set comes from the options below, and `--config` is not read.
    Engine(EngineBenchArgs),
}

#[derive(Debug, Args)]
pub struct EngineBenchArgs {
    /// Routes to generate, at least 100: 70% key-table entries, the rest
    /// config routes. Hosts get five routes each, so the count reported
    /// can be a few routes higher.
    #[arg(long, default_value_t = 100_000)]
    pub routes: usize,
    /// Threads that look up routes at the same time, at least 1.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON object with every figure as the last line.
    #[arg(long)]
    pub json: bool,
    /// Seconds each throughput measurement runs, above 0. Runs shorter than
    /// 0.01 take 0.01, and latency runs half as long.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub seconds: f64,
    /// Zipf exponent, from 0 to 4, of the hosts, zones and keys that
    /// requests pick: 0 picks them uniformly, 1 makes the item of rank k
    /// about k times rarer than the most requested one.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub skew: f64,
    /// Requests that the engine routes: the mix of every kind, or one kind
    /// alone. The baselines keep their own requests.
    #[arg(long, value_enum, default_value_t = RequestKind::Mix)]
    pub requests: RequestKind,
}

/// A kind of request in the `bench engine` mix, with its share of the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RequestKind {
    /// All kinds, in the shares below.
    Mix,
    /// Exact host and path prefix, 50%.
    Prefix,
    /// Exact host and exact path, 10%.
    ExactPath,
    /// Wildcard host, 10%.
    Wildcard,
    /// Key-table key, 25% (2% of these keys are unknown).
    Key,
    /// Unknown host that reaches the catch-all, 5%.
    UnknownHost,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data-plane port of the demo router.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Metrics port of the demo router.
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,
    /// Ports of the two demo upstream servers.
    #[arg(long, num_args = 2, default_values_t = [9001, 9002])]
    pub upstream_ports: Vec<u16>,
}

/// Runs `--validate-config`: prints the result and returns the exit code.
pub fn validate_config(path: &Path) -> ExitCode {
    match load_checked(path)
        .and_then(|config| crate::certs::check_config_files(config, path))
        .and_then(|config| check_key_tables(config, path))
    {
        Ok(_) => {
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// Reads every key-table entry file the way a start would, so that a bad
/// line or an unknown upstream fails validation with its file and line.
fn check_key_tables(
    config: valkyrie_config::Config,
    path: &Path,
) -> Result<valkyrie_config::Config, String> {
    let counters = valkyrie_lockfree::FitCounters::new();
    valkyrie_proxy::keys::load_tables(&config, None, path.parent(), &counters)
        .map_err(|error| crate::position::table_error(&error, Some(path)))?;
    Ok(config)
}

/// Loads and validates a config file, including the checks that need the
/// router. Returns every error as one printable text.
pub fn load_checked(path: &Path) -> Result<valkyrie_config::Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("{}: cannot read the file: {error}", path.display()))?;
    let config = valkyrie_config::parse_str(&text, &path.display().to_string())
        .map_err(|errors| errors.to_string())?;
    let errors = crate::checks::unreachable_routes(&config, &text, path);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors.join("\n"))
    }
}
