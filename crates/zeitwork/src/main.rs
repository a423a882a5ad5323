//! `zeitwork`: the platform's services as subcommands of one binary.
//!
//! The binary only parses arguments, sets up logging and the runtime, and calls into the
//! library crates.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A proxy allocates and frees many small buffers per request; mimalloc's thread-local
/// free lists make that markedly cheaper than glibc's malloc (see the benchmark notes).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "zeitwork",
    version,
    about = "Zeitwork: an edge platform in one binary",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the L7 edge proxy from a Traefik-compatible dynamic configuration file.
    Edge(cmd::edge::EdgeArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Check routing rules without sending traffic.
    #[command(subcommand)]
    Route(cmd::route::RouteCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Edge(args) => cmd::edge::run(args),
        Command::Config(c) => cmd::config::run(c),
        Command::Route(c) => cmd::route::run(c),
    }
}
