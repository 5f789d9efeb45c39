//! Command-line arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Valkyrie: an L7 router for HTTP/1.1 and HTTP/2 traffic.
#[derive(Debug, Parser)]
#[command(name = "valkyrie-routing", version, about)]
pub struct Cli {
    /// Configuration file to run with. When the default file is missing,
    /// built-in defaults are used.
    #[arg(long, value_name = "FILE", default_value = "config/valkyrie.toml")]
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
    match load_checked(path).and_then(|config| crate::certs::check_config_files(config, path)) {
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
