//! Thin entry point: parse, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use imds_proxy::cli::{Cli, Command, LogFormat};
use imds_proxy::{app, errors::error_chain};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMDS_PROXY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Stable field names at the top level of each object; the spans' context is
        // left out (the audit event carries its own client, method and path).
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }

    let cfg = match &cli.command {
        Command::Run(a) | Command::Rules(a) | Command::Uninstall(a) => match a.load(false) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("imds-proxy: {}", error_chain(&e));
                return ExitCode::from(2);
            }
        },
        Command::Emulate(_) | Command::Status(_) => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("imds-proxy: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => {
                let cfg = cfg.expect("loaded above");
                app::run(cfg, Box::new(move || args.load(false))).await
            }
            Command::Rules(_) => app::rules(&cfg.expect("loaded above"))
                .await
                .map(|text| print!("{text}")),
            Command::Uninstall(_) => app::uninstall(&cfg.expect("loaded above")).await,
            Command::Emulate(a) => app::emulate(a.emulator, a.listen).await,
            Command::Status(a) => app::status(a.json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imds-proxy: {}", error_chain(&e));
            // A file the user can fix is a usage error, like a bad config.
            if matches!(e, app::AppError::Emulator(_)) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
