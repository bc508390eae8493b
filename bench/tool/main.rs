//! The parts of `bench/run.sh` that a shell does badly: the cold burst (many requests
//! at one instant, each on its own connection, from several containers' network
//! namespaces, with exact percentiles) and the report (ratios against the baselines and
//! the pass/miss of each target, as one markdown table).
//!
//! Steady-state load comes from `wrk`; wrk cannot hold a thousand connections open
//! from several namespaces and release one request on each at the same instant, which
//! is what asking "does the daemon coalesce a cold burst" needs.

mod burst;
mod report;
mod results;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load tools for the benchmark harness.
#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Opens connections in each network namespace, then sends one GET on each at once;
    /// prints key=value results (counts, p50/p99 µs).
    Burst(burst::Args),
    /// Renders the results directory of a run as markdown, with the targets.
    Report(report::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Burst(a) => burst::run(a),
        Command::Report(a) => report::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
