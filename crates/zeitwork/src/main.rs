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
    /// Run the control plane: API, state store, snapshot distribution to edges.
    Operator(cmd::operator::OperatorArgs),
    /// Run the L7 edge proxy (configuration from a file, the operator, or its database).
    Edge(Box<cmd::edge::EdgeArgs>),
    /// Run the L4 balancer: TCP to healthy edges, PROXY protocol, SNI routing, draining.
    Balancer(Box<cmd::balancer::BalancerArgs>),
    /// Run the whole platform on this machine: operator, agent, edge and balancer.
    Up(Box<cmd::up::UpArgs>),
    /// Run a node agent: instances, health, worker ingress.
    Agent(Box<cmd::agent::AgentArgs>),
    /// Deploy an app: image, deployment and domains, then wait until it is routed.
    Deploy(Box<cmd::deploy::DeployArgs>),
    /// Show what an app's instances write (on this machine's node).
    Logs(cmd::deploy::LogsArgs),
    /// An app's releases, the running one marked.
    Releases(cmd::release::ReleasesArgs),
    /// Go back to an earlier release (a new release equal to it, rolled out like a deploy).
    Rollback(cmd::release::RollbackArgs),
    /// Set, remove or list an app's secrets (stored sealed; values never shown).
    Secrets(cmd::release::SecretsArgs),
    /// An app's releases, instances (per release, with state, node and reason), domains
    /// and URL.
    Status(cmd::release::StatusArgs),
    /// Change an app's number of replicas.
    Scale(cmd::deploy::ScaleArgs),
    /// Remove an app: its instances stop, its domains stop routing.
    Destroy(cmd::deploy::DestroyArgs),
    /// List nodes, instances, deployments, domains, edges, regions or images.
    Get(cmd::client::GetArgs),
    /// Create or update a deployment (with its image and domains) from a file.
    Apply(cmd::client::ApplyArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Check routing rules without sending traffic.
    #[command(subcommand)]
    Route(cmd::route::RouteCommand),
}

fn main() -> ExitCode {
    // Started under the name `zeitwork-init` (the agent sets argv[0]) when no separate
    // `zeitwork-init` binary sits beside this one, as after `cargo run`: be the instance
    // init, before anything else runs (the init must stay single-threaded).
    let mut argv = std::env::args();
    let name = argv.next().unwrap_or_default();
    if std::path::Path::new(&name).file_name() == Some(std::ffi::OsStr::new("zeitwork-init")) {
        return zw_agent::init::main(argv);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Operator(args) => cmd::operator::run(args),
        Command::Edge(args) => cmd::edge::run(*args),
        Command::Balancer(args) => cmd::balancer::run(*args),
        Command::Get(args) => cmd::client::get(args),
        Command::Apply(args) => cmd::client::apply(args),
        Command::Config(c) => cmd::config::run(c),
        Command::Route(c) => cmd::route::run(c),
        Command::Up(args) => cmd::up::run(*args),
        Command::Agent(args) => cmd::agent::run(*args),
        Command::Deploy(args) => cmd::deploy::deploy(*args),
        Command::Logs(args) => cmd::deploy::logs(args),
        Command::Releases(args) => cmd::release::releases(args),
        Command::Rollback(args) => cmd::release::rollback(args),
        Command::Secrets(c) => cmd::release::secrets(c),
        Command::Status(args) => cmd::release::status(args),
        Command::Scale(args) => cmd::deploy::scale(args),
        Command::Destroy(args) => cmd::deploy::destroy(args),
    }
}

#[cfg(test)]
mod tests {
    /// Every command's arguments are consistent (clap checks this only when the command
    /// is used, so a broken one would fail only in a user's hands).
    #[test]
    fn every_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
