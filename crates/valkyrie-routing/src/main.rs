//! The `valkyrie-routing` binary: command line, wiring of the data plane,
//! built-in endpoints, signals, logging and the demo.

mod bench;
mod builtins;
mod certs;
mod checks;
mod cli;
mod demo;
mod engine_admin;
mod keys_cli;
mod logging;
mod memory;
mod metrics;
mod position;
mod resilience;
mod service;
mod window;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cli::Command::Demo(args)) => demo::run(args),
        Some(cli::Command::Bench(args)) => match args.target {
            cli::BenchTarget::Engine(args) => bench::run(&args),
        },
        Some(cli::Command::Keys(args)) => keys_cli::run(&cli.config, args),
        None => {
            if let Some(path) = &cli.validate_config {
                return cli::validate_config(path);
            }
            service::run_from_file(&cli.config)
        }
    }
}
