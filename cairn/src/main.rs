//! `cairn`: the one Cairn binary. It carries the disk tools over the chunk store, the cluster CA
//! for node-to-node mutual TLS, the metadata service (`cairn meta`) and the operator CLI over
//! its admin API (`cairn cluster|pool|volume|node|tenant|rebalance`), the storage node
//! (`cairn node run`), `cairn dev`, and the stateless gateways (`cairn gateway iscsi`).

mod admin;
mod ca;
mod data;
mod dev;
mod disk;
mod gateway;
mod iscsi;
mod meta;
mod node;
mod peer;
mod runtime;
mod s3;
mod storage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn distributed storage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: admin::Connection,
}

#[derive(Subcommand)]
enum Command {
    /// A complete single-host cluster in one process (metadata, a storage node with three
    /// disks, the volume data routes), under one data directory.
    Dev(dev::DevArgs),
    /// Data directories (disks): format, inspect, verify.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// The cluster certificate authority for node-to-node mutual TLS.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Runs a member of the metadata Raft group with the admin API.
    Meta(meta::MetaArgs),
    /// The cluster as the metadata service sees it.
    #[command(subcommand)]
    Cluster(admin::ClusterCommand),
    /// Storage pools.
    #[command(subcommand)]
    Pool(admin::PoolCommand),
    /// Block volumes (EVS).
    #[command(subcommand)]
    Volume(admin::VolumeCommand),
    /// Nodes and their disks in the cluster map.
    #[command(subcommand, name = "node")]
    Node(admin::NodeCommand),
    /// Tenants and their S3 access keys.
    #[command(subcommand)]
    Tenant(admin::TenantCommand),
    /// S3 access keys (the same as `cairn tenant create-key` / `delete-key`).
    #[command(subcommand)]
    Key(admin::KeyCommand),
    /// S3 buckets: usage, versioning state and quotas.
    #[command(subcommand)]
    Bucket(admin::BucketCommand),
    /// Recovery and rebalance: PGs whose members are moving; the rebalance switch.
    #[command(subcommand)]
    Rebalance(admin::RebalanceCommand),
    /// Stateless protocol gateways over the cluster.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
}

/// Stops glibc's allocator from handing freed memory back to the kernel at once. The data
/// path allocates and frees megabytes a second (request bodies, log buffers, pieces); by
/// default the heap top is trimmed and large blocks are unmapped on every free, so the next
/// allocation faults fresh zeroed pages in again: 8% of a loaded node's CPU in profiles.
fn keep_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        // Blocks under 64 MiB come from the heap (the default threshold grows to 32 MiB only
        // after a large block is freed), and up to 1 GiB of free heap stays mapped.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Dev(_) | Command::Node(admin::NodeCommand::Run(_)) | Command::Gateway(_)
    ) {
        keep_heap();
    }
    match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Disk(command) => disk::run(command),
        Command::Ca(command) => ca::run(command),
        Command::Meta(args) => meta::run(args),
        Command::Cluster(command) => admin::cluster(&cli.connection, command),
        Command::Pool(command) => admin::pool(&cli.connection, command),
        Command::Volume(command) => admin::volume(&cli.connection, command),
        Command::Node(command) => admin::node(&cli.connection, command),
        Command::Tenant(command) => admin::tenant(&cli.connection, command),
        Command::Key(command) => admin::key(&cli.connection, command),
        Command::Bucket(command) => admin::bucket(&cli.connection, command),
        Command::Rebalance(command) => admin::rebalance(&cli.connection, command),
        Command::Gateway(command) => gateway::run(command, &cli.connection),
    }
}
