//! `ferry`: the Ferry broker (`ferry serve`) and its command-line tools.
//!
//! Every failure ends as one line `error: …` on stderr and a non-zero exit code:
//! 1 for runtime errors, 2 for usage errors. Never a backtrace.

mod cli;
mod commands;
mod config;
mod serve;

use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;

use cli::{Cli, Command};
use commands::CliError;

/// Huge allocations are lazily committed, so that a length prefix forged by a client
/// cannot abort the broker (see `ferry_alloc`).
#[global_allocator]
static ALLOCATOR: ferry_alloc::GuardedAllocator = ferry_alloc::GuardedAllocator;

/// Exit code of runtime errors.
const EXIT_FAILURE: u8 = 1;
/// Exit code of usage errors (clap's convention).
const EXIT_USAGE: u8 = 2;
/// How long background tasks (a blocked stdin reader) may delay the exit.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    let serving = matches!(cli.command, Command::Serve(_) | Command::Bench(_));
    // The broker and the benchmark want every core; a command-line tool is one
    // sequential conversation.
    let runtime = if serving {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(
                &format!("cannot start the async runtime: {e}"),
                EXIT_FAILURE,
            )
        }
    };
    let result = runtime.block_on(run(cli.command));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Cli(CliError::StdoutClosed)) => ExitCode::SUCCESS,
        Err(Failure::Cli(e @ CliError::Usage(_))) => fail(&e.to_string(), EXIT_USAGE),
        Err(Failure::Cli(e)) => fail(&e.to_string(), EXIT_FAILURE),
        Err(Failure::Serve(e)) => fail(&format!("{e:#}"), EXIT_FAILURE),
    }
}

/// An error from either side of the binary.
enum Failure {
    Cli(CliError),
    Serve(anyhow::Error),
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(args) => serve::run(args).await.map_err(Failure::Serve),
        Command::Topic(command) => commands::topic::run(command).await.map_err(Failure::Cli),
        Command::Produce(args) => commands::produce::run(args).await.map_err(Failure::Cli),
        Command::Consume(args) => commands::consume::run(args).await.map_err(Failure::Cli),
        Command::Group(command) => commands::group::run(command).await.map_err(Failure::Cli),
        Command::Bench(args) => commands::bench::run(args).await.map_err(Failure::Cli),
        Command::User(command) => commands::admin::user(command).await.map_err(Failure::Cli),
        Command::Vhost(command) => commands::admin::vhost(command).await.map_err(Failure::Cli),
        Command::Permissions(command) => commands::admin::permissions(command)
            .await
            .map_err(Failure::Cli),
    }
}

/// Prints `message` as the one `error:` line and returns `code`.
fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("error: {}", one_line(message));
    ExitCode::from(code)
}

/// Help and version go to stdout with success; usage errors become one line.
fn clap_exit(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            // Nothing sensible is left to do if printing help fails.
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            // The first paragraph names the problem (and, for missing arguments, lists
            // them on the following lines); usage and tips follow after a blank line.
            let rendered = e.render().to_string();
            let paragraph: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .collect();
            let message = paragraph.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            fail(&format!("{message} (see --help)"), EXIT_USAGE)
        }
    }
}

/// Collapses a message onto one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A panic is a bug, but it still ends as one line rather than a backtrace, unless a
/// developer asked for backtraces with `RUST_BACKTRACE`.
fn install_panic_hook() {
    let backtrace_wanted = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if backtrace_wanted {
            default_hook(info);
            return;
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("panic");
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{location}: {}", one_line(message));
    }));
}
