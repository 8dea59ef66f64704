//! `cairn`: the one Cairn binary. Today it carries the disk tools over the chunk store and the
//! cluster CA for node-to-node mutual TLS; the
//! metadata service, storage node, gateways and operator CLI join it as their issues land
//! (`cairn meta`, `cairn node`, `cairn dev`, `cairn gateway ...`, `cairn volume ...`).

mod ca;
mod disk;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn distributed storage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Data directories (disks): format, inspect, verify.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// The cluster certificate authority for node-to-node mutual TLS.
    #[command(subcommand)]
    Ca(ca::CaCommand),
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Disk(command) => disk::run(command),
        Command::Ca(command) => ca::run(command),
    }
}
